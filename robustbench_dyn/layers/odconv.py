"""Omni-dimensional dynamic convolution (Li, Zhou and Yao, ICLR 2022).

Four input-dependent attentions computed from one squeeze-excite style trunk
(avgpool -> FC -> BN -> ReLU):

* channel  a_c (B, C_in)      sigmoid(z / T)   scales the input channels
* filter   a_f (B, C_out)     sigmoid(z / T)   scales the output channels
* spatial  a_s (B, k*k)       sigmoid(z / T)   scales the kernel's spatial positions
* kernel   a_w (B, K)         softmax(z / T)   mixes the K kernels (absent for K = 1)

``y = a_f * conv(a_c * x, sum_k a_w[k] * (a_s (.) W_k))``, computed batched as one grouped
convolution with the batch folded into the groups. The temperature is a registered buffer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .dyconv import global_pool


class ODAttentions(NamedTuple):
    channel: torch.Tensor  # (B, C_in)
    filter: torch.Tensor  # (B, C_out)
    spatial: torch.Tensor  # (B, k*k)
    kernel: torch.Tensor  # (B, K)


class OmniAttention(nn.Module):
    """Returns the four attentions as an :class:`ODAttentions` tuple (hooks see it)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, K: int,
                 reduction: float = 0.0625, min_hidden: int = 16, temperature: float = 30.0) -> None:
        super().__init__()
        hidden = max(int(in_channels * reduction), min_hidden)
        self.K = K
        self.fc = nn.Linear(in_channels, hidden, bias=False)
        self.bn = nn.BatchNorm1d(hidden)
        self.channel_fc = nn.Linear(hidden, in_channels)
        self.filter_fc = nn.Linear(hidden, out_channels)
        self.spatial_fc = nn.Linear(hidden, kernel_size * kernel_size)
        self.kernel_fc = nn.Linear(hidden, K) if K > 1 else None
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> ODAttentions:
        h = F.relu(self.bn(self.fc(global_pool(x))))
        t = self.temperature
        if self.kernel_fc is not None:
            kernel = torch.softmax(self.kernel_fc(h) / t, dim=1)
        else:
            kernel = torch.ones(h.shape[0], 1, dtype=h.dtype, device=h.device)
        return ODAttentions(torch.sigmoid(self.channel_fc(h) / t), torch.sigmoid(self.filter_fc(h) / t),
                            torch.sigmoid(self.spatial_fc(h) / t), kernel)


class ODConv2d(nn.Module):
    """ODConv with K kernels (K >= 1). Bias-free (a BatchNorm follows)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, K: int = 4, reduction: float = 0.0625, temperature: float = 30.0,
                 attn_norm: bool = True) -> None:
        # attn_norm: accepted for a uniform conv-kind signature; ODConv's attention always has its BatchNorm
        super().__init__()
        if K < 1:
            raise ValueError(f"ODConv2d needs K >= 1 kernels, got K={K}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.K = kernel_size, stride, padding, K
        self.weight = nn.Parameter(torch.empty(K, out_channels, in_channels, kernel_size, kernel_size))
        for k in range(K):
            nn.init.kaiming_normal_(self.weight[k], mode="fan_out", nonlinearity="relu")
        self.attention = OmniAttention(in_channels, out_channels, kernel_size, K, reduction,
                                       temperature=temperature)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, K={self.K}")

    def aggregate(self, att: ODAttentions) -> torch.Tensor:
        """Per-example kernels (B, C_out, C_in, k, k) = a_s (.) sum_k a_w[k] W_k."""
        B, k = att.kernel.shape[0], self.kernel_size
        w = (att.kernel @ self.weight.reshape(self.K, -1)).reshape(B, self.out_channels, self.in_channels, k, k)
        return w * att.spatial.reshape(B, 1, 1, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = self.attention(x)
        B, C, H, W = x.shape
        x = x * att.channel.to(x.dtype).reshape(B, C, 1, 1)
        w = self.aggregate(att).to(x.dtype)
        w = w.reshape(B * self.out_channels, C, self.kernel_size, self.kernel_size)
        y = F.conv2d(x.reshape(1, B * C, H, W), w, None, self.stride, self.padding, groups=B)
        y = y.reshape(B, self.out_channels, y.shape[-2], y.shape[-1])
        return y * att.filter.to(y.dtype).reshape(B, self.out_channels, 1, 1)
