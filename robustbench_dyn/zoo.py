"""The zoo table behind `robustdyn list`: registry x manifest, with params and MACs measured."""

from __future__ import annotations

from functools import cache

import pandas as pd

from .checkpoints import checkpoint_present, default_models_dir, read_manifest
from .costs import count_macs, count_params
from .registry import create_model, get_spec, list_models


@cache
def model_cost(name: str) -> tuple[int, int]:
    """(params, MACs) of a registered architecture, measured once per process."""
    m = create_model(name)
    return count_params(m), count_macs(m, getattr(m, "input_size", (1, 3, 32, 32)))  # series models: (1, C, L)


def audit_label(spec, entry: dict) -> str:
    """The dynamism audit's verdict for the `audit` column: 'dynamic', 'STATIC' (a dynamic architecture
    that behaves statically: every table marks it), 'static' for static convolutions, 'STATIC? not audited'
    when the manifest has no audit (treated as static until audited)."""
    if spec.conv == "static" and not spec.gated:
        return "static"
    audit = (entry or {}).get("audit")
    if not audit:
        return "STATIC? not audited" if entry else ""
    return "dynamic" if audit.get("verdict") == "dynamic" else "STATIC"


def zoo_table(pattern: str = "*", models_dir=None) -> pd.DataFrame:
    mdir = models_dir or default_models_dir()
    manifest = read_manifest(mdir)
    rows = []
    for name in list_models(pattern):
        spec = get_spec(name)
        entry = manifest.get(name, {})
        if entry.get("params") and entry.get("macs"):
            params, macs = entry["params"], entry["macs"]
        else:
            params, macs = model_cost(name)
        metrics = entry.get("metrics", {})
        clean = metrics.get("clean_acc")
        mean_macs = metrics.get("mean_executed_macs")
        rows.append({
            "name": name,
            "family": spec.family,
            "depth": spec.depth,
            "K": spec.K,
            "training": spec.training,
            "params (M)": f"{params / 1e6:.3f}",
            "MACs (M)": f"{macs / 1e6:.2f}" + (f" [{mean_macs / 1e6:.2f}]" if mean_macs else ""),
            "checkpoint": "yes" if checkpoint_present(name, mdir) else "no",
            "clean acc (%)": f"{100 * clean:.2f}" if clean is not None else "",
            "audit": audit_label(spec, entry),
            "data": entry.get("dataset", {}).get("label", "") if entry else "",
        })
    return pd.DataFrame(rows)
