#!/usr/bin/env bash
# Shared launcher of the eval/<benchmark>.sh runners: runs `python -m eval.run BENCH "$@"` with the repo
# and its sibling projects importable, from any directory (paths given on the command line stay
# relative to the caller's directory). Python: $PYTHON, else the repo's .venv, else python3.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif [[ -x "$REPO/.venv/bin/python" ]]; then
    PY="$REPO/.venv/bin/python"
else
    PY=python3
fi
export PYTHONPATH="$REPO:$REPO/RoiLLaVA:$REPO/SwiLLaVA:$REPO/SegLLaVA${PYTHONPATH:+:$PYTHONPATH}"
# The repo goes first on sys.path, so an `eval` folder in the caller's directory cannot shadow ours.
exec "$PY" -c 'import sys; sys.path.insert(0, sys.argv.pop(1)); from eval.run import main; main()' "$REPO" "$@"
