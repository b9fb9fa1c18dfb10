#!/usr/bin/env bash
# Issue #19 on a GPU: the DyConv / ODConv computation paths side by side, then the whole benchmark set.
# ONE device-tool call on an H200/H100 (<= 9 minutes: every phase has its own time limit); everything
# lands in $OUT. No data needs carrying: the layer benches use random inputs, bench_all falls back to
# the bundled 500-image sample (carry .gpu_eval/ as for scripts/eval_zoo.sh to use the full test set).
#
#   bash scripts/gpu_perf.sh
#
# Phases: 1. layers (grouped, dense, unfold+bmm, channels_last, ODConv folded, auto, torch.compile of the
# grouped layer; bf16 autocast as the "train" and "attack-bf16" settings) at ResNet-20 shapes, batch 128
# (train) / 100 (attack) and batch 1024 (attack); 2. ResNet-20 steps per mode; 3. bench_all --full
# (budget 180 s); 4. scripts/gpu_determinism.sh if time remains. A Triton kernel is not part of it.
set -uo pipefail
OUT=${OUT:-gpu_perf_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 ROBUSTDYN_OFFLINE=1
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
if [ -d .gpu_eval ]; then
  export PYTHONPATH="$PWD/.gpu_eval/site${PYTHONPATH:+:$PYTHONPATH}"
  python3 .gpu_eval/unpack.py /tmp/cifar10 && export ROBUSTDYN_DATA=${ROBUSTDYN_DATA:-/tmp/cifar10}
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"; } 2>&1 | tee "$OUT/env.txt"
B=scripts/bench_cpu_paths.py
timeout 75 python3 $B --device cuda --part layers --settings train,attack,attack-bf16 --repeats 10 \
  2>&1 | tee "$OUT/layers_b128.log"
timeout 60 python3 $B --device cuda --part layers --settings attack,attack-bf16 --batch 1024 --repeats 10 \
  2>&1 | tee "$OUT/layers_b1024.log"
timeout 70 python3 $B --device cuda --part layers --kinds dyconv,odconv --settings attack --compile --repeats 10 \
  2>&1 | tee "$OUT/layers_compile.log"
timeout 60 python3 $B --device cuda --part model --settings train,attack,attack-bf16 --repeats 10 \
  2>&1 | tee "$OUT/model_steps.log"
timeout 210 python3 scripts/bench_all.py --device cuda --full --budget-s 180 --out "$OUT/bench_all" \
  2>&1 | tail -40 > "$OUT/bench_all.log"
echo "elapsed ${SECONDS}s" | tee -a "$OUT/env.txt"
if [ "$SECONDS" -lt 440 ]; then
  OUT="$OUT/determinism" N=500 timeout $((520 - SECONDS)) bash scripts/gpu_determinism.sh > "$OUT/determinism.log" 2>&1
fi
echo "done ${SECONDS}s" | tee -a "$OUT/env.txt"
ls -laR "$OUT" | head -40
