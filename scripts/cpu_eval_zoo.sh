#!/usr/bin/env bash
# Evaluate retrained zoo models on the CPU into the committed results-store pack, one model at a time, so a
# session can evaluate each checkpoint as soon as it lands (every step resumes from the store; rerunning
# the command continues where it stopped, and skips what is done).
#
#   bash scripts/cpu_eval_zoo.sh static dyconv_k4          # the given models, all steps
#   STEPS=clean,headline bash scripts/cpu_eval_zoo.sh gated # some steps only
#
# Per model (CIFAR-10 (JPEG copy) test set, seed 0):
#   clean      clean accuracy on all 10,000 test images (FGSM at eps 0: one forward pass each)
#   headline   attacks/zoo_v2.toml: FGSM, PGD-20 CE, PGD-20 DLR at 8/255, PGD-20 L2 at 0.5, n=2000
#   curves     attacks/zoo_curves.toml: FGSM / PGD-20 Linf 0..16/255, PGD-20 L2 0..1.0, n=1000
#   checks     gradient-masking sanity checks, n=200
#   aa         AutoAttack standard at 8/255: n=1000 for *_at models, n=200 for standard ones
#   corr       the 15 corruptions x 5 severities, n=2000
#   threats    energy / attention / BPDA-EOT studies of dynamic models, n=$N_THREATS (default 500)
#   transfer   PGD-20 8/255 transfer between a dynamic model and its static twin (static or static_at), both
#              ways, n=$N_THREATS
# The store is results/zoo.sqlite (unpacked from reports/results when absent); after every step it is
# packed back into reports/results (commit that folder). Logs: results/eval_MODEL.log. Two invocations may
# run side by side on different models. Each runs single-threaded unless THREADS says otherwise: beside a
# training run (or a second evaluation) on a 2-core CPU, a two-thread evaluation takes the training's core.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STORE=${ROBUSTDYN_STORE:-results/zoo.sqlite}
PACK=${PACK:-reports/results}
STEPS=${STEPS:-clean,headline,curves,checks,aa,corr,threats,transfer}
N_THREATS=${N_THREATS:-500}
DEVICE=${DEVICE:-cpu}
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
export ROBUSTDYN_OFFLINE=1 PYTHONUNBUFFERED=1 ROBUSTDYN_STORE=$STORE
mkdir -p "$(dirname "$STORE")"
if [ ! -f "$STORE" ] && [ -f "$PACK/PACK.json" ]; then
  robustdyn store unpack "$PACK" "$STORE" || exit 1
fi
has() { [[ ",$STEPS," == *",$1,"* ]]; }
# two evaluations may run side by side (one per core): the store takes concurrent writers (WAL), the pack is
# written by one at a time
pack() { flock "$(dirname "$STORE")/.pack.lock" robustdyn store pack "$STORE" "$PACK" | tail -1; }
for m in "$@"; do
  log="results/eval_$m.log"
  echo "== $m ($(date -u +%H:%M)) -> $log"
  {
    has clean && robustdyn evaluate --model "$m" --attack fgsm --eps 0 --n 10000 --device "$DEVICE" && pack
    has headline && robustdyn sweep --suite attacks/zoo_v2.toml --models "$m" --device "$DEVICE" && pack
    has curves && robustdyn sweep --suite attacks/zoo_curves.toml --models "$m" --device "$DEVICE" && pack
    has checks && robustdyn check --model "$m" --n 200 --device "$DEVICE" && pack
    if has aa; then
      n_aa=200; [[ "$m" == *_at ]] && n_aa=1000
      robustdyn sweep --suite attacks/zoo_autoattack.toml --models "$m" --n "$n_aa" --device "$DEVICE" && pack
    fi
    has corr && robustdyn evaluate --model "$m" --attack corruptions --n 2000 --device "$DEVICE" && pack
    if has threats && [[ "$m" != static* ]]; then
      robustdyn threats --models "$m" --studies energy,attention,adaptive --n "$N_THREATS" --device "$DEVICE" && pack
    fi
    if has transfer && [[ "$m" != static* ]]; then
      twin=static; [[ "$m" == *_at ]] && twin=static_at
      robustdyn threats --models "$twin,$m" --studies transfer --n "$N_THREATS" --device "$DEVICE" && pack
    fi
  } >> "$log" 2>&1
  grep -E '^(packed|error)' "$log" | tail -2
done
