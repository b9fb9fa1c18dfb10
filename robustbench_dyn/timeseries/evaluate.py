"""Evaluate the ``ts_*`` zoo: FGSM and PGD over an eps grid on every test series, the attention/gate shift
under attack, and the dynamism audit; written as compact CSV tables the report reads.

    python -m robustbench_dyn.timeseries.evaluate [--models 'ts_*'] [--out reports/timeseries]

eps is given in units of each series' standard deviation (``--eps-std 0.05,0.1,0.2,0.5``) and run in the
model-input units of the benchmark (u = 0.5 + z/25.5, so eps_u = eps_std / 25.5, i.e. k/10 std = k/255).
Files (the committed results store of this study):

* ``robustness.csv``: one row per model, attack and eps: clean and robust accuracy on all n test series
  (attack ``worst``: a series is robust only if neither FGSM nor PGD broke it),
  the mean attention shift KL(clean || adv) and total variation, the fraction of layers whose dominant
  kernel changed, and the gate density clean/adversarial (means over the attacked series);
* ``audit.csv``: :func:`robustbench_dyn.audit.audit_model` on the whole test set, one row per model;
* ``accuracy.csv``: per (dataset, variant) the test accuracy of every training seed (mean, std) from the
  manifest, the committed checkpoint's accuracy and the published FCN/ResNet figure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..checkpoints import checkpoint_present, read_manifest
from ..evaluation import evaluate
from ..registry import get_spec, list_models, load_model
from .data import eps_input, load_timeseries

DEFAULT_EPS_STD = (0.05, 0.1, 0.2, 0.5)
ATTACKS = ("fgsm", "pgd")
#: the per-series worst case over ATTACKS (a series counts as robust only if every attack failed on it)
WORST = "worst"
OUT = Path("reports") / "timeseries"

#: Published test accuracy (%) of the static reference networks, for the sets of the zoo:
#: Wang, Yan and Oates (2017), Table 1 (error rates, UCR 2015 archive, best-of-run), and Ismail Fawaz et al.
#: (2019), "Deep learning for time series classification: a review", Table (mean over 10 runs, UCR 2018).
#: BasicMotions (UEA multivariate) is in neither; Ruiz et al. (2021) report ResNet 100 % on it.
#: NOTE: transcribed without the tables at hand (offline); check them against the papers before citing.
PUBLISHED = {
    "GunPoint": {"Wang2017 FCN": 100.0, "Wang2017 ResNet": 99.3, "Fawaz2019 ResNet": 99.1},
    "ArrowHead": {"Fawaz2019 FCN": 84.3, "Fawaz2019 ResNet": 84.5},
    "ItalyPowerDemand": {"Wang2017 FCN": 97.0, "Wang2017 ResNet": 96.0, "Fawaz2019 ResNet": 96.3},
    "BasicMotions": {"Ruiz2021 ResNet": 100.0},
}


def _variant(name: str) -> str:
    spec = get_spec(name)
    return name.removeprefix("ts_").split("_", 1)[1] if spec.arch == "ts_resnet" else name


def accuracy_table(models_dir=None) -> pd.DataFrame:
    rows = []
    manifest = read_manifest(models_dir)
    for name in list_models("ts_*"):
        entry = manifest.get(name)
        if not entry:
            continue
        spec, m = get_spec(name), entry["metrics"]
        pub = PUBLISHED.get(spec.dataset, {})
        rows.append({"model": name, "dataset": spec.dataset, "variant": _variant(name),
                     "n_test": entry["dataset"]["n_test"], "seeds": len(m["seeds"]),
                     "acc_mean": m["seeds_test_acc_mean"], "acc_std": m["seeds_test_acc_std"],
                     "acc_seeds": json.dumps([round(s["test_acc"], 4) for s in m["seeds"]]),
                     "committed_seed": entry["seed"], "committed_acc": m["clean_acc"],
                     "committed_acc_fp32": m["clean_acc_fp32"], "checkpoint_bytes": entry.get("bytes"),
                     "published": "; ".join(f"{k} {v:.1f}" for k, v in pub.items()),
                     "published_resnet": next((v for k, v in pub.items() if "ResNet" in k), np.nan)})
    return pd.DataFrame(rows)


def _shift_means(df: pd.DataFrame) -> dict:
    out = {}
    for col in ("attn_kl", "attn_tv", "dominant_changed", "gate_density_clean", "gate_density_adv",
                "macs_clean", "macs_adv"):
        out[col] = float(pd.to_numeric(df[col], errors="coerce").mean()) if col in df else np.nan
    return out


def evaluate_model(name: str, eps_std=DEFAULT_EPS_STD, attacks=ATTACKS, models_dir=None, progress=print) -> tuple:
    """(robustness rows, audit row) of one committed ``ts_*`` model on all its test series."""
    from ..audit import summary_row

    spec = get_spec(name)
    data = load_timeseries(spec.dataset, "test")
    grid = sorted({eps_input(e) for e in eps_std})
    rows, survives = [], {}
    for attack in attacks:
        res = evaluate(name, attack, list(grid), n=len(data), data=data, device="cpu", batch_size=len(data),
                       store=None, models_dir=models_dir)
        ex = res.examples
        for e in res.grid:
            sub = ex[ex.eps == e]
            attacked = sub[sub.clean_pred == sub.label]  # shifts over the series the attack ran on
            ok = (sub.clean_pred == sub.label) & (sub.adv_pred == sub.label)
            survives[e] = survives.get(e, pd.Series(True, index=sub.idx.to_numpy())) & ok.set_axis(sub.idx.to_numpy())
            rows.append({"model": name, "dataset": spec.dataset, "variant": _variant(name), "attack": attack,
                         "eps_input": e, "eps_std": round(e * 25.5, 6), "n": res.n, "clean_acc": res.clean_acc,
                         "robust_acc": res.robust_acc[e], "checkpoint_sha256": res.model.checkpoint_sha256,
                         "dataset_digest": data.digest, **_shift_means(attacked)})
        progress(f"{name} {attack}: clean {res.clean_acc:.3f} robust "
                 + ", ".join(f"{e * 25.5:g}std {a:.3f}" for e, a in res.robust_acc.items()))
    if len(attacks) > 1:  # per series: robust only if no attack broke it (the number to read; an attack that is
        # weaker than another at the same eps, e.g. PGD below FGSM, is a gradient-masking sign, see the report)
        for e, ok in survives.items():
            rows.append({**{k: v for k, v in rows[0].items() if k in ("model", "dataset", "variant", "n", "clean_acc",
                                                                    "checkpoint_sha256", "dataset_digest")},
                         "attack": WORST, "eps_input": e, "eps_std": round(e * 25.5, 6),
                         "robust_acc": float(ok.sum()) / len(data)})
    audit = audit_ts(name, models_dir=models_dir)
    arow = {"model": name, "dataset": spec.dataset, "variant": _variant(name), **summary_row(audit),
            "why": audit.get("why", "")}
    return rows, arow


def audit_ts(name: str, models_dir=None, seed: int = 0) -> dict:
    """:func:`robustbench_dyn.audit.audit_model` of a committed ``ts_*`` model on its whole test set, with the
    checkpoint and data named as :func:`robustbench_dyn.audit.audit_checkpoint` names them (manifest-ready)."""
    from ..audit import audit_model

    spec = get_spec(name)
    data = load_timeseries(spec.dataset, "test")
    model = load_model(name, models_dir=models_dir)
    x, y = data.tensors()
    torch.manual_seed(seed)
    res = audit_model(model, x, y, batch_size=len(x))
    res.update({"model": name, "checkpoint_sha256": read_manifest(models_dir).get(name, {}).get("sha256"),
                "data": data.label, "data_digest": data.digest,
                "subset_seed": seed, "device": "cpu"})
    return res


def evaluate_zoo(pattern: str = "ts_*", out: Path = OUT, eps_std=DEFAULT_EPS_STD, models_dir=None,
                 progress=print) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rob_path, aud_path = out / "robustness.csv", out / "audit.csv"
    rob = pd.read_csv(rob_path) if rob_path.exists() else pd.DataFrame()
    aud = pd.read_csv(aud_path) if aud_path.exists() else pd.DataFrame()
    for name in list_models(pattern):
        if get_spec(name).arch != "ts_resnet" or not checkpoint_present(name, models_dir):
            continue
        sha = read_manifest(models_dir).get(name, {}).get("sha256")
        if len(rob) and len(aud) and "checkpoint_sha256" in rob and (aud.model == name).any() and \
                set(rob[(rob.model == name) & (rob.checkpoint_sha256 == sha)].attack) >= {*ATTACKS, WORST}:
            progress(f"{name}: done for this checkpoint (in {rob_path}), skipped")
            continue
        rows, arow = evaluate_model(name, eps_std, models_dir=models_dir, progress=progress)
        rob = pd.concat([rob[rob.model != name] if len(rob) else rob, pd.DataFrame(rows)], ignore_index=True)
        aud = pd.concat([aud[aud.model != name] if len(aud) else aud, pd.DataFrame([arow])], ignore_index=True)
        rob.to_csv(rob_path, index=False, float_format="%.6g")  # after each model: resumable, partial is usable
        aud.to_csv(aud_path, index=False, float_format="%.6g")
    accuracy_table(models_dir).to_csv(out / "accuracy.csv", index=False, float_format="%.6g")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Evaluate the ts_* zoo (FGSM/PGD over eps, shifts, audit).")
    p.add_argument("--models", default="ts_*")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--eps-std", default=",".join(map(str, DEFAULT_EPS_STD)))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--accuracy-only", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.accuracy_only:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        accuracy_table().to_csv(Path(a.out) / "accuracy.csv", index=False, float_format="%.6g")
        return 0
    evaluate_zoo(a.models, Path(a.out), [float(e) for e in a.eps_std.split(",")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
