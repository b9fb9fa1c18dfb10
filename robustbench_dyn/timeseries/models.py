"""The fully convolutional ResNet for time-series classification (Wang, Yan and Oates, IJCNN 2017),
with any conv kind plugged in.

Three residual blocks of 64, 128, 128 channels; each block: conv(k=8) -> BN -> ReLU -> conv(k=5) -> BN
-> ReLU -> conv(k=3) -> BN, plus the shortcut (1x1 conv + BN where the channel count changes, BN
otherwise, as in the reference code), ReLU after the sum; global average pooling over time; linear.
"same" padding, stride 1. ``conv``: "static" | "dyconv" | "odconv" for all nine block convs (the
shortcuts and the classifier stay static, as on CIFAR). ``gated=True``: a :class:`ChannelGate` on each
block's input gates the first conv's output channels (after its BN and ReLU), as the CIFAR gated ResNet.

Input: (B, C, L) in [0, 1], the map of z-normalised series (see :mod:`.data`); the first operation is
``z = (u - 0.5) * input_span`` (a buffer), so attacks see the [0, 1] box and eps k/255 means k/10 std.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..costs import GatedCost, _flops_by_module, _module_keys
from ..layers.dyconv1d import DyConv1d, ODConv1d, _same_pad, make_conv1d
from ..layers.gate import ChannelGate
from .data import INPUT_SPAN

KERNELS = (8, 5, 3)
WIDTHS = (64, 128, 128)


class TSBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, conv: str, conv_kw: dict, gated: bool, attn_norm: bool) -> None:
        super().__init__()
        k1, k2, k3 = KERNELS
        # "same" padding ((k-1)//2 left, k//2 right) is applied in forward, so every conv kind runs unpadded
        self.conv1 = make_conv1d(conv, in_planes, planes, k1, **conv_kw)
        self.bn1 = nn.BatchNorm1d(planes)
        self.gate = ChannelGate(in_planes, planes, norm=attn_norm) if gated else None
        self.conv2 = make_conv1d(conv, planes, planes, k2, **conv_kw)
        self.bn2 = nn.BatchNorm1d(planes)
        self.conv3 = make_conv1d(conv, planes, planes, k3, **conv_kw)
        self.bn3 = nn.BatchNorm1d(planes)
        if in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv1d(in_planes, planes, 1, bias=False), nn.BatchNorm1d(planes))
        else:
            self.shortcut = nn.BatchNorm1d(planes)

    def conv_bn_pairs(self):
        return [(self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k1, k2, k3 = KERNELS
        out = F.relu(self.bn1(self.conv1(F.pad(x, _same_pad(k1)))))
        if self.gate is not None:
            out = out * self.gate(x)[:, :, None].to(out.dtype)
        out = F.relu(self.bn2(self.conv2(F.pad(out, _same_pad(k2)))))
        out = self.bn3(self.conv3(F.pad(out, _same_pad(k3))))
        return F.relu(out + self.shortcut(x))


class TSResNet(nn.Module):
    """Wang et al. (2017) ResNet for series (B, in_channels, length) in [0, 1] -> logits."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, length: int = 128, conv: str = "static",
                 K: int = 1, gated: bool = False, temperature: float = 30.0, attn_norm: bool = True,
                 input_span: float = INPUT_SPAN) -> None:
        super().__init__()
        self.in_channels, self.length, self.conv_kind = in_channels, length, conv
        conv_kw = {} if conv == "static" else {"K": K, "temperature": temperature, "attn_norm": attn_norm}
        self.register_buffer("input_span", torch.tensor(float(input_span)))
        blocks, c = [], in_channels
        for w in WIDTHS:
            blocks.append(TSBlock(c, w, conv, conv_kw, gated, attn_norm))
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, num_classes)
        self._seed_costs()

    @property
    def input_size(self) -> tuple[int, int, int]:
        """One example's shape for the cost model (``costs.count_macs(model, model.input_size)``)."""
        return (1, self.in_channels, self.length)

    def conv_bn_pairs(self):
        return [p for b in self.blocks for p in b.conv_bn_pairs()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - 0.5) * self.input_span
        return self.fc(self.blocks(z).mean(-1))

    def _seed_costs(self) -> None:
        """Put this model's MACs in the dynamics probes' cost cache: the probes' default input is a 32x32
        image and their gated-cost split knows the CIFAR blocks only."""
        from .. import dynamics

        total, per_module = _flops_by_module(self, self.input_size)
        gated = []
        for i, b in enumerate(self.blocks):
            if b.gate is not None:
                f = sum(per_module.get(k, 0) for c in ("conv1", "conv2")
                        for k in _module_keys(per_module, f"blocks.{i}.{c}"))
                gated.append(f / 2)
        entry = {"static": float(total // 2)}
        if gated:
            entry["gated"] = GatedCost(base=total / 2 - sum(gated), gated=tuple(gated))
        dynamics._COSTS[self] = entry


def dynamic_banks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (DyConv1d, ODConv1d))]
