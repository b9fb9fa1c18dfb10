"""Bench 3 -- dynamic layers: forward and input-gradient throughput vs static ResNet-20 and vs a per-sample loop.

    python scripts/bench_layers.py --device cuda --out bench/      # batches 256 and 1024, fp32 and bf16
    python scripts/bench_layers.py --device cpu                    # batches 16 and 64, fp32

Models (trained checkpoints, eval mode): static ResNet-20, dyconv_k4 in both exact computations
(``dense``: K dense convs + weighted sum; ``grouped``: one grouped conv with the batch folded into
the groups), odconv_k4 (grouped) and gated ResNet-20 (hard gates at eval).

* ``forward``: ``model(x)`` under ``torch.no_grad()`` (prediction, verification);
* ``input-grad``: forward + cross-entropy + ``torch.autograd.grad`` w.r.t. the input -- one attack
  step (what PGD, FGSM and APGD spend their time on);
* precisions: fp32, and on CUDA bf16 autocast (the attacks' ``amp`` setting);
* the **per-sample loop reference** is what a naive user writes for per-example kernels: a Python
  loop over the batch calling the model on one image at a time (fp32).

Timing: device synchronised around each call, warm-up calls first, the median of the repeats.
Reported: images/s, the ratio to static ResNet-20 at the same batch/op/precision, and the ratio of
the batched fp32 throughput to the loop reference. Goal on the H100: dyconv_k4 input-grad >= 0.6x
static, odconv_k4 >= 0.5x, and every batched path >= 10x its loop reference.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_all as B  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

NAME = "bench_layers"
TITLE = "Dynamic layers: forward / input-gradient throughput vs static ResNet-20 and vs a per-sample loop"
CONFIGS = (("static", None), ("dyconv_k4", "dense"), ("dyconv_k4", "grouped"), ("odconv_k4", None), ("gated", None))
OPS = ("forward", "input-grad")


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batches", default=None, help="batch sizes (default cuda 256,1024; cpu 16,64; quick 8)")
    p.add_argument("--precisions", default=None, help="fp32,bf16 (default cuda fp32,bf16; cpu fp32)")
    p.add_argument("--loop-n", type=int, default=None, help="images in the per-sample loop (default cuda 32, cpu 8)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default cuda 7, cpu 3)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls (default cuda 2, cpu 1)")
    p.add_argument("--channels-last", action="store_true", help="channels_last parameters and inputs")
    p.add_argument("--models", default=None, help="subset of static,dyconv_k4,odconv_k4,gated")


def build_parser() -> argparse.ArgumentParser:
    return B.common_parser(__doc__.split("\n\n")[0], _args)


def _step(model, op: str, x: torch.Tensor, y: torch.Tensor, precision: str):
    """A closure doing one forward or one input-gradient step."""
    cast = (torch.autocast(device_type=x.device.type, dtype=torch.bfloat16) if precision == "bf16"
            else contextlib.nullcontext())
    if op == "forward":
        def fwd():
            with torch.no_grad(), cast:
                return model(x)
        return fwd

    def grad():
        xa = x.detach().requires_grad_(True)
        with cast:
            logits = model(xa)
        loss = F.cross_entropy(logits.float(), y)
        return torch.autograd.grad(loss, xa)[0]
    return grad


def _loop(model, op: str, x: torch.Tensor, y: torch.Tensor):
    """The naive per-sample reference: one image at a time through the model (fp32)."""
    def run():
        out = []
        for i in range(len(x)):
            out.append(_step(model, op, x[i:i + 1], y[i:i + 1], "fp32")())
        return out
    return run


def run(args: argparse.Namespace, ctx: B.Context) -> dict:
    from robustbench_dyn.training import to_channels_last

    dev = ctx.device
    cuda = dev.type == "cuda"
    if args.batches:
        batches = [int(b) for b in args.batches.split(",")]
    else:
        batches = [8] if args.quick else ([256, 1024] if cuda else [16, 64])
    if args.n is not None:  # --n caps the largest batch (images available)
        batches = [min(b, args.n) for b in batches]
    precisions = (args.precisions.split(",") if args.precisions else (["fp32", "bf16"] if cuda else ["fp32"]))
    loop_n = args.loop_n or (2 if args.quick else (32 if cuda else 8))
    repeats = args.repeats or (2 if args.quick else (7 if cuda else 3))
    warmup = args.warmup if args.warmup is not None else (2 if cuda else 1)
    max_s = 0.6 if cuda else 20.0  # stop repeating a slow measurement early (>= 3 repeats still)
    wanted = set(args.models.split(",")) if args.models else None
    configs = [c for c in CONFIGS if wanted is None or c[0] in wanted]
    if wanted is not None and "static" not in wanted:
        configs.insert(0, CONFIGS[0])  # the baseline of every ratio
    bmax = max(batches)
    idx = ctx.data.subset(min(bmax, len(ctx.data)), args.seed)
    x_all, y_all = ctx.data.tensors(idx, device=dev)
    if len(x_all) < bmax:  # fewer images than the batch (the bundled sample): tile, content does not matter
        reps = -(-bmax // len(x_all))
        x_all, y_all = x_all.repeat(reps, 1, 1, 1)[:bmax], y_all.repeat(reps)[:bmax]
    if args.channels_last:
        x_all = x_all.contiguous(memory_format=torch.channels_last)
    rows, loops, skipped = [], [], []
    for name, mode in configs:
        label = f"{name} ({mode})" if mode else name
        if ctx.over(1):
            skipped.append(label)
            continue
        model = ctx.model(name)
        if mode or args.channels_last:
            model = B.fresh_copy(model)
        if mode:
            from robustbench_dyn.layers import set_dyconv_mode

            set_dyconv_mode(model, mode)
        if args.channels_last:
            to_channels_last(model)
        model.eval()
        for op in OPS:
            for prec in precisions:
                for b in batches:
                    if ctx.over(0.5):
                        skipped.append(f"{label}:{op}:{prec}:{b}")
                        continue
                    x, y = x_all[:b], y_all[:b]
                    t = B.median_time(_step(model, op, x, y, prec), dev, warmup=warmup, repeats=repeats, max_s=max_s)
                    rows.append({"model": name, "mode": mode, "label": label, "op": op, "precision": prec,
                                 "batch": b, "seconds": t, "images_per_s": b / t})
            if ctx.over(0.5):
                skipped.append(f"{label}:{op}:loop")
                continue
            xl, yl = x_all[:loop_n], y_all[:loop_n]
            t = B.median_time(_loop(model, op, xl, yl), dev, warmup=1, repeats=3 if cuda else 1, max_s=max_s)
            loops.append({"model": name, "mode": mode, "label": label, "op": op, "precision": "fp32",
                          "loop_n": loop_n, "seconds": t, "images_per_s": loop_n / t})
        del model
    # ratios
    for r in rows:
        base = next((q for q in rows if q["model"] == "static" and q["op"] == r["op"]
                     and q["precision"] == r["precision"] and q["batch"] == r["batch"]), None)
        r["vs_static"] = r["images_per_s"] / base["images_per_s"] if base else None
        lp = next((q for q in loops if q["label"] == r["label"] and q["op"] == r["op"]), None)
        r["vs_loop"] = r["images_per_s"] / lp["images_per_s"] if lp else None
    verdicts = []
    if cuda:
        for name, goal in (("dyconv_k4", 0.6), ("odconv_k4", 0.5)):
            for prec in precisions:
                for b in batches:
                    cands = [r for r in rows if r["model"] == name and r["op"] == "input-grad"
                             and r["precision"] == prec and r["batch"] == b and r["vs_static"] is not None]
                    if cands:
                        best = max(cands, key=lambda r: r["vs_static"])
                        ok = best["vs_static"] >= goal
                        verdicts.append(f"{best['label']} input-grad {prec} batch {b}: {best['vs_static']:.2f}x static "
                                        f"({'meets' if ok else 'misses'} >= {goal}x)")
        big = [r for r in rows if r["batch"] == max(batches) and r["precision"] == "fp32" and r["vs_loop"]]
        if big:
            worst = min(big, key=lambda r: r["vs_loop"])
            verdicts.append(f"batched (fp32, batch {max(batches)}) vs per-sample loop: at least "
                            f"{worst['vs_loop']:.0f}x "
                            f"(worst: {worst['label']} {worst['op']}; goal >= 10x: "
                            f"{'met' if worst['vs_loop'] >= 10 else 'missed'})")
    # markdown: one row per model config, columns op x precision x batch
    cols = [(op, p, b) for op in OPS for p in precisions for b in batches]
    md_rows = []
    for name, mode in configs:
        label = f"{name} ({mode})" if mode else name
        cells = []
        for op, p, b in cols:
            r = next((q for q in rows if q["label"] == label and q["op"] == op and q["precision"] == p
                      and q["batch"] == b), None)
            cells.append("-" if r is None else f"{r['images_per_s']:,.0f} ({r['vs_static']:.2f}x)")
        lps = [next((q for q in loops if q["label"] == label and q["op"] == op), None) for op in OPS]
        cells += ["-" if q is None else f"{q['images_per_s']:,.1f}" for q in lps]
        for op in OPS:
            r = next((q for q in rows if q["label"] == label and q["op"] == op and q["precision"] == "fp32"
                      and q["batch"] == max(batches)), None)
            cells.append("-" if r is None or r["vs_loop"] is None else f"{r['vs_loop']:.0f}x")
        md_rows.append([label, *cells])
    columns = ["model", *[f"{op} {p} b{b} img/s (vs static)" for op, p, b in cols],
               *[f"loop {op} img/s" for op in OPS], *[f"b{max(batches)} fp32 {op} vs loop" for op in OPS]]
    extra = [f"median of up to {repeats} synchronised calls (at least 3; fewer once {max_s:g} s are spent) after "
             f"{warmup} warm-up call(s); loop reference: {loop_n} images "
             f"one at a time (fp32); channels_last: {args.channels_last}",
             "input-grad = forward + cross-entropy + gradient w.r.t. the input (one attack step); bf16 = autocast"]
    if skipped:
        extra.append(f"skipped (time budget): {', '.join(skipped)}")
    md = "\n".join([B.header(TITLE, ctx, extra), "", B.md_table(columns, md_rows), "", *[f"- {v}" for v in verdicts]])
    return {"bench": "layers", "batches": batches, "precisions": precisions, "rows": rows, "loop": loops,
            "verdicts": verdicts, "skipped": skipped, "markdown": md}


def main(argv=None) -> dict:
    return B.bench_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
