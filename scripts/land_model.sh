#!/usr/bin/env bash
# Land a finished training run: commit models/NAME.safetensors with its manifest entry, drop the run's
# resumable state (runs/NAME) from git and disk, and print what landed (accuracy, audit, time).
#   bash scripts/land_model.sh gated
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
name=${1:?usage: land_model.sh NAME}
ckpt="models/$name.safetensors"
[ -f "$ckpt" ] || { echo "error: $ckpt does not exist: has the run finished? (see its log)" >&2; exit 1; }
summary=$(python - "$name" "$ckpt" <<'EOF'
import hashlib, json, sys
name, ckpt = sys.argv[1], sys.argv[2]
e = json.load(open("models/manifest.json"))["models"][name]
digest = hashlib.sha256(open(ckpt, "rb").read()).hexdigest()
if e.get("sha256") != digest:
    sys.exit(f"error: {ckpt} sha256 {digest[:12]} differs from the manifest's {str(e.get('sha256'))[:12]}")
m = e.get("metrics", {})
verdict = (e.get("audit") or {}).get("verdict", "no audit")
pgd = f", PGD-20 {100 * m['pgd20_acc']:.2f} % (n={m.get('pgd20_n')})" if "pgd20_acc" in m else ""
print(f"{name}: clean {100 * m['clean_acc']:.2f} % (n={m['clean_n']}, {m.get('clean_data', '?')})"
      f"{pgd}, audit {verdict}, {e['epochs']} epochs (kept {m.get('kept_epoch')}), "
      f"{e['train_time_s'] / 3600:.2f} h train time on {e['device']}, sha256 {digest[:12]}")
EOF
)
echo "$summary"
git add "$ckpt" models/manifest.json
if git ls-files --error-unmatch "runs/$name" >/dev/null 2>&1; then git rm -rq --cached "runs/$name"; fi
rm -rf "runs/$name"
git commit -qm "zoo v2: $summary" && git log --oneline -1
