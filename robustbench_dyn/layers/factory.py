"""Conv factory: a kind name -> a layer constructor. Architectures build every block conv through it."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .dyconv import DyConv2d
from .odconv import ODConv2d


def _static(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
            **_: object) -> nn.Module:
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)


def _dyconv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
            K: int = 4, **kw: object) -> nn.Module:
    return DyConv2d(in_channels, out_channels, kernel_size, stride, padding, K=K, **kw)


def _odconv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
            K: int = 4, **kw: object) -> nn.Module:
    return ODConv2d(in_channels, out_channels, kernel_size, stride, padding, K=K, **kw)


CONV_KINDS: dict[str, Callable[..., nn.Module]] = {"static": _static, "dyconv": _dyconv, "odconv": _odconv}


def make_conv(kind: str, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
              padding: int = 0, **kw: object) -> nn.Module:
    """Build a bias-free conv of the given kind ("static", "dyconv", "odconv")."""
    try:
        ctor = CONV_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown conv kind {kind!r}; known: {', '.join(CONV_KINDS)}") from None
    return ctor(in_channels, out_channels, kernel_size, stride, padding, **kw)
