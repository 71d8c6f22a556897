#!/usr/bin/env bash
# Shared launcher of the eval/<benchmark>.sh runners: runs `python -m eval.run BENCH "$@"` from any
# directory (paths given on the command line stay relative to the caller's directory). The repository is
# installed in that Python (`make`). Python: $PYTHON, else the repo's .venv, else python3.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif [[ -x "$REPO/.venv/bin/python" ]]; then
    PY="$REPO/.venv/bin/python"
else
    PY=python3
fi
# PYTHONSAFEPATH: the caller's directory is not put on the path, so an `eval` folder there cannot shadow ours.
PYTHONSAFEPATH=1 exec "$PY" -m eval.run "$@"
