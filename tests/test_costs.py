"""Cost model: parameters and MACs from torch's FLOP counter; executed MACs of gated models."""

from __future__ import annotations

import pytest
import torch

import robustbench_dyn as rd
from robustbench_dyn.costs import count_macs, count_params, gated_cost
from robustbench_dyn.layers import DyConv2d

STATIC_MACS = 40.55e6
DYNAMIC = rd.list_models("dyconv_k?,odconv_k?")


def _conv_macs(cin: int, cout: int, hw: int) -> int:
    return cin * cout * 9 * hw * hw


def test_static_resnet20_macs():
    macs = count_macs(rd.create_model("static"))
    assert macs == pytest.approx(STATIC_MACS, rel=0.001)
    # by hand: stem + 18 block convs (16 ch at 32x32, 32 ch at 16x16, 64 ch at 8x8) + classifier
    by_hand = (_conv_macs(3, 16, 32) + 6 * _conv_macs(16, 16, 32) + _conv_macs(16, 32, 16) + 5 * _conv_macs(32, 32, 16)
               + _conv_macs(32, 64, 8) + 5 * _conv_macs(64, 64, 8) + 64 * 10)
    assert macs == by_hand


@pytest.mark.parametrize("name", DYNAMIC)
def test_dynamic_macs_include_a_small_attention_overhead(name):
    static = count_macs(rd.create_model("static"))
    macs = count_macs(rd.create_model(name))
    assert static < macs < 1.1 * static


def test_dyconv_macs_grow_with_k_and_modes_are_restored():
    macs = [count_macs(rd.create_model(f"dyconv_k{k}")) for k in range(2, 6)]
    assert macs == sorted(macs) and len(set(macs)) == 4  # aggregation cost grows with K
    m = rd.create_model("dyconv_k4").train()
    count_macs(m)
    assert m.training and all(mod.mode == "auto" for mod in m.modules() if isinstance(mod, DyConv2d))
    assert count_params(m) == sum(p.numel() for p in m.parameters())


def test_macs_are_per_image():
    m = rd.create_model("static")
    assert count_macs(m, (4, 3, 32, 32)) == count_macs(m)


def test_gated_cost_model():
    m = rd.create_model("gated")
    cost = gated_cost(m)
    assert len(cost.gated) == 9  # one per basic block
    assert cost.full == pytest.approx(count_macs(m), abs=0.5)
    # the gate-dependent part of each block is its two 3x3 convs
    assert cost.gated[0] == 2 * _conv_macs(16, 16, 32)
    assert cost.gated[3] == _conv_macs(16, 32, 16) + _conv_macs(32, 32, 16)
    assert cost.gated[6] == _conv_macs(32, 64, 8) + _conv_macs(64, 64, 8)
    assert cost.base > _conv_macs(3, 16, 32)  # the stem (and gate heads, classifier) are not gated

    zero, one = torch.zeros(9), torch.ones(9)
    assert cost.macs(zero).item() == pytest.approx(cost.base)
    assert cost.macs(one).item() == pytest.approx(cost.full)
    g = torch.Generator().manual_seed(0)
    d1, d2 = torch.rand(9, generator=g), torch.rand(9, generator=g)
    assert cost.macs(0.3 * d1 + 0.7 * d2).item() == pytest.approx(0.3 * cost.macs(d1).item()
                                                                  + 0.7 * cost.macs(d2).item())
    assert cost.macs(2 * d1).item() - cost.base == pytest.approx(2 * (cost.macs(d1).item() - cost.base))
    batch = cost.macs(torch.stack([zero, d1, one]))  # (..., n_blocks) -> (...)
    assert batch.shape == (3,) and batch[0] < batch[1] < batch[2]


def test_gated_cost_of_an_ungated_model_is_all_base():
    m = rd.create_model("static")
    cost = gated_cost(m)
    assert cost.gated == () and cost.full == pytest.approx(count_macs(m), abs=0.5)
