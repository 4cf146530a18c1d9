#!/usr/bin/env bash
# The GPU benchmark, one run on a lent H100/H200 that reaches no network. Prepare here first:
#   mkdir -p .whl .gpu && cp ../shared/gpu/wheels/*.whl .whl/ && cp ../shared/gpu/plain_funasr_anchor.py .gpu/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d .whl jiwer==4.0.0
# (both folders git-ignored; carry them), then run `bash bench/gpu.sh` there with $OUT set.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/lib PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-bench}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, funasr; print('torch', torch.__version__, 'funasr', funasr.__version__)" | tee -a "$OUT/gpu.txt"
# the workbench: inference (fp32, bf16) against plain generate, then fine-tune throughput
OUT="$OUT" timeout "${WB_TIMEOUT:-330}" python3 bench/gpu_bench.py 2>&1 | grep -v -E "\[INFO\]|WARNING" | tee "$OUT/workbench.log"
cp bench/RESULTS.md "$OUT/RESULTS.md" 2>/dev/null
# the plain-funasr yardstick, in the same run
if [ -f .gpu/plain_funasr_anchor.py ]; then
  CLIPS='demo/data/**/*.flac' OUT="$OUT" timeout "${ANCHOR_TIMEOUT:-200}" python3 .gpu/plain_funasr_anchor.py 2>&1 \
    | grep -v -E "\[INFO\]|WARNING" | tail -40 | tee "$OUT/anchor.log"
fi
ls -la "$OUT"
