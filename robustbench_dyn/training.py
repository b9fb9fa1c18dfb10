"""Training engine: standard training, fast FGSM adversarial training and PGD-AT.

* The CIFAR-10 train set lives on the device as uint8; random crop (4-pixel zero padding) and
  horizontal flip are done there, one gather per batch (no DataLoader, no host round trips).
* SGD with Nesterov momentum and weight decay; one warm-up epoch (linear), then cosine decay.
  bf16 autocast and channels_last on CUDA. Seeded: epoch e reseeds every RNG with (seed, e), so
  a resumed run draws the same numbers as an uninterrupted one.
* DyConv/ODConv: the attention temperature is annealed linearly from 30 to 1 over the first
  ``temp_anneal_epochs`` epochs (the temperature is a buffer and is saved with the weights).
* Gated: batch-shaping loss (Beta(0.6, 0.4) prior) in the first part of training, then the L0 loss
  ramped in; the mean gate density is reported.
* Adversarial training: FGSM with random start (Wong, Rice and Kolter 2020: eps 8/255, step 10/255)
  or PGD-AT (Madry et al.: 10 steps of 2/255 at 8/255). Each epoch a PGD-10 check on held-out
  training images keeps the best checkpoint (guards against catastrophic overfitting).
* Budget: ``epochs`` fixed, or chosen after the first epoch so the run fits ``time_budget_s``
  (the number chosen is recorded).
* Resumable: the state after every epoch is written (safetensors + JSON) to ``run_dir``; the final
  checkpoint goes to the zoo through :mod:`robustbench_dyn.checkpoints` with its recipe and metrics.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .checkpoints import save_checkpoint
from .costs import count_macs, count_params, gated_cost
from .data import CIFAR10Data, load_cifar10, subset_indices
from .errors import ConfigError
from .layers import ChannelGate, GateRecorder, batch_shaping_loss, l0_loss, set_temperature
from .registry import create_model, get_spec, resolve_name

ADV_MODES = ("none", "fgsm-rs", "pgd")


@dataclass
class Recipe:
    """Every knob of a training run; written verbatim into the zoo manifest."""

    epochs: int | None = None  # fixed number of epochs; None: chosen from time_budget_s after epoch 1
    time_budget_s: float | None = None
    max_epochs: int = 200
    batch_size: int = 512
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    adv: str = "none"  # none | fgsm-rs | pgd
    eps: float = 8 / 255
    fgsm_step: float = 10 / 255
    pgd_steps: int = 10
    pgd_step: float = 2 / 255
    temp_start: float = 30.0
    temp_end: float = 1.0
    temp_anneal_epochs: int = 5
    bs_weight: float = 1.0  # batch-shaping loss weight, full until bs_until, then linearly to 0 at bs_off
    bs_a: float = 0.6
    bs_b: float = 0.4
    bs_until: float = 0.5  # fractions of training
    bs_off: float = 0.6
    l0_weight: float = 0.5  # L0 loss weight, ramped from 0 at l0_from to full at l0_full
    l0_from: float = 0.3
    l0_full: float = 0.6
    grad_clip: float | None = 5.0  # global gradient-norm clipping (stabilises the dynamic layers)
    holdout: int = 1000  # training images held out for the per-epoch check
    check_n: int = 500  # held-out images attacked by the per-epoch PGD-10 check (adversarial training)
    seed: int = 0
    bf16: bool = True  # autocast on CUDA
    channels_last: bool = True  # on CUDA
    train_subset: int | None = None  # train on a seeded subset (CPU smoke runs, tests)
    max_steps: int | None = None  # stop after this many optimizer steps (tests)
    final_test_n: int | None = None  # test images for the final clean accuracy (None: all)
    final_pgd_n: int = 1000  # seeded test images for the final PGD-20 (adversarially trained models)
    note: str = ""

    def validate(self) -> None:
        if self.adv not in ADV_MODES:
            raise ConfigError(f"unknown adversarial training mode {self.adv!r}", f"use one of {', '.join(ADV_MODES)}")
        if self.epochs is None and self.time_budget_s is None:
            raise ConfigError("a training run needs --epochs or --time-budget", "pass e.g. --epochs 30")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}", "pass e.g. --epochs 30")


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------------------ data on device

class DeviceLoader:
    """Whole split on the device as uint8 NCHW; augmentation is one gather per batch."""

    def __init__(self, x: np.ndarray, y: np.ndarray, device: torch.device, batch_size: int) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(x)).to(device).permute(0, 3, 1, 2).contiguous()
        self.y = torch.from_numpy(np.asarray(y, np.int64)).to(device)
        self.xpad = F.pad(self.x, (4, 4, 4, 4))
        self.device, self.batch_size = device, batch_size
        self.arange = torch.arange(32, device=device)

    def __len__(self) -> int:
        return len(self.y) // self.batch_size  # full batches only (fixed shapes, stable BN)

    def epoch(self, gen: torch.Generator):
        n, B = len(self.y), self.batch_size
        perm = torch.randperm(n, generator=gen).to(self.device)
        shifts = torch.randint(0, 9, (n, 2), generator=gen).to(self.device)
        flips = (torch.rand(n, generator=gen) < 0.5).to(self.device)
        ch = torch.arange(3, device=self.device)[None, :, None, None]
        bi = torch.arange(B, device=self.device)[:, None, None, None]
        for i in range(len(self)):
            idx = perm[i * B:(i + 1) * B]
            rows = (shifts[idx, 0, None] + self.arange)[:, None, :, None]
            cols = (shifts[idx, 1, None] + self.arange)
            cols = torch.where(flips[idx, None], cols.flip(1), cols)[:, None, None, :]
            xb = self.xpad[idx][bi, ch, rows, cols]
            yield xb.float().div_(255), self.y[idx]


# ------------------------------------------------------------------------------ attacks used in training

def _pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float, steps: int,
         random_start: bool = True) -> torch.Tensor:
    delta = torch.empty_like(x).uniform_(-eps, eps) if random_start else torch.zeros_like(x)
    delta = ((x + delta).clamp_(0, 1) - x).detach()
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta).float(), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step * grad.sign()).clamp_(-eps, eps)
        delta = ((x + delta).clamp_(0, 1) - x).detach()
    return (x + delta).detach()


def fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float) -> torch.Tensor:
    """FGSM with a uniform random start (Wong et al. 2020)."""
    return _pgd(model, x, y, eps, step, 1, random_start=True)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    return correct / max(len(y), 1)


def pgd_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255, step: float = 2 / 255,
                 steps: int = 20, batch_size: int = 500) -> float:
    """Accuracy under PGD (random start, CE loss), eval mode, fp32."""
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        with torch.enable_grad():
            xa = _pgd(model, xb, yb, eps, step, steps)
        assert (xa - xb).abs().max() <= eps + 1e-6
        with torch.no_grad():
            correct += (model(xa).argmax(1) == yb).sum().item()
    return correct / max(len(y), 1)


@torch.no_grad()
def gate_stats(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> tuple[float, list[float]]:
    """Mean gate density over examples and blocks, and per block (eval mode)."""
    model.eval()
    per_block = None
    for i in range(0, len(x), batch_size):
        with GateRecorder(model, detach=True) as rec:
            model(x[i:i + batch_size])
        sums = torch.stack([g.float().mean(1).sum() for g in rec.gates])
        per_block = sums if per_block is None else per_block + sums
    dens = (per_block / len(x)).tolist()
    return float(np.mean(dens)), dens


# ------------------------------------------------------------------------------ the engine

def to_channels_last(model: nn.Module) -> nn.Module:
    """channels_last for every 4-D parameter (Module.to(memory_format=...) rejects DyConv's 5-D kernels)."""
    for p in model.parameters():
        if p.ndim == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
    return model


def _lr_at(step: int, warm: int, total: int, peak: float) -> float:
    if step < warm:
        return peak * (0.1 + 0.9 * step / max(warm, 1))
    t = (step - warm) / max(total - warm, 1)
    return peak * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def _temperature(epoch_float: float, r: Recipe) -> float:
    if r.temp_anneal_epochs <= 0:
        return r.temp_end
    f = min(epoch_float / r.temp_anneal_epochs, 1.0)
    return r.temp_start + (r.temp_end - r.temp_start) * f


def _gate_weights(progress: float, r: Recipe) -> tuple[float, float]:
    if progress <= r.bs_until:
        bs = r.bs_weight
    elif progress >= r.bs_off:
        bs = 0.0
    else:
        bs = r.bs_weight * (r.bs_off - progress) / (r.bs_off - r.bs_until)
    if progress <= r.l0_from:
        l0 = 0.0
    elif progress >= r.l0_full:
        l0 = r.l0_weight
    else:
        l0 = r.l0_weight * (progress - r.l0_from) / (r.l0_full - r.l0_from)
    return bs, l0


def _versions() -> dict:
    import safetensors

    from . import __version__

    return {"torch": torch.__version__, "robustbench_dyn": __version__, "safetensors": safetensors.__version__,
            "python": platform.python_version()}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores)"


def _save_state(run_dir: Path, model, opt, best, meta: dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for i, group in enumerate(opt.param_groups):
        for j, p in enumerate(group["params"]):
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"opt.{i}.{j}"] = buf.detach().cpu().contiguous()
    if best is not None:
        tensors.update({f"best.{k}": v for k, v in best.items()})
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / ".state.tmp.safetensors"
    save_file(tensors, str(tmp))
    os.replace(tmp, run_dir / "state.safetensors")
    (run_dir / ".state.tmp.json").write_text(json.dumps(meta, indent=1))
    os.replace(run_dir / ".state.tmp.json", run_dir / "state.json")


def _load_state(run_dir: Path, model, opt, device) -> tuple[dict | None, dict]:
    meta = json.loads((run_dir / "state.json").read_text())
    tensors = load_file(str(run_dir / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for i, group in enumerate(opt.param_groups):
        for j, p in enumerate(group["params"]):
            key = f"opt.{i}.{j}"
            if key in tensors:
                opt.state[p]["momentum_buffer"] = tensors[key].to(device)
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    return best, meta


def train(name: str, recipe: Recipe, data_dir=None, models_dir=None, run_dir=None, device: str = "cuda",
          resume: bool = True, log: Callable[[str], None] = print, verbose: bool = True,
          save: bool = True, epoch_sync: Callable[[str, float, int], int] | None = None,
          deadline: float | None = None) -> dict:
    """Train the registered model ``name`` with ``recipe``; returns the manifest entry written.

    ``epoch_sync(name, epoch1_seconds, own_choice) -> epochs`` lets several concurrent runs agree on
    one epoch count when the count comes from a time budget (see :func:`file_epoch_sync`).
    ``deadline`` (unix time): stop training early, with the best state so far, if it is reached
    (a guard for time-limited machines; the manifest records it as ``stopped_early``).
    """
    name = resolve_name(name)
    spec = get_spec(name)
    recipe.validate()
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but CUDA is not available", "use --device cpu")
    on_cuda = dev.type == "cuda"
    r = recipe
    run_dir = Path(run_dir or Path("runs") / name)
    t_start = time.time()

    train_data = load_cifar10("train", data_dir, allow_sample=False)
    test_data = load_cifar10("test", data_dir, allow_sample=False)
    # held-out split of the training set: a seeded subset of `holdout` images (never trained on)
    hold = subset_indices(len(train_data), r.holdout, seed=r.seed + 12345)
    keep = np.setdiff1d(np.arange(len(train_data)), hold)
    if r.train_subset:
        keep = keep[subset_indices(len(keep), min(r.train_subset, len(keep)), seed=r.seed)]
    loader = DeviceLoader(train_data.x[keep], train_data.y[keep], dev, r.batch_size)
    if len(loader) == 0:
        raise ConfigError(f"batch size {r.batch_size} is larger than the {len(keep)} training images",
                          "lower --batch-size")
    x_hold, y_hold = train_data.tensors(hold, device=dev)

    torch.manual_seed(r.seed)
    model = create_model(name).to(dev)
    if on_cuda and r.channels_last:
        to_channels_last(model)
    dyconv_mode = None
    if on_cuda:
        torch.backends.cudnn.benchmark = True
        if spec.conv == "dyconv":  # exact either way; pick the faster computation on this device
            dyconv_mode, timings = choose_dyconv_mode(model, r.batch_size, dev, bf16=r.bf16,
                                                      channels_last=r.channels_last)
            log(f"[{name}] DyConv mode {dyconv_mode} (fwd+bwd ms per batch: {timings})")
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": r.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=r.lr, momentum=r.momentum, nesterov=True)
    gated = any(isinstance(m, ChannelGate) for m in model.modules())
    dynamic = spec.conv in ("dyconv", "odconv")
    steps_per_epoch = len(loader)
    warm_steps = r.warmup_epochs * steps_per_epoch
    total_epochs = r.epochs
    start_epoch, step, best, best_score = 0, 0, None, -1.0
    history: list[dict] = []
    elapsed_before = 0.0
    recipe_json = asdict(r)
    if resume and (run_dir / "state.json").exists():
        best, meta = _load_state(run_dir, model, opt, dev)
        if meta.get("recipe") != recipe_json:
            log(f"[{name}] {run_dir} holds a run with another recipe: starting over")
            best, start_epoch = None, 0
            model = create_model(name).to(dev)
        else:
            start_epoch, step = meta["epoch"], meta["step"]
            total_epochs, best_score = meta["total_epochs"], meta["best_score"]
            history, elapsed_before = meta["history"], meta["elapsed_s"]
            log(f"[{name}] resumed after epoch {start_epoch}/{total_epochs}")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda and r.bf16)
    t0 = time.time() - elapsed_before
    stop = stopped_early = False
    epoch = start_epoch
    while not stop:
        est_total = total_epochs or r.max_epochs
        if epoch >= est_total:
            break
        gen = torch.Generator().manual_seed(r.seed * 100003 + epoch)
        torch.manual_seed(r.seed * 100003 + epoch)
        model.train()
        t_ep = time.time()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev)
        seen = 0
        for xb, yb in loader.epoch(gen):
            total_steps = (total_epochs or r.max_epochs) * steps_per_epoch
            progress = step / total_steps
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, warm_steps, total_steps, r.lr)
            if dynamic:
                current_t = _temperature(step / steps_per_epoch, r)
                set_temperature(model, current_t)
            if on_cuda and r.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast:
                if r.adv == "fgsm-rs":
                    xb = fgsm_rs(model, xb, yb, r.eps, r.fgsm_step)
                elif r.adv == "pgd":
                    xb = _pgd(model, xb, yb, r.eps, r.pgd_step, r.pgd_steps)
                if gated:
                    with GateRecorder(model) as rec:
                        out = model(xb)
                else:
                    out = model(xb)
                loss = F.cross_entropy(out.float(), yb)
                if gated:
                    w_bs, w_l0 = _gate_weights(progress, r)
                    probs = rec.probabilities()
                    if w_bs > 0:
                        loss = loss + w_bs * sum(batch_shaping_loss(p, r.bs_a, r.bs_b) for p in probs) / len(probs)
                    if w_l0 > 0:
                        loss = loss + w_l0 * sum(l0_loss(p) for p in probs) / len(probs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if r.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
            opt.step()
            loss_sum += loss.detach()
            correct += (out.argmax(1) == yb).sum()
            seen += len(yb)
            step += 1
            if r.max_steps and step >= r.max_steps:
                stop = True
                break
            if deadline is not None and time.time() > deadline:
                stop = stopped_early = True
                break
        epoch += 1
        ep_time = time.time() - t_ep
        # per-epoch check on held-out training images
        model.eval()
        val = {"epoch": epoch, "train_loss": (loss_sum / max(seen // r.batch_size, 1)).item(),
               "train_acc": (correct / max(seen, 1)).item(), "holdout_acc": accuracy(model, x_hold, y_hold)}
        if r.adv != "none":
            val["holdout_pgd10"] = pgd_accuracy(model, x_hold[:r.check_n], y_hold[:r.check_n], r.eps, 2 / 255, 10)
            score = val["holdout_pgd10"]
        else:
            score = val["holdout_acc"]
        if gated:
            val["holdout_gate_density"] = gate_stats(model, x_hold)[0]
        if dynamic:
            val["temperature"] = current_t  # the value in the model's buffers (saved with the weights)
        val["lr"] = opt.param_groups[0]["lr"]
        val["epoch_s"] = round(ep_time, 2)
        if score >= best_score:  # keep the best epoch on the held-out check (not the test set)
            best_score = score
            best = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
            val["kept"] = True
        history.append(val)
        if total_epochs is None:  # choose the epoch count that fits the budget, from epoch 1's time
            per_epoch = time.time() - t0
            total_epochs = int(max(2, min(r.max_epochs, r.time_budget_s // per_epoch)))
            if epoch_sync is not None:  # a group of runs agrees on one epoch count (train_zoo.py)
                total_epochs = epoch_sync(name, per_epoch, total_epochs)
            log(f"[{name}] epoch 1 took {per_epoch:.1f}s: training {total_epochs} epochs "
                f"(budget {r.time_budget_s:.0f}s{', synchronised with its group' if epoch_sync else ''})")
        if verbose:
            msg = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in val.items())
            log(f"[{name}] {msg}")
        _save_state(run_dir, model, opt, best, {
            "name": name, "recipe": recipe_json, "epoch": epoch, "step": step, "total_epochs": total_epochs,
            "best_score": best_score, "history": history, "elapsed_s": time.time() - t0})
    train_time = time.time() - t0

    # final model = best kept state; metrics in fp32 on the test set
    model.load_state_dict(best)
    for p_ in model.parameters():
        p_.data = p_.data.contiguous()
    model.eval()
    test_idx = test_data.subset(r.final_test_n, seed=0) if r.final_test_n else None
    x_test, y_test = test_data.tensors(test_idx, device=dev)
    metrics: dict = {"clean_acc": accuracy(model, x_test, y_test), "clean_n": len(y_test),
                     "clean_data": test_data.label, "holdout_acc": history[-1]["holdout_acc"] if history else None}
    if r.adv != "none":
        pidx = test_data.subset(min(r.final_pgd_n, len(test_data)), seed=0)
        xp, yp = test_data.tensors(pidx, device=dev)
        metrics.update({"pgd20_acc": pgd_accuracy(model, xp, yp, 8 / 255, 2 / 255, 20), "pgd20_n": len(yp),
                        "pgd20_settings": "Linf eps 8/255, step 2/255, 20 steps, random start, CE, subset seed 0"})
    macs = count_macs(model)
    if gated:
        dens, per_block = gate_stats(model, x_test)
        cost = gated_cost(model)
        metrics.update({"mean_gate_density": dens, "gate_density_per_block": per_block,
                        "mean_executed_macs": float(cost.macs(per_block)),
                        "executed_macs_ratio_vs_full": float(cost.macs(per_block)) / cost.full})
    entry = {
        "name": name, "arch": spec.arch, "arch_kwargs": spec.arch_kwargs, "spec": spec.to_dict(),
        "recipe": recipe_json, "seed": r.seed, "epochs": epoch, "train_time_s": round(train_time, 1),
        "wall_time_s": round(time.time() - t_start, 1), "device": _device_name(dev),
        "dataset": {"train": {**train_data.describe(), "n_used": len(keep), "holdout": len(hold)},
                    "test": test_data.describe(), "label": train_data.label},
        "metrics": metrics, "params": count_params(model), "macs": macs, "history": history,
        "dyconv_mode": dyconv_mode, "stopped_early": stopped_early,
        "versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if save:
        entry = save_checkpoint(model.cpu(), name, entry, models_dir)
    return entry


def file_epoch_sync(sync_dir, timeout_s: float = 150.0) -> Callable[[str, float, int], int]:
    """Epoch agreement through files: each run writes ``NAME.t`` (its epoch-1 seconds) into
    ``sync_dir`` and waits for ``decision`` (an integer written by the coordinator, scripts/train_zoo.py).
    Falls back to the run's own choice after ``timeout_s``."""
    sync = Path(sync_dir)

    def _sync(name: str, seconds: float, own: int) -> int:
        sync.mkdir(parents=True, exist_ok=True)
        (sync / f".{name}.t").write_text(f"{seconds}")
        os.replace(sync / f".{name}.t", sync / f"{name}.t")
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if (sync / "decision").exists():
                try:
                    return int((sync / "decision").read_text().strip())
                except ValueError:
                    pass
            time.sleep(0.5)
        return own

    return _sync


def choose_dyconv_mode(model: nn.Module, batch_size: int, device, bf16: bool = True, channels_last: bool = True,
                       iters: int = 5) -> tuple[str, dict]:
    """Time a training step (fwd + bwd) in each exact DyConv computation and keep the faster."""
    from .layers import set_dyconv_mode

    x = torch.rand(batch_size, 3, 32, 32, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device=device)
    timings = {}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    for mode in ("dense", "grouped"):
        set_dyconv_mode(model, mode)
        for i in range(iters + 2):
            if i == 2:
                torch.cuda.synchronize(device)
                t = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
        torch.cuda.synchronize(device)
        timings[mode] = round((time.perf_counter() - t) / iters * 1000, 2)
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)  # undo the BN statistics updates of the timing steps
    best = min(timings, key=timings.get)
    set_dyconv_mode(model, best)
    return best, timings


def make_recipe(name: str, **overrides) -> Recipe:
    """The default recipe for a zoo name: `_at` models get FGSM-RS adversarial training."""
    spec = get_spec(name)
    base = {"adv": "fgsm-rs"} if spec.training == "at" else {}
    base.update({k: v for k, v in overrides.items() if v is not None})
    return Recipe(**base)


__all__ = ["ADV_MODES", "CIFAR10Data", "DeviceLoader", "Recipe", "accuracy", "fgsm_rs", "gate_stats",
           "file_epoch_sync", "make_recipe", "pgd_accuracy", "train"]
