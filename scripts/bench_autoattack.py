"""Bench 4 -- AutoAttack (version standard) wall time on the adversarially trained ResNet-20s.

    python scripts/bench_autoattack.py --device cuda --out bench/     # N=1000 per model on a GPU
    python scripts/bench_autoattack.py --device cpu                   # CPU: N=8, minutes

AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square 5000 queries; Linf eps 8/255) through the
registry's ``autoattack`` (pyautoattack, device passed explicitly, seed 0) on the same seeded
N test images for each ``_at`` model, in one batch of up to ``--batch-size`` images. The later
attacks only run on the examples still robust, so the time grows with the robust accuracy:
that is why the adversarially trained models are the expensive ones. Reported: wall seconds
(device synchronised), seconds per 1000 images, the time extrapolated to the 10k test set
(linear in N, labelled as such), clean and robust accuracy (fp32 predictions on the returned
examples).

``--quick`` runs ``version custom`` with APGD-CE only on 1 image of static_at (a smoke test of
the path: the standard version takes minutes on a CPU even for a few images).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_all as B  # noqa: E402
import torch  # noqa: E402

NAME = "bench_autoattack"
TITLE = "AutoAttack (standard, Linf 8/255): wall time on the adversarially trained models"


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default=None,
                   help="models (default cuda: static_at,dyconv_k4_at,odconv_k4_at,gated_at; cpu: static_at; "
                        "quick: static_at)")
    p.add_argument("--version", default=None, help="standard | rand | custom (default standard; quick custom)")
    p.add_argument("--attacks", default=None, help="custom version: comma-separated (quick: apgd-ce)")
    p.add_argument("--batch-size", type=int, default=None, help="images per AutoAttack call (default cuda 1000, cpu n)")


def build_parser() -> argparse.ArgumentParser:
    return B.common_parser(__doc__.split("\n\n")[0], _args)


def run(args: argparse.Namespace, ctx: B.Context) -> dict:
    from robustbench_dyn.attacks import make_attack

    dev = ctx.device
    cuda = dev.type == "cuda"
    n = B.n_for(args, dev, cuda=1000, cpu=8, quick=1, total=len(ctx.data))
    version = args.version or ("custom" if args.quick else "standard")
    attacks = args.attacks.split(",") if args.attacks else (["apgd-ce"] if version == "custom" else [])
    if version != "custom":
        attacks = []
    models = args.models or ("static_at" if args.quick or not cuda else
                             "static_at,dyconv_k4_at,odconv_k4_at,gated_at")
    names = [m.strip() for m in models.split(",") if m.strip()]
    batch = args.batch_size or (1000 if cuda else n)
    settings = {"version": version, "seed": 0, **({"attacks": attacks} if attacks else {})}
    idx = ctx.data.subset(n, args.seed)
    x, y = ctx.data.tensors(idx, device=dev)
    rows, skipped, notes = [], [], []
    for name in names:
        if ctx.over(20 if rows else 10):  # AutoAttack standard: ~40-90 s per model at N=1000 on an H100
            skipped.append(name)
            continue
        row = {"model": name, "n": n, "version": version, "attacks": attacks or None}
        rows.append(row)
        try:
            model = ctx.model(name)
            if cuda:  # warm-up outside the timer: lazy init, cuDNN heuristics (a short APGD-CE on a few images)
                make_attack("autoattack", model, B.EPS_8, device=dev, version="custom", attacks=["apgd-ce"],
                            seed=0)(x[:16], y[:16])

            def work(model=model):
                correct = torch.zeros((), dtype=torch.long, device=dev)
                clean = torch.zeros((), dtype=torch.long, device=dev)
                for s in range(0, n, batch):
                    xb, yb = x[s:s + batch], y[s:s + batch]
                    atk = make_attack("autoattack", model, B.EPS_8, device=dev, **settings)
                    xa = atk(xb, yb)
                    B.check_eval(model, "the autoattack adapter", notes)
                    with torch.no_grad():
                        correct += (model(xa).argmax(1) == yb).sum()
                        clean += (model(xb).argmax(1) == yb).sum()
                return clean.item() / n, correct.item() / n

            (clean_acc, rob), secs = B.timed(work, dev)
            row.update({"seconds": secs, "s_per_1000": secs * 1000 / n,
                        "seconds_10k_extrapolated": secs * B.TEST_SET / n, "clean_acc": clean_acc, "robust_acc": rob})
        except Exception as e:  # noqa: BLE001 - one model failing is recorded, the others run
            row["error"] = f"{type(e).__name__}: {e}"
    md_rows = [[r["model"], r["n"], r.get("seconds"), r.get("s_per_1000"), r.get("seconds_10k_extrapolated"),
                None if r.get("clean_acc") is None else r["clean_acc"] * 100,
                None if r.get("robust_acc") is None else r["robust_acc"] * 100, r.get("error", "")] for r in rows]
    total = sum(r.get("seconds") or 0.0 for r in rows)
    extra = [f"version {version}{' ' + str(attacks) if attacks else ''}, Linf eps 8/255, seed 0, N={n} seeded test "
             f"images (seed {args.seed}), batch {batch}; time = the AutoAttack call(s) + fp32 re-check, device "
             f"synchronised, after a warm-up",
             "10k column: **extrapolated** (seconds x 10,000 / N); AutoAttack's later stages run only on the examples "
             "still robust, so the time follows the robust accuracy"]
    if n < 1000 and cuda:
        extra.append(f"N={n} (below the 1000 of the brief: chosen to fit the time budget or limited by the data)")
    if skipped:
        extra.append(f"skipped (time budget): {', '.join(skipped)}")
    extra += [f"**warning**: {w}" for w in dict.fromkeys(notes)]
    md = "\n".join([B.header(TITLE, ctx, extra), "",
                    B.md_table(["model", "N", "seconds", "s / 1000 images", "10k s (extrapolated)", "clean acc %",
                                "robust acc %", "error"], md_rows), "",
                    f"Total over the models measured: {total:.1f} s"])
    return {"bench": "autoattack", "n": n, "version": version, "attacks": attacks, "batch": batch, "rows": rows,
            "total_s": total, "skipped": skipped, "warnings": list(dict.fromkeys(notes)), "markdown": md}


def main(argv=None) -> dict:
    return B.bench_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
