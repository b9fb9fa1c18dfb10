#!/usr/bin/env python3
"""The ResNet-50 family (resnet50_static, _dyconv_k4, _odconv_k4, _gated): prepare, train, smoke-test.

    python scripts/train_r50.py prepare [--dest .gpu_r50]    # here: what the GPU machine needs, see below
    python scripts/train_r50.py train --device cuda --train-until UNIX_TIME [--epochs N] [-- TRAIN_ZOO_ARGS]
    python scripts/train_r50.py smoke [--data-dir DIR]       # CPU: 2 optimizer steps per model, timed

``train`` trains the four models concurrently on one GPU with one recipe (v2) and one epoch count. Unless
``--epochs`` is given, the count is calibrated first: each model's training step (batch, bf16 autocast,
channels_last, the DyConv mode the engine would pick) is timed alone for a few steps, and the epochs are
``floor(time left / (sum of the four epoch times x --safety))``: on one GPU the four runs share the device,
so an epoch of all four costs about the sum. The runs then go through scripts/train_zoo.py with ``--epochs``
(so the temperature anneal and the learning-rate schedule see the real length) and a deadline that stops
training, keeping the state reached (recorded as ``stopped_early``), if the estimate was wrong.

``prepare`` fills a folder to carry to the GPU machine (the device tool sends the checkout plus carried paths,
64 MiB in all, and the checkout alone is ~47 MB): the CIFAR-10 JPEG packs re-saved as *compressed* npz (the
same arrays, so the same pixels and digests: 56 MB -> ~18 MB, the repeated JPEG headers compress away),
unpack.py, and torchattacks + pyautoattack as site.tgz (pure Python, copied from this environment without
pyautoattack's 44 MB examples/), and lists the folder in .git/info/exclude. It prints what will travel and
fails if it does not fit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ("resnet50_static", "resnet50_dyconv_k4", "resnet50_odconv_k4", "resnet50_gated")
LIMIT = 64 * 2**20  # what the device tool carries: tracked + untracked-not-ignored files + carried paths
SHARED = ROOT.parent / "shared" / "data" / "cifar10"


# ------------------------------------------------------------------------------------------------ prepare

def _tree_bytes() -> int:
    """Bytes of what travels without carry: tracked files and untracked files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / p.decode()).stat().st_size for p in out if p and (ROOT / p.decode()).is_file())


def prepare(dest: Path, source: Path, margin: int) -> int:
    import numpy as np

    dest = dest if dest.is_absolute() else ROOT / dest
    dest.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        src = source / f"cifar10-{split}-jpeg.npz"
        if not src.exists():
            print(f"error: {src} not found. Fix: pass --source, the folder of the CIFAR-10 JPEG packs", file=sys.stderr)
            return 2
        target = dest / src.name
        if not target.exists() or target.stat().st_mtime < src.stat().st_mtime:
            with np.load(src, allow_pickle=False) as pack:
                arrays = {k: pack[k] for k in pack.files}
            np.savez_compressed(dest / f".{src.name}", **arrays)
            os.replace(dest / f".{src.name}", target)
        print(f"{target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}: "
              f"{target.stat().st_size / 1e6:.1f} MB (from {src.stat().st_size / 1e6:.1f} MB)")
    (dest / "unpack.py").write_bytes((source / "unpack.py").read_bytes())
    import pyautoattack
    import torchattacks

    site = Path(torchattacks.__file__).parent.parent
    with tarfile.open(dest / "site.tgz", "w:gz") as tar:
        for mod in (torchattacks, pyautoattack):
            pkg = Path(mod.__file__).parent
            tar.add(pkg, arcname=pkg.name,
                    filter=lambda t: None if "__pycache__" in t.name or "/examples" in t.name else t)
        for info in site.glob("*.dist-info"):
            if info.name.startswith(("torchattacks-", "pyautoattack-")):
                tar.add(info, arcname=info.name)
    carried = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    tree = _tree_bytes()
    rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else None
    if rel:
        exclude = ROOT / ".git" / "info" / "exclude"
        lines = exclude.read_text().splitlines() if exclude.exists() else []
        if f"/{rel}/" not in lines:
            exclude.parent.mkdir(parents=True, exist_ok=True)
            exclude.write_text("\n".join([*lines, f"/{rel}/"]) + "\n")
            print(f"added /{rel}/ to .git/info/exclude")
    total = tree + carried
    print(f"travels: checkout {tree / 2**20:.1f} MiB + {rel or dest} {carried / 2**20:.1f} MiB = "
          f"{total / 2**20:.1f} MiB of {LIMIT / 2**20:.0f} MiB (margin {(LIMIT - total) / 2**20:.1f} MiB)")
    if total + margin > LIMIT:
        print(f"error: the checkout plus the carried folder exceed the device tool's 64 MiB by "
              f"{(total + margin - LIMIT) / 2**20:.1f} MiB. Fix: make that much room in the checkout (tracked and "
              "untracked-not-ignored files travel; e.g. large checkpoints or reports/index.html) or carry less",
              file=sys.stderr)
        return 2
    print(f"carry it: run(carry=['{rel or dest}'], command='bash scripts/gpu_train_r50.sh')")
    return 0


# ------------------------------------------------------------------------------------------------ calibrate

def step_seconds(name: str, batch_size: int, device: str, steps: int = 4, warmup: int = 2,
                 bf16: bool = True) -> tuple[float, str | None, float]:
    """(seconds per training step of ``name`` alone, its DyConv mode, peak GPU memory in GiB) with the engine's
    settings: bf16 autocast (or fp32), channels_last, SGD Nesterov with the no-decay groups, gradient clipping,
    the gate losses of a gated model."""
    import torch
    import torch.nn.functional as F

    from robustbench_dyn.layers import ChannelGate, GateRecorder, batch_shaping_loss, set_dyconv_mode
    from robustbench_dyn.registry import create_model, get_spec
    from robustbench_dyn.training import choose_dyconv_mode, param_groups, to_channels_last

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    model = create_model(name).to(dev)
    mode = None
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(dev)
        to_channels_last(model)
        if get_spec(name).conv == "dyconv":
            mode, _ = choose_dyconv_mode(model, batch_size, dev, bf16=bf16, channels_last=True, iters=2)
            set_dyconv_mode(model, mode)
    opt = torch.optim.SGD(param_groups(model, 5e-4), lr=0.01, momentum=0.9, nesterov=True)
    gated = any(isinstance(m, ChannelGate) for m in model.modules())
    x = torch.rand(batch_size, 3, 32, 32, device=dev)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device=dev)
    model.train()
    t = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            if cuda:
                torch.cuda.synchronize(dev)
            t = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda and bf16):
            if gated:
                with GateRecorder(model) as rec:
                    out = model(x)
                probs = rec.probabilities()
                loss = F.cross_entropy(out.float(), y) + sum(batch_shaping_loss(p, 0.6, 0.4) for p in probs)
            else:
                loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    if cuda:
        torch.cuda.synchronize(dev)
    sec = (time.perf_counter() - t) / steps
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else 0.0
    del model, opt, x, y, loss
    if cuda:
        torch.cuda.empty_cache()
    return sec, mode, peak


def choose_epochs(epoch_s: dict[str, float], seconds: float, safety: float, max_epochs: int) -> int:
    """Epochs of the whole group that fit ``seconds``: the four runs share one GPU, so an epoch costs the sum."""
    per_epoch = sum(epoch_s.values()) * safety
    return int(max(1, min(max_epochs, math.floor(seconds / max(per_epoch, 1e-9)))))


def choose_precision(calib: dict[str, dict[str, tuple[float, float]]], memory_gib: float) -> str:
    """The precision ("bf16" or "fp32") whose summed epoch time is smaller among those whose summed peak memory
    (the four runs live on the GPU together) fits ``memory_gib``; the smaller footprint if neither fits.
    ``calib[precision][model] = (seconds per epoch, peak GiB)``."""
    fits = [p for p in calib if sum(m for _, m in calib[p].values()) <= memory_gib]
    if not fits:
        return min(calib, key=lambda p: sum(m for _, m in calib[p].values()))
    return min(fits, key=lambda p: sum(s for s, _ in calib[p].values()))


def train_cmd(a, passthrough: list[str]) -> int:
    import torch

    models = [m.strip() for m in a.models.split(",") if m.strip()]
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    until = a.train_until or (time.time() + a.train_seconds)
    epochs, report = a.epochs, {"models": models, "batch_size": a.batch_size, "lr": a.lr, "device": device}
    precision = a.precision
    if epochs is None:
        train_n = 50000 - a.holdout
        steps_per_epoch = train_n // a.batch_size
        calib: dict[str, dict[str, tuple[float, float]]] = {}
        modes = {}
        for prec in (("bf16", "fp32") if precision == "auto" else (precision,)):
            calib[prec] = {}
            for name in models:
                try:
                    sec, mode, peak = step_seconds(name, a.batch_size, device, steps=a.calib_steps,
                                                   bf16=prec == "bf16")
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    sec, mode, peak = float("inf"), None, float("inf")
                # + the per-epoch held-out check (2000 forward passes ~ 1/3 of their training cost)
                calib[prec][name] = (sec * steps_per_epoch + sec * (a.holdout / a.batch_size) / 3, peak)
                modes[f"{name} {prec}"] = mode
                print(f"calibration {prec}: {name}: {1000 * sec:.1f} ms/step at batch {a.batch_size} -> "
                      f"{calib[prec][name][0]:.1f} s/epoch alone, peak {peak:.1f} GiB"
                      f"{f' (DyConv {mode})' if mode else ''}", flush=True)
        total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if device == "cuda" else 1e9
        if precision == "auto":
            precision = choose_precision(calib, a.memory_frac * total_gib)
        epoch_s = {m: v[0] for m, v in calib[precision].items()}
        left = until - time.time() - a.startup_s
        epochs = choose_epochs(epoch_s, left, a.safety, a.max_epochs)
        report.update({"calibration": calib, "dyconv_mode": modes, "seconds_for_training": left, "safety": a.safety,
                       "gpu_memory_gib": total_gib})
        print(f"calibration: {precision}: sum {sum(epoch_s.values()):.1f} s/epoch x safety {a.safety} for "
              f"{left:.0f} s -> {epochs} epochs for all four", flush=True)
    if precision == "auto":
        precision = "bf16"  # the recipe's default
    report.update({"epochs": epochs, "precision": precision})
    if precision == "fp32":
        passthrough = ["--set", "bf16=false", *passthrough]
    if a.report:
        Path(a.report).write_text(json.dumps(report, indent=1))
    cmd = [sys.executable, str(ROOT / "scripts" / "train_zoo.py"), "--models", ",".join(models), "--device", device,
           "--epochs", str(epochs), "--deadline-s", str(max(1.0, until - time.time())),
           "--runs-dir", a.runs_dir, "--batch-size", str(a.batch_size), "--lr", str(a.lr), "--holdout", str(a.holdout),
           *passthrough]
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.call(cmd)


# ------------------------------------------------------------------------------------------------ smoke

SMOKE_ARGS = ["--epochs", "1", "--max-steps", "2", "--batch-size", "8", "--train-subset", "64", "--holdout", "32",
              "--final-test-n", "32", "--final-pgd-n", "8", "--set", "audit_n=16", "--device", "cpu",
              "--threads", "1", "--no-resume"]


def smoke(a) -> int:
    import tempfile

    models = [m.strip() for m in a.models.split(",") if m.strip()]
    results, failed = {}, []
    with tempfile.TemporaryDirectory(prefix="r50smoke") as tmp:
        for name in models:
            cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--model", name, *SMOKE_ARGS,
                   "--models-dir", f"{tmp}/models", "--run-dir", f"{tmp}/runs/{name}", "--note", "CPU smoke run"]
            if a.data_dir:
                cmd += ["--data-dir", a.data_dir]
            t = time.time()
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            wall = time.time() - t
            last = (proc.stdout.strip().splitlines() or [""])[-1]
            print(f"{name}: exit {proc.returncode}, {wall:.1f} s wall: {last}", flush=True)
            if proc.returncode:
                print(proc.stderr[-3000:], file=sys.stderr)
                failed.append(name)
                continue
            from robustbench_dyn.checkpoints import read_manifest

            e = read_manifest(f"{tmp}/models")[name]
            results[name] = {"wall_s": round(wall, 1), "train_time_s": e["train_time_s"],
                             "entry_wall_time_s": e["wall_time_s"], "bytes": e["bytes"],
                             "storage_dtype": e.get("storage_dtype", "float32"), "params": e["params"],
                             "audit": (e.get("audit") or {}).get("verdict")}
    print(json.dumps(results, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="fill the folder carried to the GPU machine")
    pp.add_argument("--dest", type=Path, default=Path(".gpu_r50"))
    pp.add_argument("--source", type=Path, default=SHARED, help="folder of the CIFAR-10 JPEG packs and unpack.py")
    pp.add_argument("--margin-mib", type=float, default=0.5, help="room to leave under the 64 MiB")
    pt = sub.add_parser("train", help="calibrate the epoch count, then train the four models concurrently")
    pt.add_argument("--models", default=",".join(MODELS))
    pt.add_argument("--device", default=None)
    pt.add_argument("--epochs", type=int, default=None, help="skip the calibration")
    pt.add_argument("--train-until", type=float, default=None,
                    help="unix time at which training stops (each run then evaluates and saves)")
    pt.add_argument("--train-seconds", type=float, default=300.0, help="instead of --train-until")
    pt.add_argument("--batch-size", type=int, default=512)
    pt.add_argument("--lr", type=float, default=0.2)
    pt.add_argument("--holdout", type=int, default=2000)
    pt.add_argument("--calib-steps", type=int, default=4)
    pt.add_argument("--safety", type=float, default=1.2,
                    help="factor on the summed epoch time (time slicing between the runs, startup of each epoch)")
    pt.add_argument("--startup-s", type=float, default=30.0,
                    help="seconds each run needs before its first step (data, model, cuDNN autotuning)")
    pt.add_argument("--max-epochs", type=int, default=200)
    pt.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                    help="training precision of all four; auto: calibrate both, keep the faster that fits memory "
                         "(ODConv's per-example grouped convolution was 3x slower in bf16 than fp32 on the H100)")
    pt.add_argument("--memory-frac", type=float, default=0.8,
                    help="share of the GPU memory the four runs' calibrated peaks may fill together")
    pt.add_argument("--runs-dir", default="runs/r50", help="resumable state and logs of the runs (train_zoo.py)")
    pt.add_argument("--report", default=None, help="write the calibration and the chosen epochs as JSON here")
    ps = sub.add_parser("smoke", help="2 CPU training steps per model through scripts/train.py, timed")
    ps.add_argument("--models", default=",".join(MODELS))
    ps.add_argument("--data-dir", default=None)
    ps.add_argument("--json", default=None)
    a, passthrough = p.parse_known_args(argv)
    if passthrough and passthrough[0] == "--":
        passthrough = passthrough[1:]
    if passthrough and a.cmd != "train":
        p.error(f"unrecognized arguments: {' '.join(passthrough)}")
    if a.cmd == "prepare":
        return prepare(a.dest, a.source, int(a.margin_mib * 2**20))
    if a.cmd == "train":
        return train_cmd(a, passthrough)
    return smoke(a)


if __name__ == "__main__":
    sys.exit(main())
