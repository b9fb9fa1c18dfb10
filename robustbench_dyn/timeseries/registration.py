"""Registry names ``ts_<dataset>_<variant>``: the Wang et al. ResNet on a bundled UCR/UEA set.

Variants: ``static``, ``dyconv_k4``, ``odconv_k4``, ``gated`` (all with the attention/gate BatchNorm,
``attn_norm=True``). Imported at the end of :mod:`robustbench_dyn.registry`; registers the ``ts_resnet``
architecture into :data:`robustbench_dyn.archs.ARCHS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..archs import ARCHS
from ..registry import ModelSpec, register
from .data import DATASETS, SHAPES, test_provider
from .models import TSResNet

ARCHS.setdefault("ts_resnet", TSResNet)

VARIANTS = (
    ("static", "static", 1, False, "static convolutions (the baseline)"),
    ("dyconv_k4", "dyconv", 4, False, "DyConv1d, 4 kernels mixed by softmax attention"),
    ("odconv_k4", "odconv", 4, False, "ODConv1d, 4 kernels (kernel, channel, filter, temporal attention)"),
    ("gated", "static", 1, True, "channel-gated (batch-shaping + budget hinge), static convolutions"),
)


@dataclass(frozen=True)
class TSModelSpec(ModelSpec):
    """A :class:`ModelSpec` for a series classifier: which set, its shape, where its test data comes from."""

    dataset: str = ""  # aeon name
    in_channels: int = 1
    length: int = 128
    num_classes: int = 2

    @property
    def arch_kwargs(self) -> dict:
        kw = {"in_channels": self.in_channels, "num_classes": self.num_classes, "length": self.length,
              "conv": self.conv, "K": self.K, "gated": self.gated}
        if self.conv != "static" or self.gated:
            kw["attn_norm"] = True
        return kw

    @property
    def opt_in_prefix(self) -> str:
        """``list_models`` lists this model only for patterns starting with 'ts_' (not for '*')."""
        return "ts_"

    @property
    def data_provider(self):
        """``(split, data_dir) -> TSData``: the evaluation engine loads this model's test set through it."""
        return test_provider(self.dataset)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (1, self.in_channels, self.length)


TS_NAMES: list[str] = []
for _key, _name in DATASETS.items():
    _c, _l, _k, _ntr, _nte = SHAPES[_name]
    for _v, _conv, _K, _gated, _desc in VARIANTS:
        _spec = TSModelSpec(f"ts_{_key}_{_v}", "ts_resnet", 9, _conv, _K, _gated, "standard",
                            f"FCN-ResNet (Wang et al. 2017) on {_name}, {_desc}", dataset=_name, in_channels=_c,
                            length=_l, num_classes=_k)
        register(_spec)
        TS_NAMES.append(_spec.name)
