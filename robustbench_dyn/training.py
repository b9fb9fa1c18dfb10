"""Training engine: standard training, fast FGSM adversarial training and PGD-AT.

* The CIFAR-10 train set lives on the device as uint8; random crop (4-pixel zero padding) and
  horizontal flip are done there, one gather per batch (no DataLoader, no host round trips).
* SGD with Nesterov momentum and weight decay; one warm-up epoch (linear), then cosine decay.
  bf16 autocast and channels_last on CUDA. Seeded: epoch e reseeds every RNG with (seed, e), so
  a resumed run draws the same numbers as an uninterrupted one.
* bf16 autocast on CUDA and on CPUs with native bf16 (avx512_bf16 / AMX): about 2x on the 2-core
  training CPU (BENCHMARKS.md); ``threads`` sets torch's intra-op threads (two single-thread runs side
  by side beat one two-thread run).
* The fixed recipes (layer version 2, ``attn_norm``): no weight decay on attention and gate parameters,
  norms and biases; the attention temperature is annealed linearly per iteration from 30 to 1 over the
  first ``temp_anneal_frac`` of the steps and is exactly 1 in the shipped checkpoint.
* Gated: batch-shaping loss toward the Beta(0.6, 0.4) prior (strong, kept on until late), a hinge on the
  executed-MAC ratio above ``mac_budget`` (instead of an L0 term that pushes density to the floor), and
  the Gumbel noise annealed to 0 so that the end of training uses the eval rule (logit > 0).
* Adversarial training: FGSM with random start (Wong, Rice and Kolter 2020: eps 8/255, step 10/255)
  or PGD-AT (Madry et al.: 10 steps of 2/255 at 8/255), from scratch or as fine-tuning of a standard
  checkpoint (``init_from``, Jeddi et al. 2020). The final epoch is kept, unless a held-out PGD-10 check
  (``check_n`` >= 2000 images) detects catastrophic overfitting: a drop from the best epoch beyond
  ``co_sigmas`` standard errors of the difference; then the best epoch is kept, and its metrics reported.
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
from .layers import ChannelGate, GateRecorder, batch_shaping_loss, set_temperature
from .registry import create_model, get_spec, resolve_name

ADV_MODES = ("none", "fgsm-rs", "pgd")


@dataclass
class Recipe:
    """Every knob of a training run; written verbatim into the zoo manifest."""

    epochs: int | None = None  # fixed number of epochs; None: chosen from time_budget_s after epoch 1
    time_budget_s: float | None = None
    max_epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
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
    temp_anneal_frac: float = 0.1  # fraction of the steps over which T goes temp_start -> temp_end
    #: batch-shaping loss weight, full until bs_until, then linearly to 0 at bs_off. 1.0 from the session-4 pilots
    #: (10 epochs): 2.0 gave dynamic gates at 76.4 %, 0.5 conditional gates the classifier did not need (a fixed
    #: majority mask within 0.4 pt: audit static), 1.0 dynamic gates (majority mask -2.6 pt) at 78.6 %
    bs_weight: float = 1.0
    bs_a: float = 0.6
    bs_b: float = 0.4
    #: fraction of each gated block's channels (the first ones) that batch shaping acts on; the others are shaped
    #: by the CE and the MAC hinge alone and may settle always on or off. 1.0 = every gate (the v2 default)
    bs_channels: float = 1.0
    bs_until: float = 0.9  # fractions of training
    bs_off: float = 1.0
    mac_budget: float = 0.65  # gated: executed MACs / full MACs aimed at (a hinge above it; pilots land on it)
    budget_weight: float = 4.0
    #: what the MAC hinge sees: "hard" = the straight-through gates (forward: the 0/1 gates that run, so the
    #: hinge bounds the executed MACs; backward: the relaxed sample's gradient), "soft" = gate probabilities
    #: (session-3 pilot; soft means can sit under the budget while the hard gates that run are mostly open)
    budget_gates: str = "hard"
    gate_noise_start: float = 0.5  # Gumbel noise scale, annealed linearly to gate_noise_end over training
    gate_noise_end: float = 0.0
    #: gated: fraction of the steps over which batch shaping, the MAC hinge and the gate noise ramp in linearly
    #: from 0 (0: on from the first step, the v2 default). The gates start near-open, so the first steps train
    #: an almost static net instead of one with randomly switched channels (the 10-epoch pilots g2/g3 trailed
    #: static by 14 pt of train accuracy after epoch 1)
    gate_warmup: float = 0.0
    #: gated: fraction of the steps during which every gate is held open (the net trains as its static twin, the
    #: gate modules idle); the gates and the warm-up ramp start after it. The equal-budget form of starting the
    #: gates from a trained static net (Bejnordi et al. fine-tune pretrained weights): 0 = off (the v2 default)
    gate_open: float = 0.0
    #: gated: the gates read a detached copy of the block input in training (their losses shape only the gate
    #: layers, not the trunk's features; see ChannelGate.detach_input). False = the v2 default
    gate_detach: bool = False
    #: gated: the gates' output layer starts with zero weights, so every input gets the same gates (its bias: open)
    #: and the first steps train the full net instead of one with randomly closed channels (the pilots' gated nets
    #: trail the static and the width-matched slim net by 3-6 pt of train accuracy after epoch 1); the input
    #: dependence grows as those weights learn. Not applied with ``init_from``. False = the v2 default
    gate_zero_init: bool = False
    l0_weight: float = 0.0  # the first zoo's L0 term (expected open fraction), ramped in over l0_from..l0_full
    l0_from: float = 0.3
    l0_full: float = 0.6
    attn_norm: bool | None = None  # layer version: None = the registry's (True); False = the first zoo's layers
    no_decay_dynamic: bool = True  # no weight decay on attention/gate parameters (and norms, biases)
    grad_clip: float | None = 5.0  # global gradient-norm clipping (stabilises the dynamic layers)
    holdout: int = 2000  # training images held out for the per-epoch check
    check_n: int = 2000  # held-out images attacked by the per-epoch PGD-10 check (adversarial training)
    keep: str = "final"  # final (catastrophic overfitting -> best) | best (best held-out epoch)
    co_sigmas: float = 4.0
    init_from: str | None = None  # start from this zoo checkpoint (adversarial fine-tuning)
    seed: int = 0
    bf16: bool = True  # autocast on CUDA, and on CPUs with native bf16
    channels_last: bool = True  # on CUDA
    threads: int | None = None  # torch intra-op threads on the CPU (None: torch's default)
    train_subset: int | None = None  # train on a seeded subset (CPU smoke runs, tests)
    max_steps: int | None = None  # stop after this many optimizer steps (tests)
    final_test_n: int | None = None  # test images for the final clean accuracy (None: all)
    final_pgd_n: int = 1000  # seeded test images for the final PGD-20 (adversarially trained models)
    audit_n: int = 1000  # seeded test images for the dynamism audit written into the manifest (0: none)
    note: str = ""

    def validate(self) -> None:
        if self.adv not in ADV_MODES:
            raise ConfigError(f"unknown adversarial training mode {self.adv!r}", f"use one of {', '.join(ADV_MODES)}")
        if self.epochs is None and self.time_budget_s is None:
            raise ConfigError("a training run needs --epochs or --time-budget", "pass e.g. --epochs 30")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}", "pass e.g. --epochs 30")
        if not 0.0 <= self.gate_warmup < 1.0:
            raise ConfigError(f"gate_warmup is a fraction of training in [0, 1), got {self.gate_warmup}",
                              "use e.g. --set gate_warmup=0.3")
        if not 0.0 <= self.gate_open or self.gate_open + self.gate_warmup >= 1.0:
            raise ConfigError(f"gate_open + gate_warmup must leave training with live gates: gate_open="
                              f"{self.gate_open}, gate_warmup={self.gate_warmup} (sum must be < 1)",
                              "use e.g. --set gate_open=0.4 --set gate_warmup=0.2")
        if not 0.0 < self.bs_channels <= 1.0:
            raise ConfigError(f"bs_channels is a fraction of each block's gates in (0, 1], got {self.bs_channels}",
                              "use e.g. --set bs_channels=0.5")
        if self.budget_gates not in ("hard", "soft"):
            raise ConfigError(f"budget_gates must be 'hard' or 'soft', got {self.budget_gates!r}",
                              "use --set budget_gates=hard")
        if self.keep not in ("final", "best"):
            raise ConfigError(f"keep must be 'final' or 'best', got {self.keep!r}", "use --keep final")


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


def _temperature(progress: float, r: Recipe) -> float:
    """Attention temperature at a fraction ``progress`` of the steps: linear temp_start -> temp_end over
    the first ``temp_anneal_frac``, then exactly temp_end."""
    if r.temp_anneal_frac <= 0 or progress >= r.temp_anneal_frac:
        return r.temp_end
    return r.temp_start + (r.temp_end - r.temp_start) * progress / r.temp_anneal_frac


def _gate_schedule(progress: float, r: Recipe) -> tuple[float, float, float]:
    """(batch-shaping weight, Gumbel noise scale, MAC-hinge weight) at a fraction ``progress`` of the steps.
    All three are scaled by the warm-up ramp ``min((progress - gate_open) / gate_warmup, 1)`` (0 while the gates
    are held open, see :func:`_gates_held_open`)."""
    if progress <= r.bs_until:
        bs = r.bs_weight
    elif progress >= r.bs_off:
        bs = 0.0
    else:
        bs = r.bs_weight * (r.bs_off - progress) / (r.bs_off - r.bs_until)
    noise = r.gate_noise_start + (r.gate_noise_end - r.gate_noise_start) * min(max(progress, 0.0), 1.0)
    live = max(progress - r.gate_open, 0.0)
    if r.gate_warmup > 0:
        ramp = min(live / r.gate_warmup, 1.0)
    else:
        ramp = 1.0 if progress >= r.gate_open else 0.0
    return bs * ramp, noise * ramp, r.budget_weight * ramp


def _shaped(probs: torch.Tensor, frac: float) -> torch.Tensor:
    """The (B, C) gate probabilities that batch shaping acts on: the first ``round(frac * C)`` channels (>= 1)."""
    return probs if frac >= 1.0 else probs[:, : max(1, round(frac * probs.shape[1]))]


def zero_gate_weights(model: nn.Module) -> int:
    """Zero the output-layer weights of every ChannelGate (``Recipe.gate_zero_init``): each gate's logit is then its
    bias for every input until the weights learn. Returns the number of gates changed."""
    gates = [m for m in model.modules() if isinstance(m, ChannelGate)]
    with torch.no_grad():
        for m in gates:
            m.fc2.weight.zero_()
    return len(gates)


def _gates_held_open(progress: float, r: Recipe) -> bool:
    """True during the first ``gate_open`` fraction of the steps, when every gate is forced to 1."""
    return progress < r.gate_open


def mac_ratio(probs: list[torch.Tensor], cost) -> torch.Tensor:
    """Expected executed MACs / full MACs of a gated model from its per-block gate probabilities
    (differentiable; ``cost`` is :func:`robustbench_dyn.costs.gated_cost` of the model)."""
    dens = torch.stack([p.float().mean() for p in probs])
    shares = torch.tensor(cost.gated, dtype=torch.float32, device=dens.device)
    return (cost.base + (dens * shares).sum()) / cost.full


def param_groups(model: nn.Module, weight_decay: float, no_decay_dynamic: bool = True) -> list[dict]:
    """Two SGD groups: with weight decay (conv/linear weights, DyConv kernels) and without (norms, biases,
    and, with ``no_decay_dynamic``, every parameter of an attention or gate module: weight decay pulls
    their logits to zero, i.e. toward uniform attention and always-half-open gates)."""
    from .layers import KernelAttention, OmniAttention

    dynamic_ids = set()
    if no_decay_dynamic:
        for m in model.modules():
            if isinstance(m, (KernelAttention, OmniAttention, ChannelGate)):
                dynamic_ids.update(id(p) for p in m.parameters())
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 or id(p) in dynamic_ids else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 natively (avx512_bf16 or AMX): there autocast roughly doubles training."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # pragma: no cover - probes differ across torch builds
            pass
    return False


def catastrophic_overfit(best: float, last: float, n: int, sigmas: float) -> bool:
    """True when the held-out PGD accuracy ``last`` fell below ``best`` by more than ``sigmas`` standard
    errors of the difference of two proportions measured on ``n`` images each."""
    p = min(max((best + last) / 2, 1.0 / n), 1 - 1.0 / n)
    se = math.sqrt(2 * p * (1 - p) / n)
    return best - last > sigmas * se


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


# Recipe fields that do not change what is trained: a run may resume with other values.
_RESUME_FREE_FIELDS = ("note", "threads")


def _read_state_meta(run_dir: Path) -> dict:
    return json.loads((run_dir / "state.json").read_text())


def _recipe_changes(saved: dict, current: dict) -> list[str]:
    """The settings in which ``current`` differs from the ``saved`` recipe of an unfinished run.

    A field that an older state lacks counts as its default (the field was added since), so adding a
    recipe field does not orphan the runs under way."""
    defaults = asdict(Recipe())
    changes = []
    for key in sorted(set(saved) | set(current)):
        if key in _RESUME_FREE_FIELDS:
            continue
        old, new = saved.get(key, defaults.get(key)), current.get(key, defaults.get(key))
        if old != new:
            changes.append(f"{key}: {old!r} then, {new!r} now")
    return changes


def _load_state(run_dir: Path, model, opt, device) -> tuple[dict | None, dict]:
    meta = _read_state_meta(run_dir)
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

    if dev.type == "cpu" and r.threads:
        torch.set_num_threads(r.threads)
    torch.manual_seed(r.seed)
    arch_over = {} if r.attn_norm is None else {"attn_norm": r.attn_norm}
    model = create_model(name, **arch_over).to(dev)
    if r.gate_zero_init and not r.init_from:
        zero_gate_weights(model)
    if r.init_from:
        from .checkpoints import load_into, read_state_dict

        src = resolve_name(r.init_from)
        tensors, src_entry = read_state_dict(src, models_dir)
        load_into(model, tensors, f"{src}.safetensors", name)
        log(f"[{name}] initialised from {src} (sha256 {src_entry['sha256'][:12]})")
    if on_cuda and r.channels_last:
        to_channels_last(model)
    dyconv_mode = None
    if on_cuda:
        torch.backends.cudnn.benchmark = True
        if spec.conv == "dyconv":  # exact either way; pick the faster computation on this device
            dyconv_mode, timings = choose_dyconv_mode(model, r.batch_size, dev, bf16=r.bf16,
                                                      channels_last=r.channels_last)
            log(f"[{name}] DyConv mode {dyconv_mode} (fwd+bwd ms per batch: {timings})")
    opt = torch.optim.SGD(param_groups(model, r.weight_decay, r.no_decay_dynamic),
                          lr=r.lr, momentum=r.momentum, nesterov=True)
    gated = any(isinstance(m, ChannelGate) for m in model.modules())
    cost = gated_cost(model) if gated else None
    dynamic = spec.conv in ("dyconv", "odconv")
    steps_per_epoch = len(loader)
    warm_steps = r.warmup_epochs * steps_per_epoch
    total_epochs = r.epochs
    start_epoch, step, best, best_score = 0, 0, None, -1.0
    history: list[dict] = []
    elapsed_before = 0.0
    recipe_json = asdict(r)
    if resume and (run_dir / "state.json").exists():
        changed = _recipe_changes(_read_state_meta(run_dir).get("recipe") or {}, recipe_json)
        if changed:
            raise ConfigError(
                f"{run_dir} holds an unfinished run of {name} with another recipe ({'; '.join(changed)})",
                "rerun with the settings it was started with to resume it, or pass --no-resume "
                "(or another --run-dir) to start over and discard it")
        best, meta = _load_state(run_dir, model, opt, dev)
        start_epoch, step = meta["epoch"], meta["step"]
        total_epochs, best_score = meta["total_epochs"], meta["best_score"]
        history, elapsed_before = meta["history"], meta["elapsed_s"]
        log(f"[{name}] resumed after epoch {start_epoch}/{total_epochs}")
    use_bf16 = r.bf16 and (on_cuda or cpu_bf16_supported())
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16)
    total_planned = (total_epochs or r.max_epochs) * steps_per_epoch
    log(f"[{name}] {steps_per_epoch} steps/epoch, bf16 autocast {'on' if use_bf16 else 'off'}, "
        f"{torch.get_num_threads()} threads on {_device_name(dev)}")
    current_t = r.temp_end
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
                current_t = _temperature(progress, r)
                set_temperature(model, current_t)
            if gated:
                w_bs, noise, w_budget = _gate_schedule(progress, r)
                held = _gates_held_open(progress, r)
                for m in model.modules():
                    if isinstance(m, ChannelGate):
                        m.noise, m.force_open, m.detach_input = noise, held, r.gate_detach
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
                    probs = rec.probabilities()
                    if w_bs > 0:
                        loss = loss + w_bs * sum(batch_shaping_loss(_shaped(p, r.bs_channels), r.bs_a, r.bs_b)
                                                 for p in probs) / len(probs)
                    if w_budget > 0:
                        ratio = mac_ratio(rec.gates if r.budget_gates == "hard" else probs, cost)
                        loss = loss + w_budget * (ratio - r.mac_budget).clamp(min=0)
                    w_l0 = r.l0_weight * min(max((progress - r.l0_from) / max(r.l0_full - r.l0_from, 1e-9), 0), 1)
                    if w_l0 > 0:
                        loss = loss + w_l0 * sum(p.float().mean() for p in probs) / len(probs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if r.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
            opt.step()
            loss_sum += loss.detach()
            correct += (out.argmax(1) == yb).sum()
            seen += len(yb)
            step += 1
            if verbose and step % 50 == 0:
                rate = seen / max(time.time() - t_ep, 1e-9)
                left = (total_planned - step) * (time.time() - t_ep) / max(step - epoch * steps_per_epoch, 1)
                log(f"[{name}] epoch {epoch + 1} step {step}/{total_planned} loss {loss.item():.3f} "
                    f"{rate:.0f} img/s, ETA {left / 60:.1f} min")
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
        if score >= best_score:  # the best epoch on the held-out check (not the test set)
            best_score = score
            best = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
            val["best"] = True
        history.append(val)
        if total_epochs is not None:
            total_planned = total_epochs * steps_per_epoch
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

    # the kept state: the final epoch, unless catastrophic overfitting (or keep="best") says the best one
    kept_epoch, co_detected = len(history), False
    if r.adv != "none" and history:
        best_i = max(range(len(history)), key=lambda i: (history[i]["holdout_pgd10"], i))
        co_detected = catastrophic_overfit(history[best_i]["holdout_pgd10"], history[-1]["holdout_pgd10"],
                                           min(r.check_n, len(y_hold)), r.co_sigmas)
        if co_detected:
            log(f"[{name}] catastrophic overfitting: held-out PGD-10 {history[-1]['holdout_pgd10']:.3f} vs "
                f"{history[best_i]['holdout_pgd10']:.3f} at epoch {best_i + 1}: keeping epoch {best_i + 1}")
    if r.keep == "best" or co_detected:
        model.load_state_dict(best)
        kept_epoch = max(i + 1 for i, h in enumerate(history) if h.get("best")) if history else 0
    if history:
        history[kept_epoch - 1]["kept"] = True
    if dynamic:
        temps = {float(m.temperature) for m in model.modules() if hasattr(m, "temperature")
                 and isinstance(m.temperature, torch.Tensor)}
        if temps != {float(r.temp_end)}:
            log(f"[{name}] warning: the kept state has attention temperature {sorted(temps)}, not {r.temp_end}")
    for p_ in model.parameters():
        p_.data = p_.data.contiguous()
    model.eval()
    test_idx = test_data.subset(r.final_test_n, seed=0) if r.final_test_n else None
    x_test, y_test = test_data.tensors(test_idx, device=dev)
    metrics: dict = {"clean_acc": accuracy(model, x_test, y_test), "clean_n": len(y_test),
                     "clean_data": test_data.label, "kept_epoch": kept_epoch,
                     "catastrophic_overfitting": co_detected,
                     "holdout_acc": history[kept_epoch - 1]["holdout_acc"] if history else None}
    if dynamic:
        metrics["temperature"] = sorted({float(m.temperature) for m in model.modules()
                                         if isinstance(getattr(m, "temperature", None), torch.Tensor)})
    if r.adv != "none":
        pidx = test_data.subset(min(r.final_pgd_n, len(test_data)), seed=0)
        xp, yp = test_data.tensors(pidx, device=dev)
        metrics.update({"pgd20_acc": pgd_accuracy(model, xp, yp, 8 / 255, 2 / 255, 20), "pgd20_n": len(yp),
                        "pgd20_settings": "Linf eps 8/255, step 2/255, 20 steps, random start, CE, subset seed 0"})
    macs = count_macs(model)
    audit = None
    if r.audit_n:
        from .audit import audit_model

        aidx = test_data.subset(min(r.audit_n, len(test_data)), seed=0)
        xa, ya = test_data.tensors(aidx, device=dev)
        audit = audit_model(model, xa, ya, seed=0)
        audit.update({"data": test_data.label, "subset_seed": 0, "device": _device_name(dev)})
        log(f"[{name}] audit: {audit['verdict']} ({audit.get('why', '')})")
    if gated:
        dens, per_block = gate_stats(model, x_test)
        cost = gated_cost(model)
        metrics.update({"mean_gate_density": dens, "gate_density_per_block": per_block,
                        "mean_executed_macs": float(cost.macs(per_block)),
                        "executed_macs_ratio_vs_full": float(cost.macs(per_block)) / cost.full})
    entry = {
        "name": name, "arch": spec.arch, "arch_kwargs": {**spec.arch_kwargs, **arch_over}, "spec": spec.to_dict(),
        "recipe": recipe_json, "seed": r.seed, "epochs": epoch, "train_time_s": round(train_time, 1),
        "wall_time_s": round(time.time() - t_start, 1), "device": _device_name(dev),
        "dataset": {"train": {**train_data.describe(), "n_used": len(keep), "holdout": len(hold)},
                    "test": test_data.describe(), "label": train_data.label},
        "metrics": metrics, "params": count_params(model), "macs": macs, "history": history,
        "dyconv_mode": dyconv_mode, "stopped_early": stopped_early, "audit": audit,
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


#: named recipes. "v2" is the fixed recipe (the Recipe defaults); "v1" reproduces the first zoo's recipe
#: (no hidden-layer norm, weight decay on attention and gates, temperature annealed over 5 of 18 epochs,
#: batch shaping off after 60 % and an L0 term, best held-out epoch kept): kept for the pilot's comparison.
#: "v3" is v2 with the gate knobs of the recipe pilot g12 (reports/recipe_pilot.md); it changes gated models
#: only: no batch shaping (it cost ~1 pt at every weight tried), the gates read a detached block input, the
#: gate losses and noise ramp in over the first 30 % of the steps, a 0.70x MAC budget with a weight-1 hinge.
#: At 30 epochs it trails static by 1.10 pt over 3 seeds (v2's batch-shaped gated model: 2.1 pt, seed 0), with
#: 59-66 % conditional gates at 0.68-0.70x MACs, but the gates are only marginally dynamic: a fixed majority mask
#: costs 4.2 / 3.0 / 2.0 pt (the audit's threshold is 2).
#: "v4" is v3 with a 0.68x MAC budget (pilot g16): at 30 epochs it trails static by 1.05 pt over 3 seed-paired
#: runs, executes 0.66-0.67x the MACs, keeps 61-65 % of the gates conditional, and all 4 seeds trained pass the
#: audit on the full test set (majority mask 2.3-3.4 pt), the first gated recipe that meets #12's target on every
#: seed. The margin over the audit's 2 pt is thin, so v2 (batch shaping, clearly dynamic, ~2 pt below static)
#: stays the default until the zoo is retrained with v4.
_V3_GATES = {"bs_weight": 0.0, "gate_detach": True, "gate_warmup": 0.3, "gate_noise_start": 0.25,
             "mac_budget": 0.70, "budget_weight": 1.0}
RECIPES: dict[str, dict] = {
    "v2": {},
    "v3": _V3_GATES,
    "v4": {**_V3_GATES, "mac_budget": 0.68},
    "v1": {"attn_norm": False, "no_decay_dynamic": False, "temp_anneal_frac": 5 / 18, "bs_weight": 1.0,
           "bs_until": 0.5, "bs_off": 0.6, "budget_weight": 0.0, "gate_noise_start": 1.0, "gate_noise_end": 1.0,
           "l0_weight": 0.5,
           "keep": "best", "holdout": 1000, "check_n": 500},
}


def make_recipe(name: str, preset: str = "v2", **overrides) -> Recipe:
    """The recipe for a zoo name: the named preset (:data:`RECIPES`), FGSM-RS adversarial training for
    `_at` names, then the overrides (None values ignored)."""
    spec = get_spec(name)
    if preset not in RECIPES:
        raise ConfigError(f"unknown recipe {preset!r}", f"use one of {', '.join(RECIPES)}")
    base = dict(RECIPES[preset])
    if spec.training == "at":
        base["adv"] = "fgsm-rs"
    base.update({k: v for k, v in overrides.items() if v is not None})
    if base.get("init_from") and "temp_start" not in overrides:
        base["temp_start"] = base.get("temp_end", 1.0)  # fine-tuning a trained model: T stays at 1
    base["note"] = (f"recipe {preset}; " + base.get("note", "")).strip("; ")
    return Recipe(**base)


__all__ = ["ADV_MODES", "CIFAR10Data", "DeviceLoader", "RECIPES", "Recipe", "accuracy", "fgsm_rs", "gate_stats",
           "file_epoch_sync", "make_recipe", "pgd_accuracy", "train", "zero_gate_weights"]
