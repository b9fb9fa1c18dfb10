"""1-D dynamic layers for time series (B, C, L): DyConv1d, ODConv1d.

The attention math is not copied: :class:`~robustbench_dyn.layers.dyconv.KernelAttention`,
:class:`~robustbench_dyn.layers.odconv.OmniAttention` and :class:`~robustbench_dyn.layers.gate.ChannelGate`
pool over every trailing dimension (``global_pool``), so they take (B, C, L) as they are. The one
difference is ODConv's "spatial" head: k*k outputs on images, k (temporal) outputs on series.
:class:`OmniAttention1d` is OmniAttention with that head resized (``odconv.py`` builds it from
``kernel_size * kernel_size``; a ``spatial_size`` argument there would make the subclass unnecessary).
Being instances of the 2-D attention classes, the 1-D layers are found by the dynamics probes and the
audit like the 2-D ones. The channel gate needs no 1-D version: ``ChannelGate`` (exported here as
``ChannelGate1d``) applies to (B, C, L) block inputs unchanged.

Only the convolution itself is 1-D here: per-example kernels aggregated with one (B, K) x (K, P)
matmul, then one grouped ``conv1d`` with the batch folded into the groups (no per-sample loop).
``padding="same"`` pads (k - 1) // 2 left and k // 2 right (as Keras and ``nn.Conv1d(padding="same")``
do for even k such as the FCN's 8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dyconv import KernelAttention
from .gate import ChannelGate
from .odconv import ODAttentions, OmniAttention

ChannelGate1d = ChannelGate


def _same_pad(kernel_size: int) -> tuple[int, int]:
    return (kernel_size - 1) // 2, kernel_size // 2


class _Dynamic1dBase(nn.Module):
    """Kernel bank (K, C_out, C_in, k) and the padded, batched grouped conv1d shared by both layers."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding, K: int) -> None:
        super().__init__()
        if stride != 1 and padding == "same":
            raise ValueError("padding='same' needs stride 1")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.K = kernel_size, stride, padding, K
        self.weight = nn.Parameter(torch.empty(K, out_channels, in_channels, kernel_size))
        for k in range(K):
            nn.init.kaiming_normal_(self.weight[k], mode="fan_out", nonlinearity="relu")

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, K={self.K}")

    def _conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, L), per-example kernels w (B, C_out, C_in, k) -> (B, C_out, L')."""
        if self.padding == "same":
            x = F.pad(x, _same_pad(self.kernel_size))
            pad = 0
        else:
            pad = int(self.padding)
        B, C, L = x.shape
        w = w.reshape(B * self.out_channels, C, self.kernel_size).to(x.dtype)
        y = F.conv1d(x.reshape(1, B * C, L), w, None, self.stride, pad, groups=B)
        return y.reshape(B, self.out_channels, y.shape[-1])

    def bank(self, attn: torch.Tensor) -> torch.Tensor:
        """sum_k attn[:, k] W_k -> (B, C_out, C_in, k)."""
        w = attn.to(self.weight.dtype) @ self.weight.reshape(self.K, -1)
        return w.reshape(attn.shape[0], self.out_channels, self.in_channels, self.kernel_size)


class DyConv1d(_Dynamic1dBase):
    """Dynamic convolution (Chen et al. 2020) on series: K kernels mixed by :class:`KernelAttention`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding=0,
                 K: int = 4, reduction: int = 4, temperature: float = 30.0, attn_norm: bool = True) -> None:
        if not 1 <= K <= 8:
            raise ValueError(f"DyConv1d supports K = 1..8 kernels, got K={K}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, K)
        self.attention = KernelAttention(in_channels, K, reduction=reduction, temperature=temperature,
                                         norm=attn_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.bank(self.attention(x)))


class OmniAttention1d(OmniAttention):
    """OmniAttention whose "spatial" head is temporal: ``kernel_size`` outputs instead of kernel_size**2."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, K: int, reduction: float = 0.0625,
                 min_hidden: int = 16, temperature: float = 30.0) -> None:
        super().__init__(in_channels, out_channels, 1, K, reduction, min_hidden, temperature)
        self.spatial_fc = nn.Linear(self.fc.out_features, kernel_size)


class ODConv1d(_Dynamic1dBase):
    """ODConv (Li et al. 2022) on series: kernel, input-channel, filter and temporal attention."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding=0,
                 K: int = 4, reduction: float = 0.0625, temperature: float = 30.0, attn_norm: bool = True) -> None:
        # attn_norm: accepted for a uniform signature; OmniAttention always has its BatchNorm
        if K < 1:
            raise ValueError(f"ODConv1d needs K >= 1 kernels, got K={K}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, K)
        self.attention = OmniAttention1d(in_channels, out_channels, kernel_size, K, reduction,
                                         temperature=temperature)

    def aggregate(self, att: ODAttentions) -> torch.Tensor:
        """Per-example kernels (B, C_out, C_in, k) = a_t (.) sum_k a_w[k] W_k."""
        w = self.bank(att.kernel)
        return w * att.spatial.to(w.dtype).reshape(w.shape[0], 1, 1, self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = self.attention(x)
        B, C = x.shape[:2]
        x = x * att.channel.to(x.dtype).reshape(B, C, 1)
        y = self._conv(x, self.aggregate(att))
        return y * att.filter.to(y.dtype).reshape(B, self.out_channels, 1)


def make_conv1d(kind: str, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding=0,
                K: int = 4, **kw) -> nn.Module:
    """A bias-free 1-D conv of the given kind ("static", "dyconv", "odconv")."""
    if kind == "static":
        return nn.Conv1d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
    if kind == "dyconv":
        return DyConv1d(in_channels, out_channels, kernel_size, stride, padding, K=K, **kw)
    if kind == "odconv":
        return ODConv1d(in_channels, out_channels, kernel_size, stride, padding, K=K, **kw)
    raise ValueError(f"unknown conv kind {kind!r}; known: static, dyconv, odconv")
