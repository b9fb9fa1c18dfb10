#!/usr/bin/env python3
"""The recipe pilot: the fixed recipe (v2) vs the first zoo's (v1) at one short budget, and its table.

    python scripts/recipe_pilot.py train --out /work/pilot --epochs 10      # two single-thread queues
    python scripts/recipe_pilot.py table --out /work/pilot > reports/recipe_pilot.md

``train`` runs, with `scripts/train.py` (resumable), v2 on static, dyconv_k4, odconv_k4 and gated and v1 on
dyconv_k4 and gated (each into OUT/RECIPE/, a models folder with its own manifest, so the zoo's
`models/` is untouched), then a short v2 `_at` fine-tuning of the v2 dyconv_k4 (FGSM-RS, 2 epochs on 10k
images) that shows the final epoch kept at T = 1. ``table`` prints the markdown table (clean accuracy on
the full test set, the audit on 1000 seeded test images) from the manifests, and writes
``recipe_pilot.json`` next to it with every audit figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = [("v2", "gated", []), ("v1", "gated", []), ("v2", "dyconv_k4", []), ("v1", "dyconv_k4", []),
        ("v2", "odconv_k4", []), ("v2", "static", []),
        ("v2", "dyconv_k4_at", ["--epochs", "2", "--train-subset", "10000", "--init-from", "dyconv_k4",
                                "--lr", "0.05", "--final-pgd-n", "500", "--final-test-n", "2000"])]


def train(out: Path, epochs: int, data_dir: str | None, dry_run: bool = False) -> int:
    out.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    queues = [RUNS[0::2], RUNS[1::2]]

    def command(recipe, model, extra):
        cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--model", model, "--recipe", recipe,
               "--epochs", str(epochs), "--threads", "1", "--device", "cpu", "--models-dir", str(out / recipe),
               "--run-dir", str(out / "runs" / recipe / model)] + extra
        return cmd + (["--data-dir", data_dir] if data_dir else [])

    script = " ; ".join  # each queue runs its commands one after the other
    for q in queues:
        lines = [" ".join(command(*r)) + f" > {out / (r[1] + '_' + r[0] + '.log')} 2>&1" for r in q]
        if dry_run:
            print(script(lines))
            continue
        procs.append(subprocess.Popen(["bash", "-c", script(lines)]))
    return max((p.wait() for p in procs), default=0)


def table(out: Path) -> str:
    rows, full = [], {}
    for recipe in ("v1", "v2"):
        path = out / recipe / "manifest.json"
        if not path.exists():
            continue
        for name, e in json.loads(path.read_text())["models"].items():
            m, a = e.get("metrics", {}), e.get("audit") or {}
            at, g = a.get("attention") or {}, a.get("gates") or {}
            full[f"{name}@{recipe}"] = {"metrics": m, "audit": a, "recipe": e.get("recipe"),
                                        "epochs": e.get("epochs"), "device": e.get("device"),
                                        "train_time_s": e.get("train_time_s")}

            def f(v, fmt="{:.3f}"):
                return "" if v is None else fmt.format(v)
            rows.append(f"| {name} | {recipe} | {e.get('epochs')} | {100 * m['clean_acc']:.2f} ({m['clean_n']}) | "
                        f"{a.get('verdict', 'not audited')} | {f(at.get('entropy_ratio_mean'))} | "
                        f"{f(at.get('layers_entropy_low_frac'), '{:.0%}')} | "
                        f"{f(at.get('mean_replacement_loss'), '{:.1f}')} | "
                        f"{f(at.get('shuffle_loss'), '{:.1f}')} | {f(g.get('conditional_frac'), '{:.0%}')} | "
                        f"{f(g.get('majority_mask_loss'), '{:.1f}')} | {f(g.get('executed_macs_ratio'))} | "
                        f"{f(m.get('pgd20_acc'), '{:.3f}')} | {m.get('temperature', '')} | {m.get('kept_epoch', '')} |")
    (out / "recipe_pilot.json").write_text(json.dumps(full, indent=1))
    head = ("| model | recipe | epochs | clean % (n test) | audit | H/logK | layers H/logK<=0.85 | "
            "mean-repl. loss pt | shuffle loss pt | conditional gates | majority-mask loss pt | exec. MACs / full | "
            "PGD-20 | T | kept epoch |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    return head + "\n" + "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("train", "table"))
    p.add_argument("--out", default="runs/pilot", help="folder of the pilot's models, runs and logs")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--dry-run", action="store_true", help="print the two queues' commands only")
    a = p.parse_args(argv)
    if a.what == "train":
        return train(Path(a.out), a.epochs, a.data_dir, a.dry_run)
    print(table(Path(a.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
