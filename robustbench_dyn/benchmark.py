"""``benchmark()``: the RobustBench-style one call for any ``nn.Module`` mapping [0, 1] images to logits.

>>> from robustbench_dyn import benchmark
>>> df = benchmark(my_model, attacks=["fgsm", "pgd"], eps=[2 / 255, 8 / 255], n=1000, store="results/mine.sqlite")
>>> df[["attack", "eps_label", "clean_acc", "robust_acc", "robust_ci_low", "robust_ci_high"]]

The model is checked once against the model contract (:mod:`robustbench_dyn.contract`) before any attack
runs, then every attack sweeps the eps grid on the same seeded subset of the CIFAR-10 test split
(:func:`~robustbench_dyn.evaluation.run_sweep`: ascending eps, attacks only the examples still robust,
re-checked in fp32 eval mode). With ``store`` the per-example outcomes and the attention/gate statistics go
to the results store (resumable), so ``robustdyn report --store PATH`` includes the model next to the zoo.
The model's train/eval mode is restored afterwards; it is moved to ``device`` (as RobustBench does).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .attacks import get_attack
from .data import CIFAR10Data
from .errors import ConfigError
from .evaluation import (
    default_batch_size,
    default_n,
    eps_label,
    load_data,
    parse_eps,
    parse_eps_grid,
    resolve_device,
    resolve_model,
    run_sweep,
)
from .stats import wilson  # noqa: F401  (re-exported)
from .store import ResultsStore

#: The columns of the DataFrame :func:`benchmark` returns, in order.
COLUMNS = ["model", "attack", "norm", "eps", "eps_label", "clean_acc", "clean_ci_low", "clean_ci_high", "robust_acc",
           "robust_ci_low", "robust_ci_high", "n", "data", "device", "seconds", "checkpoint_sha256"]




def _attack_list(attacks) -> list[tuple[str, dict]]:
    """``'pgd'``, ``['fgsm', 'pgd']``, ``[('pgd', {'steps': 50})]`` or ``{'pgd': {'steps': 50}}``."""
    if isinstance(attacks, str):
        items = [(attacks, {})]
    elif isinstance(attacks, Mapping):
        items = [(k, dict(v or {})) for k, v in attacks.items()]
    elif isinstance(attacks, Sequence):
        items = [(a, {}) if isinstance(a, str) else (a[0], dict(a[1] or {})) for a in attacks]
    else:
        raise ConfigError(f"attacks={attacks!r} is not an attack name or a list of them",
                          "pass e.g. attacks=['fgsm', 'pgd'] or {'pgd': {'steps': 50}}")
    if not items:
        raise ConfigError("no attacks given", "pass e.g. attacks=['fgsm', 'pgd']")
    return items


def _grid(eps, norm: str) -> list[float]:
    if eps is None:
        return [8 / 255 if norm == "Linf" else 0.5]
    if isinstance(eps, (list, tuple)) or (isinstance(eps, str) and "," in eps):
        return parse_eps_grid(eps)
    return [parse_eps(eps)]


def benchmark(model: nn.Module | str, attacks: str | Sequence | Mapping = ("fgsm", "pgd"),
              eps: float | str | Sequence | None = None, n: int | None = None, *, data_dir=None,
              device: str | torch.device | None = None, store: ResultsStore | str | Path | None = None,
              seed: int = 0, batch_size: int | None = None, name: str | None = None,
              data: CIFAR10Data | None = None, progress: bool = False) -> pd.DataFrame:
    """Clean and robust accuracy of ``model`` under each of ``attacks`` at each ``eps``: one row per
    (attack, eps) with the columns :data:`COLUMNS` (accuracies in [0, 1], Wilson 95% intervals).

    ``model``: an ``nn.Module`` mapping (N, 3, 32, 32) images in [0, 1] to (N, 10) logits (checked, see
    :mod:`robustbench_dyn.contract`); a registry name or ``file.py:factory`` work too. ``attacks``: names
    (``robustdyn evaluate --help``), or ``{name: settings}``. ``eps``: one value (``8/255``), a grid, or None
    for 8/255 (Linf) and 0.5 (L2). ``n``: a seeded subset of the test split (default: all of it on a GPU,
    500 on a CPU). ``store``: a results store path or :class:`ResultsStore` to write (and resume); None keeps
    everything in memory. ``name``: the model's name in the table and the store (default: its class name).
    """
    dev = resolve_device(device)
    plan = []
    for attack, settings in _attack_list(attacks):
        entry = get_attack(attack)
        settings = entry.settings(**settings)  # fail on bad settings before loading anything
        plan.append((attack, settings, _grid(eps, entry.cls.norm_of(settings))))
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigError(f"name={name!r} is not a model name", "pass a non-empty string, e.g. name='my_dyconv'")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}", "pass e.g. batch_size=100")
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, nn.Module) else []
    try:
        net, info = resolve_model(model, device=dev, attack=[a for a, _, _ in plan])
        if name is not None:
            info = dataclasses.replace(info, name=name.strip())
        if data is None:
            data, messages = load_data(data_dir)
            for m in messages:
                warnings.warn(m, UserWarning, stacklevel=2)
        if n is None:
            n = default_n(dev, len(data))
        data.subset(n, seed)  # validates n and seed before the store is opened
        bs = batch_size or default_batch_size(dev)
        own = isinstance(store, (str, Path))
        st = ResultsStore(store) if own else store
        try:
            rows = []
            for attack, settings, grid in plan:
                res = _run(net, info, data, attack, settings, grid, n=n, seed=seed, bs=bs, dev=dev, store=st,
                           progress=progress)
                rows += _rows(res, info)
        finally:
            if own:
                st.close()
    finally:
        for m, training in modes:
            m.training = training
    df = pd.DataFrame(rows, columns=COLUMNS)
    clean = float(df.clean_acc.iloc[0])
    if int(df.n.iloc[0]) >= 50 and clean <= 0.15:
        warnings.warn(f"{info.name}: clean accuracy {100 * clean:.1f}% is at chance level (10%): is the model "
                      "trained on CIFAR-10, and does it expect images in [0, 1] with the normalisation inside?",
                      UserWarning, stacklevel=2)
    return df


def _run(net, info, data, attack, settings, grid, *, n, seed, bs, dev, store, progress):
    if not progress:
        return run_sweep(net, info, data, attack, grid, settings=settings, n=n, seed=seed, batch_size=bs, device=dev,
                         store=store)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task(f"{info.name} · {attack}", total=n)
        return run_sweep(net, info, data, attack, grid, settings=settings, n=n, seed=seed, batch_size=bs, device=dev,
                         store=store, progress=lambda d, t: bar.update(task, completed=d, total=t))


def _rows(res, info) -> list[dict]:
    n = res.n
    c_lo, c_hi = wilson(round(res.clean_acc * n), n)
    out = []
    for e in res.grid:
        acc = res.robust_acc[e]
        lo, hi = wilson(round(acc * n), n)
        out.append({"model": info.name, "attack": res.attack, "norm": res.norm, "eps": e,
                    "eps_label": eps_label(e, res.norm), "clean_acc": res.clean_acc, "clean_ci_low": c_lo,
                    "clean_ci_high": c_hi, "robust_acc": acc, "robust_ci_low": lo, "robust_ci_high": hi, "n": n,
                    "data": res.dataset.get("label", ""), "device": res.device, "seconds": res.seconds,
                    "checkpoint_sha256": info.checkpoint_sha256})
    return out
