"""Measure run-to-run nondeterminism: the same evaluation R times, each into its own store, compared
row by row.

    python scripts/determinism.py --device cpu                      # expect 0 differing rows
    python scripts/determinism.py --device cuda --n 2000            # the GPU's size of nondeterminism
    python scripts/determinism.py --device cuda --deterministic     # with torch's deterministic algorithms

For every model and attack it prints, per run, clean and robust accuracy, and against run 1: the
example rows that differ at all, the rows whose adversarial prediction (hence robust accuracy)
differs, and the largest absolute difference of every float column (perturbation norm, attention
entropy/KL/TV, gate density, MACs). ``--json`` writes the same as JSON.

Sources of GPU nondeterminism: cuDNN may pick a different convolution algorithm per run (benchmark
mode is off here, but heuristics still depend on the workspace), and the backward kernels of
convolutions and of index_add/scatter (DyConv's grouped path) accumulate with atomics in an
unspecified order. A last-bit difference in an input gradient changes sign(grad) of a PGD step only
where the gradient is ~0, but once an iterate differs the difference can grow over the steps, so
it is measured here instead of assumed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FLOAT_COLUMNS = ("perturbation", "attn_entropy_clean", "attn_entropy_adv", "attn_kl", "attn_tv", "dominant_changed",
                 "gate_density_clean", "gate_density_adv", "macs_clean", "macs_adv")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="static_at,dyconv_k4_at,odconv_k4_at,gated_at,dyconv_k4,gated",
                   help="comma-separated registry names")
    p.add_argument("--attacks", default="pgd", help="comma-separated attacks (default pgd: PGD-20, random start)")
    p.add_argument("--eps", default="8/255")
    p.add_argument("--n", type=int, default=None, help="examples (default: 200 on a CPU, 2000 on a GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms(True), cudnn.deterministic (sets CUBLAS_WORKSPACE_CONFIG)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def compare(a, b) -> dict:
    """Differences of example table b against a (same runs, same indices)."""
    a = a.sort_values(["attack", "eps", "idx"]).reset_index(drop=True)
    b = b.sort_values(["attack", "eps", "idx"]).reset_index(drop=True)
    assert len(a) == len(b) and (a.idx.values == b.idx.values).all()
    cols = [c for c in a.columns if c not in ("run_id",)]
    differs = np.zeros(len(a), dtype=bool)
    for c in cols:
        x, y = a[c].to_numpy(), b[c].to_numpy()
        same = (x == y) | (a[c].isna().to_numpy() & b[c].isna().to_numpy())
        differs |= ~same
    out = {"rows": int(len(a)), "rows_differing": int(differs.sum()),
           "adv_pred_differing": int((a.adv_pred.to_numpy() != b.adv_pred.to_numpy()).sum()),
           "robust_differing": int((a.broken_at.isna().to_numpy() != b.broken_at.isna().to_numpy()).sum())}
    for c in FLOAT_COLUMNS:
        if c in a and a[c].notna().any():
            out[f"max_abs_{c}"] = float(np.nanmax(np.abs(a[c].to_numpy(float) - b[c].to_numpy(float))))
    return out


def main(argv=None) -> int:
    args = parse(argv)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    from robustbench_dyn.evaluation import evaluate, load_data, resolve_device
    from robustbench_dyn.store import ResultsStore

    dev = resolve_device(args.device)
    data, _ = load_data()
    n = args.n or (2000 if dev.type == "cuda" else 200)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    print(f"# determinism: {args.runs} runs of {attacks} at eps {args.eps} on {models}; n={n}, seed={args.seed}, "
          f"{data.label}; device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}); "
          f"torch {torch.__version__}; deterministic algorithms: {args.deterministic}", flush=True)
    report = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            tables, accs = [], []
            for r in range(args.runs):
                t0 = time.perf_counter()
                with ResultsStore(Path(tmp) / f"{model}_{r}.sqlite") as st:
                    res = [evaluate(model, a, args.eps, n=n, seed=args.seed, data=data, device=dev,
                                    batch_size=args.batch_size, store=st) for a in attacks]
                    tables.append(st.examples_df())
                accs.append({a: (x.clean_acc, x.robust_acc[x.grid[-1]]) for a, x in zip(attacks, res, strict=True)})
                print(f"{model:<12} run {r + 1}: " + "  ".join(f"{a}: clean {100 * c:.2f}% robust {100 * v:.2f}%"
                                                              for a, (c, v) in accs[-1].items()) +
                      f"  ({time.perf_counter() - t0:.1f} s)", flush=True)
            for r in range(1, args.runs):
                d = compare(tables[0], tables[r])
                report.append({"model": model, "run": r + 1, "vs": 1, **d, "acc": accs[r]})
                print(f"{model:<12} run {r + 1} vs 1: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else
                                                                   f"{k}={v}" for k, v in d.items()), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "device": str(dev),
                                         "torch": torch.__version__, "results": report}, indent=1))
    identical = all(r["rows_differing"] == 0 for r in report)
    print(f"# {'bit-identical' if identical else 'NOT bit-identical'} across {args.runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
