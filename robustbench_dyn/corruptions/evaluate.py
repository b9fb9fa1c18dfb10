"""Corruption accuracy (CIFAR-10-C protocol) into the results store, with the dynamics probes.

Each (corruption, severity) is a run of the ``runs`` table, like an attack at one eps:

* ``attack`` = ``'corruption'``, ``settings`` = ``{"corruption": NAME, "generator": "robustdyn-c1"}`` (plus
  ``"frost": SOURCE`` for frost), ``norm`` = ``'corruption'`` (so the adversarial sections, which read
  Linf/L2 runs, never see these rows), ``eps`` = the severity (1-5), ``eps_label`` = ``'s3'``, ``grid`` =
  ``[severity]`` (severities are evaluated independently: nothing carries over between them);
* one ``examples`` row per image: ``adv_pred`` is the prediction on the corrupted image; ``broken_at`` is
  NULL when it is correct (so the store's robust accuracy is the corruption accuracy), 0 when the
  clean and the corrupted image are both misclassified, else the severity; ``perturbation`` is the L2
  distance between the corrupted and the clean image; the dynamics columns compare clean and corrupted
  exactly as for an attack (``DynamicsProbe.compare``: attention KL / TV, dominant kernel, gate density,
  executed MACs).

Resuming: runs are keyed like attack runs (model, checkpoint, settings, severity, data digest, seed,
n); per chunk only the images missing from each run are corrupted and evaluated, and every chunk is
committed in one transaction. An image is corrupted from its own seed (subset seed, corruption, dataset
index), so the rows do not depend on batching or on what ran before.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data import CIFAR10Data, processing_order
from ..dynamics import DynamicsProbe
from ..errors import ConfigError, DataError
from ..evaluation import (
    ModelInfo,
    _EpsOutcome,
    default_batch_size,
    default_n,
    example_rows,
    load_data,
    resolve_device,
    resolve_model,
)
from ..store import ResultsStore, RunKey
from . import CORRUPTIONS, SEVERITIES, check_corruption, check_severity, corrupt, corruption_settings

ATTACK = "corruption"
NORM = "corruption"


def parse_selection(attack: str, severity: str | int | None = None) -> tuple[list[str], list[int]]:
    """``'corruptions'`` -> all 15; ``'corruption:fog'`` or ``'corruption:fog,snow'`` -> those; severity
    ``None`` -> 1-5, ``3`` or ``'1,3,5'`` -> those."""
    text = attack.strip()
    if text in ("corruptions", "corruption", "corruption:all"):
        names = list(CORRUPTIONS)
    elif text.startswith("corruption:"):
        names = [check_corruption(p.strip()) for p in text.split(":", 1)[1].split(",") if p.strip()]
        if not names:
            raise ConfigError(f"--attack {attack!r} names no corruption", "pass e.g. --attack corruption:fog")
    else:
        raise ConfigError(f"{attack!r} is not a corruption selection",
                          "pass --attack corruptions or --attack corruption:NAME")
    if severity is None:
        sevs = list(SEVERITIES)
    elif isinstance(severity, str):
        try:
            sevs = [int(p) for p in severity.split(",") if p.strip()]
        except ValueError:
            raise ConfigError(f"--severity {severity!r} is not a severity from 1 to 5", "pass e.g. --severity 3") \
                from None
        sevs = [check_severity(s) for s in sevs]
        if not sevs:
            raise ConfigError("--severity is empty", "pass e.g. --severity 3 or --severity 1,3,5")
    else:
        sevs = [check_severity(severity)]
    return list(dict.fromkeys(names)), sorted(set(sevs))


def is_corruption_attack(attack: str) -> bool:
    return attack.strip() in ("corruptions", "corruption", "corruption:all") or attack.strip().startswith(
        "corruption:")


@dataclass
class CorruptionResult:
    model: ModelInfo
    corruptions: list[str]
    severities: list[int]
    n: int
    seed: int
    dataset: dict
    device: str
    clean_acc: float
    acc: dict[tuple[str, int], float]  # (corruption, severity) -> accuracy
    seconds: float
    n_computed: int  # (image, corruption, severity) evaluations done in this call
    run_ids: dict[tuple[str, int], int] | None = None
    examples: pd.DataFrame | None = None  # without a store: every row, with corruption and severity columns
    timings: dict[str, float] = field(default_factory=dict)  # corruption -> seconds generating images

    def table(self) -> pd.DataFrame:
        """Accuracy per corruption (rows) and severity (columns), with the mean over severities."""
        t = pd.DataFrame([{"corruption": c, **{f"s{s}": self.acc[(c, s)] for s in self.severities}}
                          for c in self.corruptions])
        t["mean"] = t[[f"s{s}" for s in self.severities]].mean(axis=1)
        return t


def _settings_json(name: str) -> str:
    return json.dumps(corruption_settings(name), sort_keys=True, separators=(",", ":"))


def run_corruptions(model: nn.Module, info: ModelInfo, data: CIFAR10Data, corruptions: Sequence[str],
                    severities: Sequence[int], *, n: int | None = None, seed: int = 0, batch_size: int = 100,
                    device: str | torch.device = "cpu", store: ResultsStore | None = None,
                    progress: Callable[[int, int], None] | None = None) -> CorruptionResult:
    """Accuracy of ``model`` on a seeded subset of ``data`` under each corruption x severity (see module doc)."""
    started = time.perf_counter()
    device = resolve_device(device)
    names = [check_corruption(c) for c in corruptions]
    sevs = sorted({check_severity(s) for s in severities})
    if not names or not sevs:
        raise ConfigError("no corruption or no severity selected", "pass e.g. --attack corruptions")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}", "pass e.g. --batch-size 100")
    from .. import distributed

    if distributed.current().active:
        raise ConfigError("corruption evaluation does not shard across processes", "run it in one process")
    indices = data.subset(n, seed)
    n_eff = len(indices)
    if n_eff == 0:
        raise DataError("the data subset is empty", "pass --n 1 or more")
    model = model.to(device)
    probe = DynamicsProbe(model)
    configs = [(c, s) for c in names for s in sevs]
    run_ids: dict[tuple[str, int], int] | None = None
    missing: dict[tuple[str, int], set[int]] = {cfg: set(indices.tolist()) for cfg in configs}
    if store is not None:
        run_ids = {}
        for c, s in configs:
            key = RunKey(info.name, info.checkpoint_sha256, ATTACK, _settings_json(c), NORM, float(s),
                         json.dumps([float(s)]), data.id, data.digest, int(seed), int(n_eff))
            rid = store.run_id(key, untrained=info.untrained, eps_label=f"s{s}", dataset_label=data.label,
                               device=str(device))
            run_ids[(c, s)] = rid
            missing[(c, s)] -= set(store.done_indices(rid).tolist())
        store.upsert_model(model=info.name, checkpoint_sha256=info.checkpoint_sha256, untrained=info.untrained,
                           family=info.family, params=sum(p.numel() for p in model.parameters()),
                           macs=probe.static_macs(), layout=probe.layout(), source=info.source)
    todo = np.asarray([i for i in processing_order(indices, seed) if any(i in m for m in missing.values())],
                      dtype=np.int64)  # seeded shuffle: a run cut short has done an unbiased sample
    total = n_eff * len(configs)
    done = total - sum(len(m) for m in missing.values())
    if progress:
        progress(done, total)
    rows_mem: list[pd.DataFrame] = []
    timings = {c: 0.0 for c in names}
    computed = 0
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        x, y = data.tensors(chunk, device="cpu")
        labels = y.numpy()
        t0 = time.perf_counter()
        clean_all = probe.record(x.to(device))
        clean_s = time.perf_counter() - t0
        batches: dict[int, list[dict]] = {}
        seconds: dict[int, float] = {}
        for c, s in configs:
            sel = np.flatnonzero([int(i) in missing[(c, s)] for i in chunk])
            if sel.size == 0:
                continue
            t0 = time.perf_counter()
            xs = x[sel]
            xc = corrupt(xs, c, s, seed, ids=chunk[sel])
            t1 = time.perf_counter()
            timings[c] += t1 - t0
            clean = clean_all if sel.size == len(chunk) else clean_all.take(sel)
            rec = probe.record(xc.to(device))
            pred = rec.pred
            ys = labels[sel]
            broken = np.where(pred == ys, np.nan, np.where(clean.pred == ys, float(s), 0.0))
            dist = (xc - xs).flatten(1).norm(dim=1).numpy()
            out = _EpsOutcome(float(s), pred, broken, dist, rec, time.perf_counter() - t0)
            # the summary dynamics columns only: the per-layer detail (gate bitmasks, per-block densities) is
            # ~120 bytes of incompressible bits per image, x 75 runs, and no corruption figure reads it
            rows = example_rows(chunk[sel], ys, clean, out, probe, detail=False)
            if store is not None:
                rid = run_ids[(c, s)]
                batches[rid] = rows
                seconds[rid] = out.seconds + clean_s * sel.size / len(chunk) / len(configs)
            else:
                df = pd.DataFrame(rows)
                df.insert(0, "severity", s)
                df.insert(0, "corruption", c)
                rows_mem.append(df)
            computed += sel.size
            done += sel.size
        if store is not None and batches:
            store.add_examples(batches, seconds)
        for cfg in configs:
            missing[cfg] -= set(chunk.tolist())
        if progress:
            progress(done, total)
    examples = pd.concat(rows_mem, ignore_index=True) if rows_mem else None
    if store is not None:
        summ = {cfg: store.run_summary(rid) for cfg, rid in run_ids.items()}
        acc = {cfg: s["robust_acc"] for cfg, s in summ.items()}
        clean_acc = summ[configs[0]]["clean_acc"]
    else:
        acc = {(c, s): float(g.broken_at.isna().mean()) for (c, s), g in examples.groupby(["corruption", "severity"])}
        first = examples[(examples.corruption == names[0]) & (examples.severity == sevs[0])]
        clean_acc = float((first.clean_pred == first.label).mean())
    return CorruptionResult(info, names, sevs, n_eff, seed, data.describe(), str(device), clean_acc, acc,
                            time.perf_counter() - started, computed, run_ids, examples, timings)


def evaluate_corruptions(model: str | nn.Module, corruptions: str | Sequence[str] = "all",
                         severities: int | Sequence[int] | None = None, *, n: int | None = None, seed: int = 0,
                         data: CIFAR10Data | None = None, data_dir=None, device: str | torch.device | None = None,
                         batch_size: int | None = None, store: ResultsStore | str | None = None, models_dir=None,
                         untrained: bool = False,
                         progress: Callable[[int, int], None] | None = None) -> CorruptionResult:
    """Corruption accuracy of ``model`` (a registry name, ``file.py:factory`` or an nn.Module).

    >>> r = evaluate_corruptions("dyconv_k4", n=500, store="results/robustdyn.sqlite")
    >>> r.table()                                       # accuracy per corruption and severity
    """
    from pathlib import Path

    names = list(CORRUPTIONS) if corruptions in ("all", None) else \
        [corruptions] if isinstance(corruptions, str) else list(corruptions)
    names = [check_corruption(c) for c in names]
    sevs = list(SEVERITIES) if severities is None else \
        [severities] if isinstance(severities, (int, np.integer)) else list(severities)
    sevs = [check_severity(s) for s in sevs]
    dev = resolve_device(device)
    net, info = resolve_model(model, untrained=untrained, models_dir=models_dir, device=dev)
    if data is None:
        data, _ = load_data(data_dir)
    if n is None:
        n = default_n(dev, len(data))
    data.subset(n, seed)
    own = isinstance(store, (str, Path))
    st = ResultsStore(store) if own else store
    try:
        return run_corruptions(net, info, data, names, sevs, n=n, seed=seed,
                               batch_size=batch_size or default_batch_size(dev), device=dev, store=st,
                               progress=progress)
    finally:
        if own:
            st.close()
