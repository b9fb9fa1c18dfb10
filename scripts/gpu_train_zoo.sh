#!/usr/bin/env bash
# Train the whole ResNet-20 zoo on one GPU machine (the device tool's H100), all 12 runs at once.
#
#   bash scripts/gpu_train_zoo.sh [EPOCHS] [AT_EPOCHS] [DEADLINE_S]
#
# Standard models: EPOCHS (default 18); adversarially trained (FGSM-RS) models: AT_EPOCHS (default 9).
# DEADLINE_S (default 470): every run stops training at that many seconds after the start, keeping
# its best state, so the call ends inside the machine's 10-minute limit (recorded as stopped_early).
# Expects the CIFAR-10 JPEG packs and ../shared/data/cifar10/unpack.py copied into .gpu/ (a folder
# listed in .git/info/exclude, carried to the machine). Leaves models/*.safetensors + manifest.json,
# and in $OUT: the training log and the zoo as tar parts (cat zoo.tar.part* > zoo.tar).
set -euo pipefail
EPOCHS=${1:-18}
AT_EPOCHS=${2:-9}
DEADLINE=${3:-470}
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
DATA=/tmp/cifar10
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2 || true
python3 .gpu/unpack.py "$DATA"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
export ROBUSTDYN_DATA=$DATA ROBUSTDYN_OFFLINE=1 PYTHONUNBUFFERED=1
rm -f models/manifest.json models/*.safetensors
python3 scripts/train_zoo.py --device cuda --epochs "$EPOCHS" --at-epochs "$AT_EPOCHS" --deadline-s "$DEADLINE" \
  --no-resume 2>&1 | tee "$OUT/train_zoo.log" || true
tar cf /tmp/zoo.tar models/manifest.json models/*.safetensors runs/*.log
split -b 15M /tmp/zoo.tar "$OUT/zoo.tar.part"
ls -la "$OUT"
