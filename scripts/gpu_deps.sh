#!/bin/bash
# Pack what the GPU check needs besides CUDA torch into gpu_deps/site (importable as is, no network on the
# GPU machine): DeepSpeed (pure Python, built here as a py3-none-any wheel) with its small pure-Python
# dependencies, and bitsandbytes' Python package with only the CUDA library matching the GPU's torch.
#   bash scripts/gpu_deps.sh [CUDA_TAG]     # CUDA_TAG: the GPU torch's CUDA, e.g. 128 for 12.8 (default), 130
# Then carry gpu_deps/ with the checkout; scripts/gpu_check.py puts gpu_deps/site on PYTHONPATH itself.
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_TAG=${1:-128}
OUT=gpu_deps
PY=${PYTHON:-python}
rm -rf "$OUT" && mkdir -p "$OUT/wheels" "$OUT/site"
DS_VERSION=$(grep '^deepspeed==' requirements.txt | cut -d= -f3)
"$PY" -m pip wheel -q --no-deps -w "$OUT/wheels" "deepspeed==$DS_VERSION" hjson py-cpuinfo einops
"$PY" -m pip install -q --no-deps --no-compile --target "$OUT/site" "$OUT"/wheels/*.whl
rm -rf "$OUT/wheels" "$OUT"/site/bin
# msgpack, ninja, pydantic, psutil: usually on a CUDA torch image already; the check says which is missing.
BNB=$("$PY" -c "import bitsandbytes, os; print(os.path.dirname(bitsandbytes.__file__))")
mkdir -p "$OUT/site/bitsandbytes"
(cd "$BNB" && find . -type f ! -name '*.so' ! -name '*.pyc' -exec cp --parents {} "$OLDPWD/$OUT/site/bitsandbytes/" \;)
cp "$BNB/libbitsandbytes_cuda${CUDA_TAG}.so" "$OUT/site/bitsandbytes/"
du -sh "$OUT"
