"""Dynamic convolution (Chen et al., CVPR 2020).

K kernels W_1..W_K are mixed per example by an input-dependent attention
``pi(x) = softmax(FC(ReLU(FC(avgpool(x)))) / T)``; the layer computes
``conv(x, sum_k pi_k(x) W_k)``.

Two exact ways to compute it for a batch, selected by ``mode``:

* ``"grouped"``: aggregate one kernel per example (a (B, K) x (K, P) matmul) and run a single
  grouped convolution with the batch folded into the groups. Cost: one conv + aggregation.
* ``"dense"``: run the K kernels as one dense conv with K*C_out output channels and take the
  attention-weighted sum (conv is linear in its weight). Cost: K convs, but dense cuDNN/oneDNN kernels.

* ``"bmm"``: aggregate one kernel per example and run it as one batched GEMM on the unfolded input
  (``F.unfold`` + ``torch.bmm``). Cost: static FLOPs, plus the k*k-times larger unfolded input.

Which one is faster depends on the device and the layer: ``scripts/bench_layers.py`` and
``scripts/bench_cpu_paths.py`` measure them. Measured (2026-11-22): on an H100, dense runs an attack
step 1.4-2.4x faster than grouped (cuDNN's grouped convolution with one group per example is slow); on a
2-core CPU, grouped runs PGD 3.4x faster than dense (dense does K times the arithmetic). On the CPU the
grouped convolution has little work per group once the output is small: at 8x8 outputs (ResNet-20's
last stage) dense trains 2x faster in bf16 (session 3, BENCHMARKS.md "CPU paths"). ``"auto"`` (the
default) therefore picks dense on CUDA and, elsewhere, dense for outputs of at most
``CPU_DENSE_MAX_PIXELS`` pixels and grouped above; bmm is slower on the CPU at every ResNet-20 shape and
is there to be measured on GPUs. All are exact, so the mode never changes the function.

The attention temperature is a registered buffer, so it is saved with the checkpoint and a trained
model never silently runs at the initial temperature.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("auto", "grouped", "dense", "bmm")
#: on the CPU, "auto" runs dense when the output has at most this many pixels (H_out * W_out), else grouped
CPU_DENSE_MAX_PIXELS = 64


def out_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel_size) // stride + 1


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension after (batch, channel): images (B, C, H, W) and series (B, C, L) alike."""
    return x.flatten(2).mean(-1)


class KernelAttention(nn.Module):
    """avgpool -> FC -> [BatchNorm] -> ReLU -> FC -> softmax(z / T). Returns (B, K) attention over kernels.

    ``norm=True`` puts a BatchNorm1d on the hidden layer, as the ODConv reference does. Without it the
    hidden activations of a pooled feature vector are tiny and nearly constant across inputs, and the
    attention of a ResNet-20 trained with it stays uniform (measured: entropy 0.99-1.00 of log K in
    all 18 layers of the first zoo). ``norm=False`` is the first zoo's layer (its checkpoints load it).

    A forward hook on this module sees the attention vectors (what the dynamics probes read).
    """

    def __init__(self, in_channels: int, num_kernels: int, reduction: int = 4, min_hidden: int = 4,
                 temperature: float = 30.0, norm: bool = False) -> None:
        super().__init__()
        hidden = max(in_channels // reduction, min_hidden)
        self.fc1 = nn.Linear(in_channels, hidden, bias=not norm)
        self.bn = nn.BatchNorm1d(hidden) if norm else None
        self.fc2 = nn.Linear(hidden, num_kernels)
        self.num_kernels = num_kernels
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(global_pool(x))
        return F.relu(self.bn(h) if self.bn is not None else h)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.hidden(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x) / self.temperature, dim=1)


class DyConv2d(nn.Module):
    """Dynamic convolution with K kernels (K = 1..8). Bias-free (a BatchNorm follows)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, K: int = 4, reduction: int = 4, temperature: float = 30.0,
                 mode: str = "auto", attn_norm: bool = False) -> None:
        super().__init__()
        if not 1 <= K <= 8:
            raise ValueError(f"DyConv2d supports K = 1..8 kernels, got K={K}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.K = kernel_size, stride, padding, K
        self.mode = mode
        self.weight = nn.Parameter(torch.empty(K, out_channels, in_channels, kernel_size, kernel_size))
        for k in range(K):
            nn.init.kaiming_normal_(self.weight[k], mode="fan_out", nonlinearity="relu")
        self.attention = KernelAttention(in_channels, K, reduction=reduction, temperature=temperature,
                                         norm=attn_norm)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, K={self.K}, mode={self.mode}")

    def aggregate(self, attn: torch.Tensor) -> torch.Tensor:
        """Per-example kernels (B, C_out, C_in, k, k) = sum_k attn[:, k] W_k."""
        B = attn.shape[0]
        w = attn @ self.weight.reshape(self.K, -1)
        return w.reshape(B, self.out_channels, self.in_channels, self.kernel_size, self.kernel_size)

    def resolve_mode(self, x: torch.Tensor) -> str:
        """The computation this input runs ("auto" resolved by device and output size)."""
        if self.mode != "auto":
            return self.mode
        if x.is_cuda:
            return "dense"
        ho, wo = (out_size(s, self.kernel_size, self.stride, self.padding) for s in x.shape[-2:])
        return "dense" if ho * wo <= CPU_DENSE_MAX_PIXELS else "grouped"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attention(x)
        mode = self.resolve_mode(x)
        if mode == "dense":
            return self._dense(x, attn)
        if mode == "bmm":
            return self._bmm(x, attn)
        return self._grouped(x, attn)

    def _dense(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        w = self.weight.reshape(self.K * self.out_channels, self.in_channels, self.kernel_size,
                                self.kernel_size)
        y = F.conv2d(x, w, None, self.stride, self.padding)
        ho, wo = y.shape[-2:]
        # attention-weighted sum over the K outputs as one batched (1 x K) @ (K x C_out*H*W) product
        y = torch.bmm(attn.to(y.dtype).unsqueeze(1), y.reshape(B, self.K, -1))
        return y.reshape(B, self.out_channels, ho, wo)

    def _bmm(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        k = self.kernel_size
        ho, wo = out_size(H, k, self.stride, self.padding), out_size(W, k, self.stride, self.padding)
        cols = F.unfold(x, k, padding=self.padding, stride=self.stride)  # (B, C*k*k, ho*wo)
        w = self.aggregate(attn).reshape(B, self.out_channels, C * k * k)
        return torch.bmm(w.to(cols.dtype), cols).reshape(B, self.out_channels, ho, wo)

    def _grouped(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        w = self.aggregate(attn.to(x.dtype) if x.dtype != attn.dtype else attn)
        w = w.reshape(B * self.out_channels, self.in_channels, self.kernel_size, self.kernel_size)
        y = F.conv2d(x.reshape(1, B * C, H, W), w.to(x.dtype), None, self.stride, self.padding, groups=B)
        return y.reshape(B, self.out_channels, y.shape[-2], y.shape[-1])


def kernel_entropy_max(K: int) -> float:
    """Upper bound of the attention entropy (nats): log K."""
    return math.log(K)
