"""Train the ``ts_*`` zoo on the CPU: several seeds per (dataset, variant), one seed's checkpoint committed.

    python scripts/train_ts.py --datasets gunpoint,arrowhead --variants static,dyconv_k4 --seeds 0,1,2

Phase 1 ``--seeds 0`` commits the checkpoints; phase 2 ``--seeds 1,2 --metrics-only`` adds more seeds'
accuracy to the committed entries (so evaluation can start after phase 1). Every seed's test accuracy goes
into the committed model's manifest entry (mean +- std over seeds); the
committed seed's checkpoint is stored compactly (int8 kernel banks, float16 rest; see
robustbench_dyn.timeseries.train) and its accuracy is measured after the storage round trip.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import torch

from robustbench_dyn import __version__
from robustbench_dyn.checkpoints import read_manifest, save_checkpoint, update_manifest
from robustbench_dyn.costs import count_params
from robustbench_dyn.dynamics import _COSTS
from robustbench_dyn.registry import create_model, get_spec
from robustbench_dyn.timeseries.data import DATASETS, load_timeseries
from robustbench_dyn.timeseries.registration import VARIANTS
from robustbench_dyn.timeseries.train import TSRecipe, _Tensors, accuracy, compact_tensors, load_compact, train_model


def add_seed_metrics(name: str, runs: list[dict], models_dir=None) -> None:
    """Merge more seeds' results into a committed entry (same checkpoint): seeds list, mean, std."""
    entry = read_manifest(models_dir).get(name)
    if entry is None:
        raise SystemExit(f"{name} has no committed checkpoint yet: train its commit seed first")
    m = entry["metrics"]
    by_seed = {s["seed"]: s for s in m["seeds"]}
    by_seed.update({s["seed"]: s for s in runs})
    m["seeds"] = [by_seed[k] for k in sorted(by_seed)]
    accs = np.array([s["test_acc"] for s in m["seeds"]])
    m["seeds_test_acc_mean"] = float(accs.mean())
    m["seeds_test_acc_std"] = float(accs.std(ddof=1)) if len(accs) > 1 else 0.0
    entry["wall_time_s"] = float(sum(s["seconds"] for s in m["seeds"]))
    update_manifest(name, entry, models_dir)
    print(f"{name}: seeds {sorted(by_seed)} {accs.mean():.4f} +- {m['seeds_test_acc_std']:.4f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--variants", default=",".join(v[0] for v in VARIANTS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--commit-seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models-dir", default=None)
    p.add_argument("--metrics-only", action="store_true",
                   help="train extra seeds and add their accuracy to the committed model's manifest entry "
                        "(the checkpoint is not touched)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",")]
    for key in a.datasets.split(","):
        tr, te = load_timeseries(key, "train"), load_timeseries(key, "test")
        for variant in a.variants.split(","):
            name = f"ts_{key}_{variant}"
            spec = get_spec(name)
            runs, committed = [], None
            for seed in seeds:
                torch.manual_seed(seed)
                model = create_model(name)
                r = TSRecipe(steps=a.steps, seed=seed)
                info = train_model(model, tr, r)
                acc = accuracy(model, te)
                runs.append({"seed": seed, "test_acc": acc, "train_acc": accuracy(model, tr), **info})
                print(f"{name} seed {seed}: test {acc:.4f} ({info['seconds']:.0f}s)", flush=True)
                if seed == a.commit_seed:
                    committed = (model, r)
            if committed is None and not a.metrics_only:
                raise SystemExit(f"--seeds {a.seeds} does not include the commit seed {a.commit_seed}")
            if a.metrics_only:
                add_seed_metrics(name, runs, a.models_dir)
                continue
            model, r = committed
            committed_acc = next(x["test_acc"] for x in runs if x["seed"] == a.commit_seed)
            tensors = compact_tensors(model)
            stored = load_compact(create_model(name), tensors)
            stored_acc = accuracy(stored, te)
            accs = np.array([x["test_acc"] for x in runs])
            entry = {
                "arch": spec.arch, "arch_kwargs": spec.arch_kwargs, "spec": spec.to_dict(),
                "recipe": {"trainer": "robustbench_dyn.timeseries.train", **r.to_dict()}, "seed": a.commit_seed,
                "dataset": {"id": te.id, "label": te.label, "digest": te.digest, "name": te.name,
                            "train_digest": tr.digest, "classes": list(te.classes), "n_train": len(tr),
                            "n_test": len(te), "preprocessing": "z-normalised per series and channel; "
                            "u = 0.5 + z / 25.5 (eps k/255 = k/10 std)"},
                "metrics": {"clean_acc": stored_acc, "clean_acc_fp32": committed_acc,
                            "seeds_test_acc_mean": float(accs.mean()), "seeds_test_acc_std": float(accs.std(ddof=1))
                            if len(accs) > 1 else 0.0, "seeds": runs},
                "storage": "int8 block-conv weights (per-output-channel scale folded into the next BatchNorm, "
                           "eps-exact), "
                           "float16 weights, float32 BatchNorm statistics; loads as float32",
                "params": count_params(model), "macs": int(_COSTS[model]["static"]),
                "device": "cpu", "wall_time_s": float(sum(x["seconds"] for x in runs)),
                "versions": {"robustbench_dyn": __version__, "torch": torch.__version__,
                             "python": sys.version.split()[0], "platform": platform.platform()},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            e = save_checkpoint(_Tensors(tensors), name, entry, a.models_dir)
            std = entry["metrics"]["seeds_test_acc_std"]
            print(f"{name}: saved {e['bytes'] / 1e6:.2f} MB; seeds {accs.mean():.4f} +- {std:.4f}; "
                  f"stored {stored_acc:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
