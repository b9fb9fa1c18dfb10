"""Omni-dimensional dynamic convolution (Li, Zhou and Yao, ICLR 2022).

Four input-dependent attentions computed from one squeeze-excite style trunk
(avgpool -> FC -> BN -> ReLU):

* channel  a_c (B, C_in)      sigmoid(z / T)   scales the input channels
* filter   a_f (B, C_out)     sigmoid(z / T)   scales the output channels
* spatial  a_s (B, k*k)       sigmoid(z / T)   scales the kernel's spatial positions
* kernel   a_w (B, K)         softmax(z / T)   mixes the K kernels (absent for K = 1)

``y = a_f * conv(a_c * x, sum_k a_w[k] * (a_s (.) W_k))``, computed batched. The temperature is a
registered buffer. Exact computations, selected by the ``mode`` attribute (not a constructor argument,
so checkpoints and the conv-kind signature are unchanged):

* ``"grouped"``: scale x by a_c, one grouped convolution with the batch folded into the groups and the
  per-example kernels ``a_s (.) sum_k a_w[k] W_k``, scale the output by a_f (the paper's order);
* ``"folded"``: the same grouped convolution, with a_c and a_f folded into the per-example kernel
  (``W[b, o, c] * a_f[b, o] * a_c[b, c]``: a_c and a_f are per-channel scalings, so this is exact)
  instead of scaling the activations;
* ``"bmm"``: a_c and a_f on the activations, the per-example kernels as one batched GEMM on the
  unfolded input (``F.unfold`` + ``torch.bmm``): static FLOPs; to be measured on GPUs;
* ``"auto"`` (default): grouped on CUDA (the only path measured there so far); elsewhere grouped,
  folding each of a_c and a_f into the kernel where that touches fewer elements than scaling the
  activation does (a_c: C_out*k*k < H*W of the input; a_f: C_in*k*k < H*W of the output). On the
  2-core CPU that folds both in ResNet-20's first stage (and its first stride-2 conv) and neither
  later; measured in BENCHMARKS.md "CPU paths (session 3)".
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .dyconv import global_pool, out_size

MODES = ("auto", "grouped", "folded", "bmm")


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
        self.mode = "auto"  # one of MODES; exact either way (see the module docstring)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, K={self.K}")

    def aggregate(self, att: ODAttentions) -> torch.Tensor:
        """Per-example kernels (B, C_out, C_in, k, k) = a_s (.) sum_k a_w[k] W_k."""
        B, k = att.kernel.shape[0], self.kernel_size
        w = (att.kernel @ self.weight.reshape(self.K, -1)).reshape(B, self.out_channels, self.in_channels, k, k)
        return w * att.spatial.reshape(B, 1, 1, k, k)

    def plan(self, x: torch.Tensor) -> tuple[bool, bool, bool]:
        """(fold a_c into the kernel, fold a_f into the kernel, use unfold + bmm) for this input."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "grouped" or (self.mode == "auto" and x.is_cuda):
            return False, False, False
        if self.mode == "folded":
            return True, True, False
        if self.mode == "bmm":
            return False, False, True
        H, W = x.shape[-2:]
        kk = self.kernel_size * self.kernel_size
        ho, wo = (out_size(s, self.kernel_size, self.stride, self.padding) for s in (H, W))
        return self.out_channels * kk < H * W, self.in_channels * kk < ho * wo, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = self.attention(x)
        fold_c, fold_f, bmm = self.plan(x)
        B, C, H, W = x.shape
        O, k = self.out_channels, self.kernel_size
        w = self.aggregate(att)
        if fold_c:
            w = w * att.channel.reshape(B, 1, C, 1, 1)
        else:
            x = x * att.channel.to(x.dtype).reshape(B, C, 1, 1)
        if fold_f:
            w = w * att.filter.reshape(B, O, 1, 1, 1)
        if bmm:
            ho, wo = out_size(H, k, self.stride, self.padding), out_size(W, k, self.stride, self.padding)
            cols = F.unfold(x, k, padding=self.padding, stride=self.stride)  # (B, C*k*k, ho*wo)
            y = torch.bmm(w.reshape(B, O, C * k * k).to(cols.dtype), cols).reshape(B, O, ho, wo)
        else:
            w = w.to(x.dtype).reshape(B * O, C, k, k)
            y = F.conv2d(x.reshape(1, B * C, H, W), w, None, self.stride, self.padding, groups=B)
            y = y.reshape(B, O, y.shape[-2], y.shape[-1])
        if fold_f:
            return y
        return y * att.filter.to(y.dtype).reshape(B, O, 1, 1)
