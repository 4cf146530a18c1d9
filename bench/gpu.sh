#!/usr/bin/env bash
# The GPU benchmark, one run on a lent H100/H200 that reaches no network. Prepare here first:
#   mkdir -p .whl .gpu && cp ../shared/gpu/wheels/*.whl .whl/ && cp ../shared/gpu/plain_funasr_anchor.py .gpu/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d .whl jiwer==4.0.0
#   git rev-parse --short HEAD > .gpu/commit     # the machine gets the work tree without .git
# (both folders git-ignored; carry them), then run `bash bench/gpu.sh` there with $OUT set.
# PARTS=infer or PARTS=finetune runs one half (both together overran 450 s on an H100: run one per call).
# A session has ~15 device minutes: run PARTS=finetune first (never measured on a GPU; ~250-300 s), then start
# PARTS=infer at once on the still-warm machine (~330-400 s; N_UTTS=2400 shortens it), and rewrite .gpu/commit
# just before (a stale one mislabels every table).
# ANCHOR=1 also runs the shared plain-funasr yardstick script (about 3 more minutes); without it the plain-funasr
# numbers come from bench/gpu_bench.py itself (plain generate and funasr's stock trainer, same run, same data).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/lib PYTHONUNBUFFERED=1
[ -f .gpu/commit ] && export BENCH_COMMIT="$(cat .gpu/commit)"
OUT=${OUT:-/tmp/gpu-bench}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, funasr; print('torch', torch.__version__, 'funasr', funasr.__version__)" | tee -a "$OUT/gpu.txt"
OUT="$OUT" timeout "${WB_TIMEOUT:-450}" python3 bench/gpu_bench.py 2>&1 | grep -v -E "\[INFO\]|WARNING" | tee "$OUT/workbench.log"
cp bench/RESULTS.md bench/results.jsonl "$OUT/" 2>/dev/null
if [ "${ANCHOR:-0}" = 1 ] && [ -f .gpu/plain_funasr_anchor.py ]; then
  CLIPS='demo/data/**/*.flac' OUT="$OUT" timeout "${ANCHOR_TIMEOUT:-200}" python3 .gpu/plain_funasr_anchor.py 2>&1 \
    | grep -v -E "\[INFO\]|WARNING" | tail -40 | tee "$OUT/anchor.log"
fi
ls -la "$OUT"
