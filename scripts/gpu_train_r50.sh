#!/usr/bin/env bash
# Train and evaluate the ResNet-50 family (resnet50_static, _dyconv_k4, _odconv_k4, _gated) on one GPU machine,
# in ONE device-tool call of under 10 minutes (issue #17):
#
#   here, once:  python scripts/train_r50.py prepare        # fills .gpu_r50/ (data, unpack.py, torchattacks)
#   device tool: run(carry=[".gpu_r50"], timeout_s=600, command="bash scripts/gpu_train_r50.sh")
#
# One call, because the checkpoints cannot come back (bf16: ~0.45 GB for the four; the tool returns at most
# 64 MiB from $OUT) and a machine stays warm for 30 s only: what is trained must be evaluated on the spot.
# Phases, each bounded by a time measured from the script's start (SECONDS), so the call ends by T_END:
#   0. setup: `pip install --no-deps --no-build-isolation -e .`; torchattacks + pyautoattack if missing (from
#      $CARRY/wheels/*.whl, else $CARRY/site.tgz); CIFAR-10 from $R50_DATA, $CARRY or ../shared/data/cifar10
#      (train.npz/test.npz, or the JPEG packs + unpack.py -> /tmp/cifar10); fails with a fix if none is there.
#   1. train until T_TRAIN_END (300 s): scripts/train_r50.py calibrates the step time of each model (bf16 and
#      fp32), picks the precision and ONE epoch count for all four (recipe v2, batch 512, lr 0.2), and trains
#      them concurrently through scripts/train_zoo.py; a deadline stops training at T_TRAIN_END (recorded as
#      stopped_early); each run then measures clean accuracy on the 10k test images and saves its checkpoint
#      (parameters in bfloat16) into models/ with the manifest. Runs resume from runs/r50/ on a warm machine.
#   2. evaluate: until T_SWEEP_END (450 s) FGSM and PGD-20 at 8/255 on N_ATTACK (2000) seeded test images
#      (attacks/zoo_headline.toml) and the audit (`robustdyn audit --json --write-manifest`, n 1000), the four
#      models concurrently; then until T_EVAL_END (530 s) the dynamic-aware threats on N_THREATS (500) images
#      (THREATS=0 skips them). Every step runs under `timeout`; the store keeps what finished.
#   3. `robustdyn report` until T_END (575 s), then $OUT: r50.log (everything), r50_manifest.json (the four
#      entries: sha256, recipe, metrics, history, audit), r50_calibration.json, r50_logs.tgz (per-run logs),
#      r50_store.sqlite.gz (per-example detail kept for PGD-20 only), r50_report.tgz.
# The budget (T_* in seconds, N_*, BATCH, LR, MODELS, EPOCHS, PRECISION) can be set in the environment.
# PHASE=train or PHASE=eval runs one phase (e.g. eval on a machine still warm after PHASE=train).
# CPU dry run of the whole pipeline (tiny sizes; no pip, nothing written into models/ or runs/):
#   DEVICE=cpu SKIP_PIP=1 R50_DATA=/tmp/cifar10 RUNS=/tmp/r50/runs ROBUSTDYN_MODELS=/tmp/r50/models \
#   ROBUSTDYN_STORE=/tmp/r50/store.sqlite OUT=/tmp/r50/out EPOCHS=1 BATCH=8 N_ATTACK=16 N_AUDIT=16 N_THREATS=8 \
#   TRAIN_EXTRA="--max-steps 2 --train-subset 64 --holdout 32 --final-test-n 32 --threads 1" \
#   T_TRAIN_END=100000 T_SWEEP_END=100000 T_EVAL_END=100000 T_END=100000 bash scripts/gpu_train_r50.sh
set -uo pipefail
OUT=${OUT:-r50_out}
mkdir -p "$OUT"
PHASE=${PHASE:-all}
CARRY=${CARRY:-.gpu_r50}
T_TRAIN_END=${T_TRAIN_END:-300} T_SWEEP_END=${T_SWEEP_END:-450} T_EVAL_END=${T_EVAL_END:-530} T_END=${T_END:-575}
N_ATTACK=${N_ATTACK:-2000} N_AUDIT=${N_AUDIT:-1000} N_THREATS=${N_THREATS:-500}
BATCH=${BATCH:-512} LR=${LR:-0.2}
MODELS=${MODELS:-resnet50_static,resnet50_dyconv_k4,resnet50_odconv_k4,resnet50_gated}
DEVICE=${DEVICE:-cuda} RUNS=${RUNS:-runs/r50}
STORE=${ROBUSTDYN_STORE:-$PWD/results/r50.sqlite}
RD="python3 -m robustbench_dyn"
T0=$(date +%s)
phase() { echo "== [${SECONDS}s] $*"; }
left() { local t=$(( $1 - SECONDS )); [ "$t" -lt 1 ] && t=1; echo "$t"; }

main() {
phase "0. setup (PHASE=$PHASE, out $OUT)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "warning: no nvidia-smi"
[ "${SKIP_PIP:-0}" = 1 ] || python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import torchattacks, pyautoattack" 2>/dev/null; then
  if compgen -G "$CARRY/wheels/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$CARRY"/wheels/*.whl
  elif [ -f "$CARRY/site.tgz" ]; then
    mkdir -p /tmp/site && tar xzf "$CARRY/site.tgz" -C /tmp/site
  fi
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
python3 -c "import torch, torchattacks, pyautoattack, robustbench_dyn as rd; print('torch', torch.__version__, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA', '| torchattacks', torchattacks.__version__, \
'| robustbench_dyn', rd.__version__)" || { echo "error: torch/torchattacks/pyautoattack/robustbench_dyn do not import. \
Fix: carry $CARRY with wheels/ or site.tgz (python scripts/train_r50.py prepare)"; return 2; }

DATA=""
for d in "${R50_DATA:-}" "$CARRY" ../shared/data/cifar10 shared/data/cifar10; do
  [ -n "$d" ] && [ -d "$d" ] || continue
  if [ -f "$d/train.npz" ] && [ -f "$d/test.npz" ]; then DATA=$d; break; fi
  if [ -f "$d/cifar10-train-jpeg.npz" ] && [ -f "$d/cifar10-test-jpeg.npz" ]; then
    if [ -f "$d/unpack.py" ] && python3 "$d/unpack.py" /tmp/cifar10; then DATA=/tmp/cifar10; else DATA=$d; fi
    break
  fi
done
if [ -z "$DATA" ]; then
  echo "error: no CIFAR-10 on this machine (looked in \$R50_DATA='${R50_DATA:-}', $CARRY, ../shared/data/cifar10)." \
       "Fix: run 'python scripts/train_r50.py prepare' in the checkout and carry .gpu_r50, or set R50_DATA to a" \
       "folder with train.npz/test.npz or the CIFAR-10 JPEG packs"
  return 2
fi
export ROBUSTDYN_DATA=$DATA ROBUSTDYN_OFFLINE=1 ROBUSTDYN_STORE=$STORE PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
mkdir -p "$(dirname "$STORE")" "$RUNS"
echo "data: $DATA"

if [ "$PHASE" = all ] || [ "$PHASE" = train ]; then
  phase "1. train $MODELS until ${T_TRAIN_END}s"
  EXTRA=()
  if [ -z "${EPOCHS:-}" ] && [ -f "$RUNS/r50_calibration.json" ]; then  # a warm machine's earlier call: resume it
    EPOCHS=$(python3 -c "import json; print(json.load(open('$RUNS/r50_calibration.json'))['epochs'])")
    PRECISION=$(python3 -c "import json; print(json.load(open('$RUNS/r50_calibration.json'))['precision'])")
    echo "resuming the earlier calibration: $EPOCHS epochs, $PRECISION"
  fi
  [ -n "${EPOCHS:-}" ] && EXTRA+=(--epochs "$EPOCHS")
  timeout "$(left $((T_TRAIN_END + ${T_GRACE:-90})))" python3 scripts/train_r50.py train --device "$DEVICE" \
    --models "$MODELS" --train-until $((T0 + T_TRAIN_END)) --batch-size "$BATCH" --lr "$LR" \
    --precision "${PRECISION:-auto}" --runs-dir "$RUNS" --report "$RUNS/r50_calibration.json" "${EXTRA[@]}" -- \
    ${TRAIN_EXTRA:-} --set audit_n=0 --note "ResNet-50 family, one GPU call: recipe v2, batch $BATCH, lr $LR, calibrated epochs" \
    2>&1
  for m in ${MODELS//,/ }; do echo "--- $RUNS/$m.log (tail)"; tail -4 "$RUNS/$m.log" 2>/dev/null; done
fi

if [ "$PHASE" = all ] || [ "$PHASE" = eval ]; then
  phase "2a. FGSM + PGD-20 at 8/255 (n=$N_ATTACK) and audit (n=$N_AUDIT), until ${T_SWEEP_END}s"
  T_SWEEP=$(left "$T_SWEEP_END")
  for m in ${MODELS//,/ }; do  # batch sizes for memory: ODConv builds one kernel per example (fp32 attacks)
    case $m in *odconv*) bs=128 ;; *dyconv*) bs=250 ;; *) bs=500 ;; esac
    timeout "$T_SWEEP" $RD sweep --suite attacks/zoo_headline.toml --models "$m" --n "$N_ATTACK" --device "$DEVICE" \
      --batch-size "$bs" --skip-missing > "$RUNS/sweep_$m.log" 2>&1 &
    timeout "$T_SWEEP" $RD audit --model "$m" --n "$N_AUDIT" --device "$DEVICE" --no-per-layer --json --write-manifest \
      --batch-size 250 > "$RUNS/audit_$m.json" 2> "$RUNS/audit_$m.err" &
  done
  wait
  for m in ${MODELS//,/ }; do echo "--- sweep $m"; tail -6 "$RUNS/sweep_$m.log"; done
  for m in ${MODELS//,/ }; do
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], r.get('verdict'), \
r.get('clean_acc'))" "$RUNS/audit_$m.json" "$m" 2>/dev/null || { echo "$m: audit failed"; tail -3 "$RUNS/audit_$m.err"; }
  done
  if [ "${THREATS:-1}" != 0 ]; then
    phase "2b. threats on $MODELS, n=$N_THREATS, until ${T_EVAL_END}s"
    timeout "$(left "$T_EVAL_END")" $RD threats --models "$MODELS" --n "$N_THREATS" --device "$DEVICE" --batch-size 128 \
      2>&1 | tee "$RUNS/threats.log" | tail -30
  fi

  phase "3. report"
  timeout "$(left $((T_END - 15)))" $RD report --store "$STORE" --out /tmp/r50_report 2>&1 | tail -15
  tar czf "$OUT/r50_report.tgz" -C /tmp r50_report 2>/dev/null
fi

phase "pack into $OUT"
python3 - "$STORE" "$OUT" "$MODELS" <<'PY'
import gzip, json, shutil, sqlite3, sys
from pathlib import Path
from robustbench_dyn.checkpoints import read_manifest
store, out, models = sys.argv[1], Path(sys.argv[2]), sys.argv[3].split(",")
man = read_manifest()
(out / "r50_manifest.json").write_text(json.dumps({"format": 1, "models": {m: man[m] for m in models if m in man}},
                                                  indent=1) + "\n")
for m in models:
    e = man.get(m)
    if not e:
        print(f"{m}: no checkpoint")
        continue
    mt = e["metrics"]
    print(f"{m}: clean {mt['clean_acc']:.4f} (n={mt['clean_n']}), epochs {e['epochs']}, stopped_early "
          f"{e['stopped_early']}, train {e['train_time_s']}s, {e['bytes'] / 1e6:.0f} MB {e.get('storage_dtype')}, "
          f"audit {(e.get('audit') or {}).get('verdict')}, sha256 {e['sha256'][:12]}")
if Path(store).exists():
    src, con = sqlite3.connect(store), sqlite3.connect("/tmp/r50_store.sqlite")
    src.backup(con)
    src.close()
    con.execute("UPDATE examples SET detail = NULL WHERE run_id NOT IN "
                "(SELECT run_id FROM runs WHERE attack IN ('pgd', 'pgd-ce') AND abs(eps - 8.0 / 255) < 1e-9)")
    con.commit()
    con.execute("VACUUM")
    con.close()
    with open("/tmp/r50_store.sqlite", "rb") as f, gzip.open(out / "r50_store.sqlite.gz", "wb", 6) as g:
        shutil.copyfileobj(f, g)
PY
cp "$RUNS/r50_calibration.json" "$OUT/" 2>/dev/null
tar czf "$OUT/r50_logs.tgz" "$RUNS"/*.log "$RUNS"/*.json "$RUNS"/*.err 2>/dev/null
if [ -f "$OUT/r50_store.sqlite.gz" ] && [ "$(stat -c %s "$OUT/r50_store.sqlite.gz")" -gt 16000000 ]; then
  split -b 15M "$OUT/r50_store.sqlite.gz" "$OUT/r50_store.sqlite.gz.part" && rm "$OUT/r50_store.sqlite.gz"
fi
ls -la "$OUT"
phase "done (checkpoints stay on the machine: models/resnet50_*.safetensors, too large to return)"
}

main 2>&1 | tee -a "$OUT/r50.log"
exit "${PIPESTATUS[0]}"
