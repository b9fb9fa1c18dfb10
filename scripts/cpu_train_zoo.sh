#!/usr/bin/env bash
# Train (or resume) the whole ResNet-20 zoo on a CPU with the fixed recipe (v2), one single-thread run per core:
#   standard models: 30 epochs, batch 128, SGD Nesterov lr 0.1, bf16 autocast where the CPU has native bf16;
#   _at models: FGSM-RS (eps 8/255, step 10/255) fine-tuning of the standard twin, 10 epochs, lr 0.05,
#   final epoch kept unless a held-out PGD-10 check (2000 images) detects catastrophic overfitting.
# Every run resumes from runs/NAME after each epoch, so rerunning this command continues where it stopped
# (commit runs/NAME/state.* to carry an unfinished run to another machine). Logs: runs/NAME.log.
#   bash scripts/cpu_train_zoo.sh [DATA_DIR] [MODELS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA=${1:-${ROBUSTDYN_DATA:-}}
MODELS=${2:-static,gated,dyconv_k4,odconv_k4,dyconv_k2,dyconv_k3,dyconv_k5,odconv_k1,static_at,dyconv_k4_at,odconv_k4_at,gated_at}
args=(--device cpu --epochs 30 --at-epochs 10 --at-from-standard --at-lr 0.05 --models "$MODELS" --recipe v2)
[ -n "$DATA" ] && args+=(--data-dir "$DATA")
PYTHONUNBUFFERED=1 python scripts/train_zoo.py "${args[@]}"
