"""Dynamics probes: entropy bounds, gate densities, MACs, attention shift, logits unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robustbench_dyn import create_model
from robustbench_dyn.costs import count_macs, gated_cost
from robustbench_dyn.dynamics import DynamicsProbe, kl_divergence, total_variation


@pytest.fixture(scope="module")
def x():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 32, 32, generator=g)


def _model(name):
    torch.manual_seed(0)
    m = create_model(name, temperature=1.0) if name != "static" and name != "gated" else create_model(name)
    return m.eval()


@pytest.mark.parametrize("name,K", [("dyconv_k4", 4), ("dyconv_k2", 2), ("odconv_k4", 4), ("odconv_k1", 1)])
def test_entropy_in_bounds_and_vectors(name, K, x):
    m = _model(name)
    probe = DynamicsProbe(m)
    rec = probe.record(x)
    H = rec.entropy()
    assert H.shape == (6, len(probe.layers)) and len(probe.layers) == 18
    assert (H >= 0).all() and (H <= math.log(K) + 1e-9).all()
    if K == 1:
        assert (H == 0).all()
    else:
        assert H.max() > 0
    v = rec.vectors()
    per_layer = K + (9 if name.startswith("odconv") else 0)
    assert v.shape == (6, 18 * per_layer)
    assert rec.dominant().shape == (6, 18) and (rec.dominant() < K).all()
    assert rec.entropy_mean().shape == (6,)


def test_probe_leaves_forward_unchanged_and_removes_hooks(x):
    m = _model("dyconv_k4")
    with torch.no_grad():
        ref = m(x)
    rec = DynamicsProbe(m).record(x, batch_size=4)
    assert np.allclose(rec.logits, ref.numpy(), atol=1e-5)
    assert all(not mod._forward_hooks for mod in m.modules())
    with torch.no_grad():
        assert torch.equal(m(x), ref)


def test_gate_density_and_macs(x):
    m = _model("gated")
    with torch.no_grad():  # close some gates so densities vary
        for g in [mod for mod in m.modules() if type(mod).__name__ == "ChannelGate"]:
            g.fc2.bias.normal_(0, 1)
    probe = DynamicsProbe(m)
    rec = probe.record(x)
    d = rec.density()
    assert d.shape == (6, 9) and (d >= 0).all() and (d <= 1).all()
    dm = rec.density_mean()
    assert ((dm >= 0) & (dm <= 1)).all()
    cost = gated_cost(m)
    macs = rec.macs()
    assert np.allclose(macs, cost.macs(d).numpy())
    assert (macs <= cost.full + 1).all() and (macs >= cost.base - 1).all()
    assert [len(g[0]) for g in rec.gates] == [16, 16, 16, 32, 32, 32, 64, 64, 64]


def test_static_model_has_no_dynamics(x):
    m = _model("static")
    probe = DynamicsProbe(m)
    rec = probe.record(x)
    assert not probe.has_attention and not probe.has_gates
    assert np.isnan(rec.entropy_mean()).all()
    assert (rec.density_mean() == 1).all()
    assert np.allclose(rec.macs(), count_macs(m))
    shift = probe.compare(rec, rec)
    assert np.isnan(shift.kl_mean()).all()


@pytest.mark.parametrize("name", ["dyconv_k4", "odconv_k4", "odconv_k1"])
def test_shift_is_zero_for_identical_inputs_and_positive_otherwise(name, x):
    m = _model(name)
    probe = DynamicsProbe(m)
    clean = probe.record(x)
    same = probe.compare(clean, probe.record(x.clone()))
    assert np.allclose(same.kl, 0, atol=1e-7) and np.allclose(same.tv, 0, atol=1e-6)
    adv = probe.record((x + 0.2 * torch.randn_like(x)).clamp(0, 1))
    shift = probe.compare(clean, adv)
    assert (shift.kl >= 0).all() and (shift.tv >= 0).all() and (shift.tv <= 1).all()
    assert shift.kl.max() > 0
    if name == "odconv_k1":
        assert all(layer.shift_on == "spatial" for layer in probe.layers)


def test_kl_and_tv_properties():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=50)
    q = rng.dirichlet(np.ones(5), size=50)
    assert (kl_divergence(p, q) >= 0).all()
    assert np.allclose(kl_divergence(p, p), 0)
    tv = total_variation(p, q)
    assert ((tv >= 0) & (tv <= 1)).all() and np.allclose(total_variation(p, p), 0)


def test_layout_describes_vectors():
    m = _model("odconv_k4")
    layout = DynamicsProbe(m).layout()
    assert len(layout["attention"]) == 18 and layout["attention"][0] == {
        "name": layout["attention"][0]["name"], "kind": "odconv", "K": 4, "spatial": 9}
    assert DynamicsProbe(_model("gated")).layout()["gates"][0]["channels"] == 16
