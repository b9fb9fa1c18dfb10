"""CPU training of the ``ts_*`` zoo and its compact checkpoints.

Recipe (:class:`TSRecipe`): Adam (lr 1e-3, betas 0.9/0.999, no weight decay on any parameter, so none on
attention and gate parameters), batch 16, a fixed number of optimizer steps with a cosine learning-rate
decay, no augmentation, the final weights kept (no model selection on the test set). DyConv/ODConv: the
attention temperature goes 30 -> 1 linearly over the first 10 % of the steps, then exactly 1. Gated: the
batch-shaping loss toward Beta(0.6, 0.4) plus a hinge on the mean gate probability above the budget 0.6,
the Gumbel noise annealed 1 -> 0 so that training ends on the eval rule (logit > 0).

Storage (:func:`compact_tensors`), to keep the 16 ``ts_*`` checkpoints under 25 MB: the weights of the
nine block convolutions (the K-kernel banks of the dynamic layers, the static kernels otherwise) as int8
with one scale s_o per output channel, which the following BatchNorm absorbs exactly (running mean x s_o,
running variance -> s_o^2 (var + eps) - eps, so that sqrt(var + eps) scales by s_o exactly; a conv output
channel, and its DyConv/ODConv mixture, is linear in that channel's kernels, so only the int8 rounding
changes the function), everything else in
float16, BatchNorm statistics and scalar buffers in float32. Loading casts back to float32. The accuracy
of the stored weights is measured after the round trip and recorded next to the float32 accuracy.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..layers import GateRecorder, batch_shaping_loss, set_temperature
from ..layers.gate import ChannelGate
from .data import TSData
from .models import TSResNet, dynamic_banks

INT8_MAX = 127.0


@dataclass
class TSRecipe:
    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    temp_start: float = 30.0
    temp_end: float = 1.0
    temp_anneal_frac: float = 0.1
    bs_weight: float = 2.0
    bs_a: float = 0.6
    bs_b: float = 0.4
    gate_budget: float = 0.6
    budget_weight: float = 4.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def temperature_at(step: int, r: TSRecipe) -> float:
    anneal = max(1, int(round(r.temp_anneal_frac * r.steps)))
    if step >= anneal:
        return r.temp_end
    return r.temp_start + (r.temp_end - r.temp_start) * step / anneal


def train_model(model: TSResNet, data: TSData, r: TSRecipe, log=None) -> dict:
    """Train in place; returns {'seconds', 'final_loss', 'gate_mean'}."""
    g = torch.Generator().manual_seed(r.seed)
    x, y = data.tensors()
    opt = torch.optim.Adam(model.parameters(), lr=r.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, r.steps) / r.steps)))
    dynamic = bool(dynamic_banks(model))
    gates = [m for m in model.modules() if isinstance(m, ChannelGate)]
    bs = min(r.batch_size, len(x))
    t0 = time.perf_counter()
    model.train()
    perm, pos = torch.randperm(len(x), generator=g), 0
    losses, gate_means = [], []
    for step in range(r.steps):
        if pos + bs > len(x):
            perm, pos = torch.randperm(len(x), generator=g), 0
        idx = perm[pos:pos + bs]
        pos += bs
        if dynamic:
            set_temperature(model, temperature_at(step, r))
        for m in gates:
            m.noise = 1.0 - step / max(1, r.steps - 1)
        if gates:
            with GateRecorder(model) as rec:
                logits = model(x[idx])
            probs = rec.probabilities()
            loss = F.cross_entropy(logits, y[idx])
            loss = loss + r.bs_weight * sum(batch_shaping_loss(p, r.bs_a, r.bs_b) for p in probs) / len(probs)
            mean_p = torch.stack([p.mean() for p in probs]).mean()
            loss = loss + r.budget_weight * (mean_p - r.gate_budget).clamp(min=0)
            gate_means.append(float(mean_p.detach()))
        else:
            loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log and (step + 1) % max(1, r.steps // 5) == 0:
            log(f"  step {step + 1}/{r.steps} loss {np.mean(losses[-20:]):.4f}")
    if dynamic:
        set_temperature(model, r.temp_end)  # exactly 1 when shipped
    model.eval()
    return {"seconds": time.perf_counter() - t0, "final_loss": float(np.mean(losses[-20:])),
            "gate_prob_mean": float(np.mean(gate_means[-20:])) if gate_means else None}


@torch.no_grad()
def accuracy(model: nn.Module, data: TSData, batch: int = 256) -> float:
    model.eval()
    x, y = data.tensors()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(y)


def compact_tensors(model: TSResNet) -> dict[str, torch.Tensor]:
    """The state dict in storage dtypes (see the module docstring); the function of the eval model is kept
    up to the int8 rounding of the kernel banks."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = {m: n for n, m in model.named_modules()}
    bank_keys = set()
    for conv, bn in model.conv_bn_pairs():
        cn, bnn = names[conv], names[bn]
        w = sd[f"{cn}.weight"].double()  # (K, C_out, C_in, k) or static (C_out, C_in, k)
        out_dim = 1 if w.ndim == 4 else 0  # one scale per output channel (shared by a bank's K kernels)
        dims = tuple(d for d in range(w.ndim) if d != out_dim)
        s = INT8_MAX / w.abs().amax(dim=dims).clamp(min=1e-12)
        shape = [1] * w.ndim
        shape[out_dim] = -1
        sd[f"{cn}.weight"] = (w * s.reshape(shape)).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        sd[f"{bnn}.running_mean"] = (sd[f"{bnn}.running_mean"].double() * s).float()
        # BatchNorm divides by sqrt(var + eps): storing s^2 (var + eps) - eps keeps the fold exact for any eps
        # (s^2 var alone is not: channels with var ~ eps, common after ODConv's attentions, change scale)
        var = sd[f"{bnn}.running_var"].double()
        sd[f"{bnn}.running_var"] = (s * s * (var + bn.eps) - bn.eps).float()
        bank_keys.add(f"{cn}.weight")
    out = {}
    for k, v in sd.items():
        keep = k in bank_keys or not v.is_floating_point() or v.ndim == 0 or "running_" in k
        out[k] = v if keep else v.to(torch.float16)
    return {k: v.contiguous() for k, v in out.items()}


class _Tensors(nn.Module):
    """Hands a prepared tensor dict to :func:`checkpoints.save_checkpoint` (which saves ``state_dict()``)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._t = tensors

    def state_dict(self, *args, **kwargs):  # noqa: D102
        return dict(self._t)


def load_compact(model: TSResNet, tensors: dict[str, torch.Tensor]) -> TSResNet:
    """Load stored tensors (float8/float16) into a float32 model."""
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in tensors.items()}, strict=True)
    return model.eval()
