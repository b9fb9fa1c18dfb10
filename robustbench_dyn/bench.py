"""Inference cost as users feel it: measured latency and throughput next to nominal MACs.

MACs (``costs.count_macs``) are what the FLOP counter sees; they are not time. DyConv and ODConv compute
per-example kernels (attention, kernel aggregation, a grouped conv) whose cost in time is larger than
their MACs suggest, and a channel-gated model's *executed* MACs (``costs.gated_cost`` with the measured
gate densities) are nominal: its forward computes every channel and multiplies the closed ones by zero.
:func:`bench_model` measures, per model and device:

* ``clean`` — a forward pass (no grad), and ``attack`` — one attack step: forward, cross-entropy,
  gradient with respect to the input (``torch.autograd.grad``), as one PGD iteration does;
* at batch 1: latency, median and p90 over timed calls after a warm-up, each call on another real
  test image (a gated model's cost depends on its input); at larger batches: throughput (images/s);
* for gated models, also the path that really skips closed channels
  (:func:`robustbench_dyn.layers.gate_skip.gate_skip`) at batch 1, interleaved call by call with the
  masked path on the same images, so background load hits both alike.

Results go into the ``bench`` table of the results store (one row per model, checkpoint, device,
threads, path, mode, batch; a rerun replaces the row), the batch-1 clean latency also into the
``models`` table (``latency_ms``, read by the report's main table), and :func:`write_csv` exports them.
Device, device name, threads, torch version, the 1-minute load average and the date travel with each row:
a latency is a property of a machine at a moment, not of a model.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError, ConfigError
from .store import ResultsStore, SideTable, insert_sql, read_table

#: defaults: batch 1 (latency) and 256 (throughput)
DEFAULT_BATCH_SIZES = (1, 256)
#: timed calls per measurement (batch 1), the cap for larger batches, and the seconds a measurement may take
DEFAULT_REPEATS = 50
DEFAULT_MAX_SECONDS = 3.0
#: distinct test images the batch-1 calls cycle through (each is seen once in the warm-up)
DEFAULT_IMAGES = 32
#: the input every timed model takes (one CIFAR-10 image)
IMAGE_SIZE = (1, 3, 32, 32)

BENCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS bench (
    model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, device TEXT NOT NULL, threads INTEGER NOT NULL,
    path TEXT NOT NULL, mode TEXT NOT NULL, batch INTEGER NOT NULL,
    untrained INTEGER NOT NULL DEFAULT 0, family TEXT, device_name TEXT,
    median_ms REAL, p90_ms REAL, mean_ms REAL, min_ms REAL, images_per_s REAL, repeats INTEGER, warmup INTEGER,
    params INTEGER, macs REAL, executed_macs REAL, macs_note TEXT, inputs TEXT, load_1min REAL,
    torch_version TEXT, robustdyn_version TEXT, created_at TEXT,
    PRIMARY KEY (model, checkpoint_sha256, device, threads, path, mode, batch)
)
"""
_COLUMNS = ("model", "checkpoint_sha256", "device", "threads", "path", "mode", "batch", "untrained", "family",
            "device_name", "median_ms", "p90_ms", "mean_ms", "min_ms", "images_per_s", "repeats", "warmup", "params",
            "macs", "executed_macs", "macs_note", "inputs", "load_1min", "torch_version", "robustdyn_version",
            "created_at")

#: what each path means (the report and the CLI print these)
PATHS = {
    "forward": "the model's own forward",
    "masked": "the gated model's own forward: every channel computed, closed ones multiplied by 0",
    "skip": "gated blocks run on the open channels only (gathered conv1/bn1/conv2 weights), per example",
}


@dataclass
class BenchRow:
    """One measurement: a model, a path, clean or attack step, one batch size."""

    model: str
    checkpoint_sha256: str
    device: str
    threads: int
    path: str  # forward | masked | skip
    mode: str  # clean | attack
    batch: int
    untrained: bool
    family: str
    device_name: str
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    images_per_s: float
    repeats: int
    warmup: int
    params: int
    macs: float
    executed_macs: float  # gated: MACs the open gates need (mean over the images); else = macs
    macs_note: str
    inputs: str
    load_1min: float | None
    torch_version: str = field(default_factory=lambda: torch.__version__)
    robustdyn_version: str = ""
    created_at: str = ""


# ------------------------------------------------------------------------------------------- parsing

def parse_batch_sizes(text: str | Sequence[int]) -> tuple[int, ...]:
    """'1,256' -> (1, 256): positive integers, ascending, duplicates dropped."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        s = str(item).strip()
        try:
            v = int(s)
        except ValueError:
            raise ConfigError(f"--batch-sizes: {s!r} is not an integer",
                              "pass comma-separated positive integers, e.g. --batch-sizes 1,256") from None
        if v < 1:
            raise ConfigError(f"--batch-sizes: {v} is not a positive batch size",
                              "pass comma-separated positive integers, e.g. --batch-sizes 1,256")
        out.append(v)
    if not out:
        raise ConfigError("--batch-sizes is empty", "pass e.g. --batch-sizes 1,256")
    return tuple(sorted(set(out)))


def device_name(device: torch.device) -> str:
    """'NVIDIA H200' or the CPU's model name (from /proc/cpuinfo where there is one)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def load_1min() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


# ------------------------------------------------------------------------------------------- timing

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Callable[[int], object]], n_inputs: int, *, device: torch.device,
                     warmup: int, repeats: int, max_seconds: float, min_repeats: int = 3) -> dict[str, list[float]]:
    """Seconds per call of each function, called on input ``i % n_inputs`` for i = 0, 1, ...

    The functions are called in turn within each repeat (the order alternating from one repeat to the next),
    so that load from other processes falls on all of them alike. Stops after ``repeats`` timed rounds, or
    earlier once ``max_seconds`` have passed and at least ``min_repeats`` rounds are done."""
    names = list(fns)
    for i in range(warmup):
        for nm in names:
            fns[nm](i % n_inputs)
    _sync(device)
    times: dict[str, list[float]] = {nm: [] for nm in names}
    start = time.perf_counter()
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for nm in order:
            t0 = time.perf_counter()
            fns[nm](r % n_inputs)
            _sync(device)
            times[nm].append(time.perf_counter() - t0)
        if r + 1 >= min_repeats and time.perf_counter() - start > max_seconds:
            break
    return times


def _stats(seconds: list[float]) -> dict:
    a = np.asarray(seconds, dtype=float) * 1e3
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean()),
            "min_ms": float(a.min()), "repeats": len(a)}


# ------------------------------------------------------------------------------------------- inputs

def bench_inputs(n: int, data_dir=None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, str, list[str]]:
    """``n`` test images in [0, 1] (NCHW float32) with labels, what they are, and warnings. Real CIFAR-10 test
    images when any source is found (a gated model's gates, hence its cost, depend on them); uniform noise
    otherwise (said in ``inputs``). Fewer images than ``n`` are repeated."""
    from .errors import DataError
    from .evaluation import load_data

    try:
        data, msgs = load_data(data_dir)
    except DataError as e:
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(n, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        return x, y, "uniform noise (no CIFAR-10 found)", [f"no CIFAR-10 data ({e.problem}): timing on uniform noise"]
    idx = np.arange(n) % len(data.x)
    x = torch.from_numpy(data.x[idx]).permute(0, 3, 1, 2).float().div_(255).contiguous()
    y = torch.from_numpy(data.y[idx])
    return x, y, f"{data.label}, first {min(n, len(data.x))} test images", msgs


# ------------------------------------------------------------------------------------------- costs

def model_costs(model: nn.Module, images: torch.Tensor) -> tuple[int, float, float, str]:
    """(params, MACs at full density, executed MACs, what 'executed' means here) per 32x32 image.

    For gated models the executed MACs are the mean over ``images`` of ``gated_cost`` at each image's gate
    densities: the MACs the open channels need. The model's own forward still computes every channel; only
    the skip path executes this figure. For every other model executed = full."""
    from .costs import count_macs, count_params, gated_cost
    from .layers import GateRecorder
    from .layers.gate_skip import _gated_blocks

    params = count_params(model)
    macs = float(count_macs(model))
    if not _gated_blocks(model):
        return params, macs, macs, "static graph: every MAC is executed"
    cost = gated_cost(model)
    dev = next(model.parameters()).device
    with torch.no_grad(), GateRecorder(model, detach=True) as rec:
        model(images.to(dev))
    dens = torch.stack([g.float().mean(1).cpu() for g in rec.gates], 1)  # (N, blocks)
    executed = float(cost.macs(dens).mean())
    note = (f"gated: {executed / macs:.1%} of the full-density MACs are needed by the open gates (mean over the "
            "timed images); the masked forward still computes 100%, the skip path computes the open share")
    return params, macs, executed, note


# ------------------------------------------------------------------------------------------- one model

def _path_note(path: str, note: str) -> str:
    if path == "masked":
        return "this path computes 100% of the MACs (closed channels computed, then zeroed); " + note
    if path == "skip":
        return "this path computes only the open channels' MACs; " + note
    return note

def _attack_step(model: nn.Module):
    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x), y)
        (g,) = torch.autograd.grad(loss, x)
        return g

    return step


def bench_model(model: nn.Module, *, name: str, checkpoint_sha256: str, untrained: bool, family: str,
                device: torch.device, x: torch.Tensor, y: torch.Tensor, inputs: str,
                batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, n_images: int = DEFAULT_IMAGES,
                repeats: int = DEFAULT_REPEATS, max_seconds: float = DEFAULT_MAX_SECONDS, skip: bool = True,
                progress: Callable[[str], None] | None = None) -> list[BenchRow]:
    """Time one model (eval mode, on ``device``): clean forward and attack step at each batch size, plus the
    skip path at batch 1 for gated models (``skip=True``). ``x``/``y``: at least ``max(batch_sizes)`` inputs."""
    from . import __version__
    from .layers.gate_skip import gate_skip, supports_gate_skip

    model = model.to(device).eval()
    x, y = x.to(device), y.to(device)
    n1 = max(1, min(n_images, len(x)))
    params, macs, executed, note = model_costs(model, x[:n1])
    gated = supports_gate_skip(model)
    threads = torch.get_num_threads()
    dname = device_name(device)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    base = {"model": name, "checkpoint_sha256": checkpoint_sha256, "device": str(device), "threads": threads,
            "untrained": untrained, "family": family, "device_name": dname, "params": params, "macs": macs,
            "inputs": inputs, "robustdyn_version": __version__, "created_at": now}
    step = _attack_step(model)
    rows: list[BenchRow] = []
    own = "masked" if gated else "forward"
    for b in batch_sizes:
        if b == 1:
            singles = [x[i:i + 1] for i in range(n1)]
            labels = [y[i:i + 1] for i in range(n1)]
            warm, reps, n_in = n1, repeats, n1
        else:
            singles, labels = [x[:b]], [y[:b]]
            warm, reps, n_in = 1, repeats, 1
        for mode in ("clean", "attack"):
            if progress:
                progress(f"{name}: {mode} @ batch {b}")
            if mode == "clean":
                def fwd(i, _s=singles):
                    with torch.no_grad():
                        return model(_s[i])

                fns = {own: fwd}
                if gated and skip and b == 1:
                    def fwd_skip(i, _s=singles):
                        with torch.no_grad(), gate_skip(model):
                            return model(_s[i])

                    fns["skip"] = fwd_skip
            else:
                fns = {own: (lambda i, _s=singles, _l=labels: step(_s[i], _l[i]))}
            load = load_1min()
            times = time_interleaved(fns, n_in, device=device, warmup=warm, repeats=reps, max_seconds=max_seconds,
                                     min_repeats=5 if b == 1 else 2)
            for path, secs in times.items():
                st = _stats(secs)
                rows.append(BenchRow(**base, path=path, mode=mode, batch=b, **st,
                                     images_per_s=b / (st["median_ms"] / 1e3), warmup=warm,
                                     executed_macs=executed, macs_note=_path_note(path, note), load_1min=load))
    return rows


# ------------------------------------------------------------------------------------------- store

class BenchStore(SideTable):
    """The ``bench`` table of the results store at ``path`` (created next to the main tables)."""

    TABLE, SCHEMA = "bench", BENCH_SCHEMA

    def add(self, rows: Sequence[BenchRow]) -> None:
        """Insert (or replace, same key) the rows in one transaction; record each model's batch-1 clean latency
        of its own forward in the ``models`` table."""
        if not rows:
            return
        vals = []
        for r in rows:
            d = asdict(r)
            d["untrained"] = int(d["untrained"])
            vals.append(tuple(d[c] for c in _COLUMNS))
        with self._tx() as con:
            con.executemany(insert_sql("bench", _COLUMNS), vals)
        with ResultsStore(self.path) as rs:
            for r in rows:
                if r.batch == 1 and r.mode == "clean" and r.path in ("forward", "masked"):
                    rs.upsert_model(model=r.model, checkpoint_sha256=r.checkpoint_sha256, untrained=r.untrained,
                                    family=r.family, params=r.params, macs=r.macs, latency_ms=r.median_ms,
                                    latency_device=f"{r.device_name} ({r.device}, {r.threads} threads)")


def read_bench(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The ``bench`` table of the store at ``path`` (empty frame when it has none). Read-only."""
    return read_table(path, "bench", "SELECT * FROM bench ORDER BY model, device, path, mode, batch")


def rows_frame(rows: Sequence[BenchRow]) -> pd.DataFrame:
    return pd.DataFrame([asdict(r) for r in rows], columns=list(_COLUMNS))


def write_csv(rows: Sequence[BenchRow], path: str | os.PathLike) -> Path:
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        rows_frame(rows).to_csv(p, index=False)
    except OSError as e:
        raise ConfigError(f"cannot write the CSV {p} ({e.strerror or e})", "pass another --csv path") from None
    return p


# ------------------------------------------------------------------------------------------- many models

@dataclass
class BenchPlan:
    """Which models to time and how (each entry: name, trained or untrained), and the skipped ones with why."""

    models: list[tuple[str, bool]]
    skipped: list[tuple[str, str]]


def plan(pattern: str = "*", *, untrained: bool = False, models_dir=None) -> BenchPlan:
    """Resolve a pattern against the registry. Models with a checkpoint are timed trained; those without are
    skipped with a note unless ``untrained`` (latency does not depend on weights, except the gated skip
    path's, which depends on which gates open)."""
    from .checkpoints import checkpoint_present
    from .registry import list_models

    names = list_models(pattern)
    if not names:
        import difflib

        from .registry import _REGISTRY

        pats = [p.strip() for p in pattern.split(",") if p.strip()]
        close = [m for p in pats for m in difflib.get_close_matches(p, list(_REGISTRY), n=2, cutoff=0.5)]
        raise ConfigError(f"no registered model matches {pattern!r}",
                          (f"did you mean {', '.join(close)}? " if close else "")
                          + "run `robustdyn list` for the zoo; patterns are shell-style, e.g. 'dyconv_*'")
    from .registry import get_spec

    models, skipped, foreign = [], [], []
    for n in names:
        if tuple(getattr(get_spec(n), "input_size", IMAGE_SIZE)) != IMAGE_SIZE:
            foreign.append(n)
            skipped.append((n, f"not a CIFAR-10 image model (bench times {IMAGE_SIZE[2]}x{IMAGE_SIZE[3]} images)"))
        elif checkpoint_present(n, models_dir):
            models.append((n, False))
        elif untrained:
            models.append((n, True))
        else:
            skipped.append((n, "no checkpoint (pass --untrained to time its architecture with random weights)"))
    if not models:
        if len(foreign) == len(names):
            raise ConfigError(f"the model(s) matching {pattern!r} are not CIFAR-10 image models "
                              f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})",
                              "bench times the image zoo: pass e.g. --models '*' or 'dyconv_*'")
        raise CheckpointError(f"none of the {len(names) - len(foreign)} image model(s) matching {pattern!r} has a "
                              "checkpoint", "train them (scripts/train.py), or pass --untrained to time the "
                              "architectures with random weights")
    return BenchPlan(models, skipped)


def summary(rows: Sequence[BenchRow] | pd.DataFrame) -> pd.DataFrame:
    """One row per (model, device): MACs, executed MACs, batch-1 latency (median, p90) of the own forward and,
    for gated models, of the skip path with its speed-up, throughput at the largest batch (clean and attack
    step), and latency and MACs relative to the static model of the same arch and training where timed."""
    df = rows if isinstance(rows, pd.DataFrame) else rows_frame(rows)
    out = []
    if df.empty:
        return pd.DataFrame()
    for (model, dev), g in df.groupby(["model", "device"], sort=False):
        def pick(path, mode, batch, _g=g):
            r = _g[(_g.path.isin(path if isinstance(path, tuple) else (path,))) & (_g["mode"] == mode)
                   & (_g.batch == batch)]
            return None if r.empty else r.iloc[0]

        own = ("forward", "masked")
        big = int(g.batch.max())
        r1, s1, a1 = pick(own, "clean", 1), pick("skip", "clean", 1), pick(own, "attack", 1)
        rb, ab = pick(own, "clean", big), pick(own, "attack", big)
        first = g.iloc[0]
        row = {"model": model, "family": first.family, "untrained": bool(first.untrained), "device": dev,
               "device_name": first.device_name, "threads": int(first.threads), "params": int(first.params),
               "macs": float(first.macs),
               "executed_macs": float(first.executed_macs),
               "latency_ms": None if r1 is None else float(r1.median_ms),
               "latency_p90_ms": None if r1 is None else float(r1.p90_ms),
               "attack_step_ms": None if a1 is None else float(a1.median_ms),
               "skip_latency_ms": None if s1 is None else float(s1.median_ms),
               "skip_p90_ms": None if s1 is None else float(s1.p90_ms),
               "skip_speedup": None if (s1 is None or r1 is None) else float(r1.median_ms / s1.median_ms),
               "big_batch": big if big > 1 else None,
               "clean_images_per_s": None if rb is None or big == 1 else float(rb.images_per_s),
               "attack_images_per_s": None if ab is None or big == 1 else float(ab.images_per_s),
               "load_1min": float(g.load_1min.max()) if g.load_1min.notna().any() else None,
               "created_at": str(g.created_at.max())}
        out.append(row)
    s = pd.DataFrame(out)
    s["latency_vs_static"] = math.nan
    s["macs_vs_static"] = math.nan
    for i, r in s.iterrows():
        ref = _static_of(r.model)
        hit = s[(s.model == ref) & (s.device == r.device)]
        if len(hit) and r.latency_ms and hit.iloc[0].latency_ms:
            s.at[i, "latency_vs_static"] = r.latency_ms / hit.iloc[0].latency_ms
            s.at[i, "macs_vs_static"] = r.macs / hit.iloc[0].macs
    return s


def _static_of(name: str) -> str:
    from .report.core import model_meta

    return model_meta(name).base_static
