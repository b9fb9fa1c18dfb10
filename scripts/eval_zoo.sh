#!/usr/bin/env bash
# Evaluate the shipped ResNet-20 zoo, run the threat-model studies and the sanity checks, and build the
# report with `robustdyn report` -- on a GPU machine (DEVICE=cuda, one call of under 10 minutes) or on
# the CPU (DEVICE=cpu: smaller n, an hour or so on 2 cores).
#
#   DEVICE=cpu bash scripts/eval_zoo.sh                 # what produced the committed reports/
#   DEVICE=cuda bash scripts/eval_zoo.sh                # on the device tool's H100 (see below)
#
# Phases (each under its own time limit; the store is resumable, so a phase cut short keeps what it
# finished, a rerun completes it, and the report says what is missing):
#   1. headline: FGSM and PGD-20 at 8/255 on N_HEAD (1000) seeded test images   attacks/zoo_headline.toml
#   2. AutoAttack (standard, 8/255) on N_AA, adversarially trained models first  attacks/zoo_autoattack.toml
#   3. curves: FGSM/PGD-20 Linf grids and the PGD-20 L2 grid on N_CURVES         attacks/zoo_curves.toml
#   4. sanity checks; 5. threat models (energy, attention, BPDA/EOT, transfer); 6. benchmarks (BENCH=1)
#   7. report into REPORT_OUT (default reports/)
# On the GPU machine: carry .gpu_eval/ (a folder in .git/info/exclude) holding the CIFAR-10 test pack,
# ../shared/data/cifar10/unpack.py and site/ with torchattacks and pyautoattack (pure Python, copied from
# a local venv without pyautoattack's 44 MB examples/); $OUT then receives the logs, the report and a
# copy of the store (per-example detail JSON kept for PGD-20 at 8/255 only).
set -uo pipefail
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-eval_out}
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then
  D_HEAD=1000 D_CURVES=1000 D_AA=1000 D_CHECK=200 D_THREATS=1000 D_SQ=1000
  D_T_HEAD=120 D_T_CURVES=150 D_T_AA=110 D_T_CHECK=15 D_T_THREATS=60 D_T_REPORT=60
else
  D_HEAD=1000 D_CURVES=200 D_AA=100 D_CHECK=64 D_THREATS=100 D_SQ=300
  D_T_HEAD=2400 D_T_CURVES=2400 D_T_AA=1800 D_T_CHECK=300 D_T_THREATS=1200 D_T_REPORT=300
fi
N_HEAD=${N_HEAD:-$D_HEAD} N_CURVES=${N_CURVES:-$D_CURVES} N_AA=${N_AA:-$D_AA} N_CHECK=${N_CHECK:-$D_CHECK}
N_THREATS=${N_THREATS:-$D_THREATS}
if [ "$DEVICE" = cuda ] && [ -d .gpu_eval ]; then
  export PYTHONPATH="$PWD/.gpu_eval/site${PYTHONPATH:+:$PYTHONPATH}"
  python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
  python3 .gpu_eval/unpack.py /tmp/cifar10
  export ROBUSTDYN_DATA=${ROBUSTDYN_DATA:-/tmp/cifar10}
fi
export ROBUSTDYN_OFFLINE=1 PYTHONUNBUFFERED=1
export ROBUSTDYN_STORE=${ROBUSTDYN_STORE:-results/zoo.sqlite}
mkdir -p "$(dirname "$ROBUSTDYN_STORE")"
python3 -c "import torch, torchattacks, pyautoattack; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', '| torchattacks', torchattacks.__version__)"
ZOO=${ZOO:-static,dyconv_k2,dyconv_k3,dyconv_k4,dyconv_k5,odconv_k1,odconv_k4,gated,static_at,dyconv_k4_at,odconv_k4_at,gated_at}
ZOO_AA=${ZOO_AA:-static_at,dyconv_k4_at,odconv_k4_at,gated_at,static,dyconv_k2,dyconv_k3,dyconv_k4,dyconv_k5,odconv_k1,odconv_k4,gated}
CHECK_MODELS=${CHECK_MODELS:-static dyconv_k4 odconv_k4 gated static_at gated_at}
THREAT_MODELS=${THREAT_MODELS:-static,dyconv_k4,odconv_k4,gated,gated_at}
REPORT_OUT=${REPORT_OUT:-reports}
SECONDS=0
phase() { echo "== [$SECONDS s] $*"; }

phase "1. headline: FGSM / PGD-20 at 8/255, n=$N_HEAD"
timeout "${T_HEAD:-$D_T_HEAD}" robustdyn sweep --suite attacks/zoo_headline.toml --models "$ZOO" --device "$DEVICE" \
  --n "$N_HEAD" 2>&1 | tee "$OUT/sweep_headline.log" | tail -20
phase "2. AutoAttack standard at 8/255, n=$N_AA"
timeout "${T_AA:-$D_T_AA}" robustdyn sweep --suite attacks/zoo_autoattack.toml --models "$ZOO_AA" --device "$DEVICE" \
  --n "$N_AA" 2>&1 | tee "$OUT/sweep_aa.log" | tail -30
phase "3. curves: FGSM / PGD-20 Linf grids, PGD-20 L2 grid, n=$N_CURVES"
timeout "${T_CURVES:-$D_T_CURVES}" robustdyn sweep --suite attacks/zoo_curves.toml --models "$ZOO" --device "$DEVICE" \
  --n "$N_CURVES" 2>&1 | tee "$OUT/sweep_curves.log" | tail -40
phase "4. sanity checks, n=$N_CHECK"
for m in $CHECK_MODELS; do
  timeout "${T_CHECK:-$D_T_CHECK}" robustdyn check --model "$m" --n "$N_CHECK" --square-queries "${SQ:-$D_SQ}" \
    --device "$DEVICE" 2>&1 | tail -9
done | tee "$OUT/checks.log"
phase "5. dynamic-aware threat models, n=$N_THREATS"
timeout "${T_THREATS:-$D_T_THREATS}" robustdyn threats --models "$THREAT_MODELS" --n "$N_THREATS" --device "$DEVICE" \
  2>&1 | tee "$OUT/threats.log" | tail -40
if [ "${BENCH:-0}" = 1 ]; then
  phase "6. benchmarks"
  timeout "${T_BENCH:-80}" python3 scripts/bench_all.py --device "$DEVICE" --out "$OUT/bench" 2>&1 | tee "$OUT/bench.log" | tail -60
fi
phase "7. report -> $REPORT_OUT"
timeout "${T_REPORT:-$D_T_REPORT}" robustdyn report --store "$ROBUSTDYN_STORE" --out "$REPORT_OUT" 2>&1 | tail -15
if [ "$DEVICE" = cuda ]; then
  phase "8. pack into $OUT"
  tar czf "$OUT/report.tgz" "$REPORT_OUT"
  python3 - "$ROBUSTDYN_STORE" <<'PY'
# The full store (per-example detail at every eps) is too large to bring back; keep a copy whose
# per-layer detail JSON is kept for PGD-20 at 8/255 only (every scalar column is kept everywhere).
import gzip, shutil, sqlite3, sys
src, con = sqlite3.connect(sys.argv[1]), sqlite3.connect("/tmp/store.sqlite")
src.backup(con)
src.close()
con.execute("UPDATE examples SET detail = NULL WHERE run_id NOT IN "
            "(SELECT run_id FROM runs WHERE attack = 'pgd' AND abs(eps - 8.0 / 255) < 1e-9)")
con.commit(); con.execute("VACUUM"); con.close()
with open("/tmp/store.sqlite", "rb") as f, gzip.open("/tmp/store.sqlite.gz", "wb", 6) as g:
    shutil.copyfileobj(f, g)
PY
  split -b 15M /tmp/store.sqlite.gz "$OUT/store.sqlite.gz.part" && ls -la "$OUT"
fi
phase "done"
