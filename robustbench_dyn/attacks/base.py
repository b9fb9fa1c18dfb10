"""The attack contract shared by every family, and the name -> factory registry.

An :class:`Attack` is built for one model and one epsilon with validated settings; calling it
``attack(x, y)`` returns adversarial examples for images ``x`` in [0, 1] and labels ``y``.
Around :meth:`Attack.perturb` the base class

* puts the model in eval mode and restores its mode afterwards (``eval_mode``);
* optionally switches channel gates to their BPDA surrogate (setting ``bpda``);
* optionally runs the gradient computations under bf16 autocast (setting ``amp``): the model seen
  by the attack returns fp32 logits computed in bf16; final verification is always fp32;
* returns ``x`` itself at ``eps == 0`` (no attack: the clean accuracy);
* verifies the result: finite, inside [0, 1] and inside the eps ball of its norm (tolerance
  :data:`TOL_LINF` / :data:`TOL_L2`), else raises :class:`AttackError`.

Settings are plain JSON values. Every family declares its ``defaults`` (which also fix each
setting's type) and optional ``choices``; a registry entry adds a name and a preset over those
defaults. ``entry.settings(**overrides)`` gives the canonical settings (what the results store keys
runs by); unknown keys and bad values raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError, RobustDynError

NORMS = ("Linf", "L2")
TOL_LINF = 1e-6  # slack on ||x_adv - x||_inf <= eps (float32 rounding of x + eps)
TOL_L2 = 1e-5  # slack on ||x_adv - x||_2 <= eps (float32 norm of 3072 coordinates)
TOL_RANGE = 1e-6  # slack on 0 <= x_adv <= 1


class AttackError(RobustDynError):
    """An attack returned examples outside [0, 1] or outside its eps ball (a bug, never clipped away)."""


# ------------------------------------------------------------------------------- model context

@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration, then every module's previous mode restored exactly."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def gate_surrogate(model: nn.Module, surrogate: str) -> Iterator[None]:
    """Set ``surrogate`` ('none' | 'bpda') on every module that has one (ChannelGate), then restore."""
    saved = [(m, m.surrogate) for m in model.modules() if hasattr(m, "surrogate")]
    for m, _ in saved:
        m.surrogate = surrogate
    try:
        yield
    finally:
        for m, value in saved:
            m.surrogate = value


class AutocastLogits(nn.Module):
    """Wraps a model so that its forward runs under autocast (bf16) and returns fp32 logits.
    The wrapped model stays a submodule, so ``parameters()`` (torchattacks reads the device) works."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            out = self.model(x)
        return out.float()


# ---------------------------------------------------------------------------------- verification

def perturbation_norm(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example ||x_adv - x|| in the given norm (float64 for the L2 sum)."""
    d = (x_adv.detach() - x.detach()).reshape(len(x), -1)
    if norm == "Linf":
        return d.abs().amax(dim=1) if d.shape[1] else torch.zeros(len(x), device=x.device)
    return d.double().pow(2).sum(dim=1).sqrt()


def verify_adversarial(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, what: str = "attack") -> None:
    """Raise :class:`AttackError` unless ``x_adv`` is finite, in [0, 1] and within ``eps`` of ``x``."""
    if x_adv.shape != x.shape:
        raise AttackError(f"{what} returned examples of shape {tuple(x_adv.shape)} for inputs of shape "
                          f"{tuple(x.shape)}", "this is a bug in the attack adapter; please report it")
    if len(x) == 0:
        return
    if not bool(torch.isfinite(x_adv).all()):
        raise AttackError(f"{what} returned non-finite adversarial examples",
                          "this is a bug in the attack or the model (NaN logits?); please report it")
    lo, hi = float(x_adv.min()), float(x_adv.max())
    if lo < -TOL_RANGE or hi > 1 + TOL_RANGE:
        raise AttackError(f"{what} returned examples outside [0, 1] (min {lo:.3g}, max {hi:.3g})",
                          "inputs must stay images in [0, 1]; this is a bug in the attack adapter")
    tol = TOL_LINF if norm == "Linf" else TOL_L2
    worst = float(perturbation_norm(x_adv, x, norm).max())
    if worst > eps + tol:
        raise AttackError(f"{what} left the {norm} ball: perturbation {worst:.6g} > eps {eps:.6g} (+{tol:g})",
                          "this is a bug in the attack adapter; please report it")


# ------------------------------------------------------------------------------------- settings

def _check_value(key: str, value: Any, default: Any, choices: tuple | None, where: str) -> Any:
    """Validate one setting against its default's type and the allowed choices; return it normalised."""
    if default is None:  # an optional number (e.g. an absolute step size overriding the relative one)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{where}: setting {key!r} must be a non-negative number, got {value!r}",
                              f"set {key} to a number or leave it out")
        return float(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: setting {key!r} must be true or false, got {value!r}",
                              f"set {key} = true or false")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}: setting {key!r} must be a non-negative integer, got {value!r}",
                              f"set {key} to e.g. {default}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{where}: setting {key!r} must be a non-negative number, got {value!r}",
                              f"set {key} to e.g. {default}")
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: setting {key!r} must be a string, got {value!r}",
                              f"set {key} to e.g. {default!r}")
    elif isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: setting {key!r} must be a list of names, got {value!r}",
                              f"set {key} to e.g. {list(default)!r}")
        value = list(value)
        if choices is not None:
            bad = [v for v in value if v not in choices]
            if bad:
                raise ConfigError(f"{where}: setting {key!r} has unknown value {bad[0]!r}",
                                  f"choose from {', '.join(map(str, choices))}")
        return value
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: setting {key!r} must be one of {', '.join(map(str, choices))}, got {value!r}",
                          f"set {key} to one of {', '.join(map(str, choices))}")
    return value


# ---------------------------------------------------------------------------------------- attack

class Attack:
    """Base class of every attack family.

    Subclasses set ``defaults`` (every setting with its default value, which also fixes its type),
    optionally ``choices`` and ``description``, and implement :meth:`perturb`. Settings every
    gradient family shares: ``amp`` (bf16 autocast for the gradient steps) and ``bpda`` (channel
    gates use their sigmoid surrogate gradient during the attack).
    """

    defaults: ClassVar[dict[str, Any]] = {}
    choices: ClassVar[dict[str, tuple]] = {}
    fixed_norm: ClassVar[str | None] = None  # families with one norm (else the 'norm' setting)
    description: ClassVar[str] = ""

    def __init__(self, model: nn.Module, eps: float, *, device: torch.device | str | None = None,
                 name: str | None = None, **settings: Any) -> None:
        self.model = model
        self.eps = float(eps)
        self.name = name or type(self).__name__.lower()
        self.settings = self.canonical(settings, where=f"attack {self.name!r}")
        if device is None:
            p = next(iter(model.parameters()), None)
            device = p.device if p is not None else "cpu"
        self.device = torch.device(device)

    @classmethod
    def all_defaults(cls) -> dict[str, Any]:
        base = {"amp": False, "bpda": False}
        return {**base, **cls.defaults}

    @classmethod
    def canonical(cls, settings: Mapping[str, Any], where: str = "attack") -> dict[str, Any]:
        """Defaults updated with ``settings``, every value validated, keys sorted."""
        defaults = cls.all_defaults()
        out = dict(defaults)
        for key, value in settings.items():
            if key not in defaults:
                close = difflib.get_close_matches(key, list(defaults), n=3, cutoff=0.5)
                known = ", ".join(sorted(defaults))
                hint = f"did you mean {', '.join(close)}?" if close else f"known settings: {known}"
                raise ConfigError(f"{where}: unknown setting {key!r}", hint)
            out[key] = _check_value(key, value, defaults[key], cls.choices.get(key), where)
        cls.validate(out, where)
        return dict(sorted(out.items()))

    @classmethod
    def validate(cls, settings: dict[str, Any], where: str) -> None:
        """Cross-setting checks (override in subclasses)."""

    @classmethod
    def norm_of(cls, settings: Mapping[str, Any]) -> str:
        return cls.fixed_norm or settings.get("norm", "Linf")

    @property
    def norm(self) -> str:
        return self.norm_of(self.settings)

    # -- the work
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples for ``x``; ``model`` is in eval mode (and autocast-wrapped with amp)."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Verified adversarial examples (fp32, same device as ``x``); see the module docstring."""
        x = x.detach().to(self.device, torch.float32)
        y = y.detach().to(self.device)
        if self.eps == 0 or len(x) == 0:
            return x.clone()
        with eval_mode(self.model), gate_surrogate(self.model, "bpda" if self.settings["bpda"] else "none"):
            attacked = AutocastLogits(self.model) if self.settings["amp"] else self.model
            x_adv = self.perturb(attacked, x, y)
        x_adv = x_adv.detach().to(x.device, torch.float32)
        verify_adversarial(x_adv, x, self.eps, self.norm, what=f"attack {self.name!r}")
        return x_adv

    def __repr__(self) -> str:
        return f"{self.name}(eps={self.eps:.6g}, {json.dumps(self.settings, sort_keys=True)})"


# -------------------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class AttackEntry:
    """A registered attack: a name, its family class and a preset over the family defaults."""

    name: str
    cls: type[Attack]
    preset: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """Canonical settings (family defaults <- preset <- overrides), validated."""
        return self.cls.canonical({**self.preset, **overrides}, where=f"attack {self.name!r}")

    def norm(self, **overrides: Any) -> str:
        return self.cls.norm_of(self.settings(**overrides))

    def settings_json(self, **overrides: Any) -> str:
        return json.dumps(self.settings(**overrides), sort_keys=True, separators=(",", ":"))

    def create(self, model: nn.Module, eps: float, *, device=None, **overrides: Any) -> Attack:
        return self.cls(model, eps, device=device, name=self.name, **{**self.preset, **overrides})


ATTACKS: dict[str, AttackEntry] = {}


def register_attack(name: str, cls: type[Attack], description: str = "", replace: bool = False,
                    **preset: Any) -> AttackEntry:
    """Register ``cls`` under ``name`` with ``preset`` settings (validated now)."""
    if name in ATTACKS and not replace:
        raise ValueError(f"attack {name!r} is already registered")
    cls.canonical(preset, where=f"attack {name!r}")
    entry = AttackEntry(name, cls, dict(preset), description or cls.description)
    ATTACKS[name] = entry
    return entry


def get_attack(name: str) -> AttackEntry:
    """The registry entry; unknown names raise ConfigError with the closest names."""
    try:
        return ATTACKS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(ATTACKS), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"known attacks: {', '.join(ATTACKS)}"
        raise ConfigError(f"unknown attack {name!r}", hint) from None


def attack_names() -> list[str]:
    return list(ATTACKS)


def make_attack(name: str, model: nn.Module, eps: float, *, device=None, **settings: Any) -> Attack:
    """Build the named attack for ``model`` at ``eps`` (see each family for its settings)."""
    return get_attack(name).create(model, eps, device=device, **settings)
