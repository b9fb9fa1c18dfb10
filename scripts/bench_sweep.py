"""Bench 2 -- sweep pruning: an 8-point Linf eps grid, pruned (the engine) vs naive.

    python scripts/bench_sweep.py --device cuda --out bench/
    python scripts/bench_sweep.py --device cpu --n 32 --models static,static_at

Grid: 0, 1, 2, 4, 6, 8, 12, 16 /255. Both sides run the same attack with the same settings
(default: our ``pgd-ce``, PGD-20, step eps/4, random start, fp32, no early stop, so that the only
difference is the pruning) at the same batch size:

* **pruned** -- :func:`robustbench_dyn.evaluation.run_sweep`: one clean pass, then the grid in
  ascending order, each eps attacking only the examples still robust (clean-correct and not broken
  at a smaller eps). An example broken at eps_i counts as broken at every larger eps (same
  adversarial example), so robust accuracy is monotone and never weaker than attacking each eps
  alone;
* **naive** -- every eps > 0 attacks every example independently (a loop over eps around the
  usual attack loop; eps = 0 is one clean pass);
* **pruned + early stop** (extra row, ``--no-early-stop-row`` drops it) -- the engine with
  ``early_stop`` as well: broken examples also leave the batch within an eps.

Gradient evaluations are counted exactly (examples x forward+backward, by a counting wrapper around
the model); forward-only examples (clean passes, final checks, probes) are counted separately.
Goal: pruned / naive gradient evaluations <= 0.35 for standard-trained models and <= 0.7 for
adversarially trained ones, with pruned robust accuracy <= naive at every eps.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_all as B  # noqa: E402
import torch  # noqa: E402

NAME = "bench_sweep"
TITLE = "Sweep pruning: 8-point Linf eps grid, pruned (engine) vs naive (every eps attacks every example)"
GRID_255 = (0, 1, 2, 4, 6, 8, 12, 16)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default=None,
                   help="models (default cuda static,dyconv_k4,static_at; cpu and quick static,static_at)")
    p.add_argument("--attack", default="pgd-ce", help="registered attack on both sides (default pgd-ce)")
    p.add_argument("--steps", type=int, default=None, help="attack steps (default 20; quick 2)")
    p.add_argument("--settings", default="{}", help='extra attack settings as JSON, e.g. \'{"random_start": false}\'')
    p.add_argument("--batch-size", type=int, default=None, help="batch of both sides (default: the engine's)")
    p.add_argument("--no-early-stop-row", action="store_true", help="skip the 'pruned + early stop' row")


def build_parser() -> argparse.ArgumentParser:
    return B.common_parser(__doc__.split("\n\n")[0], _args)


def naive_sweep(model, data, attack: str, grid, settings: dict, n: int, seed: int, batch: int, device,
                notes: list[str] | None = None) -> dict:
    """Robust accuracy per eps with every eps > 0 attacking all n examples independently."""
    from robustbench_dyn.attacks import make_attack

    idx = data.subset(n, seed)
    acc = {}
    for eps in grid:
        correct = 0
        for s in range(0, len(idx), batch):
            x, y = data.tensors(idx[s:s + batch], device=device)
            if eps > 0:
                x = make_attack(attack, model, eps, device=device, **settings)(x, y)
                B.check_eval(model, f"attack {attack!r}", notes if notes is not None else [])
            with torch.no_grad():
                correct += int((model(x).argmax(1) == y).sum())
        acc[eps] = correct / len(idx)
    return acc


def run(args: argparse.Namespace, ctx: B.Context) -> dict:
    from robustbench_dyn.attacks import get_attack
    from robustbench_dyn.evaluation import default_batch_size, run_sweep

    dev = ctx.device
    n = B.n_for(args, dev, cuda=1000, cpu=24, quick=6, total=len(ctx.data))
    steps = args.steps or (2 if args.quick else 20)
    batch = args.batch_size or default_batch_size(dev)
    extra = json.loads(args.settings)
    settings = get_attack(args.attack).settings(steps=steps, **extra)  # validated, canonical
    grid = [k / 255 for k in GRID_255]
    labels = [f"{k}/255" if k else "0" for k in GRID_255]
    models = args.models or ("static,dyconv_k4,static_at" if dev.type == "cuda" and not args.quick
                             else "static,static_at")
    names = [m.strip() for m in models.split(",") if m.strip()]
    es_settings = {**settings, "early_stop": True} if "early_stop" in settings else None
    rows, skipped, notes = [], [], []
    for name in names:
        if ctx.over(2):
            skipped.append(name)
            continue
        model = ctx.model(name)
        counter = B.CountingModel(model)  # eval mode; check_eval records any library call leaving train mode
        if dev.type == "cuda":  # warm-up (lazy init, cuDNN heuristics) outside the timers
            run_sweep(counter, B.model_info(name, model), ctx.data, args.attack, grid[:2],
                      settings={**settings, "steps": 1}, n=min(n, 64), seed=args.seed, batch_size=batch, device=dev)
        entry = {"model": name, "adversarially_trained": name.endswith("_at"), "n": n}
        sides = [("naive", None), ("pruned", settings)]
        if es_settings is not None and not args.no_early_stop_row:
            sides.append(("pruned+early_stop", es_settings))
        for side, s in sides:
            if ctx.over(1) and side != "naive":
                skipped.append(f"{name}:{side}")
                continue
            counter.reset()
            torch.manual_seed(args.seed)
            if side == "naive":
                acc, secs = B.timed(lambda c=counter: naive_sweep(c, ctx.data, args.attack, grid, settings, n,
                                                                  args.seed, batch, dev, notes), dev)
            else:
                info = B.model_info(name, model)
                res, secs = B.timed(lambda c=counter, s=s, info=info: run_sweep(
                    c, info, ctx.data, args.attack, grid, settings=s, n=n, seed=args.seed, batch_size=batch,
                    device=dev), dev)
                acc = dict(res.robust_acc)
                B.check_eval(counter, "run_sweep", notes)
            entry[side] = {"seconds": secs, "grad_evals": counter.grad_examples,
                           "forward_only_examples": counter.nograd_examples,
                           "robust_acc": {lab: acc[e] for lab, e in zip(labels, grid, strict=True)}}
        nv = entry["naive"]
        for side in ("pruned", "pruned+early_stop"):
            if side not in entry:
                continue
            e = entry[side]
            e["grad_evals_ratio"] = e["grad_evals"] / nv["grad_evals"] if nv["grad_evals"] else None
            e["time_ratio"] = e["seconds"] / nv["seconds"]
            diffs = {lab: e["robust_acc"][lab] - nv["robust_acc"][lab] for lab in labels}
            e["max_acc_diff_pt"] = max(diffs.values()) * 100
            e["never_weaker"] = all(d <= 1e-12 for d in diffs.values())
        if "pruned" in entry:
            goal = 0.7 if entry["adversarially_trained"] else 0.35
            p = entry["pruned"]
            entry["goal_grad_ratio"] = goal
            entry["meets_goal"] = bool(p["grad_evals_ratio"] is not None and p["grad_evals_ratio"] <= goal
                                       and p["never_weaker"])
        rows.append(entry)

    md_rows, acc_rows = [], []
    for e in rows:
        nv = e["naive"]
        md_rows.append([e["model"], "naive", nv["grad_evals"], 1.0, nv["seconds"], 1.0, "-", "-", "-"])
        for side in ("pruned", "pruned+early_stop"):
            if side in e:
                p = e[side]
                md_rows.append([e["model"], side, p["grad_evals"], p["grad_evals_ratio"], p["seconds"],
                                p["time_ratio"], p["max_acc_diff_pt"], p["never_weaker"],
                                (f"<= {e['goal_grad_ratio']}: {'met' if e['meets_goal'] else 'missed'}"
                                 if side == "pruned" else "-")])
        for side in ("naive", "pruned", "pruned+early_stop"):
            if side in e:
                acc_rows.append([e["model"], side, *[e[side]["robust_acc"][lab] * 100 for lab in labels]])
    extra_lines = [f"attack `{args.attack}` {json.dumps(settings, sort_keys=True)} on both sides; n={n} "
                   f"(seeded subset, seed {args.seed}); batch {batch}; grid {', '.join(labels)}",
                   "ratios are pruned / naive (lower is better); max diff = max over eps of pruned - naive robust "
                   "accuracy in pt (<= 0: never weaker)"]
    if skipped:
        extra_lines.append(f"skipped (time budget): {', '.join(skipped)}")
    extra_lines += [f"**warning**: {w}" for w in dict.fromkeys(notes)]
    md = "\n".join([B.header(TITLE, ctx, extra_lines), "",
                    B.md_table(["model", "sweep", "grad evals", "vs naive", "seconds", "time vs naive",
                                "max diff pt", "never weaker", "goal (grad evals)"], md_rows), "",
                    "Robust accuracy (%) per eps:", "",
                    B.md_table(["model", "sweep", *labels], acc_rows)])
    return {"bench": "sweep", "n": n, "grid": labels, "attack": args.attack, "settings": settings, "batch": batch,
            "rows": rows, "skipped": skipped, "warnings": list(dict.fromkeys(notes)), "markdown": md}


def main(argv=None) -> dict:
    return B.bench_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
