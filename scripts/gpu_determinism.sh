#!/usr/bin/env bash
# The size of GPU nondeterminism: scripts/determinism.py on CUDA, 3 runs each, with torch's default
# (fast) algorithms and with deterministic algorithms. One device-tool call (carry .gpu_eval, see
# scripts/eval_zoo.sh for what it holds); the JSON lands in $OUT.
#   bash scripts/gpu_determinism.sh            # N=2000 examples per model by default
set -uo pipefail
OUT=${OUT:-det_out}
N=${N:-2000}
mkdir -p "$OUT"
if [ -d .gpu_eval ]; then
  export PYTHONPATH="$PWD/.gpu_eval/site${PYTHONPATH:+:$PYTHONPATH}"
  python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
  python3 .gpu_eval/unpack.py /tmp/cifar10
  export ROBUSTDYN_DATA=${ROBUSTDYN_DATA:-/tmp/cifar10}
fi
export ROBUSTDYN_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 240 python3 scripts/determinism.py --device cuda --n "$N" --json "$OUT/det_default.json" 2>&1 | tee "$OUT/det_default.log"
timeout 240 python3 scripts/determinism.py --device cuda --n "$N" --deterministic --json "$OUT/det_deterministic.json" \
  2>&1 | tee "$OUT/det_deterministic.log"
