"""Every registered model: shapes, gradients, batch independence, checkpoint round trip, parameter counts."""

from __future__ import annotations

import pytest
import torch

import robustbench_dyn as rd
from robustbench_dyn.checkpoints import load_checkpoint, read_manifest, save_checkpoint
from robustbench_dyn.costs import count_params
from robustbench_dyn.layers import KernelAttention, OmniAttention, set_dyconv_mode, set_temperature

RESNET20 = [n for n in rd.list_models("*") if not n.startswith("resnet50_")]
RESNET50 = rd.list_models("resnet50_*")


def test_zoo_has_the_designed_names():
    expected = {"static", "dyconv_k2", "dyconv_k3", "dyconv_k4", "dyconv_k5", "odconv_k1", "odconv_k4", "gated"}
    assert expected | {f"{n}_at" for n in ("static", "dyconv_k4", "odconv_k4", "gated")} == set(RESNET20)
    assert {f"resnet50_{n}" for n in expected} == set(RESNET50)
    assert len(rd.list_models("*")) == 20
    assert rd.list_models("dyconv_*") == ["dyconv_k2", "dyconv_k3", "dyconv_k4", "dyconv_k4_at", "dyconv_k5"]


def test_unknown_name_suggests_close_matches():
    with pytest.raises(rd.UnknownModelError, match="dyconv_k4"):
        rd.get_spec("dyconv_k44")
    assert rd.get_spec("resnet20_dyconv_k4").name == "dyconv_k4"  # alias


# ------------------------------------------------------------------------------------ expected parameter counts

def _resnet20_block_convs() -> list[tuple[int, int, int]]:
    """(in, out, kernel) of the 18 block convs of ResNet-20 (widths 16/32/64, 3 blocks per stage)."""
    convs, c = [], 16
    for w in (16, 32, 64):
        for _ in range(3):
            convs += [(c, w, 3), (w, w, 3)]
            c = w
    return convs


def _resnet50_block_convs() -> list[tuple[int, int, int]]:
    """(in, out, kernel) of the 48 block convs of the CIFAR ResNet-50 (bottlenecks [3, 4, 6, 3])."""
    convs, c = [], 64
    for p, n in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for _ in range(n):
            convs += [(c, p, 1), (p, p, 3), (p, 4 * p, 1)]
            c = 4 * p
    return convs


def _conv_params(spec: rd.ModelSpec, cin: int, cout: int, k: int) -> int:
    """Parameters of one block conv of the given kind, from the papers' layer definitions."""
    n = spec.K * cout * cin * k * k if spec.conv != "static" else cout * cin * k * k
    if spec.conv == "dyconv":  # attention FC(cin -> h) ReLU FC(h -> K)
        h = max(cin // 4, 4)
        n += (cin * h + h) + (h * spec.K + spec.K)
    elif spec.conv == "odconv":  # trunk FC (no bias) + BN, then channel, filter, spatial (and kernel) heads
        h = max(int(cin * 0.0625), 16)
        n += cin * h + 2 * h + (h * cin + cin) + (h * cout + cout) + (h * k * k + k * k)
        if spec.K > 1:
            n += h * spec.K + spec.K
    return n


def _gate_params(block_convs: list[tuple[int, int, int]], per_block: int) -> int:
    """Per block: FC(block input -> 16) ReLU FC(16 -> planes of the first conv)."""
    return sum(cin * 16 + 16 + 16 * planes + planes for cin, planes, _ in block_convs[::per_block])


def expected_params(spec: rd.ModelSpec) -> int:
    """Parameter count from the layer definitions (independent of the code under test)."""
    static = rd.ModelSpec("ref", spec.arch, spec.depth, "static")
    if spec.arch == "cifar_resnet50":
        convs, per_block, total = _resnet50_block_convs(), 3, RESNET50_STATIC_PARAMS
    else:
        convs, per_block = _resnet20_block_convs(), 2
        stem, head = 3 * 16 * 9 + 2 * 16, 64 * 10 + 10
        total = stem + head + sum(2 * cout + _conv_params(static, cin, cout, k) for cin, cout, k in convs)
    total += sum(_conv_params(spec, *c) - _conv_params(static, *c) for c in convs)
    return total + (_gate_params(convs, per_block) if spec.gated else 0)


RESNET50_STATIC_PARAMS = 23_520_842  # measured; checked against 23.5 M below


def test_static_resnet20_has_0_27m_params():
    assert count_params(rd.create_model("static")) == 269_722
    assert expected_params(rd.get_spec("static")) == 269_722


@pytest.mark.parametrize("name", RESNET20)
def test_params_match_the_formula(name):
    n = count_params(rd.create_model(name))
    expected = expected_params(rd.get_spec(name))
    assert abs(n - expected) <= 0.02 * expected, (n, expected)


def test_dyconv_params_grow_linearly_in_k():
    counts = [count_params(rd.create_model(f"dyconv_k{k}")) for k in range(2, 6)]
    steps = [b - a for a, b in zip(counts[:-1], counts[1:], strict=True)]
    conv_weights = sum(cout * cin * k * k for cin, cout, k in _resnet20_block_convs())
    # each extra kernel adds one set of block conv weights (+ one attention logit per conv)
    for s in steps:
        assert s == steps[0]
        assert abs(s - conv_weights) <= 0.02 * conv_weights
    assert counts[2] == pytest.approx(4 * 267_264, rel=0.02)  # dyconv_k4 ~ 4x the static conv weights


# ------------------------------------------------------------------------------------ ResNet-20 models

def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    m = rd.create_model(name)
    set_temperature(m, 1.0)  # input-dependent attention (at the initial T=30 it is nearly uniform)
    return m


@pytest.mark.parametrize("name", RESNET20)
def test_forward_shape_and_finite_gradients(name, rng):
    m = _model(name).train()
    x = torch.rand(4, 3, 32, 32, generator=rng)
    y = m(x)
    assert y.shape == (4, 10) and y.dtype == torch.float32 and torch.isfinite(y).all()
    torch.nn.functional.cross_entropy(y, torch.arange(4)).backward()
    for pname, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, pname
            assert torch.isfinite(p.grad).all(), pname
    assert sum(p.grad.abs().sum() for p in m.parameters()) > 0


@pytest.mark.parametrize("name", RESNET20)
def test_eval_is_batch_independent(name, rng):
    m = _model(name).eval()
    x = torch.rand(4, 3, 32, 32, generator=rng)
    modes = ["dense", "grouped"] if rd.get_spec(name).conv == "dyconv" else ["dense"]
    with torch.no_grad():
        for mode in modes:
            set_dyconv_mode(m, mode)
            batch = m(x)
            alone = torch.cat([m(x[i:i + 1]) for i in range(len(x))])
            assert (batch - alone).abs().max().item() < 1e-5, mode
            assert not torch.allclose(batch[0], batch[1])  # the inputs really differ


@pytest.mark.parametrize("name", RESNET20)
def test_checkpoint_round_trip_keeps_weights_and_temperature(name, tmp_models_dir, rng):
    m = _model(name).eval()
    set_temperature(m, 1.7)
    x = torch.rand(3, 3, 32, 32, generator=rng)
    with torch.no_grad():
        before = m(x)
    entry = save_checkpoint(m, name, {"arch": rd.get_spec(name).arch, "recipe": "test"}, tmp_models_dir)
    assert read_manifest(tmp_models_dir)[name]["sha256"] == entry["sha256"]
    assert (tmp_models_dir / f"{name}.safetensors").exists()

    loaded = load_checkpoint(name, models_dir=tmp_models_dir)
    assert not loaded.training
    assert loaded.checkpoint_sha256 == entry["sha256"]
    temps = [mod.temperature.item() for mod in loaded.modules() if isinstance(mod, (KernelAttention, OmniAttention))]
    if rd.get_spec(name).conv != "static":
        assert temps and all(t == pytest.approx(1.7) for t in temps)  # a buffer: saved and restored
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with torch.no_grad():
        assert torch.equal(loaded(x), before)
    again = rd.load_model(f"resnet20_{name}", models_dir=tmp_models_dir)  # alias through the registry
    with torch.no_grad():
        assert torch.equal(again(x), before)


def test_temperature_is_function_state():
    """Changing only the temperature changes the output: it must be (and is) in the state dict."""
    m = _model("dyconv_k4").eval()
    assert any(k.endswith("attention.temperature") for k in m.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a = m(x)
        set_temperature(m, 30.0)
        b = m(x)
    assert not torch.allclose(a, b)


# ------------------------------------------------------------------------------------ ResNet-50 models

def test_resnet50_static_has_23_5m_params():
    n = count_params(rd.create_model("resnet50_static"))
    assert n == RESNET50_STATIC_PARAMS == pytest.approx(23.5e6, rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("name", RESNET50)
def test_resnet50_forward_backward(name, rng):
    m = rd.create_model(name).train()
    x = torch.rand(2, 3, 16, 16, generator=rng)  # adaptive pooling: 16x16 is enough to exercise every layer
    y = m(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.square().sum().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert count_params(m) == pytest.approx(expected_params(rd.get_spec(name)), rel=0.02)
