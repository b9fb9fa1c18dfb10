"""Robust accuracy over an eps grid, per-example outcomes and dynamics, written to the results store.

The engine (:func:`run_sweep`) works on batches ("chunks") of the seeded data subset, taken in the seeded
order of :func:`~robustbench_dyn.data.processing_order` (not index order: the test split is sorted by class
over most of its range, so a run stopped early would otherwise have seen a few classes). For each chunk it

1. runs the clean forward pass through a :class:`~robustbench_dyn.dynamics.DynamicsProbe` (fp32, eval
   mode): clean predictions and clean attention/gate statistics;
2. walks the eps grid in ascending order, attacking only the examples still robust (clean-correct
   and not broken at a smaller eps). An adversarial example found at eps_i lies in every larger
   ball, so the example counts as broken at every eps_j > eps_i with that same example: robust
   accuracy is monotone in eps by construction. eps = 0 is the clean accuracy;
3. re-evaluates every returned adversarial example in fp32 with the model in eval mode (the probe
   forward), after the attack verified it lies in [0, 1] and in the eps ball: the reported robust
   accuracy is the accuracy on these saved examples;
4. writes one row per example and eps (one run per eps) in a single transaction.

Each chunk and eps is attacked under its own RNG seed derived from (subset seed, first index of the
chunk, eps), inside ``torch.random.fork_rng``, so results do not depend on what ran before, and a
sweep interrupted and resumed produces the same rows as an uninterrupted one. Resuming: the runs
are looked up by their key; indices already stored in every run of the grid are skipped.

:func:`evaluate` is the one-call entry point (a model name, a module or ``file.py:factory``; data
loading; defaults for n, batch size and device; the store).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import distributed
from .attacks import get_attack, perturbation_norm
from .data import CIFAR10Data, load_cifar10, processing_order
from .dynamics import DynamicsProbe, ProbeRecord
from .errors import ConfigError, DataError
from .store import SAME_AS_BROKEN_AT, ResultsStore, RunKey, encode_detail, round_sig, vector_indices

#: Default number of examples on a CPU, so that ``robustdyn evaluate --model dyconv_k4 --attack pgd``
#: (PGD-20; ~86% of the examples clean-correct, hence attacked) finishes in about a minute on an idle
#: 2-core x86 CPU. Measured there: n=400 in 39.8 s wall (35.6 s attacking and probing, DyConv then in
#: its "dense" mode; "auto" now picks the 3.4x faster "grouped" on a CPU), i.e. <= 0.09 s per example.
#: On a GPU the default is the
#: whole test set (10,000 examples: 9 s on an H100).
DEFAULT_CPU_N = 500
DEFAULT_BATCH = {"cpu": 100, "cuda": 1000}

# ------------------------------------------------------------------------------------ eps, device

_FRACTION = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*/\s*([0-9]*\.?[0-9]+)\s*$")


def parse_eps(value: str | float | int) -> float:
    """An epsilon from ``8/255``, ``0.031`` or a number; must lie in [0, 1] (images are in [0, 1])."""
    if isinstance(value, bool):
        raise ConfigError(f"cannot parse eps {value!r}", "write it as a number (0.031) or a fraction (8/255)")
    if isinstance(value, (int, float)):
        eps = float(value)
    elif isinstance(value, str):
        text = value.strip()
        m = _FRACTION.match(text)
        try:
            if m:
                den = float(m.group(2))
                if den == 0:
                    raise ValueError
                eps = float(m.group(1)) / den
            else:
                eps = float(text)
        except ValueError:
            raise ConfigError(f"cannot parse eps {value!r}", "write it as a number (0.031) or a fraction (8/255)") \
                from None
    else:
        raise ConfigError(f"cannot parse eps {value!r}", "write it as a number (0.031) or a fraction (8/255)")
    if not math.isfinite(eps):
        raise ConfigError(f"eps {value!r} is not a finite number", "use e.g. 8/255")
    if eps < 0:
        raise ConfigError(f"eps {value!r} is negative", "use a value in [0, 1], e.g. 8/255")
    if eps > 1:
        raise ConfigError(f"eps {value!r} is larger than 1, but images are in [0, 1]", "use e.g. 8/255 or 0.5")
    return eps


def parse_eps_grid(values: str | Sequence[str | float]) -> list[float]:
    """A grid from ``'0,2/255,8/255'`` or a list; sorted ascending, duplicates removed."""
    items = [v for v in values.split(",") if v.strip()] if isinstance(values, str) else list(values)
    if not items:
        raise ConfigError("the eps grid is empty", "pass e.g. --eps-grid 0,2/255,8/255")
    return sorted({parse_eps(v) for v in items})


def eps_label(eps: float, norm: str = "Linf") -> str:
    """'8/255' (or '0.5/255') for Linf multiples of 0.5/255, else a short decimal ('0.5')."""
    if eps == 0:
        return "0"
    k = eps * 255
    if norm == "Linf" and abs(2 * k - round(2 * k)) < 1e-6:
        return f"{round(2 * k) / 2:g}/255"
    return f"{eps:.6g}"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' (None: cuda if available, else cpu). A CUDA request on a machine
    without a usable GPU is a ConfigError with the fix."""
    if device is None or str(device).lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(device).lower().strip()
    if text == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", text):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {text!r} was requested but this machine has no usable CUDA GPU "
                              f"(torch {torch.__version__}, CUDA build {torch.version.cuda})",
                              "use --device cpu (or run on a machine with an NVIDIA GPU)")
        d = torch.device(text)
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise ConfigError(f"device {text!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)",
                              "use --device cuda or cuda:0")
        return d
    raise ConfigError(f"unknown device {device!r}", "use --device cpu or --device cuda")


@contextlib.contextmanager
def seeded(key: str, device: torch.device):
    """Run under a torch RNG seeded from ``key`` (sha256), leaving the global RNG state untouched."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & (2 ** 63 - 1))
        yield


# ------------------------------------------------------------------------------------------ models

@dataclass(frozen=True)
class ModelInfo:
    """Who the evaluated model is: the store keys runs by (name, checkpoint_sha256)."""

    name: str
    checkpoint_sha256: str
    untrained: bool = False
    source: str = "registry"  # registry | untrained | file:PATH:FACTORY | module
    family: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name} (untrained)" if self.untrained else self.name


def state_sha256(model: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes and bytes): identifies weights without a file."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def _load_user_model(spec: str) -> tuple[nn.Module, ModelInfo]:
    path_text, _, factory = spec.rpartition(":")
    path = Path(path_text).expanduser()
    if not factory.isidentifier():
        raise ConfigError(f"--model {spec!r}: {factory!r} is not a function name", "use --model path/file.py:factory")
    if not path.is_file():
        raise ConfigError(f"--model {spec!r}: file {path} does not exist", "use --model path/file.py:factory")
    mod_name = f"robustdyn_user_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    try:
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        module_spec.loader.exec_module(module)
    except Exception as e:  # user code: any error becomes one line
        raise ConfigError(f"--model {spec!r}: importing {path} failed ({type(e).__name__}: {e})",
                          "fix the file so that `python FILE` runs") from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise ConfigError(f"--model {spec!r}: {path} has no function {factory!r}",
                          "define it, returning an nn.Module that maps [0, 1] images to logits")
    try:
        model = fn()
    except Exception as e:
        raise ConfigError(f"--model {spec!r}: {factory}() raised {type(e).__name__}: {e}", "fix the factory") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {spec!r}: {factory}() returned {type(model).__name__}, not an nn.Module",
                          "return the model (an nn.Module mapping [0, 1] images to logits)")
    return model, ModelInfo(f"{path.name}:{factory}", state_sha256(model), False, f"file:{path}:{factory}")


def is_user_model_spec(spec: str) -> bool:
    path, sep, factory = spec.rpartition(":")
    return bool(sep) and path.endswith(".py")


def needs_gradients(attacks: str | Sequence[str] | None) -> bool:
    """Whether any of ``attacks`` uses input gradients (None: assume so); ``square`` does not."""
    if attacks is None:
        return True
    names = [attacks] if isinstance(attacks, str) else list(attacks)
    return any(not getattr(get_attack(a).cls, "gradient_free", False) for a in names) or not names


def resolve_model(spec: str | nn.Module, *, untrained: bool = False, models_dir=None,
                  device: str | torch.device = "cpu", init_seed: int = 0,
                  attack: str | Sequence[str] | None = None) -> tuple[nn.Module, ModelInfo]:
    """The model (on ``device``, eval mode) and its identity, from

    * a registry name: its trained checkpoint (sha256 verified), or with ``untrained=True`` a random
      initialisation seeded by ``init_seed`` (smoke tests; labelled untrained everywhere);
    * ``path/file.py:factory``: imports the file and calls ``factory()`` (runs user code: opt-in);
    * an ``nn.Module``: used as is (its ``checkpoint_sha256`` attribute or the sha256 of its weights).

    Models of the last two kinds are checked against the model contract (:mod:`robustbench_dyn.contract`)
    first: a :class:`~robustbench_dyn.errors.ModelContractError` names any violation. ``attack``: the
    attack(s) that will run (gradient-free ones alone waive the gradient check).
    """
    from .registry import create_model, get_spec, load_model, resolve_name

    device = torch.device(device)
    if isinstance(spec, nn.Module):
        model = spec
        name = getattr(model, "checkpoint_name", None) or type(model).__name__
        sha = getattr(model, "checkpoint_sha256", None) or state_sha256(model)
        info = ModelInfo(name, sha, False, "module")
    elif is_user_model_spec(spec):
        model, info = _load_user_model(spec)
    else:
        name = resolve_name(spec)
        family = get_spec(name).family
        if untrained:
            with seeded(f"init:{init_seed}", torch.device("cpu")):
                model = create_model(name)
            info = ModelInfo(name, state_sha256(model), True, "untrained", family)
        else:
            model = load_model(name, models_dir=models_dir, device=device)
            info = ModelInfo(name, model.checkpoint_sha256, False, "registry", family)
    if info.source == "module" or info.source.startswith("file:"):
        from .contract import check_model_contract

        model, _ = check_model_contract(model, device=device, need_gradients=needs_gradients(attack),
                                        what=f"model {info.name}")
    return model.to(device).eval(), info


# -------------------------------------------------------------------------------------------- data

def load_data(data_dir=None, model: str | None = None) -> tuple[CIFAR10Data, list[str]]:
    """The test split of ``model``'s dataset (CIFAR-10 unless the model's registry spec has a
    ``data_provider``, e.g. the ``ts_*`` series models) and the warnings raised while finding it."""
    provider = _data_provider(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = provider("test", data_dir) if provider is not None else load_cifar10("test", data_dir)
    return data, [str(w.message) for w in caught]


def _data_provider(model: str | None):
    """The registry spec's ``data_provider`` (``(split, data_dir) -> data``) for a registered name, else None."""
    if not isinstance(model, str):
        return None
    from .errors import UnknownModelError
    from .registry import get_spec

    try:
        return getattr(get_spec(model), "data_provider", None)
    except UnknownModelError:
        return None


def default_n(device: torch.device, total: int) -> int:
    """Full test set on a GPU; :data:`DEFAULT_CPU_N` (about a minute of PGD-20) on a CPU."""
    return total if device.type == "cuda" else min(DEFAULT_CPU_N, total)


def default_batch_size(device: torch.device) -> int:
    return DEFAULT_BATCH.get(device.type, 100)


# ------------------------------------------------------------------------------------------ result

@dataclass
class SweepResult:
    """One model x one attack over an eps grid."""

    model: ModelInfo
    attack: str
    settings: dict[str, Any]
    norm: str
    grid: list[float]
    n: int
    seed: int
    dataset: dict
    device: str
    clean_acc: float
    robust_acc: dict[float, float]  # eps -> robust accuracy, ascending eps
    seconds: float  # wall time of this call
    duration_s: float  # attack + probe time recorded for the runs (summed over resumed sessions)
    indices: np.ndarray
    n_computed: int  # examples attacked in this call (the rest came from the store)
    run_ids: dict[float, int] | None = None
    examples: pd.DataFrame | None = None  # per example and eps (this call's rows; all rows without a store)
    x_adv: dict[float, torch.Tensor] | None = None  # keep_adv: the adversarial examples computed in this call
    x_adv_indices: np.ndarray | None = None

    def eps_labels(self) -> list[str]:
        return [eps_label(e, self.norm) for e in self.grid]

    def to_dict(self) -> dict:
        return {"model": self.model.name, "checkpoint_sha256": self.model.checkpoint_sha256,
                "untrained": self.model.untrained, "attack": self.attack, "settings": self.settings,
                "norm": self.norm, "n": self.n, "seed": self.seed, "dataset": self.dataset, "device": self.device,
                "clean_acc": self.clean_acc, "robust_acc": {eps_label(k, self.norm): v for k, v in
                                                            self.robust_acc.items()},
                "seconds": self.seconds, "run_ids": self.run_ids}


# -------------------------------------------------------------------------------------------- core

@dataclass
class _EpsOutcome:
    eps: float
    adv_pred: np.ndarray
    broken_at: np.ndarray
    perturbation: np.ndarray
    adv: ProbeRecord
    seconds: float
    x_adv: torch.Tensor | None = None


def _assign(rec: ProbeRecord, idx: np.ndarray, other: ProbeRecord) -> ProbeRecord:
    """A copy of ``rec`` with the examples at ``idx`` replaced by ``other``'s."""
    def put(a, b):
        if a is None:
            return None
        a = a.copy()
        a[idx] = b
        return a

    def each(xs, ys):
        return [put(a, b) for a, b in zip(xs, ys, strict=True)]

    return ProbeRecord(put(rec.logits, other.logits), each(rec.kernel, other.kernel), each(rec.spatial, other.spatial),
                       each(rec.gates, other.gates), rec.layers, rec.macs_fn, rec.static_macs)


def attack_chunk(model: nn.Module, probe: DynamicsProbe, attack: str, settings: dict, grid: Sequence[float],
                 x: torch.Tensor, y: torch.Tensor, *, seed_key: str, device: torch.device,
                 keep_adv: bool = False) -> tuple[ProbeRecord, list[_EpsOutcome]]:
    """Clean record and, for each eps of the ascending ``grid``, the outcome of attacking the survivors."""
    entry = get_attack(attack)
    norm = entry.cls.norm_of(settings)
    x, y = x.to(device), y.to(device)
    y_np = y.cpu().numpy()
    t0 = time.perf_counter()
    clean = probe.record(x)
    clean_seconds = time.perf_counter() - t0
    broken_at = np.where(clean.pred == y_np, np.nan, 0.0)
    adv = clean
    pert = np.zeros(len(x))
    x_cur = x.clone() if keep_adv else None
    outcomes = []
    for j, eps in enumerate(grid):
        t0 = time.perf_counter()
        alive = np.flatnonzero(np.isnan(broken_at))
        if eps > 0 and alive.size:
            idx_t = torch.as_tensor(alive, device=device)
            xs, ys = x[idx_t], y[idx_t]
            atk = entry.create(model, eps, device=device, **settings)
            with seeded(f"{seed_key}:{eps!r}", device):
                xa = atk(xs, ys)
            rec = probe.record(xa)  # fp32, eval mode: the reported prediction
            adv = _assign(adv, alive, rec)
            pert[alive] = perturbation_norm(xa, xs, norm).cpu().numpy()
            broken_at[alive[rec.pred != y_np[alive]]] = eps
            if keep_adv:
                x_cur[idx_t] = xa
        seconds = time.perf_counter() - t0 + (clean_seconds if j == 0 else 0.0)
        outcomes.append(_EpsOutcome(eps, adv.pred.copy(), broken_at.copy(), pert.copy(), adv, seconds,
                                    x_cur.detach().cpu().clone() if keep_adv else None))
    return clean, outcomes


def _nan_to_none(a: np.ndarray) -> list:
    return [None if (v is None or (isinstance(v, float) and math.isnan(v))) else v for v in a.tolist()]


def _sig_list(a: np.ndarray) -> list:
    return [round_sig(float(v)) for v in np.asarray(a, dtype=np.float64)]


def example_rows(indices: np.ndarray, labels: np.ndarray, clean: ProbeRecord, out: _EpsOutcome,
                 probe: DynamicsProbe, *, vectors: set[int] | None = None, detail: bool = True,
                 refer_earlier: bool = False) -> list[dict]:
    """Store rows (see :mod:`robustbench_dyn.store`) for one chunk at one eps. ``vectors``: the indices whose
    attention and gate vectors go into ``detail`` (None: all); ``detail=False`` leaves the per-layer detail out;
    ``refer_earlier``: an example broken at a smaller eps of the grid (same adversarial example, same detail) gets
    :data:`~robustbench_dyn.store.SAME_AS_BROKEN_AT` instead of a copy, unless its vectors are kept here."""
    adv = out.adv
    shift = probe.compare(clean, adv)
    n = len(indices)
    cols: dict[str, list] = {
        "idx": [int(i) for i in indices], "label": [int(v) for v in labels],
        "clean_pred": clean.pred.tolist(), "adv_pred": out.adv_pred.tolist(),
        "broken_at": _nan_to_none(out.broken_at.astype(float)), "perturbation": out.perturbation.tolist(),
        "macs_clean": clean.macs().tolist(), "macs_adv": adv.macs().tolist(),
    }
    none = [None] * n
    if probe.has_attention:
        cols["attn_entropy_clean"] = _sig_list(clean.entropy_mean())  # store.ROUNDED_COLUMNS
        cols["attn_entropy_adv"] = _sig_list(adv.entropy_mean())
        cols["attn_kl"] = _sig_list(shift.kl_mean())
        cols["attn_tv"] = _sig_list(shift.tv_mean())
        cols["dominant_kernel_clean"] = clean.dominant_overall().tolist()
        cols["dominant_kernel_adv"] = adv.dominant_overall().tolist()
        cols["dominant_changed"] = shift.dominant_changed_frac().tolist()
    if probe.has_gates:
        cols["gate_density_clean"] = clean.density_mean().tolist()
        cols["gate_density_adv"] = adv.density_mean().tolist()
    details = none
    if detail and (probe.has_attention or probe.has_gates):
        H_c, H_a = clean.entropy(), adv.entropy()
        D_c, D_a = clean.dominant(), adv.dominant()
        V_c, V_a = clean.vectors(), adv.vectors()
        G_c, G_a = clean.density(), adv.density()
        details = []
        for i in range(n):
            kw: dict = {}
            keep = vectors is None or int(indices[i]) in vectors
            if probe.has_attention:
                kw.update(entropy=(H_c[i], H_a[i]), kl=shift.kl[i], tv=shift.tv[i], dominant=(D_c[i], D_a[i]),
                          attn=(V_c[i], V_a[i]) if keep else None)
            if probe.has_gates:
                kw.update(density=(G_c[i], G_a[i]),
                          gates=([g[i] for g in clean.gates], [g[i] for g in adv.gates]) if keep else None)
            b = out.broken_at[i]
            if refer_earlier and not keep and 0 < b < out.eps:
                details.append(SAME_AS_BROKEN_AT)
            else:
                details.append(encode_detail(**kw))
    cols["detail"] = details
    keys = list(cols)
    return [{k: cols[k][i] for k in keys} for i in range(n)]


def run_sweep(model: nn.Module, info: ModelInfo, data: CIFAR10Data, attack: str, grid: Sequence[float], *,
              settings: dict | None = None, n: int | None = None, seed: int = 0, batch_size: int = 100,
              device: str | torch.device = "cpu", store: ResultsStore | None = None, keep_adv: bool = False,
              progress: Callable[[int, int], None] | None = None) -> SweepResult:
    """Attack ``model`` on a seeded subset of ``data`` over the ascending eps ``grid`` (see module docstring).

    With a ``store`` every chunk is committed as it finishes and already stored examples are skipped
    (resume). ``progress(done, total)`` is called after each chunk (done counts stored examples too).
    """
    started = time.perf_counter()
    device = resolve_device(device)
    entry = get_attack(attack)
    settings = entry.settings(**(settings or {}))
    norm = entry.cls.norm_of(settings)
    grid = sorted({float(e) for e in grid})
    if not grid:
        raise ConfigError("the eps grid is empty", "pass at least one eps")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}", "pass e.g. --batch-size 100")
    indices = data.subset(n, seed)
    n_eff = len(indices)
    if n_eff == 0:
        raise DataError("the data subset is empty", "pass --n 1 or more")
    desc = data.describe()
    model = model.to(device)  # the attacks and the probe run it in eval mode and restore its mode
    probe = DynamicsProbe(model)
    grid_json = json.dumps(grid)
    settings_json = json.dumps(settings, sort_keys=True, separators=(",", ":"))

    ctx = distributed.current()
    if ctx.active and keep_adv:
        raise ConfigError("keep_adv is not supported in a distributed sweep", "run it in one process")
    if ctx.active and not ctx.is_main and store is not None:
        raise ConfigError("only rank 0 writes the results store", "pass store=None on the other ranks")
    run_ids: dict[float, int] | None = None
    todo = processing_order(indices, seed)  # seeded shuffle: a run cut short has done an unbiased sample
    vectors = {eps: vector_indices(indices, seed, norm, eps) for eps in grid}  # attention vectors kept for these
    if store is not None:
        run_ids = {}
        for eps in grid:
            key = RunKey(info.name, info.checkpoint_sha256, attack, settings_json, norm, eps, grid_json, data.id,
                         data.digest, int(seed), int(n_eff))
            run_ids[eps] = store.run_id(key, untrained=info.untrained, eps_label=eps_label(eps, norm),
                                        dataset_label=data.label, device=str(device))
        done = None
        for rid in run_ids.values():
            s = set(store.done_indices(rid).tolist())
            done = s if done is None else done & s
        todo = np.asarray([i for i in todo if i not in done], dtype=np.int64)
        store.upsert_model(model=info.name, checkpoint_sha256=info.checkpoint_sha256, untrained=info.untrained,
                           family=info.family, params=sum(p.numel() for p in model.parameters()),
                           macs=probe.static_macs(), layout=probe.layout(), source=info.source)
    todo = distributed.broadcast(todo, ctx)  # rank 0 knows what the store holds
    to_store = bool(distributed.broadcast(store is not None, ctx))  # every rank's rows go to rank 0's store

    rows_mem: list[pd.DataFrame] = []
    adv_parts: dict[float, list[torch.Tensor]] = {e: [] for e in grid}
    total = n_eff
    done_count = n_eff - len(todo)
    if progress and ctx.is_main:
        progress(done_count, total)
    # The chunks a single process uses; with N ranks, round r runs chunks rN .. rN+N-1, one per rank.
    chunks = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]
    for first in range(0, len(chunks), ctx.world):
        mine = first + ctx.rank
        part = None
        if mine < len(chunks):
            chunk = chunks[mine]
            x, y = data.tensors(chunk, device=device)
            clean, outcomes = attack_chunk(model, probe, attack, settings, grid, x, y,
                                           seed_key=f"{seed}:{int(chunk[0])}", device=device, keep_adv=keep_adv)
            labels = y.cpu().numpy()
            part = ({out.eps: example_rows(chunk, labels, clean, out, probe, vectors=vectors[out.eps],
                                           refer_earlier=to_store) for out in outcomes},
                    {out.eps: out.seconds for out in outcomes},
                    {out.eps: out.x_adv for out in outcomes} if keep_adv else None)
        parts = [p for p in distributed.gather(part, ctx) or [] if p is not None]  # [] on ranks > 0
        if store is not None and parts:
            batches: dict[int, list[dict]] = {run_ids[eps]: [] for eps in grid}
            seconds: dict[int, float] = {run_ids[eps]: 0.0 for eps in grid}
            for rows_by_eps, secs_by_eps, _ in parts:
                for eps, rows in rows_by_eps.items():
                    batches[run_ids[eps]] += rows
                    seconds[run_ids[eps]] += secs_by_eps[eps]
            store.add_examples(batches, seconds)  # one transaction per round: whole chunks only
        for rows_by_eps, _, advs in parts:
            if store is None or keep_adv:
                for eps, rows in rows_by_eps.items():
                    df = pd.DataFrame(rows)
                    df.insert(0, "eps", eps)
                    rows_mem.append(df)
            if keep_adv:
                for eps, xa in advs.items():
                    adv_parts[eps].append(xa)
        done_count += sum(len(c) for c in chunks[first:first + ctx.world])
        if progress and ctx.is_main:
            progress(done_count, total)

    examples = pd.concat(rows_mem, ignore_index=True).sort_values(["eps", "idx"], ignore_index=True) \
        if rows_mem else None
    if not ctx.is_main:
        clean_acc, robust, duration = distributed.broadcast(None, ctx)
    elif store is not None:
        summaries = {eps: store.run_summary(rid) for eps, rid in run_ids.items()}
        clean_acc = summaries[grid[0]]["clean_acc"]
        robust = {eps: s["robust_acc"] for eps, s in summaries.items()}
        duration = float(sum(s["duration_s"] for s in summaries.values()))
        mean_macs = store._query("SELECT AVG(macs_clean) FROM examples WHERE run_id = ?", (run_ids[grid[0]],))[0][0]
        store.upsert_model(model=info.name, checkpoint_sha256=info.checkpoint_sha256, mean_executed_macs=mean_macs)
    else:
        first = examples[examples.eps == grid[0]]
        clean_acc = float((first.clean_pred == first.label).mean())
        robust = {eps: float(examples[examples.eps == eps].broken_at.isna().mean()) for eps in grid}
        duration = time.perf_counter() - started
    if ctx.active and ctx.is_main:
        distributed.broadcast((clean_acc, robust, duration), ctx)
    by_idx = np.argsort(todo, kind="stable")  # adversarial examples are returned in index order
    return SweepResult(
        model=info, attack=attack, settings=settings, norm=norm, grid=grid, n=n_eff, seed=seed, dataset=desc,
        device=str(device), clean_acc=clean_acc, robust_acc=robust, seconds=time.perf_counter() - started,
        duration_s=duration, indices=indices, n_computed=len(todo), run_ids=run_ids, examples=examples,
        x_adv={e: torch.cat(v)[torch.from_numpy(by_idx)] for e, v in adv_parts.items() if v} if keep_adv else None,
        x_adv_indices=todo[by_idx] if keep_adv else None)


def evaluate(model: str | nn.Module, attack: str = "pgd", eps: float | str | Sequence = 8 / 255, *,
             settings: dict | None = None, n: int | None = None, seed: int = 0, data: CIFAR10Data | None = None,
             data_dir=None, device: str | torch.device | None = None, batch_size: int | None = None,
             store: ResultsStore | str | Path | None = None, models_dir=None, untrained: bool = False,
             keep_adv: bool = False, progress: Callable[[int, int], None] | None = None) -> SweepResult:
    """Robust accuracy of ``model`` under ``attack`` at ``eps`` (a value, '8/255', or a grid).

    >>> r = evaluate("dyconv_k4", "pgd", "8/255", n=200)     # trained checkpoint from models/
    >>> r.clean_acc, r.robust_acc[8 / 255]

    ``model``: a registry name, ``path/file.py:factory`` or an ``nn.Module`` (images in [0, 1] ->
    logits). ``n`` defaults to the whole test set on a GPU and :data:`DEFAULT_CPU_N` on a CPU.
    ``store``: a :class:`ResultsStore` or a path (results are written and resumed), None to keep
    them in memory only (``result.examples``). In an initialised ``torch.distributed`` process group
    the examples are sharded across the ranks and rank 0 alone writes the store (see
    :mod:`robustbench_dyn.distributed`).
    """
    dev = resolve_device(device)
    entry = get_attack(attack)
    grid = parse_eps_grid(eps) if isinstance(eps, (list, tuple)) or (isinstance(eps, str) and "," in eps) \
        else [parse_eps(eps)]
    entry.settings(**(settings or {}))  # fail on bad settings before loading anything
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, nn.Module) else []
    try:
        net, info = resolve_model(model, untrained=untrained, models_dir=models_dir, device=dev, attack=attack)
        return _evaluate_resolved(net, info, attack, grid, settings=settings, n=n, seed=seed, data=data,
                                  data_dir=data_dir, dev=dev, batch_size=batch_size, store=store, keep_adv=keep_adv,
                                  progress=progress)
    finally:
        for m, training in modes:  # a module passed in gets its train/eval mode back
            m.training = training


def _evaluate_resolved(net: nn.Module, info: ModelInfo, attack: str, grid: list[float], *, settings, n, seed, data,
                       data_dir, dev, batch_size, store, keep_adv, progress) -> SweepResult:
    if data is None:
        data, _ = load_data(data_dir, info.name if info.source in ("registry", "untrained") else None)
    if n is None:
        n = default_n(dev, len(data))
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}", "pass e.g. batch_size=100")
    data.subset(n, seed)  # validates n and seed before the store is opened (nothing written on bad input)
    bs = batch_size or default_batch_size(dev)
    if not distributed.current().is_main:
        store = None  # under torchrun (an initialised process group) rank 0 alone writes the store
    own_store = isinstance(store, (str, Path))
    st = ResultsStore(store) if own_store else store
    try:
        return run_sweep(net, info, data, attack, grid, settings=settings, n=n, seed=seed, batch_size=bs, device=dev,
                         store=st, keep_adv=keep_adv, progress=progress)
    finally:
        if own_store:
            st.close()
