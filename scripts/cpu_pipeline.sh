#!/usr/bin/env bash
# One CPU lane of the zoo pipeline: for each model in turn, train it with the v2 recipe (resuming runs/NAME
# if it exists), land it (commit the checkpoint and its manifest entry, drop the resumable state), then
# evaluate it into the committed results pack (scripts/cpu_eval_zoo.sh, every step resumable). Run one lane per
# core, side by side, in the background:
#
#   nohup bash scripts/cpu_pipeline.sh dyconv_k3 dyconv_k5 > /tmp/laneA.log 2>&1 &
#   nohup bash scripts/cpu_pipeline.sh odconv_k1 odconv_k4_at > /tmp/laneB.log 2>&1 &
#
# Standard models: 30 epochs. *_at models: FGSM-RS fine-tuning of the landed standard twin, 10 epochs, lr 0.05
# (the recipe of dyconv_k4_at, static_at and gated_at). Data: $ROBUSTDYN_DATA (a folder with train.npz and
# test.npz, e.g. from ../shared/data/cifar10/unpack.py). A lane stopped at any point loses at most the current
# epoch or evaluation step: rerun the same command to continue. Set LAND=0 to leave the landing (git commit) to
# you, EVAL=0 to train only. Lanes share one git index: landings take a lock.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ $# -ge 1 ] || { echo "usage: cpu_pipeline.sh MODEL [MODEL ...]" >&2; exit 2; }
DATA=${ROBUSTDYN_DATA:?set ROBUSTDYN_DATA to the folder with train.npz and test.npz}
[ -f "$DATA/train.npz" ] || { echo "error: $DATA/train.npz not found (unpack the data first)" >&2; exit 1; }
export ROBUSTDYN_DATA=$DATA PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p runs
for m in "$@"; do
  echo "== $m: train ($(date -u +%H:%M))"
  args=(--model "$m" --device cpu --recipe v2 --threads 1 --run-dir "runs/$m" --data-dir "$DATA")
  if [[ "$m" == *_at ]]; then
    args+=(--epochs 10 --init-from "${m%_at}" --lr 0.05)
  else
    args+=(--epochs 30)
  fi
  if ! python scripts/train.py "${args[@]}" >> "runs/$m.log" 2>&1; then
    echo "error: training $m failed (see runs/$m.log); lane stops" >&2
    exit 1
  fi
  tail -2 "runs/$m.log"
  if [ "${LAND:-1}" = 1 ]; then
    flock .git/robustdyn-land.lock bash scripts/land_model.sh "$m" || { echo "error: landing $m failed" >&2; exit 1; }
  fi
  if [ "${EVAL:-1}" = 1 ]; then
    echo "== $m: evaluate ($(date -u +%H:%M))"
    bash scripts/cpu_eval_zoo.sh "$m"
  fi
done
echo "lane done ($(date -u +%H:%M))"
