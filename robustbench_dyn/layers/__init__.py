"""Dynamic layers: DyConv2d, ODConv2d, ChannelGate (+ losses) and the conv factory."""

from .dyconv import DyConv2d, KernelAttention
from .dyconv1d import ChannelGate1d, DyConv1d, ODConv1d, OmniAttention1d, make_conv1d
from .factory import CONV_KINDS, make_conv
from .gate import ChannelGate, GateRecorder, batch_shaping_loss, beta_cdf, l0_loss
from .odconv import ODAttentions, ODConv2d, OmniAttention

__all__ = [
    "CONV_KINDS", "ChannelGate", "ChannelGate1d", "DyConv1d", "ODConv1d", "OmniAttention1d", "make_conv1d",
    "DyConv2d", "GateRecorder", "KernelAttention", "ODAttentions", "ODConv2d",
    "OmniAttention", "batch_shaping_loss", "beta_cdf", "l0_loss", "make_conv", "set_temperature",
    "set_dyconv_mode",
]


def set_temperature(model, value: float) -> None:
    """Set the attention temperature of every DyConv/ODConv layer (used by the training anneal)."""
    for m in model.modules():
        if isinstance(m, (KernelAttention, OmniAttention)):
            m.temperature.fill_(float(value))


def set_dyconv_mode(model, mode: str) -> None:
    """Switch every DyConv2d between its exact computations ("grouped", "dense", "bmm"; "auto": dense on
    CUDA, on the CPU dense for small outputs and grouped otherwise; see layers/dyconv.py)."""
    from .dyconv import MODES

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for m in model.modules():
        if isinstance(m, DyConv2d):
            m.mode = mode
