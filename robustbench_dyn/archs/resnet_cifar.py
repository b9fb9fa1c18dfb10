"""CIFAR ResNets with a pluggable conv kind.

* ``CifarResNet(depth=20|32|56)``: He et al. 2016 CIFAR ResNet, basic blocks, widths 16/32/64,
  option-A (parameter-free, zero-padded) shortcuts: 0.27 M parameters at depth 20.
* ``CifarResNet50``: the CIFAR ResNet-50 (bottlenecks [3, 4, 6, 3], widths 64..512 x 4, 3x3 stem,
  1x1 conv + BN projection shortcuts): 23.5 M parameters static.

Every conv inside a residual block is built by :func:`make_conv` (static / dyconv / odconv);
the stem, the shortcuts and the classifier stay static. ``gated=True`` puts a
:class:`ChannelGate` on each block's first conv output. ``attn_norm=True`` (the layer version of the
fixed recipes; the registry's default) puts a BatchNorm on the hidden layer of every DyConv attention
and gate; ``False`` is the first zoo's layer, which its checkpoints record and load. Inputs are images in
[0, 1]; the CIFAR-10 normalization is a pair of buffers inside the model. ``forward`` returns logits only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ChannelGate, make_conv

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    def __init__(self, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        self.pad = (planes - in_planes) // 2
        self.extra = planes - in_planes - self.pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.extra))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, conv: str, conv_kw: dict,
                 gated: bool, attn_norm: bool = False) -> None:
        super().__init__()
        self.conv1 = make_conv(conv, in_planes, planes, 3, stride, 1, **conv_kw)
        self.bn1 = nn.BatchNorm2d(planes)
        self.gate = ChannelGate(in_planes, planes, norm=attn_norm) if gated else None
        self.conv2 = make_conv(conv, planes, planes, 3, 1, 1, **conv_kw)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = PadShortcut(in_planes, planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.gate is not None:
            out = out * self.gate(x)[:, :, None, None].to(out.dtype)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, conv: str, conv_kw: dict,
                 gated: bool, attn_norm: bool = False) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = make_conv(conv, in_planes, planes, 1, 1, 0, **conv_kw)
        self.bn1 = nn.BatchNorm2d(planes)
        self.gate = ChannelGate(in_planes, planes, norm=attn_norm) if gated else None
        self.conv2 = make_conv(conv, planes, planes, 3, stride, 1, **conv_kw)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = make_conv(conv, planes, out_planes, 1, 1, 0, **conv_kw)
        self.bn3 = nn.BatchNorm2d(out_planes)
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_planes))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.gate is not None:
            out = out * self.gate(x)[:, :, None, None].to(out.dtype)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class _CifarResNetBase(nn.Module):
    def _make_stages(self, block, in_planes: int, widths, blocks, strides, conv, conv_kw, gated, attn_norm=False):
        stages = []
        for width, n, stride in zip(widths, blocks, strides, strict=True):
            layers = []
            for i in range(n):
                layers.append(block(in_planes, width, stride if i == 0 else 1, conv, conv_kw, gated, attn_norm))
                in_planes = width * getattr(block, "expansion", 1)
            stages.append(nn.Sequential(*layers))
        return nn.Sequential(*stages), in_planes

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class CifarResNet(_CifarResNetBase):
    """CIFAR ResNet-(6n+2) with basic blocks (depth 20, 32, 56, ...)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, conv: str = "static", K: int = 1,
                 gated: bool = False, temperature: float = 30.0, attn_norm: bool = False) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 56, ...), got {depth}")
        n = (depth - 2) // 6
        conv_kw = {} if conv == "static" else {"K": K, "temperature": temperature, "attn_norm": attn_norm}
        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layers, planes = self._make_stages(BasicBlock, 16, (16, 32, 64), (n, n, n), (1, 2, 2), conv,
                                                conv_kw, gated, attn_norm)
        self.fc = nn.Linear(planes, num_classes)
        self._init()


class CifarResNet50(_CifarResNetBase):
    """CIFAR ResNet-50: bottlenecks [3, 4, 6, 3], 3x3 stride-1 stem, no max-pool."""

    def __init__(self, num_classes: int = 10, conv: str = "static", K: int = 1, gated: bool = False,
                 temperature: float = 30.0, blocks=(3, 4, 6, 3), attn_norm: bool = False) -> None:
        super().__init__()
        conv_kw = {} if conv == "static" else {"K": K, "temperature": temperature, "attn_norm": attn_norm}
        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layers, planes = self._make_stages(Bottleneck, 64, (64, 128, 256, 512), tuple(blocks),
                                                (1, 2, 2, 2), conv, conv_kw, gated, attn_norm)
        self.fc = nn.Linear(planes, num_classes)
        self._init()


ARCHS = {"cifar_resnet": CifarResNet, "cifar_resnet50": CifarResNet50}
