"""bf16 autocast (``amp``) in ``pgd-ce`` with early stop: does it weaken the attack, and does the fp32
confirmation of breaks fix it? Side by side in one run, on the same examples and random starts:

* ``fp32``          pgd-ce, early stop, fp32 (the reference);
* ``amp-unconfirmed`` amp, early stop, breaks decided on bf16 logits alone (the behaviour before the
                     fix, reproduced by disabling ``LossPGD._confirm``);
* ``amp``           amp, early stop, every break confirmed by an fp32 forward (the library now).

Robust accuracy is always the fp32 prediction on the returned examples (the engine's rule).

    python scripts/bench_amp_confirm.py --device cpu --n 500
    python scripts/bench_amp_confirm.py --device cuda --n 10000
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="static,dyconv_k4,static_at,dyconv_k4_at")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--eps", default="8/255")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


@contextlib.contextmanager
def unconfirmed():
    from robustbench_dyn.attacks.pgd import LossPGD

    saved = LossPGD.__dict__["_confirm"]  # the staticmethod object itself
    LossPGD._confirm = staticmethod(lambda *a, **k: None)
    try:
        yield
    finally:
        LossPGD._confirm = saved


def main(argv=None) -> None:
    args = parse(argv)
    from robustbench_dyn.attacks import make_attack
    from robustbench_dyn.evaluation import load_data, parse_eps, resolve_device, seeded
    from robustbench_dyn.registry import load_model

    dev = resolve_device(args.device)
    eps = parse_eps(args.eps)
    data, _ = load_data()
    idx = data.subset(args.n, args.seed)
    x_all, y_all = data.tensors(idx, device=dev)
    variants = {"fp32": ({"amp": False}, contextlib.nullcontext), "amp-unconfirmed": ({"amp": True}, unconfirmed),
                "amp": ({"amp": True}, contextlib.nullcontext)}
    print(f"# pgd-ce, {args.steps} steps, step eps/4, random start, early stop; eps {args.eps}; n={len(idx)} "
          f"(seed {args.seed}), {data.label}; device {dev}; torch {torch.__version__}")
    print("| model | variant | robust acc % | vs fp32 (pt) | seconds | broken in bf16, robust in fp32 |")
    print("|---|---|---|---|---|---|")
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        model = load_model(name, device=dev).eval()
        with torch.no_grad():
            clean_ok = torch.cat([model(x_all[i:i + args.batch_size]).argmax(1) == y_all[i:i + args.batch_size]
                                  for i in range(0, len(idx), args.batch_size)])
        x, y = x_all[clean_ok], y_all[clean_ok]
        ref = None
        for label, (settings, ctx) in variants.items():
            atk = make_attack("pgd-ce", model, eps, device=dev, steps=args.steps, early_stop=True, **settings)
            t0 = time.perf_counter()
            outs = []
            with ctx():
                for i in range(0, len(x), args.batch_size):
                    with seeded(f"amp-bench:{args.seed}:{i}", dev):
                        outs.append(atk(x[i:i + args.batch_size], y[i:i + args.batch_size]))
            if dev.type == "cuda":
                torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            xa = torch.cat(outs)
            with torch.no_grad():
                p32 = torch.cat([model(xa[i:i + args.batch_size]).argmax(1)
                                 for i in range(0, len(xa), args.batch_size)])
                with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
                    p16 = torch.cat([model(xa[i:i + args.batch_size]).argmax(1)
                                     for i in range(0, len(xa), args.batch_size)])
            robust = (p32 == y).sum().item() / len(idx)  # over all n: clean-wrong examples count as broken
            ref = robust if ref is None else ref
            mismatch = ((p16 != y) & (p32 == y)).sum().item()
            print(f"| {name} | {label} | {100 * robust:.2f} | {100 * (robust - ref):+.2f} | {secs:.1f} | {mismatch} |",
                  flush=True)


if __name__ == "__main__":
    main()
