"""The model contract: what any ``nn.Module`` must do to be benchmarked, checked once before any attack.

Every model the suite did not build itself (``--model file.py:factory``, an ``nn.Module`` passed to
:func:`~robustbench_dyn.evaluation.evaluate` or :func:`~robustbench_dyn.benchmark.benchmark`) goes through
:func:`check_model_contract` first. The contract:

* ``forward(x)`` takes a float32 batch ``(N, 3, 32, 32)`` of images in [0, 1] (normalisation lives inside
  the model), for any N >= 1, and returns **one** ``(N, num_classes)`` floating tensor of **finite logits**;
* the logits of an image do not depend on the other images of its batch (attacks run sub-batches of any
  size: BatchNorm must use running statistics in eval mode);
* ``model.eval()`` reaches every module (the suite evaluates in eval mode and restores the mode after);
* the logits are differentiable with respect to the input, with a gradient that is not zero everywhere
  (gradient attacks on a non-differentiable model would report 100 % robust accuracy), unless only
  gradient-free attacks (``square``) run;
* weights in float16, bfloat16 or float64 are cast to float32 (a copy; warned), the model is moved to the
  evaluation device, and a model without parameters is fine;
* modules that declare ``robustdyn_dynamics`` (see :mod:`robustbench_dyn.dynamics`) emit what they declare.

Each violation raises :class:`~robustbench_dyn.errors.ModelContractError` (one line: what is wrong and
what the model must do). Softmax probabilities instead of logits, outputs that change between identical
passes (dropout in eval mode) and predictions of one class only are legitimate but suspicious: they give a
:class:`ModelContractWarning`.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import ModelContractError

#: What every contract error's fix can point to.
SEE = "see README 'Your own model'"
_SHAPE = "(N, 3, 32, 32)"


class ModelContractWarning(UserWarning):
    """A model that passes the contract but looks suspicious (probabilities, randomness, train mode)."""


@dataclass
class ContractReport:
    """What :func:`check_model_contract` found (also when it passed with warnings)."""

    num_classes: int
    params: int
    device: str
    cast_from: str | None = None  # the floating dtype(s) the weights were cast from, None if already float32
    was_training: bool = False
    deterministic: bool = True
    differentiable: bool | None = None  # None: not checked (gradient-free attacks only)
    probabilities: bool = False
    dynamic_modules: int = 0  # attention and gate modules the probes see
    warnings: list[str] = field(default_factory=list)


class LogitsOnly(nn.Module):
    """Wrap a model whose forward returns a tuple, dict or output object, keeping only the logits.

    >>> model = LogitsOnly(my_model, 0)          # forward returns (logits, features)
    >>> model = LogitsOnly(my_model, "logits")   # forward returns {"logits": ...} or an object with .logits
    """

    def __init__(self, model: nn.Module, key: int | str = 0) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(self.key, str) and not isinstance(out, Mapping):
            return getattr(out, self.key)
        return out[self.key]


# ------------------------------------------------------------------------------------------ helpers

def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"Tensor {tuple(out.shape)} {str(out.dtype).removeprefix('torch.')}"
    return type(out).__name__


def _tensors(model: nn.Module):
    return itertools.chain(model.parameters(), model.buffers())


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter or buffer (None for a model without tensors)."""
    t = next(_tensors(model), None)
    return None if t is None else t.device


def _fix_for_exception(e: BaseException) -> str:
    text = str(e)
    if "same device" in text or "on device" in text or "device type" in text or "meta" in text:
        return ("register every tensor forward uses as a parameter or buffer (self.register_buffer(...)), so that "
                "model.to(device) moves it; do not create tensors on a fixed device inside forward")
    if "scalar type" in text or "should be the same" in text or "dtype" in text:
        return ("forward must accept float32 images: register constant tensors as buffers (cast with the model) "
                "and do not cast the input to another dtype")
    if "more than 1 value per channel" in text:
        return ("BatchNorm runs in train mode on a batch of 1: use running statistics in eval mode "
                "(nn.BatchNorm2d/1d, and let model.eval() reach it); attacks evaluate batches of any size")
    return f"forward(x) must accept a float32 {_SHAPE} batch of images in [0, 1] for any N >= 1; {SEE}"


def _forward(model: nn.Module, x: torch.Tensor, what: str, grad: bool = False) -> Any:
    try:
        with torch.set_grad_enabled(grad):
            return model(x)
    except ModelContractError:
        raise
    except Exception as e:  # user code: any error becomes one line
        raise ModelContractError(
            f"{what}'s forward raised {type(e).__name__}: {_one_line(e)} (input: float32 {tuple(x.shape)} images in "
            f"[0, 1] on {x.device})", _fix_for_exception(e)) from None


def _logits(out: Any, n: int, num_classes: int, what: str) -> torch.Tensor:
    """``out`` if it is one finite (n, num_classes) float tensor, else a ModelContractError."""
    k = num_classes
    want = f"return one (N, {k}) tensor of logits"
    if isinstance(out, (tuple, list)):
        parts = ", ".join(_describe(o) for o in out[:3]) + (", ..." if len(out) > 3 else "")
        raise ModelContractError(
            f"{what} returns a {type(out).__name__} of {len(out)} ({parts}), not one logits tensor",
            f"{want} (read features or attention through forward hooks or robustdyn_dynamics, {SEE}), or wrap it: "
            "robustbench_dyn.contract.LogitsOnly(model, 0)")
    if isinstance(out, Mapping):
        keys = ", ".join(repr(k) for k in list(out)[:5])
        raise ModelContractError(f"{what} returns a {type(out).__name__} (keys {keys}), not one logits tensor",
                                 f"{want}, or wrap it: robustbench_dyn.contract.LogitsOnly(model, 'logits')")
    if not isinstance(out, torch.Tensor):
        hint = ", or wrap it: robustbench_dyn.contract.LogitsOnly(model, 'logits')" if hasattr(out, "logits") else ""
        raise ModelContractError(f"{what} returns {type(out).__name__}, not a torch.Tensor of logits", want + hint)
    shape = tuple(out.shape)
    if out.dtype == torch.bool or not (out.is_floating_point() or out.is_complex()):
        raise ModelContractError(
            f"{what} returns {str(out.dtype).removeprefix('torch.')} values of shape {shape}: class labels or "
            "scores after argmax/rounding, not logits",
            f"{want}: the scores before argmax (attacks need their gradient)")
    if out.is_complex():
        raise ModelContractError(f"{what} returns complex numbers {shape}", want)
    if out.ndim == 0 or (out.ndim >= 1 and shape[0] != n):
        raise ModelContractError(
            f"{what} returns a tensor of shape {shape} for a batch of {n} images: the first dimension must be the "
            "batch", f"{want}; do not reduce over the batch")
    if out.ndim == 1 or (out.ndim == 2 and shape[1] == 1):
        raise ModelContractError(
            f"{what} returns one score per image (shape {shape}), not {k} class logits",
            f"{want}: one logit per CIFAR-10 class (e.g. a final nn.Linear(features, {k}))")
    if out.ndim > 2:
        raise ModelContractError(f"{what} returns a tensor of shape {shape}, not (N, {k})",
                                 f"{want}: flatten the classifier output (e.g. torch.flatten(x, 1) before the head)")
    if shape[1] != k:
        raise ModelContractError(
            f"{what} returns {shape[1]} logits per image, but CIFAR-10 has {k} classes",
            f"{want}: a classifier head with {k} outputs (e.g. nn.Linear(features, {k})) trained on CIFAR-10")
    if out.dtype not in (torch.float32, torch.float64):
        raise ModelContractError(
            f"{what} returns {str(out.dtype).removeprefix('torch.')} logits although its weights are float32",
            f"{want} in float32: return logits.float() (or leave mixed precision to the attack setting amp)")
    bad = ~torch.isfinite(out).all(1)
    if bool(bad.any()):
        kinds = [name for name, v in (("NaN", torch.isnan(out).any()), ("inf", torch.isinf(out).any())) if bool(v)]
        raise ModelContractError(
            f"{what} returns non-finite logits ({' and '.join(kinds)}) for {int(bad.sum())} of {n} test images in "
            "[0, 1]", "forward must return finite logits for every image in [0, 1], black and white included "
            "(check divisions, log of 0, exp overflow and the weights)")
    return out


def _probe_input(x: torch.Tensor | None, device: torch.device, n_random: int = 6) -> torch.Tensor:
    """A few images (``x``'s first ones, else seeded uniform noise) plus an all-black and an all-white one."""
    if x is not None and len(x):
        imgs = x[:n_random].detach().to(device, torch.float32)
    else:
        imgs = torch.rand(n_random, 3, 32, 32, device=device)
    c, h, w = imgs.shape[1:]
    return torch.cat([imgs, torch.zeros(1, c, h, w, device=device), torch.ones(1, c, h, w, device=device)])


def _hook_dynamics(model: nn.Module, seen: dict):
    """Forward hooks on the modules the probes read: their first output per forward, by name."""
    from .dynamics import attention_modules, gate_modules

    mods = [(name, m, "kernel_attention", layer.K) for name, m, layer in attention_modules(model)]
    mods += [(name, m, "gate", None) for name, m in gate_modules(model)]
    handles = []
    for name, m, _, _ in mods:
        def hook(module, inputs, out, name=name):
            seen.setdefault(name, out)
        handles.append(m.register_forward_hook(hook))
    return mods, handles


def _check_dynamics(mods, seen: dict, n: int, what: str) -> None:
    from .dynamics import gate_channels

    for name, m, kind, size in mods:
        attr = getattr(m, "robustdyn_dynamics", None)
        label = f"module {name!r} ({type(m).__name__}" + (f", robustdyn_dynamics={attr!r})" if attr else ")")
        if name not in seen:
            raise ModelContractError(f"{what}: {label} is never called by forward, so the probes cannot read it",
                                     "call it in forward or remove it (or its robustdyn_dynamics attribute)")
        if attr is None:
            continue  # the suite's own layers (KernelAttention, OmniAttention, ChannelGate) are tested elsewhere
        out = seen[name]
        if kind == "gate":
            size = gate_channels(m)
        want = (f"its forward must return a (B, {size}) tensor of kernel-attention probabilities (rows summing to 1)"
                if kind == "kernel_attention" else f"its forward must return a (B, {size}) tensor of gates in {{0, 1}}")
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, size):
            raise ModelContractError(f"{what}: {label} emitted {_describe(out)} for a batch of {n}, not ({n}, {size})",
                                     f"{want} ({SEE})")
        o = out.detach().float()
        if kind == "kernel_attention":
            ok = bool(torch.isfinite(o).all()) and bool((o >= -1e-6).all()) and \
                float((o.sum(1) - 1).abs().max()) < 1e-3
        else:
            r = o.round()  # the probes round; a straight-through estimator may be off by an ulp
            ok = bool((((r == 0) | (r == 1)) & ((o - r).abs() <= 1e-4)).all())
        if not ok:
            found = f"values in [{float(o.min()):.3g}, {float(o.max()):.3g}]"
            raise ModelContractError(f"{what}: {label} emitted {found}, not what it declares", f"{want} ({SEE})")


def _warn(report: ContractReport, message: str) -> None:
    report.warnings.append(message)
    warnings.warn(message, ModelContractWarning, stacklevel=3)


# -------------------------------------------------------------------------------------- the contract

def check_model_contract(model: Any, *, device: str | torch.device | None = None, num_classes: int = 10,
                         x: torch.Tensor | None = None, need_gradients: bool = True,
                         what: str | None = None) -> tuple[nn.Module, ContractReport]:
    """Check ``model`` against the contract (module docstring) and return it ready to evaluate: float32, on
    ``device`` (default: where its weights are, else cpu), its train/eval mode as it was given.

    ``x``: a few real images in [0, 1] to test on (default: seeded noise), plus an all-black and an all-white
    image. ``need_gradients``: False when only gradient-free attacks will run. Raises
    :class:`~robustbench_dyn.errors.ModelContractError` on a violation; warns
    (:class:`ModelContractWarning`) on what is suspicious but allowed. Runs a few forward passes and one
    backward pass, under a forked RNG (the global RNG state is untouched).
    """
    what = what or "the model"
    if not isinstance(model, nn.Module):
        raise ModelContractError(f"{what} is a {type(model).__name__}, not a torch.nn.Module",
                                 f"pass an nn.Module whose forward maps (N, 3, 32, 32) images in [0, 1] to (N, "
                                 f"{num_classes}) logits")
    dev = torch.device(device) if device is not None else (model_device(model) or torch.device("cpu"))
    floats = sorted({str(t.dtype).removeprefix("torch.") for t in _tensors(model) if t.is_floating_point()})
    report = ContractReport(num_classes, sum(p.numel() for p in model.parameters()), str(dev))
    if floats and floats != ["float32"]:
        report.cast_from = ", ".join(floats)
        model = copy.deepcopy(model).float()  # a copy: the caller's model keeps its dtype
        _warn(report, f"{what} has {report.cast_from} weights: evaluating a float32 copy (attacks and the final "
                      "check run in float32; use the attack setting amp=true for bf16 gradient steps)")
    if any(t.is_complex() for t in _tensors(model)):
        raise ModelContractError(f"{what} has complex-valued weights", "use real float32 weights")
    try:
        model.to(dev)
    except Exception as e:
        raise ModelContractError(f"{what} cannot be moved to {dev} ({type(e).__name__}: {_one_line(e)})",
                                 "keep its weights as ordinary parameters and buffers (no meta tensors), or pass "
                                 "the device the model is on") from None
    modes = [(m, m.training) for m in model.modules()]
    report.was_training = any(t for _, t in modes)
    devices = [dev.index or 0] if dev.type == "cuda" else []
    try:
        model.eval()
        stuck = [name or "<root>" for name, m in model.named_modules() if m.training]
        if stuck:
            raise ModelContractError(
                f"{what}: module {stuck[0]!r} is still in train mode after model.eval() ({len(stuck)} module(s); an "
                "override of train() or eval()?)", "let model.eval() set training=False on every module: BatchNorm "
                "and dropout must run in eval mode for a fair evaluation")
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            _run_checks(model, x, dev, num_classes, need_gradients, report, what)
    finally:
        for m, t in modes:
            m.training = t
    return model, report


def _run_checks(model: nn.Module, x: torch.Tensor | None, dev: torch.device, k: int, need_gradients: bool,
                report: ContractReport, what: str) -> None:
    xp = _probe_input(x, dev)
    n = len(xp)
    seen: dict = {}
    mods, handles = _hook_dynamics(model, seen)
    report.dynamic_modules = len(mods)
    try:
        out = _logits(_forward(model, xp, what), n, k, what).detach().float()
    finally:
        for h in handles:
            h.remove()
    _check_dynamics(mods, seen, n, what)

    scale = max(1.0, float(out.abs().max()))
    again = _logits(_forward(model, xp, what), n, k, what).detach().float()
    diff = float((again - out).abs().max())
    if diff > 1e-5 * scale:
        report.deterministic = False
        _warn(report, f"{what} gives different logits on two identical passes in eval mode (max |diff| {diff:.3g}): "
                      "dropout or sampling at eval time? Robust accuracy is then one random draw; for a randomised "
                      "defence use expectation over transformations (eot)")
    else:  # per-image independence (only meaningful for a deterministic model)
        tol = (1e-2 if dev.type == "cuda" else 1e-3) * scale
        worst = 0.0
        for sl in (slice(0, 1), slice(1, 4), slice(n - 1, n)):
            sub = _logits(_forward(model, xp[sl], what), len(xp[sl]), k, what).detach().float()
            worst = max(worst, float((sub - out[sl]).abs().max()))
        if worst > tol:
            raise ModelContractError(
                f"{what}: the logits of an image depend on the other images in its batch (max |diff| {worst:.3g} "
                f"between a batch of {n} and batches of 1 and 3): BatchNorm with batch statistics in eval mode "
                "(F.batch_norm(training=True), track_running_stats=False) or another layer mixing examples",
                "compute each image's logits from that image alone in eval mode (BatchNorm with running "
                "statistics); attacks evaluate sub-batches of any size")

    probs = bool((out.min() >= -1e-6) & (out.max() <= 1 + 1e-6)) and float((out.sum(1) - 1).abs().max()) < 1e-4
    if probs:
        report.probabilities = True
        _warn(report, f"{what} seems to return softmax probabilities (rows in [0, 1] summing to 1), not logits: "
                      "cross-entropy attacks on probabilities have vanishing gradients and overestimate robustness; "
                      "return the logits (drop the final softmax)")
    if float(out[:-2].argmax(1).float().std()) == 0 and x is not None and len(x) >= 4:
        _warn(report, f"{what} predicts one class for every test image: does it expect images in [0, 1] (not 0..255, "
                      "not normalised outside the model)? Put the normalisation inside the model")

    if need_gradients:
        report.differentiable = _check_gradients(model, xp[:-2], k, what)


def _check_gradients(model: nn.Module, xg: torch.Tensor, k: int, what: str) -> bool:
    fix = ("make forward differentiable in the input (e.g. a straight-through estimator: x + (q(x) - x).detach() "
           "for rounding or quantisation), or evaluate with the gradient-free attack: --attack square")
    xg = xg.clone().requires_grad_(True)
    out = _forward(model, xg, what, grad=True)
    out = _logits(out, len(xg), k, what)
    if not out.requires_grad:
        raise ModelContractError(
            f"{what}'s logits are not differentiable with respect to the input (no autograd graph: torch.no_grad, "
            ".detach(), numpy or argmax inside forward); gradient attacks cannot run", fix)
    r = torch.randn(out.shape, device=out.device)  # a random direction: no softmax saturation
    try:
        (g,) = torch.autograd.grad((out.float() * r).sum(), xg, allow_unused=True)
    except Exception as e:
        raise ModelContractError(f"backpropagating through {what} raised {type(e).__name__}: {_one_line(e)}",
                                 "make forward differentiable (no in-place changes of tensors autograd needs)") \
            from None
    if g is None or not bool(torch.isfinite(g).all()) or float(g.abs().sum()) == 0:
        state = "None" if g is None else ("not finite" if not bool(torch.isfinite(g).all()) else "exactly zero")
        raise ModelContractError(
            f"the input gradient of {what}'s logits is {state} for all {len(xg)} test images (argmax, rounding, "
            "quantisation or a hard threshold on the input path): gradient attacks would report a false 100% "
            "robust accuracy", fix)
    return True
