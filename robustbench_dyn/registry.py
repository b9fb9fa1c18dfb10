"""Model registry: a frozen :class:`ModelSpec` per name; list, create, load.

Names: ``<variant>[_k<K>][_at]`` on CIFAR ResNet-20 and the same with a ``resnet50_`` prefix:
``static, dyconv_k2..k5, odconv_k1, odconv_k4, gated``; ``_at`` marks adversarially trained
checkpoints. ``resnet20_<name>`` is accepted as an alias of ``<name>``.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import asdict, dataclass, field

from torch import nn

from .archs import ARCHS
from .errors import UnknownModelError


@dataclass(frozen=True)
class ModelSpec:
    """Everything that defines a model's architecture, plus how its checkpoint was meant to be trained."""

    name: str
    arch: str  # key of archs.ARCHS
    depth: int
    conv: str  # static | dyconv | odconv
    K: int = 1
    gated: bool = False
    training: str = "standard"  # standard | at (adversarial training)
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def family(self) -> str:
        return "gated" if self.gated else self.conv

    @property
    def arch_kwargs(self) -> dict:
        kw: dict = {"conv": self.conv, "K": self.K, "gated": self.gated}
        if self.conv != "static" or self.gated:
            kw["attn_norm"] = True  # layer version 2 (fixed recipes); manifests without it load version 1
        if self.arch == "cifar_resnet":
            kw["depth"] = self.depth
        return kw

    def to_dict(self) -> dict:
        d = asdict(self)
        d["aliases"] = list(self.aliases)
        return d


_REGISTRY: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY or spec.name in _ALIASES:
        raise ValueError(f"model name {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[alias] = spec.name
    return spec


_VARIANTS = [
    ("static", "static", 1, False, "static convolutions (the baseline)"),
    *[(f"dyconv_k{k}", "dyconv", k, False, f"DyConv, {k} kernels mixed by softmax attention") for k in range(2, 6)],
    ("odconv_k1", "odconv", 1, False, "ODConv, 1 kernel (spatial/channel/filter attention)"),
    ("odconv_k4", "odconv", 4, False, "ODConv, 4 kernels (all four attentions)"),
    ("gated", "static", 1, True, "channel-gated (batch-shaping + L0), static convolutions"),
]
_AT_VARIANTS = ("static", "dyconv_k4", "odconv_k4", "gated")

for _name, _conv, _k, _gated, _desc in _VARIANTS:
    register(ModelSpec(_name, "cifar_resnet", 20, _conv, _k, _gated, "standard", f"ResNet-20, {_desc}",
                       aliases=(f"resnet20_{_name}",)))
    if _name in _AT_VARIANTS:
        register(ModelSpec(f"{_name}_at", "cifar_resnet", 20, _conv, _k, _gated, "at",
                           f"ResNet-20, {_desc}, adversarially trained", aliases=(f"resnet20_{_name}_at",)))
for _name, _conv, _k, _gated, _desc in _VARIANTS:
    register(ModelSpec(f"resnet50_{_name}", "cifar_resnet50", 50, _conv, _k, _gated, "standard",
                       f"ResNet-50, {_desc}"))


def resolve_name(name: str) -> str:
    """Canonical name for a name or alias; raises UnknownModelError with the closest names."""
    if name in _REGISTRY:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    close = difflib.get_close_matches(name, list(_REGISTRY) + list(_ALIASES), n=4, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "run `robustdyn list` for the zoo"
    raise UnknownModelError(f"unknown model {name!r}", hint)


def get_spec(name: str) -> ModelSpec:
    return _REGISTRY[resolve_name(name)]


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell pattern (e.g. ``'dyconv_*'``, ``'resnet50_*'``), in zoo order.
    Several patterns may be given separated by commas. Models of another domain (a spec with an
    ``opt_in_prefix``, e.g. the ``ts_*`` series models) match only patterns that start with that prefix,
    so ``'*'`` stays the CIFAR-10 zoo (sweeps over ``'*'`` never feed images to a series model)."""
    pats = [p.strip() for p in pattern.split(",") if p.strip()] or ["*"]

    def hit(n: str, p: str) -> bool:
        prefix = getattr(_REGISTRY[n], "opt_in_prefix", "")
        return fnmatch.fnmatchcase(n, p) and (not prefix or p.startswith(prefix))

    return [n for n in _REGISTRY if any(hit(n, p) for p in pats)]


def create_model(name: str, **overrides) -> nn.Module:
    """An untrained model of the named architecture (arch kwargs can be overridden, e.g. for tests)."""
    spec = get_spec(name)
    kw = {**spec.arch_kwargs, **overrides}
    return ARCHS[spec.arch](**kw)


def load_model(name: str, models_dir=None, device="cpu", verify: bool = True) -> nn.Module:
    """The trained model in eval mode, its checkpoint's sha256 verified against the manifest."""
    from .checkpoints import load_checkpoint

    return load_checkpoint(resolve_name(name), models_dir=models_dir, device=device, verify=verify)

from .timeseries import registration as _timeseries_registration  # noqa: E402,F401  (registers ts_* names)
