"""Input-dependent channel gates (Bejnordi, Blankevoort and Welling, ICLR 2020).

A gate module looks at a residual block's input (avgpool -> FC -> ReLU -> FC) and emits one
logit per output channel of the block's first convolution. The gate is

* training: Gumbel-sigmoid sample with a straight-through estimator (hard 0/1 forward, the
  relaxed sample's gradient backward);
* eval: deterministic hard threshold ``logit > 0`` (gate probability > 0.5). Its gradient with
  respect to the input is zero, which is gradient masking; ``surrogate = "bpda"`` keeps the hard
  forward and uses the sigmoid's gradient backward (an adaptive attack, BPDA).

Losses: :func:`batch_shaping_loss` (Cramer-von Mises distance between the batch's empirical CDF of
gate probabilities and a Beta prior, per channel) and :func:`l0_loss` (expected fraction of open
gates).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .dyconv import global_pool

SURROGATES = ("none", "bpda")


class ChannelGate(nn.Module):
    """Emits (B, C) gates in {0, 1} for C channels from a block input with ``in_channels``."""

    def __init__(self, in_channels: int, channels: int, hidden: int = 16, init_bias: float = 0.5,
                 tau: float = 2.0 / 3.0, norm: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels, hidden, bias=not norm)
        #: ``norm=True``: BatchNorm1d on the hidden layer (the fixed recipe; see KernelAttention)
        self.bn = nn.BatchNorm1d(hidden) if norm else None
        self.fc2 = nn.Linear(hidden, channels)
        nn.init.constant_(self.fc2.bias, init_bias)
        self.tau = tau
        #: scale of the logistic (Gumbel-sigmoid) noise in training: annealed towards 0 by the trainer so
        #: that the last epochs train the rule used at eval time (hard threshold at logit 0). Not model
        #: state: it never changes the eval-mode function.
        self.noise = 1.0
        self.recorders = 0  # open GateRecorders; while > 0, forward stashes its logits in last_logits
        self.last_logits: torch.Tensor | None = None
        #: eval-time backward rule: "none" (exact: zero gradient) or "bpda" (sigmoid surrogate).
        #: An attack setting, not model state: it never changes the forward function.
        self.surrogate = "none"
        #: training schedule flag (``Recipe.gate_open``): while True every gate is 1 (the block runs in full).
        #: Not model state; the trainer clears it before the gates go live.
        self.force_open = False
        #: training flag (``Recipe.gate_detach``): in training mode the gate reads a detached copy of the block
        #: input, so the gate losses (batch shaping, MAC hinge) and the gate path's CE gradient reach only the
        #: gate's own layers, never the trunk. Eval mode (and every attack on an eval model) is unaffected.
        self.detach_input = False

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(global_pool(x))
        return self.fc2(F.relu(self.bn(h) if self.bn is not None else h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.logits(x.detach() if self.training and self.detach_input else x)
        if self.recorders:  # GateRecorder reads this call's logits (recomputing would run the BatchNorm twice)
            self.last_logits = z
        if self.force_open:
            return torch.ones_like(z)
        if self.training:
            u = torch.rand_like(z).clamp_(1e-6, 1 - 1e-6)
            soft = torch.sigmoid((z + self.noise * (torch.log(u) - torch.log1p(-u))) / self.tau)
            hard = (soft > 0.5).to(soft.dtype)
            return hard + (soft - soft.detach())  # exactly hard forward: (s - s) == 0
        hard = (z > 0).to(z.dtype)
        if self.surrogate == "bpda":
            soft = torch.sigmoid(z)
            return hard + (soft - soft.detach())  # exactly hard forward: (s - s) == 0
        return hard


class GateRecorder:
    """Context manager that records, for every ChannelGate in a model, the gate logits and the
    gates of each forward pass (in module order). Forward stays logits-only.

    >>> with GateRecorder(model) as rec:
    ...     model(x)
    >>> probs = rec.probabilities()   # list of (B, C) tensors, one per gated block
    """

    def __init__(self, model: nn.Module, detach: bool = False) -> None:
        self.model, self.detach = model, detach
        self.gates: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        self._handles: list = []
        self._gates_seen: list[ChannelGate] = []

    def __enter__(self) -> GateRecorder:
        for m in self.model.modules():
            if isinstance(m, ChannelGate):
                self._handles.append(m.register_forward_hook(self._hook))
                m.recorders += 1
                self._gates_seen.append(m)
        return self

    def _hook(self, module: ChannelGate, inputs, output) -> None:
        z = module.last_logits  # this call's logits, stashed by forward (cleared on exit)
        if self.detach:
            z, output = z.detach(), output.detach()
        self.logits.append(z)
        self.gates.append(output)

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for m in self._gates_seen:
            m.recorders -= 1
            m.last_logits = None
        self._gates_seen.clear()

    def clear(self) -> None:
        self.gates.clear()
        self.logits.clear()

    def probabilities(self) -> list[torch.Tensor]:
        return [torch.sigmoid(z) for z in self.logits]


# ---------------------------------------------------------------------------- Beta CDF

def _betacf(a: float, b: float, x: torch.Tensor, iters: int = 300) -> torch.Tensor:
    """Continued fraction of the incomplete beta function (modified Lentz), float64."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = torch.ones_like(x)
    d = 1.0 - qab * x / qap
    d = torch.where(d.abs() < tiny, torch.full_like(d, tiny), d)
    d = 1.0 / d
    h = d.clone()
    for m in range(1, iters + 1):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = torch.where(d.abs() < tiny, torch.full_like(d, tiny), d)
            c = 1.0 + aa / c
            c = torch.where(c.abs() < tiny, torch.full_like(c, tiny), c)
            d = 1.0 / d
            h = h * d * c
    return h


def beta_cdf(x: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """Regularized incomplete beta function I_x(a, b), the CDF of Beta(a, b), elementwise."""
    x64 = x.detach().double().clamp(1e-12, 1 - 1e-12)
    lbeta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    front = torch.exp(a * torch.log(x64) + b * torch.log1p(-x64) - lbeta)
    left = x64 < (a + 1.0) / (a + b + 2.0)
    lo = front * _betacf(a, b, torch.where(left, x64, torch.full_like(x64, 0.5))) / a
    hi = 1.0 - front * _betacf(b, a, torch.where(left, torch.full_like(x64, 0.5), 1.0 - x64)) / b
    out = torch.where(left, lo, hi).clamp(0.0, 1.0)
    xd = x.detach().double()  # exact at the ends (the clamp above would leave ~1e-5 for a, b < 1)
    return torch.where(xd <= 0, torch.zeros_like(out), torch.where(xd >= 1, torch.ones_like(out), out))


_TABLES: dict[tuple[float, float, int], torch.Tensor] = {}


def _cdf_table(a: float, b: float, size: int = 1 << 16) -> torch.Tensor:
    """Beta(a, b) CDF on a uniform grid of ``size + 1`` points in [0, 1] (computed once, float64)."""
    key = (a, b, size)
    if key not in _TABLES:
        grid = torch.linspace(0.0, 1.0, size + 1, dtype=torch.float64)
        table = beta_cdf(grid, a, b)
        table[0], table[-1] = 0.0, 1.0
        _TABLES[key] = table
    return _TABLES[key]


class _BetaCDF(torch.autograd.Function):
    """Beta CDF by linear interpolation in a precomputed table (a few fused ops on any device),
    with the exact pdf as the gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: float, b: float) -> torch.Tensor:
        table = _cdf_table(a, b).to(x.device)
        size = table.numel() - 1
        pos = x.detach().double().clamp(0.0, 1.0) * size
        i0 = pos.floor().long().clamp(max=size - 1)
        frac = pos - i0
        ctx.save_for_backward(x)
        ctx.a, ctx.b = a, b
        return (table[i0] * (1 - frac) + table[i0 + 1] * frac).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        a, b = ctx.a, ctx.b
        x64 = x.double().clamp(1e-6, 1 - 1e-6)  # the pdf is unbounded at 0/1 for a, b < 1
        lbeta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
        pdf = torch.exp((a - 1) * torch.log(x64) + (b - 1) * torch.log1p(-x64) - lbeta)
        return grad * pdf.to(grad.dtype), None, None


def batch_shaping_loss(probs: torch.Tensor, a: float = 0.6, b: float = 0.4) -> torch.Tensor:
    """Cramer-von Mises distance between each channel's empirical CDF over the batch and the
    Beta(a, b) prior CDF, averaged over channels. ``probs``: (B, C) gate probabilities."""
    B = probs.shape[0]
    sorted_p, _ = torch.sort(probs.float(), dim=0)
    empirical = (torch.arange(1, B + 1, device=probs.device, dtype=torch.float32) - 0.5) / B
    prior = _BetaCDF.apply(sorted_p, a, b)
    return ((prior - empirical[:, None]) ** 2).sum(dim=0).mean() / B


def l0_loss(probs: torch.Tensor) -> torch.Tensor:
    """Expected fraction of open gates (the L0 norm's expectation under the gate probabilities)."""
    return probs.float().mean()
