"""Dynamics probes: what the attention and the gates of a dynamic network do, per example.

Forward stays logits-only: :class:`DynamicsProbe` registers forward hooks on every attention module
(``DyConv2d.attention`` -> (B, K) kernel attention; ``ODConv2d.attention`` -> ``ODAttentions``) and
every :class:`ChannelGate` ((B, C) 0/1 gates) for the duration of :meth:`DynamicsProbe.record`.

Per example it gives (:class:`ProbeRecord`):

* the attention vectors per layer (kernel attention; for ODConv also the spatial attention);
* the kernel-attention entropy per layer in nats, in [0, log K] (0 for K = 1), and its mean over
  layers;
* the dominant kernel per layer (argmax of the kernel attention) and overall (argmax of the kernel
  attention averaged over the layers with the modal K);
* the gate density per gated block (fraction of open channels) and overall (open channels / all
  gated channels), and the MACs executed per example: ``costs.gated_cost(model).macs(densities)``
  for gated models, the static count (``costs.count_macs``) for the others.

:meth:`DynamicsProbe.compare` gives the attention shift between a clean and an adversarial record,
per layer: KL(clean || adv) and total variation 0.5 * sum |p - q| on the kernel attention. For
ODConv with K = 1 the kernel attention is constant, so the shift is measured on the spatial
attention normalised to sum 1 (a distribution over the k x k kernel positions). Static models give
NaN for every attention statistic and density 1 (no gates).
"""

from __future__ import annotations

import contextlib
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .costs import count_macs, gated_cost
from .layers import ChannelGate, KernelAttention, OmniAttention

_EPS = 1e-12


@dataclass(frozen=True)
class AttentionLayer:
    """One dynamic conv layer: its module name, kind ('dyconv' | 'odconv'), K and k*k."""

    name: str
    kind: str
    K: int
    spatial: int  # k*k positions for ODConv (its spatial attention), 0 for DyConv

    @property
    def shift_on(self) -> str:
        return "spatial" if self.kind == "odconv" and self.K == 1 else "kernel"

    @property
    def vector_size(self) -> int:
        return self.K + self.spatial


@dataclass
class ProbeRecord:
    """Per-example probe outputs for a batch of N inputs (numpy arrays on the host)."""

    logits: np.ndarray  # (N, classes) fp32
    kernel: list[np.ndarray]  # per attention layer (N, K_l)
    spatial: list[np.ndarray | None]  # per attention layer (N, k*k) for ODConv, None for DyConv
    gates: list[np.ndarray]  # per gated block (N, C_b) uint8 0/1
    layers: list[AttentionLayer] = field(default_factory=list)
    macs_fn: object = None  # densities (N, blocks) -> MACs (N,), or None
    static_macs: float = float("nan")

    def __len__(self) -> int:
        return len(self.logits)

    @property
    def pred(self) -> np.ndarray:
        return self.logits.argmax(1)

    def take(self, idx) -> ProbeRecord:
        """The record restricted to examples ``idx`` (indices or boolean mask)."""
        return ProbeRecord(self.logits[idx], [k[idx] for k in self.kernel],
                           [None if s is None else s[idx] for s in self.spatial], [g[idx] for g in self.gates],
                           self.layers, self.macs_fn, self.static_macs)

    @staticmethod
    def concat(records: list[ProbeRecord]) -> ProbeRecord:
        r0 = records[0]
        return ProbeRecord(
            np.concatenate([r.logits for r in records]),
            [np.concatenate([r.kernel[i] for r in records]) for i in range(len(r0.kernel))],
            [None if r0.spatial[i] is None else np.concatenate([r.spatial[i] for r in records])
             for i in range(len(r0.spatial))],
            [np.concatenate([r.gates[i] for r in records]) for i in range(len(r0.gates))],
            r0.layers, r0.macs_fn, r0.static_macs)

    # -- attention
    @property
    def has_attention(self) -> bool:
        return bool(self.kernel)

    def entropy(self) -> np.ndarray:
        """(N, layers) kernel-attention entropy in nats, each in [0, log K_l]."""
        if not self.kernel:
            return np.zeros((len(self), 0))
        return np.stack([_entropy(k) for k in self.kernel], axis=1)

    def entropy_mean(self) -> np.ndarray:
        e = self.entropy()
        return e.mean(1) if e.shape[1] else np.full(len(self), np.nan)

    def dominant(self) -> np.ndarray:
        """(N, layers) argmax of the kernel attention."""
        if not self.kernel:
            return np.zeros((len(self), 0), dtype=np.int64)
        return np.stack([k.argmax(1) for k in self.kernel], axis=1)

    def dominant_overall(self) -> np.ndarray:
        """(N,) argmax of the kernel attention averaged over the layers with the most common K (-1 if none)."""
        if not self.kernel:
            return np.full(len(self), -1)
        K = Counter(k.shape[1] for k in self.kernel).most_common(1)[0][0]
        return np.mean([k for k in self.kernel if k.shape[1] == K], axis=0).argmax(1)

    def shift_distributions(self) -> list[np.ndarray]:
        """Per layer, the distribution the attention shift is measured on (see module docstring)."""
        out = []
        for layer, k, s in zip(self.layers, self.kernel, self.spatial, strict=True):
            if layer.shift_on == "spatial":
                out.append(s / np.maximum(s.sum(1, keepdims=True), _EPS))
            else:
                out.append(k)
        return out

    def vectors(self) -> np.ndarray:
        """(N, D) concatenated attention vectors (kernel for DyConv; kernel + spatial for ODConv)."""
        parts = []
        for k, s in zip(self.kernel, self.spatial, strict=True):
            parts.append(k)
            if s is not None:
                parts.append(s)
        return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((len(self), 0), np.float32)

    # -- gates and cost
    @property
    def has_gates(self) -> bool:
        return bool(self.gates)

    def density(self) -> np.ndarray:
        """(N, blocks) fraction of open gates per gated block."""
        if not self.gates:
            return np.zeros((len(self), 0))
        return np.stack([g.mean(1) for g in self.gates], axis=1)

    def density_mean(self) -> np.ndarray:
        """(N,) open gated channels / all gated channels (1 for models without gates)."""
        if not self.gates:
            return np.ones(len(self))
        return np.concatenate(self.gates, axis=1).mean(1)

    def macs(self) -> np.ndarray:
        """(N,) MACs executed per example."""
        if self.macs_fn is not None and self.gates:
            return np.asarray(self.macs_fn(self.density()), dtype=np.float64)
        return np.full(len(self), float(self.static_macs))


def _entropy(p: np.ndarray) -> np.ndarray:
    p = p.astype(np.float64)
    if p.shape[1] <= 1:
        return np.zeros(len(p))
    h = -(p * np.log(np.clip(p, _EPS, None))).sum(1)
    return np.clip(h, 0.0, np.log(p.shape[1]))


def kl_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise KL(p || q) in nats (>= 0; exactly 0 where p == q)."""
    p, q = p.astype(np.float64), q.astype(np.float64)
    kl = (p * (np.log(np.clip(p, _EPS, None)) - np.log(np.clip(q, _EPS, None)))).sum(1)
    return np.maximum(kl, 0.0)


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise total variation distance 0.5 * sum |p - q|, in [0, 1]."""
    return 0.5 * np.abs(p.astype(np.float64) - q.astype(np.float64)).sum(1)


@dataclass
class Shift:
    """Attention shift clean -> adversarial, per example and layer."""

    kl: np.ndarray  # (N, layers)
    tv: np.ndarray  # (N, layers)
    dominant_changed: np.ndarray  # (N, layers) bool

    def kl_mean(self) -> np.ndarray:
        return self.kl.mean(1) if self.kl.shape[1] else np.full(len(self.kl), np.nan)

    def tv_mean(self) -> np.ndarray:
        return self.tv.mean(1) if self.tv.shape[1] else np.full(len(self.tv), np.nan)

    def dominant_changed_frac(self) -> np.ndarray:
        d = self.dominant_changed
        return d.mean(1) if d.shape[1] else np.full(len(d), np.nan)


#: The dynamics protocol for layers of your own (README "Your own model"): a module with the attribute
#: ``robustdyn_dynamics = "kernel_attention"`` emits (B, K) kernel-attention probabilities from forward and
#: has ``num_kernels = K``; one with ``robustdyn_dynamics = "gate"`` emits (B, C) gates in {0, 1} and has
#: ``num_channels = C``. Values: the attribute that must give the size.
DYNAMICS_PROTOCOL = {"kernel_attention": "num_kernels", "gate": "num_channels"}


def protocol_kind(m: nn.Module) -> str | None:
    """The module's declared ``robustdyn_dynamics`` kind (None if it declares none); a ConfigError for an
    unknown kind or a missing size attribute."""
    kind = getattr(m, "robustdyn_dynamics", None)
    if kind is None:
        return None
    from .errors import ModelContractError

    if kind not in DYNAMICS_PROTOCOL:
        import difflib

        close = difflib.get_close_matches(str(kind), list(DYNAMICS_PROTOCOL), n=1, cutoff=0.5)
        raise ModelContractError(f"{type(m).__name__}.robustdyn_dynamics = {kind!r} is not a known kind",
                                 f"did you mean {close[0]!r}?" if close else
                                 f"use one of {', '.join(map(repr, DYNAMICS_PROTOCOL))}")
    attr = DYNAMICS_PROTOCOL[kind]
    size = getattr(m, attr, None)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ModelContractError(f"{type(m).__name__} declares robustdyn_dynamics = {kind!r} but its {attr} is "
                                 f"{size!r}", f"set self.{attr} to the size of its output's second dimension")
    return kind


def gate_channels(m: nn.Module) -> int:
    """Channels of a gate module: ``num_channels`` (the protocol) or a ChannelGate's ``fc2.out_features``."""
    size = getattr(m, "num_channels", None)
    return int(size) if size is not None else int(m.fc2.out_features)


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module, AttentionLayer]]:
    """Every attention module of ``model`` in module order: (name of the dynamic layer, the attention
    module whose forward output the probes read, its :class:`AttentionLayer`). Found by the attention
    module's type, so any layer built on :class:`KernelAttention` (softmax over K kernels) or
    :class:`OmniAttention` (ODConv's four attentions), 2-D or 1-D, is seen; and any module declaring
    ``robustdyn_dynamics = "kernel_attention"`` (see :data:`DYNAMICS_PROTOCOL`)."""
    out = []
    for name, m in model.named_modules():
        layer_name = name[: -len(".attention")] if name.endswith(".attention") else name
        if isinstance(m, KernelAttention):
            out.append((name, m, AttentionLayer(layer_name, "dyconv", m.num_kernels, 0)))
        elif isinstance(m, OmniAttention):
            out.append((name, m, AttentionLayer(layer_name, "odconv", m.K, m.spatial_fc.out_features)))
        elif protocol_kind(m) == "kernel_attention":
            out.append((name, m, AttentionLayer(layer_name, "dyconv", int(m.num_kernels), 0)))
    return out


def gate_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every :class:`ChannelGate` of ``model``, and every module declaring ``robustdyn_dynamics = "gate"``,
    in module order: (name, module)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, ChannelGate) or (not isinstance(m, (KernelAttention, OmniAttention))
                                              and protocol_kind(m) == "gate")]


@contextlib.contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, Callable]]) -> Iterator[None]:
    """Register each ``(module, hook)`` as a forward hook for the duration of the block, then remove them all."""
    handles = []
    try:
        for m, hook in hooks:
            handles.append(m.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


#: model -> {"static": MACs, "gated": GatedCost}: architecture-only costs, kept while the model lives
_COSTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class DynamicsProbe:
    """Forward hooks on the attention and gate modules of ``model``.

    >>> probe = DynamicsProbe(model)
    >>> clean = probe.record(x)          # ProbeRecord: logits, attention, gates, entropy(), macs(), ...
    >>> adv = probe.record(x_adv)
    >>> shift = probe.compare(clean, adv)  # Shift: kl, tv per layer
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._attn: list[tuple[str, nn.Module, AttentionLayer]] = []
        self._gates: list[tuple[str, nn.Module]] = []
        for name, m, layer in attention_modules(model):
            self._attn.append((name, m, layer))
        self._gates = gate_modules(model)
        self.layers = [a[2] for a in self._attn]
        self.blocks = [g[0] for g in self._gates]
        self._cost = None
        self._static_macs: float | None = None

    @property
    def has_attention(self) -> bool:
        return bool(self._attn)

    @property
    def has_gates(self) -> bool:
        return bool(self._gates)

    def static_macs(self) -> float:
        """MACs per example at full gate density (torch's FLOP counter), measured once per model object
        (the count depends on the architecture only, so sweeps over many attacks and eps reuse it)."""
        if self._static_macs is None:
            cached = _COSTS.setdefault(self.model, {})
            if "static" not in cached:
                cached["static"] = float(count_macs(self.model))
            self._static_macs = cached["static"]
        return self._static_macs

    def gated_cost(self):
        if self._cost is None and self._gates:
            cached = _COSTS.setdefault(self.model, {})
            if "gated" not in cached:
                cached["gated"] = gated_cost(self.model)
            self._cost = cached["gated"]
            if len(self._cost.gated) != len(self._gates):  # gates outside the zoo's blocks: static MACs
                self._cost = None
        return self._cost

    def layout(self) -> dict:
        """Where each layer's values sit in the concatenated vectors (stored with the model metadata)."""
        return {"attention": [{"name": a.name, "kind": a.kind, "K": a.K, "spatial": a.spatial} for a in self.layers],
                "gates": [{"name": n, "channels": gate_channels(m)} for n, m in self._gates]}

    def _hooks(self, store: dict):
        def attn_hook(i):
            def hook(module, inputs, out):
                if isinstance(out, tuple) and hasattr(out, "kernel"):
                    store.setdefault(("k", i), out.kernel.detach())
                    store.setdefault(("s", i), out.spatial.detach())
                else:
                    store.setdefault(("k", i), out.detach())
            return hook

        def gate_hook(i):
            def hook(module, inputs, out):
                store.setdefault(("g", i), out.detach())
            return hook

        return forward_hooks([(mod, attn_hook(i)) for i, (_, mod, _) in enumerate(self._attn)]
                             + [(mod, gate_hook(i)) for i, (_, mod) in enumerate(self._gates)])

    @torch.no_grad()
    def record(self, x: torch.Tensor, batch_size: int | None = None) -> ProbeRecord:
        """Run the model (eval mode, fp32, no grad) on ``x`` and collect everything per example."""
        from .attacks.base import eval_mode

        cost = self.gated_cost()
        macs_fn = (lambda d, c=cost: c.macs(d).numpy()) if cost is not None else None
        static = self.static_macs()
        parts = []
        bs = batch_size or max(len(x), 1)
        with eval_mode(self.model):
            for start in range(0, len(x), bs):
                xb = x[start:start + bs]
                store: dict = {}
                with self._hooks(store):
                    logits = self.model(xb)
                kernel, spatial = [], []
                for i, layer in enumerate(self.layers):
                    kernel.append(store[("k", i)].float().cpu().numpy())
                    spatial.append(store[("s", i)].float().cpu().numpy() if layer.kind == "odconv" else None)
                gates = [store[("g", i)].cpu().numpy().round().astype(np.uint8) for i in range(len(self._gates))]
                parts.append(ProbeRecord(logits.float().cpu().numpy(), kernel, spatial, gates, self.layers, macs_fn,
                                         static))
        if not parts:
            parts.append(ProbeRecord(np.zeros((0, 0), np.float32), [], [], [], self.layers, macs_fn, static))
        return ProbeRecord.concat(parts) if len(parts) > 1 else parts[0]

    @staticmethod
    def compare(clean: ProbeRecord, adv: ProbeRecord) -> Shift:
        """KL(clean || adv), total variation and dominant-kernel change per example and layer."""
        P, Q = clean.shift_distributions(), adv.shift_distributions()
        n = len(clean)
        if not P:
            empty = np.zeros((n, 0))
            return Shift(empty, empty, np.zeros((n, 0), dtype=bool))
        kl = np.stack([kl_divergence(p, q) for p, q in zip(P, Q, strict=True)], axis=1)
        tv = np.stack([total_variation(p, q) for p, q in zip(P, Q, strict=True)], axis=1)
        return Shift(kl, tv, clean.dominant() != adv.dominant())
