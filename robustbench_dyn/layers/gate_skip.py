"""An inference path for channel-gated ResNets that really skips the closed channels.

The model's own forward (:class:`~robustbench_dyn.archs.resnet_cifar.BasicBlock`) computes every channel
of a gated block and multiplies the closed ones by zero::

    out = relu(bn1(conv1(x))) * gate(x)      # all C channels computed, closed ones zeroed
    out = bn2(conv2(out))                    # conv2 reads all C channels, zeros included

so its *executed* MACs (``costs.gated_cost``) are nominal: the saving exists only on paper. Here each
gated block runs, per example, on the open channels only: the rows of conv1's weight (output channels)
and the entries of bn1 of the open channels are gathered, conv1 produces only those channels, and conv2
reads them with the matching input-channel slice of its weight. A closed channel is exactly zero after
the gate, so dropping it from conv2's input drops only ``0 * w`` terms: the result equals the masked path
up to float summation order (the conv kernel accumulates fewer terms in another blocking; differences
are ~1e-7 relative in fp32, never a different function). The same works for
:class:`~robustbench_dyn.archs.resnet_cifar.Bottleneck` (conv1 1x1 output channels, conv2 3x3 input
channels).

Use::

    with gate_skip(model):          # eval mode required; gated blocks of static convs
        logits = model(x)           # x of batch 1: the point; larger batches run example by example

Batch 1 is what this path is for (every example has its own open set). At larger batches the blocks run
example by example, which is exact but slower than the masked batched path: it is a reference, not a
throughput path. The gates themselves are the model's (eval: hard threshold ``logit > 0``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


def _gated_blocks(model: nn.Module) -> list[nn.Module]:
    from ..archs import BasicBlock, Bottleneck

    return [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck)) and m.gate is not None]


def supports_gate_skip(model: nn.Module) -> bool:
    """True when the model has gated blocks whose gated convs are plain ``nn.Conv2d`` (the skip path applies)."""
    blocks = _gated_blocks(model)
    return bool(blocks) and all(type(b.conv1) is nn.Conv2d and type(b.conv2) is nn.Conv2d for b in blocks)


def _conv(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _bn(bn: nn.BatchNorm2d, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """Eval-mode BatchNorm on the channels ``idx`` (all when None), with the running statistics."""
    take = (lambda t: t) if idx is None else (lambda t: None if t is None else t.index_select(0, idx))
    return F.batch_norm(x, take(bn.running_mean), take(bn.running_var), take(bn.weight), take(bn.bias),
                        False, 0.0, bn.eps)


def _open_path(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """bn-ed conv2 output of one example (batch 1) computed from the open channels of its gate only."""
    gate = block.gate(x)  # (1, C) in {0, 1}
    idx = gate[0].nonzero().squeeze(1)
    c1, c2 = block.conv1, block.conv2
    if idx.numel() == 0:  # every channel closed: conv2 sees only zeros, its output is zero (or its bias)
        h = (x.shape[-2] + 2 * c1.padding[0] - c1.dilation[0] * (c1.kernel_size[0] - 1) - 1) // c1.stride[0] + 1
        w = (x.shape[-1] + 2 * c1.padding[1] - c1.dilation[1] * (c1.kernel_size[1] - 1) - 1) // c1.stride[1] + 1
        h = (h + 2 * c2.padding[0] - c2.dilation[0] * (c2.kernel_size[0] - 1) - 1) // c2.stride[0] + 1
        w = (w + 2 * c2.padding[1] - c2.dilation[1] * (c2.kernel_size[1] - 1) - 1) // c2.stride[1] + 1
        out = x.new_zeros(x.shape[0], c2.out_channels, h, w)
        if c2.bias is not None:
            out = out + c2.bias[None, :, None, None]
        return out
    b1 = None if c1.bias is None else c1.bias.index_select(0, idx)
    out = _conv(c1, x, c1.weight.index_select(0, idx), b1)
    out = F.relu(_bn(block.bn1, out, idx))  # open gates are exactly 1: the multiply is the identity
    return _conv(c2, out, c2.weight.index_select(1, idx), c2.bias)


def _basic_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = block.bn2(_open_path(block, x))
    return F.relu(out + block.shortcut(x))


def _bottleneck_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = F.relu(block.bn2(_open_path(block, x)))
    out = block.bn3(block.conv3(out))
    return F.relu(out + block.shortcut(x))


def _per_example(fn, block: nn.Module):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            return fn(block, x)
        return torch.cat([fn(block, x[i:i + 1]) for i in range(x.shape[0])])

    return forward


@contextlib.contextmanager
def gate_skip(model: nn.Module) -> Iterator[nn.Module]:
    """Within the context, every gated block of ``model`` computes only its open channels (per example).

    Raises :class:`~robustbench_dyn.errors.ConfigError` when the model has no gated blocks, when a gated
    block uses dynamic convs (only static convs can be sliced this way), or when the model is in training
    mode (stochastic gates and batch statistics: the skip path is an inference path)."""
    from ..archs import Bottleneck

    blocks = _gated_blocks(model)
    if not blocks:
        raise ConfigError("the skip path needs a channel-gated model; this one has no gated blocks",
                          "use it with a gated model (`robustdyn list 'gated*'`)")
    if not supports_gate_skip(model):
        raise ConfigError("the skip path slices static convolutions; this gated model's blocks use dynamic convs",
                          "benchmark it through the masked path (its own forward)")
    if model.training:
        raise ConfigError("the skip path is an inference path: the model is in training mode",
                          "call model.eval() first")
    try:
        for b in blocks:
            fn = _bottleneck_forward if isinstance(b, Bottleneck) else _basic_forward
            b.forward = _per_example(fn, b)  # an instance attribute shadows the class's forward
        yield model
    finally:
        for b in blocks:
            b.__dict__.pop("forward", None)
