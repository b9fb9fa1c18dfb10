"""Cost model: parameters and MACs from torch's own FLOP counter.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2) on one 32x32 image,
with every DyConv layer in its "grouped" form (one conv per example + the kernel-aggregation
matmul), so attention and aggregation overhead are included and the K-fold "dense" shortcut does
not inflate the count. For gated models the executed MACs depend on the gates:
``macs = base + sum_b density_b * gated_b``, where ``gated_b`` is the MACs of block b's two convs
that scale with the fraction of open channels (conv1's outputs, conv2's inputs) and ``base`` is
everything else (stem, shortcuts, classifier, gate heads).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .archs import BasicBlock, Bottleneck
from .layers import DyConv2d


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _flops_by_module(model: nn.Module, input_size=(1, 3, 32, 32)) -> tuple[int, dict[str, int]]:
    modes = {}
    for m in model.modules():
        if isinstance(m, DyConv2d):
            modes[m] = m.mode
            m.mode = "grouped"
    training = [(m, m.training) for m in model.modules()]  # per module: a recursive train() would clobber them
    model.eval()
    try:
        p = next(itertools.chain(model.parameters(), model.buffers()), None)  # None: a model without tensors
        x = torch.zeros(input_size, dtype=torch.float32 if p is None or not p.is_floating_point() else p.dtype,
                        device=None if p is None else p.device)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
        per_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
        return counter.get_total_flops(), per_module
    finally:
        for m, mode in modes.items():
            m.mode = mode
        for m, flag in training:
            m.training = flag


def count_macs(model: nn.Module, input_size=(1, 3, 32, 32)) -> int:
    """MACs of one forward pass at full gate density (all gates open)."""
    total, _ = _flops_by_module(model, input_size)
    return total // 2 // input_size[0]


@dataclass(frozen=True)
class GatedCost:
    """Executed MACs per example of a gated model as a function of per-block gate densities."""

    base: float  # MACs that do not depend on the gates
    gated: tuple[float, ...]  # per gated block, MACs at density 1 of its gate-dependent convs

    @property
    def full(self) -> float:
        return self.base + sum(self.gated)

    def macs(self, densities) -> torch.Tensor:
        """``densities``: (..., n_blocks) fractions of open gates -> executed MACs (...)."""
        d = torch.as_tensor(densities, dtype=torch.float64)
        return self.base + (d * torch.tensor(self.gated, dtype=torch.float64)).sum(-1)


def gated_cost(model: nn.Module, input_size=(1, 3, 32, 32)) -> GatedCost:
    """Split the model's MACs into the gate-independent base and each gated block's share."""
    total, per_module = _flops_by_module(model, input_size)
    names = {m: n for n, m in model.named_modules()}
    gated = []
    for m in model.modules():
        if isinstance(m, (BasicBlock, Bottleneck)) and m.gate is not None:
            prefix = names[m]
            flops = sum(per_module.get(key, 0) for key in _module_keys(per_module, f"{prefix}.conv1"))
            flops += sum(per_module.get(key, 0) for key in _module_keys(per_module, f"{prefix}.conv2"))
            gated.append(flops / 2 / input_size[0])
    base = total / 2 / input_size[0] - sum(gated)
    return GatedCost(base=base, gated=tuple(gated))


def _module_keys(per_module: dict[str, int], dotted: str) -> list[str]:
    """FlopCounterMode keys look like 'Global' and 'CifarResNet.layers.0.0.conv1'; match by suffix."""
    return [k for k in per_module if k.endswith("." + dotted) and k.count(".") == dotted.count(".") + 1]
