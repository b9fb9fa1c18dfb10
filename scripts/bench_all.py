"""Run every benchmark of robustbench_dyn against "the plain way", within a runtime budget.

    python scripts/bench_all.py --device cuda --out bench/          # the full GPU form (<= ~150 s on an H100)
    python scripts/bench_all.py --device cpu --quick --out /tmp/b   # tiny CPU form (seconds)

Benchmarks (each also runs alone: ``python scripts/bench_<name>.py --help``):

=============  ================================================================================
layers         forward / input-gradient throughput of the dynamic layers vs static ResNet-20 and
               vs a per-sample Python loop (scripts/bench_layers.py)
attack         PGD-20 evaluation: our path vs a plain torchattacks loop (scripts/bench_attack.py)
sweep          8-point eps grid: pruned sweep vs every eps attacking every example
               (scripts/bench_sweep.py)
autoattack     AutoAttack standard wall time on the adversarially trained models
               (scripts/bench_autoattack.py)
training       seconds per epoch from the zoo manifest + a short isolated measurement (here)
e2e            the whole ResNet-20 zoo x {FGSM, PGD-20, AutoAttack}, extrapolated to the 10k test set
               (here)
=============  ================================================================================

One bench failing never stops the run: its error is recorded and the next one starts. Each bench
gets a share of ``--budget-s`` and stops measuring further models once its share is spent (what
was skipped is recorded). Output in ``--out``: ``bench_all.json`` (every result, error and
timing) and ``bench_all.md`` (every table) -- two files only, so that the whole output comes back
from a machine that returns a few files.

This file also holds the helpers shared by the bench scripts (argument parsing, data, timing,
headers, markdown and JSON output); they import it as ``bench_all``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
try:  # a checkout without `pip install -e .` (e.g. the GPU machine): import the package from the repo
    import robustbench_dyn  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402

EPS_8 = 8 / 255
TEST_SET = 10_000


# =============================================================================================== shared helpers

def default_data_dir() -> str | None:
    """``$ROBUSTDYN_DATA``, else ``<repo>/.data/cifar10`` when it holds data, else None (load_cifar10 decides:
    cache, download, or the bundled 500-image sample)."""
    env = os.environ.get("ROBUSTDYN_DATA")
    if env:
        return env
    local = REPO / ".data" / "cifar10"
    if local.is_dir() and any(local.iterdir()):
        return str(local)
    return None


def common_parser(description: str, bench_args: Callable[[argparse.ArgumentParser], None] | None = None
                  ) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--n", type=int, default=None, help="test images (default: per bench and device)")
    p.add_argument("--quick", action="store_true", help="tiny CPU-sized form (seconds; correctness, not speed)")
    p.add_argument("--out", default=None, help="folder for the results JSON and the markdown table")
    p.add_argument("--data-dir", default=None,
                   help="CIFAR-10 folder (default $ROBUSTDYN_DATA, else <repo>/.data/cifar10, else the bundled sample)")
    p.add_argument("--seed", type=int, default=0, help="subset seed and attack RNG seed (default 0)")
    if bench_args is not None:
        bench_args(p)
    return p


@dataclass
class Context:
    """What every bench needs: the device, the data, the header lines, a deadline and shared results."""

    device: torch.device
    data: Any  # CIFAR10Data
    data_notes: list[str]
    command: str
    data_dir: str | None = None
    deadline: float = math.inf  # time.perf_counter() value after which a bench stops starting new units
    shared: dict[str, Any] = field(default_factory=dict)
    _models: dict[str, nn.Module] = field(default_factory=dict)

    def time_left(self) -> float:
        return self.deadline - time.perf_counter()

    def over(self, reserve_s: float = 0.0) -> bool:
        return time.perf_counter() + reserve_s > self.deadline

    def model(self, name: str) -> nn.Module:
        """A private copy of the trained checkpoint on the device, in eval mode. The checkpoint is read
        once per run; every call returns a fresh copy, so a bench (or a library call) that changes a
        model's mode or BatchNorm statistics can never leak into another measurement."""
        if name not in self._models:
            from robustbench_dyn import load_model

            self._models[name] = load_model(name, device=self.device).eval()
        return copy.deepcopy(self._models[name]).eval()


def resolve_device(text: str) -> torch.device:
    from robustbench_dyn.evaluation import resolve_device as _resolve

    return _resolve(text)


def load_test_data(data_dir: str | None):
    """The CIFAR-10 test split (and any warning raised while finding it, e.g. 'bundled sample'). Never downloads:
    without a data folder or cache the bundled 500-image sample is used (and said so in every header)."""
    from robustbench_dyn.data import load_cifar10

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_cifar10("test", data_dir or default_data_dir(), download=False)  # never a network wait
    return data, [str(w.message).splitlines()[0] for w in caught]


def command_line(argv: Sequence[str] | None = None) -> str:
    args = list(sys.argv if argv is None else argv)
    if args and args[0].endswith(".py"):
        args[0] = os.path.relpath(args[0], REPO) if os.path.isabs(args[0]) else args[0]
        args = ["python", *args]
    return " ".join(shlex.quote(a) for a in args)


def make_context(args: argparse.Namespace, argv: Sequence[str] | None = None) -> Context:
    device = resolve_device(args.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    data, notes = load_test_data(args.data_dir)
    return Context(device, data, notes, command_line(argv), data_dir=args.data_dir or default_data_dir())


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {platform.processor() or 'x86'})"


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on the CPU): timers read only after the work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """(fn(), wall seconds) with the device synchronised before and after."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def median_time(fn: Callable[[], Any], device: torch.device, warmup: int = 3, repeats: int = 10,
                max_s: float | None = None) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` synchronised calls after ``warmup`` calls.
    ``max_s``: stop repeating early (at least 3 repeats) once this much time has been spent."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start = time.perf_counter()
    for i in range(repeats):
        _, t = timed(fn, device)
        times.append(t)
        if max_s is not None and i >= 2 and time.perf_counter() - start > max_s:
            break
    return statistics.median(times)


def n_for(args: argparse.Namespace, device: torch.device, *, cuda: int, cpu: int, quick: int, total: int) -> int:
    """--n if given, else the bench's default for the device (quick overrides), clipped to the data."""
    n = args.n if args.n is not None else (quick if args.quick else (cuda if device.type == "cuda" else cpu))
    return max(1, min(int(n), total))


def model_info(name: str, model: nn.Module):
    from robustbench_dyn.evaluation import ModelInfo

    return ModelInfo(name, getattr(model, "checkpoint_sha256", "bench"), False, "registry")


def trained_models(pattern: str = "*") -> list[str]:
    """ResNet-20 zoo names (registry order) with a trained checkpoint present."""
    from robustbench_dyn.checkpoints import checkpoint_present
    from robustbench_dyn.registry import list_models

    return [n for n in list_models(pattern) if not n.startswith("resnet50_") and checkpoint_present(n)]


def fresh_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def training_modules(model: nn.Module) -> list[str]:
    """Names of the submodules in train mode (empty for a model fully in eval mode)."""
    return [n or "<root>" for n, m in model.named_modules() if m.training]


def check_eval(model: nn.Module, where: str, log: list[str]) -> None:
    """Record (in ``log``) and undo a model left in train mode by ``where``: every measurement here is
    of an eval-mode model, and a train-mode forward would also move the BatchNorm statistics."""
    bad = training_modules(model)
    if bad:
        log.append(f"{where} left the model in train mode ({len(bad)} modules, e.g. {bad[0]}); reset to eval")
        model.eval()


class CountingModel(nn.Module):
    """Wraps a model and counts examples per forward: with an input that requires grad (a gradient
    evaluation: forward + backward of an attack step) and without (predictions, checks).
    The wrapped model stays a submodule (parameters, hooks, probes see through it). Created in
    eval mode: a fresh nn.Module is in train mode, and library code that restores a mode with a
    recursive ``model.train(was_training)`` would otherwise switch the wrapped model to train mode."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.reset()
        self.eval()

    def reset(self) -> None:
        self.grad_examples = 0
        self.grad_calls = 0
        self.nograd_examples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_examples += int(x.shape[0])
            self.grad_calls += 1
        else:
            self.nograd_examples += int(x.shape[0])
        return self.model(x)


# ------------------------------------------------------------------------------------------ output

def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 10 ** -digits):
            return f"{v:.3g}"
        return f"{v:.{digits}f}".rstrip("0").rstrip(".") if "." in f"{v:.{digits}f}" else f"{v}"
    return str(v)


def md_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(v) for v in r) + " |")
    return "\n".join(lines)


def header(title: str, ctx: Context, extra: Sequence[str] = ()) -> str:
    d = ctx.data
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {title}", "",
             f"- device: {device_label(ctx.device)}; torch {torch.__version__}",
             f"- data: {d.label} ({d.id}, {len(d)} test images, digest {d.digest})",
             f"- date: {date}",
             f"- command: `{ctx.command}`"]
    lines += [f"- note: {n}" for n in ctx.data_notes]
    lines += [f"- {e}" for e in extra]
    return "\n".join(lines)


def env_info(ctx: Context) -> dict:
    d = ctx.data
    info = {"device": device_label(ctx.device), "torch": torch.__version__, "python": platform.python_version(),
            "data": {"label": d.label, "id": d.id, "digest": d.digest, "n_total": len(d)},
            "data_notes": ctx.data_notes, "command": ctx.command,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    for mod in ("torchattacks", "pyautoattack"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - only informative
            info[mod] = None
    return info


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def write_outputs(out: str | os.PathLike | None, name: str, result: dict) -> list[Path]:
    """``out/NAME.json`` (the result dict) and ``out/NAME.md`` (its markdown)."""
    if not out:
        return []
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    jpath, mpath = folder / f"{name}.json", folder / f"{name}.md"
    jpath.write_text(json.dumps(result, indent=1, default=_json_default, allow_nan=False) + "\n")
    mpath.write_text(result.get("markdown", "") + "\n")
    return [jpath, mpath]


def sanitize(obj: Any) -> Any:
    """NaN/inf -> None, recursively (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    return obj


def bench_main(module: Any, argv: Sequence[str] | None = None) -> dict:
    """Standalone entry point of a bench script: parse, build the context, run, print, write."""
    parser = module.build_parser()
    args = parser.parse_args(argv)
    ctx = make_context(args, argv if argv is None else [module.__file__, *argv])
    result = sanitize(module.run(args, ctx))
    result["env"] = env_info(ctx)
    print(result["markdown"])
    for p in write_outputs(args.out, module.NAME, result):
        print(f"wrote {p}")
    return result


# ============================================================================ bench 5: training time

def _training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="static,dyconv_k4", help="models (comma-separated)")
    p.add_argument("--train-steps", type=int, default=None,
                   help="isolated measurement: optimizer steps per model (default cuda 100, cpu 0, quick 2; 0 skips)")
    p.add_argument("--train-batch", type=int, default=None, help="batch size (default: the recipe's, 512; quick 16)")


def training_parser() -> argparse.ArgumentParser:
    return common_parser("Training: seconds per epoch from the manifest + a short isolated measurement",
                         _training_args)


def _train_step_seconds(name: str, ctx: Context, steps: int, batch: int) -> dict:
    """Mean seconds per optimizer step of a fresh (untrained) model trained alone with the training
    engine's settings: DeviceLoader augmentation, SGD Nesterov, bf16 autocast + channels_last + cuDNN
    autotuning on CUDA, grad clipping, the temperature buffer set each step; DyConv in the mode the
    engine would choose (its own timing, ``choose_dyconv_mode``)."""
    import numpy as np
    import torch.nn.functional as F

    from robustbench_dyn.layers import set_temperature
    from robustbench_dyn.registry import create_model, get_spec
    from robustbench_dyn.training import DeviceLoader, Recipe, choose_dyconv_mode, to_channels_last

    dev = ctx.device
    on_cuda = dev.type == "cuda"
    r = Recipe(epochs=1)
    # The test split (already in memory) stands in for the training images: a step's speed does not depend on
    # the pixels, and loading (or decoding the JPEG pack of) the 50k training images would cost seconds.
    x_np, y_np, src = ctx.data.x, ctx.data.y, "test images (content does not affect speed)"
    if len(y_np) < batch:
        reps = math.ceil(batch / len(y_np))
        x_np, y_np = np.concatenate([x_np] * reps), np.concatenate([y_np] * reps)
    loader = DeviceLoader(x_np, y_np, dev, batch)
    torch.manual_seed(0)
    model = create_model(name).to(dev)
    if on_cuda and r.channels_last:
        to_channels_last(model)
    mode = None
    if on_cuda and get_spec(name).conv == "dyconv":
        mode, _ = choose_dyconv_mode(model, batch, dev, bf16=r.bf16, channels_last=r.channels_last)
    dynamic = get_spec(name).conv in ("dyconv", "odconv")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=r.momentum, nesterov=True,
                          weight_decay=r.weight_decay)
    model.train()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda and r.bf16)
    gen = torch.Generator().manual_seed(0)

    def batches():
        while True:  # epochs of the stand-in data, reshuffled and re-augmented each time
            yield from loader.epoch(gen)

    it = batches()

    def step() -> None:
        xb, yb = next(it)
        if dynamic:
            set_temperature(model, 10.0)
        if on_cuda and r.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = F.cross_entropy(model(xb).float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
        opt.step()

    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on_cuda  # as the training engine sets it (restored: other benches leave it off)
    try:
        for _ in range(3):  # warm-up: lazy init, cuDNN autotuning, allocator
            step()
        sync(dev)
        t0 = time.perf_counter()
        done = 0
        for _ in range(steps):
            step()
            done += 1
            if done % 10 == 0 and ctx.over():
                break
        sync(dev)
        step_s = (time.perf_counter() - t0) / max(done, 1)
    finally:
        torch.backends.cudnn.benchmark = saved
    times = [step_s] * done
    return {"step_s": step_s, "steps": len(times), "batch": batch, "dyconv_mode": mode, "data": src,
            "bf16": on_cuda and r.bf16, "channels_last": on_cuda and r.channels_last}


def run_training(args: argparse.Namespace, ctx: Context) -> dict:
    from robustbench_dyn.checkpoints import read_manifest

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    manifest = read_manifest()
    rows, md_rows = [], []
    for name in names:
        e = manifest.get(name)
        if not e:
            rows.append({"model": name, "error": "not in models/manifest.json"})
            md_rows.append([name, "-", "-", "-", "-", "-", "-", "not in manifest"])
            continue
        ep = [h["epoch_s"] for h in e.get("history", []) if "epoch_s" in h]
        steady = ep[1:] if len(ep) > 1 else ep
        row = {"model": name, "device": e.get("device"), "epochs": e.get("epochs"), "epoch_s": ep,
               "epoch1_s": ep[0] if ep else None,
               "median_epoch_s": statistics.median(steady) if steady else None,
               "min_epoch_s": min(steady) if steady else None, "train_time_s": e.get("train_time_s"),
               "batch_size": e.get("recipe", {}).get("batch_size"), "adv": e.get("recipe", {}).get("adv"),
               "dyconv_mode": e.get("dyconv_mode")}
        rows.append(row)
        md_rows.append([name, row["device"], row["epochs"], row["epoch1_s"], row["median_epoch_s"],
                        row["min_epoch_s"], row["train_time_s"], row["dyconv_mode"] or "-"])
    base = next((r for r in rows if r.get("model") == "static" and r.get("median_epoch_s")), None)
    for r, mr in zip(rows, md_rows, strict=True):
        ratio = (r["median_epoch_s"] / base["median_epoch_s"]) if base and r.get("median_epoch_s") else None
        r["ratio_vs_static"] = ratio
        mr.append(ratio)
    md = [header("Training: seconds per epoch (ResNet-20)", ctx, [
        "from models/manifest.json histories: measured on an H100 while **12 training runs shared the GPU** "
        "(train_zoo.py), so these are contended times, not a single run's speed",
        "epoch 1 includes warm-up/cuDNN autotuning and is excluded from median/min"]), "",
        md_table(["model", "trained on", "epochs", "epoch 1 s", "median epoch s", "min epoch s", "train time s",
                  "DyConv mode", "median vs static"], md_rows)]

    steps = args.train_steps
    if steps is None:
        steps = 2 if args.quick else (100 if ctx.device.type == "cuda" else 0)
    batch = args.train_batch or (16 if args.quick else 512)
    iso = []
    if steps > 0:
        for name in names:
            if ctx.over(5):
                iso.append({"model": name, "skipped": "budget"})
                continue
            try:
                m = _train_step_seconds(name, ctx, steps, batch)
            except Exception as e:  # noqa: BLE001 - one model failing is recorded
                iso.append({"model": name, "error": f"{type(e).__name__}: {e}"})
                continue
            m["model"] = name
            m["epoch_s_extrapolated"] = m["step_s"] * (49_000 // batch)
            iso.append(m)
        sbase = next((m for m in iso if m.get("model") == "static" and m.get("step_s")), None)
        for m in iso:
            m["ratio_vs_static"] = (m["step_s"] / sbase["step_s"]) if sbase and m.get("step_s") else None
        md += ["", f"Isolated (this run, one model at a time on {device_label(ctx.device)}): {steps} optimizer steps "
               f"of batch {batch} after 3 warm-up steps, one timer around them; epoch = 49,000 training images / "
               f"{batch} = {49_000 // batch} steps (**extrapolated** from the mean step).", "",
               md_table(["model", "mean step ms", "steps", "s / epoch (extrapolated)", "vs static", "DyConv mode",
                         "bf16", "channels_last", "data"],
                        [[m["model"], (m.get("step_s") or float("nan")) * 1000, m.get("steps"),
                          m.get("epoch_s_extrapolated"), m.get("ratio_vs_static"), m.get("dyconv_mode") or "-",
                          m.get("bf16"), m.get("channels_last"),
                          m.get("data") or m.get("error") or m.get("skipped")] for m in iso])]
    return {"bench": "training", "manifest": rows, "isolated": iso, "markdown": "\n".join(md)}


# ============================================================================ bench 6: end to end

def _e2e_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="*", help="zoo pattern (default: every trained ResNet-20)")
    p.add_argument("--n-aa", type=int, default=None,
                   help="images for AutoAttack on standard-trained models (default cuda 500, cpu 8, quick 1); "
                        "adversarially trained ones reuse the autoattack bench when it ran in the same call")
    p.add_argument("--batch-size", type=int, default=None, help="engine batch (default: the engine's per device)")
    p.add_argument("--no-aa", action="store_true", help="skip AutoAttack")
    p.add_argument("--aa-per-kind", type=int, default=None,
                   help="AutoAttack measured on at most this many models per training kind (standard, _at), "
                        "the rest estimated (default: cuda no limit within the budget; cpu 1)")


def e2e_parser() -> argparse.ArgumentParser:
    return common_parser("End to end: the ResNet-20 zoo x {FGSM, PGD-20, AutoAttack}, extrapolated to 10k", _e2e_args)


def _engine_seconds(model, name, ctx, attack, n, batch, settings=None) -> tuple[float, float, float]:
    from robustbench_dyn.evaluation import run_sweep

    res, t = timed(lambda: run_sweep(model, model_info(name, model), ctx.data, attack, [EPS_8], settings=settings,
                                     n=n, seed=0, batch_size=batch, device=ctx.device), ctx.device)
    return t, res.clean_acc, res.robust_acc[EPS_8]


def run_e2e(args: argparse.Namespace, ctx: Context) -> dict:
    """FGSM, PGD-20 (and our fast PGD) measured for every model; AutoAttack taken from the autoattack bench
    (same call) or measured at ``--n-aa`` while the budget lasts, else *estimated* from a measured model of
    the same training (standard / adversarial) scaled by the PGD time ratio (AutoAttack's cost is gradient
    and forward steps of the same model); every estimate is labelled as such."""
    from robustbench_dyn.evaluation import default_batch_size

    dev = ctx.device
    n = n_for(args, dev, cuda=1000, cpu=8, quick=2, total=len(ctx.data))
    n_aa = args.n_aa or (1 if args.quick else (500 if dev.type == "cuda" else 8))
    n_aa = min(n_aa, len(ctx.data))
    batch = args.batch_size or default_batch_size(dev)
    names = trained_models(args.models)
    if args.quick:
        names = [m for m in names if m in ("static", "static_at")] or names[:1]
    aa_prev = {r["model"]: r for r in ctx.shared.get("autoattack", {}).get("rows", []) if r.get("seconds")}
    fast = {"amp": False, "early_stop": True}
    steps = {"steps": 2} if args.quick else {}  # quick: a smoke test of the paths, not PGD-20
    aa_settings = {"version": "custom", "attacks": ["apgd-ce"]} if args.quick else None
    rows: list[dict[str, Any]] = [{"model": m} for m in names]
    notes: list[str] = []
    # phase 1: FGSM and PGD for every model
    for row in rows:
        name = row["model"]
        if ctx.over(3):
            row["skipped"] = "budget"
            continue
        try:
            model = ctx.model(name)
            if dev.type == "cuda":  # warm-up (cuDNN heuristics, lazy init) outside the timers
                _engine_seconds(model, name, ctx, "pgd", min(n, 64), batch, {"steps": 2})
            for key, attack, settings in (("fgsm", "fgsm", None), ("pgd", "pgd", steps or None),
                                          ("pgd_fast", "pgd-ce", {**fast, **steps})):
                if ctx.over(1):
                    row.setdefault("skipped", f"budget (before {key})")
                    break
                t, clean, rob = _engine_seconds(model, name, ctx, attack, n, batch, settings)
                row[key] = {"n": n, "seconds": t, "clean_acc": clean, "robust_acc": rob,
                            "seconds_10k": t * TEST_SET / n, "how": "measured"}
            check_eval(model, "run_sweep", notes)
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {e}"
    # phase 2: AutoAttack, reused or measured while the budget lasts (standard-trained models first: cheap)
    per_kind = args.aa_per_kind if args.aa_per_kind is not None else (10 ** 6 if dev.type == "cuda" else 1)
    measured_kind = {False: 0, True: 0}
    for row in sorted(rows, key=lambda r: r["model"].endswith("_at")):
        name = row["model"]
        if args.no_aa or "error" in row:
            continue
        kind = name.endswith("_at")
        if name in aa_prev:
            r = aa_prev[name]
            row["autoattack"] = {"n": r["n"], "seconds": r["seconds"], "robust_acc": r["robust_acc"],
                                 "clean_acc": r.get("clean_acc"), "seconds_10k": r["seconds"] * TEST_SET / r["n"],
                                 "how": "measured (autoattack bench)"}
            measured_kind[kind] += 1
        elif not ctx.over(15) and measured_kind[kind] < per_kind:  # one AutoAttack: up to ~10 s on an H100
            measured_kind[kind] += 1
            try:
                model = ctx.model(name)
                t, clean, rob = _engine_seconds(model, name, ctx, "autoattack", n_aa, max(batch, n_aa), aa_settings)
                row["autoattack"] = {"n": n_aa, "seconds": t, "clean_acc": clean, "robust_acc": rob,
                                     "seconds_10k": t * TEST_SET / n_aa, "how": "measured"}
            except Exception as e:  # noqa: BLE001
                row["autoattack_error"] = f"{type(e).__name__}: {e}"
    # phase 3: estimates for what the budget left out
    for row in rows:
        if args.no_aa or row.get("autoattack") or not row.get("pgd"):
            continue
        kind_at = row["model"].endswith("_at")
        # a reference must have attacked something: a measurement whose images were all misclassified
        # (clean accuracy 0, possible at a tiny n) costs nothing and would scale to a meaningless estimate
        refs = [r for r in rows if r.get("autoattack", {}).get("how", "").startswith("measured")
                and (r["autoattack"].get("clean_acc") or 0) > 0
                and r["model"].endswith("_at") == kind_at and r.get("pgd")]
        if refs:
            ref = refs[0]
            ratio = row["pgd"]["seconds"] / ref["pgd"]["seconds"]
            row["autoattack"] = {"n": None, "seconds": None, "robust_acc": None,
                                 "seconds_10k": ref["autoattack"]["seconds_10k"] * ratio,
                                 "how": f"estimated: {ref['model']}'s AutoAttack x PGD time ratio {ratio:.2f}"}

    def s10k(r, k):
        return (r.get(k) or {}).get("seconds_10k")

    totals = {k: sum(s10k(r, k) or 0.0 for r in rows) for k in ("fgsm", "pgd", "pgd_fast", "autoattack")}
    missing = {k: [r["model"] for r in rows if s10k(r, k) is None] for k in totals}
    n_est = sum(1 for r in rows if (r.get("autoattack") or {}).get("how", "").startswith("estimated"))
    total = totals["fgsm"] + totals["pgd"] + totals["autoattack"]
    total_fast = totals["fgsm"] + totals["pgd_fast"] + totals["autoattack"]
    md_rows = []
    for r in rows:
        aa = r.get("autoattack") or {}
        md_rows.append([r["model"], (r.get("fgsm") or {}).get("seconds"), (r.get("pgd") or {}).get("seconds"),
                        (r.get("pgd_fast") or {}).get("seconds"), aa.get("seconds"), aa.get("n"), s10k(r, "fgsm"),
                        s10k(r, "pgd"), s10k(r, "pgd_fast"), s10k(r, "autoattack"),
                        None if not r.get("pgd") else r["pgd"]["robust_acc"] * 100,
                        None if aa.get("robust_acc") is None else aa["robust_acc"] * 100,
                        r.get("error") or r.get("skipped") or aa.get("how", r.get("autoattack_error", ""))])
    extra = [f"measured through the engine (`run_sweep`, eps 8/255, batch {batch}) at n={n} (AutoAttack: the n "
             f"shown); **every 10k column is an extrapolation**: seconds x 10,000 / n (linear in n; model loading and "
             f"warm-up not included; AutoAttack at a small n runs smaller batches than at 10k, so it overestimates)",
             "pgd = the registry's `pgd` (torchattacks PGD-20, step 2/255, random start); pgd-fast = `pgd-ce` with "
             f"{json.dumps(fast)} (same PGD-20, our implementation); AutoAttack = version standard"
             + (" -- **quick form: PGD 2 steps, AutoAttack custom [apgd-ce]; a smoke test, not the benchmark**"
                if args.quick else ""),
             "AutoAttack rows marked *estimated* were not measured in this call (time budget, --aa-per-kind): the 10k "
             "time of a "
             "measured model of the same training (standard or _at) scaled by the PGD-20 time ratio"]
    extra += [f"**warning**: {w}" for w in dict.fromkeys(notes)]
    md = [header("End to end: ResNet-20 zoo x {FGSM, PGD-20, AutoAttack}", ctx, extra), "",
          md_table(["model", "FGSM s", "PGD-20 s", "PGD-20 fast s", "AA s", "AA n", "FGSM 10k s*", "PGD 10k s*",
                    "PGD fast 10k s*", "AA 10k s*", "PGD rob acc %", "AA rob acc %", "AA how / note"], md_rows), "",
          f"**Zoo total at 10k (extrapolated{', AutoAttack partly estimated' if n_est else ''}):** FGSM + PGD-20 + "
          f"AutoAttack = {total:.0f} s ({total / 60:.1f} min); with the fast PGD: {total_fast:.0f} s "
          f"({total_fast / 60:.1f} min); of which AutoAttack {totals['autoattack']:.0f} s "
          f"({n_est} of {len(rows)} models estimated)."
          + (" Missing (in no total): " + "; ".join(f"{k}: {', '.join(v)}" for k, v in missing.items() if v)
             if any(missing.values()) else "")]
    return {"bench": "e2e", "n": n, "n_aa": n_aa, "batch": batch, "rows": rows, "totals_10k_s": totals,
            "total_10k_s": total, "total_fast_10k_s": total_fast, "missing": missing, "aa_estimated": n_est,
            "extrapolated": True, "warnings": list(dict.fromkeys(notes)), "markdown": "\n".join(md)}


# ============================================================================ the runner

class _Bench:
    """A bench as the runner sees it: name, parser, run function, share of the budget (expected seconds on
    the H100) and the arguments it gets on CUDA inside the budget (``--full`` drops them)."""

    def __init__(self, name: str, parser: Callable[[], argparse.ArgumentParser],
                 run: Callable[[argparse.Namespace, Context], dict], share: float,
                 budget_args: Sequence[str] = ()) -> None:
        self.name, self.parser, self.run, self.share = name, parser, run, share
        self.budget_args = list(budget_args)


def _benches() -> list[_Bench]:
    import bench_attack
    import bench_autoattack
    import bench_layers
    import bench_sweep

    # Order: cheap and central first; autoattack before e2e (e2e reuses its numbers). Shares: the seconds each
    # took on an H100 in a calibration run (2026-11-22), so the budget is split in proportion to the work.
    # AutoAttack standard costs ~40 s per ResNet-20 (static_at, N=1000) and ~90 s (dyconv_k4_at): inside the
    # 150 s budget only static_at fits; `python scripts/bench_autoattack.py --device cuda` runs all four.
    return [
        _Bench("layers", bench_layers.build_parser, bench_layers.run, 17),
        _Bench("attack", bench_attack.build_parser, bench_attack.run, 16),
        _Bench("sweep", bench_sweep.build_parser, bench_sweep.run, 19),
        _Bench("training", training_parser, run_training, 7),
        _Bench("autoattack", bench_autoattack.build_parser, bench_autoattack.run, 42, ["--models", "static_at"]),
        _Bench("e2e", e2e_parser, run_e2e, 28),
    ]


def all_parser() -> argparse.ArgumentParser:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--budget-s", type=float, default=None,
                       help="total runtime budget in seconds (default cuda 140, otherwise unlimited)")
        p.add_argument("--only", default=None, help="comma-separated benches to run (default all)")
        p.add_argument("--skip", default="", help="comma-separated benches to skip")
        p.add_argument("--per-bench-files", action="store_true",
                       help="also write NAME.json / NAME.md per bench (more files)")
        p.add_argument("--full", action="store_true",
                       help="every bench at its standalone defaults (AutoAttack on all four _at models at N=1000: "
                            "about 5 more minutes on an H100); no budget unless --budget-s is given")

    return common_parser(__doc__.split("\n\n")[0], extra)


def main(argv: Sequence[str] | None = None) -> dict:
    t_start = time.perf_counter()
    args = all_parser().parse_args(argv)
    ctx = make_context(args, argv if argv is None else [__file__, *argv])
    budget = args.budget_s
    if budget is None:
        budget = 140.0 if ctx.device.type == "cuda" and not args.quick and not args.full else math.inf
    benches = _benches()
    only = {s.strip() for s in args.only.split(",")} if args.only else {b.name for b in benches}
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = (only | skip) - {b.name for b in benches}
    if unknown:
        raise SystemExit(f"unknown bench(es): {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(b.name for b in benches)}")
    selected = [b for b in benches if b.name in only and b.name not in skip]
    total_share = sum(b.share for b in selected) or 1.0
    common = ["--device", args.device, "--seed", str(args.seed)]
    if args.quick:
        common.append("--quick")
    if args.n is not None:
        common += ["--n", str(args.n)]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    hard_deadline = t_start + budget
    report: dict[str, Any] = {"env": env_info(ctx), "budget_s": budget, "benches": {}}
    sections = [f"# robustbench_dyn benchmarks\n\n- device: {device_label(ctx.device)}; torch {torch.__version__}\n"
                f"- data: {ctx.data.label} ({len(ctx.data)} test images)\n- command: `{ctx.command}`\n"
                f"- budget: {budget:g} s"]
    remaining_share = total_share
    for b in selected:
        now = time.perf_counter()
        left = hard_deadline - now
        # this bench's deadline: its share of what is left (unused time of earlier benches passes on)
        ctx.deadline = now + left * (b.share / remaining_share) if math.isfinite(left) else math.inf
        remaining_share -= b.share
        entry: dict[str, Any] = {"status": "ok"}
        print(f"[bench_all] {b.name}: starting ({max(left, 0):.0f} s left of the budget, "
              f"this bench until +{ctx.deadline - now:.0f} s)", flush=True)
        if left <= 1:
            entry = {"status": "skipped", "reason": "budget exhausted"}
            sections.append(f"## {b.name}\n\nskipped: the budget of {budget:g} s was exhausted")
        else:
            try:
                extra = b.budget_args if ctx.device.type == "cuda" and not args.full and not args.quick else []
                bargs = b.parser().parse_args(common + extra)
                res, secs = timed(lambda b=b, bargs=bargs: b.run(bargs, ctx), ctx.device)
                res = sanitize(res)
                entry.update({"seconds": secs, "result": res})
                sections.append(res.get("markdown", ""))
                ctx.shared[b.name] = res
                if args.per_bench_files:
                    write_outputs(args.out, f"bench_{b.name}", {**res, "env": report["env"]})
            except Exception as e:  # noqa: BLE001 - a failing bench is recorded, the run goes on
                tb = traceback.format_exc()
                entry = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": tb,
                         "seconds": time.perf_counter() - now}
                sections.append(f"## {b.name}\n\n**failed**: `{type(e).__name__}: {e}`")
                print(tb, file=sys.stderr, flush=True)
                if ctx.device.type == "cuda":
                    try:
                        torch.cuda.synchronize(ctx.device)
                        torch.cuda.empty_cache()
                    except Exception:  # noqa: BLE001
                        pass
        entry.setdefault("seconds", 0.0)
        report["benches"][b.name] = entry
        print(f"[bench_all] {b.name}: {entry['status']} in {entry['seconds']:.1f} s", flush=True)
        if entry["status"] == "ok":
            print(entry["result"].get("markdown", ""), flush=True)
    report["total_s"] = time.perf_counter() - t_start
    timing = md_table(["bench", "status", "seconds"],
                      [[k, v["status"], v.get("seconds")] for k, v in report["benches"].items()]
                      + [["total (incl. startup, data)", "", report["total_s"]]])
    sections.append("## Runtime of this call\n\n" + timing)
    report["markdown"] = "\n\n".join(sections)
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "bench_all.json").write_text(json.dumps(sanitize(report), indent=1, default=_json_default) + "\n")
        (folder / "bench_all.md").write_text(report["markdown"] + "\n")
        print(f"wrote {folder / 'bench_all.json'} and {folder / 'bench_all.md'}")
    print("\n" + timing)
    return report


if __name__ == "__main__":
    main()
