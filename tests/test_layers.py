"""Dynamic layers against plain per-sample references, static equivalences, gates and the Beta prior."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustbench_dyn.archs import BasicBlock, Bottleneck
from robustbench_dyn.layers import (
    ChannelGate,
    DyConv2d,
    ODAttentions,
    ODConv2d,
    batch_shaping_loss,
    beta_cdf,
    l0_loss,
    set_dyconv_mode,
    set_temperature,
)

CHANNELS = [(3, 8), (16, 16), (16, 32)]
TOL = 1e-5
#: parameter gradients sum over batch x pixels (~1000 terms here), accumulated in another order by each path:
#: fp32 rounding reaches ~2e-5 relative on some CPUs (measured on an AMD EPYC); a wrong path errs by O(1)
GRAD_TOL = 1e-4


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def _randomize_(module: torch.nn.Module, gen: torch.Generator, scale: float = 0.5) -> None:
    """Random attention heads (and BN running stats) so the attentions are far from uniform."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name != "weight":  # keep the conv kernels' Kaiming init
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)


# ------------------------------------------------------------------------------------ DyConv

def dyconv_reference(layer: DyConv2d, x: torch.Tensor) -> torch.Tensor:
    """Per example: kernel = sum_k pi_k W_k by hand, then a plain F.conv2d (float64)."""
    attn = layer.attention(x).detach().double()
    W = layer.weight.detach().double()
    outs = []
    for b in range(x.shape[0]):
        w_b = sum(attn[b, k] * W[k] for k in range(layer.K))
        outs.append(F.conv2d(x[b:b + 1].double(), w_b, None, layer.stride, layer.padding))
    return torch.cat(outs)


@pytest.mark.parametrize("K", [1, 2, 4, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("cin,cout", CHANNELS)
def test_dyconv_matches_per_sample_reference(K, stride, cin, cout, rng):
    layer = DyConv2d(cin, cout, 3, stride, 1, K=K)
    _randomize_(layer, rng)
    set_temperature(layer, 1.0)
    x = torch.randn(3, cin, 12, 12, generator=rng)
    ref = dyconv_reference(layer, x)
    with torch.no_grad():
        outs = {}
        for mode in ("dense", "grouped", "bmm"):
            set_dyconv_mode(layer, mode)
            outs[mode] = layer(x)
            assert outs[mode].shape == ref.shape == (3, cout, 12 // stride, 12 // stride)
            assert _max_err(outs[mode], ref) < TOL, mode
    assert _max_err(outs["dense"], outs["grouped"]) < TOL
    if K > 1:  # the test is only meaningful if examples really get different kernels
        attn = layer.attention(x)
        assert (attn - attn[:1]).abs().max() > 1e-3


@pytest.mark.parametrize("K", [2, 4])
def test_dyconv_attention_is_softmax_of_fc_over_temperature(K, rng):
    layer = DyConv2d(8, 8, 3, 1, 1, K=K)
    _randomize_(layer, rng)
    set_temperature(layer, 1.7)
    x = torch.randn(2, 8, 6, 6, generator=rng)
    a = layer.attention
    z = a.fc2(torch.relu(a.fc1(x.mean(dim=(2, 3)))))
    expected = torch.softmax(z / 1.7, dim=1)
    assert _max_err(a(x), expected) < 1e-6
    assert torch.allclose(a(x).sum(1), torch.ones(2))


@pytest.mark.parametrize("mode", ["dense", "grouped", "bmm"])
@pytest.mark.parametrize("K", [2, 4])
def test_dyconv_with_equal_kernels_is_static_conv(mode, K, rng):
    layer = DyConv2d(8, 16, 3, 2, 1, K=K, mode=mode)
    _randomize_(layer, rng)
    set_temperature(layer, 1.0)
    w = torch.randn(16, 8, 3, 3, generator=rng) * 0.2
    with torch.no_grad():
        layer.weight.copy_(w.expand(K, -1, -1, -1, -1))
    x = torch.randn(3, 8, 10, 10, generator=rng)
    with torch.no_grad():
        assert _max_err(layer(x), F.conv2d(x, w, None, 2, 1)) < TOL


def test_dyconv_gradients_reach_kernels_and_attention(rng):
    layer = DyConv2d(4, 4, 3, 1, 1, K=3, mode="grouped")
    _randomize_(layer, rng)
    set_temperature(layer, 1.0)
    x = torch.randn(2, 4, 6, 6, generator=rng, requires_grad=True)
    layer(x).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def _outputs_and_grads(layer: torch.nn.Module, x: torch.Tensor, mode: str):
    """Training-mode output, and the gradients of a random projection w.r.t. the input and every parameter."""
    layer.mode = mode
    layer.zero_grad(set_to_none=True)
    xa = x.clone().requires_grad_(True)
    y = layer(xa)
    proj = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (y * proj).sum().backward()
    grads = {"input": xa.grad}
    grads.update({n: p.grad for n, p in layer.named_parameters()})
    return y.detach(), grads


# (cin, cout, stride, size): ResNet-20's three stages and a stride-2 conv; the 8x8 outputs run "auto" as dense
PATH_SHAPES = [(16, 16, 1, 16), (16, 32, 2, 16), (32, 32, 1, 8), (3, 8, 1, 6)]


@pytest.mark.parametrize("cin,cout,stride,size", PATH_SHAPES)
@pytest.mark.parametrize("mode", ["dense", "bmm", "auto"])
def test_dyconv_modes_agree_with_grouped_in_fp32_with_gradients(mode, cin, cout, stride, size, rng):
    layer = DyConv2d(cin, cout, 3, stride, 1, K=4, attn_norm=True)
    _randomize_(layer, rng)
    set_temperature(layer, 1.0)
    x = torch.randn(4, cin, size, size, generator=rng)
    y0, g0 = _outputs_and_grads(layer, x, "grouped")
    y1, g1 = _outputs_and_grads(layer, x, mode)
    assert _max_err(y0, y1) < TOL
    for name in g0:
        assert _max_err(g0[name], g1[name]) < GRAD_TOL * max(1.0, g0[name].abs().max().item()), name


def test_dyconv_auto_is_dense_for_small_outputs_on_cpu(rng):
    from robustbench_dyn.layers.dyconv import CPU_DENSE_MAX_PIXELS

    layer = DyConv2d(8, 8, 3, 1, 1, K=2)
    assert layer.mode == "auto"
    assert layer.resolve_mode(torch.zeros(1, 8, 8, 8)) == "dense" and CPU_DENSE_MAX_PIXELS == 64
    assert layer.resolve_mode(torch.zeros(1, 8, 16, 16)) == "grouped"
    assert DyConv2d(8, 8, 3, 2, 1, K=2).resolve_mode(torch.zeros(1, 8, 16, 16)) == "dense"  # 8x8 out
    set_dyconv_mode(layer, "bmm")
    assert layer.resolve_mode(torch.zeros(1, 8, 8, 8)) == "bmm"


def test_dyconv_rejects_bad_arguments():
    with pytest.raises(ValueError, match="K = 1..8"):
        DyConv2d(4, 4, 3, K=9)
    with pytest.raises(ValueError, match="mode"):
        DyConv2d(4, 4, 3, K=2, mode="loop")
    layer = DyConv2d(4, 4, 3, K=2)
    with pytest.raises(ValueError, match="mode"):
        set_dyconv_mode(layer, "loop")


# ------------------------------------------------------------------------------------ ODConv

def odconv_reference(layer: ODConv2d, x: torch.Tensor) -> torch.Tensor:
    """Per example: y = a_f * conv(a_c * x, a_s (.) sum_k a_w[k] W_k), by hand in float64."""
    att = layer.attention(x)
    ch, fi, sp, ke = (t.detach().double() for t in att)
    W = layer.weight.detach().double()
    k = layer.kernel_size
    outs = []
    for b in range(x.shape[0]):
        w_b = sum(ke[b, j] * W[j] for j in range(layer.K)) * sp[b].reshape(k, k)
        x_b = x[b:b + 1].double() * ch[b].reshape(1, -1, 1, 1)
        y_b = F.conv2d(x_b, w_b, None, layer.stride, layer.padding)
        outs.append(y_b * fi[b].reshape(1, -1, 1, 1))
    return torch.cat(outs)


@pytest.mark.parametrize("K", [1, 4])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("cin,cout", CHANNELS)
def test_odconv_matches_per_sample_reference(K, stride, cin, cout, rng):
    layer = ODConv2d(cin, cout, 3, stride, 1, K=K).eval()  # eval: the attention trunk has a BatchNorm1d
    _randomize_(layer, rng)
    set_temperature(layer, 1.0)
    x = torch.randn(3, cin, 12, 12, generator=rng)
    with torch.no_grad():
        y = layer(x)
    ref = odconv_reference(layer, x)
    assert y.shape == ref.shape == (3, cout, 12 // stride, 12 // stride)
    assert _max_err(y, ref) < TOL
    att = layer.attention(x)
    assert att.channel.shape == (3, cin) and att.filter.shape == (3, cout)
    assert att.spatial.shape == (3, 9) and att.kernel.shape == (3, K)
    assert (att.spatial - att.spatial[:1]).abs().max() > 1e-3  # examples really differ


def test_odconv_attentions_by_hand(rng):
    layer = ODConv2d(8, 16, 3, 1, 1, K=4).eval()
    _randomize_(layer, rng)
    set_temperature(layer, 2.5)
    x = torch.randn(2, 8, 6, 6, generator=rng)
    a = layer.attention
    h = torch.relu(a.bn(a.fc(x.mean(dim=(2, 3)))))
    got = a(x)
    assert _max_err(got.channel, torch.sigmoid(a.channel_fc(h) / 2.5)) < 1e-6
    assert _max_err(got.filter, torch.sigmoid(a.filter_fc(h) / 2.5)) < 1e-6
    assert _max_err(got.spatial, torch.sigmoid(a.spatial_fc(h) / 2.5)) < 1e-6
    assert _max_err(got.kernel, torch.softmax(a.kernel_fc(h) / 2.5, dim=1)) < 1e-6


@pytest.mark.parametrize("K", [1, 4])
@pytest.mark.parametrize("stride", [1, 2])
def test_odconv_with_unit_attentions_is_static_conv_with_summed_kernel(K, stride, rng, monkeypatch):
    layer = ODConv2d(8, 16, 3, stride, 1, K=K).eval()
    B = 3

    def ones(x: torch.Tensor) -> ODAttentions:
        return ODAttentions(torch.ones(B, 8), torch.ones(B, 16), torch.ones(B, 9), torch.ones(B, K))

    monkeypatch.setattr(layer.attention, "forward", ones)
    x = torch.randn(B, 8, 10, 10, generator=rng)
    with torch.no_grad():
        y = layer(x)
        ref = F.conv2d(x, layer.weight.sum(0), None, stride, 1)
    assert _max_err(y, ref) < TOL


@pytest.mark.parametrize("cin,cout,stride,size", PATH_SHAPES)
@pytest.mark.parametrize("mode", ["folded", "bmm", "auto"])
def test_odconv_modes_agree_with_grouped_in_fp32_with_gradients(mode, cin, cout, stride, size, rng):
    layer = ODConv2d(cin, cout, 3, stride, 1, K=4)  # train mode: BatchNorm1d on batch statistics
    _randomize_(layer, rng)
    set_temperature(layer, 1.0)
    x = torch.randn(4, cin, size, size, generator=rng)
    y0, g0 = _outputs_and_grads(layer, x, "grouped")
    y1, g1 = _outputs_and_grads(layer, x, mode)
    assert _max_err(y0, y1) < TOL
    for name in g0:
        assert _max_err(g0[name], g1[name]) < GRAD_TOL * max(1.0, g0[name].abs().max().item()), name
    layer.eval()
    with torch.no_grad():
        assert _max_err(layer(x), odconv_reference(layer, x)) < TOL


def test_odconv_auto_folds_where_the_kernel_is_smaller_than_the_activation():
    assert ODConv2d(16, 16, 3, 1, 1).mode == "auto"
    assert ODConv2d(16, 16, 3, 1, 1).plan(torch.zeros(1, 16, 32, 32)) == (True, True, False)
    assert ODConv2d(16, 32, 3, 2, 1).plan(torch.zeros(1, 16, 32, 32)) == (True, True, False)
    assert ODConv2d(32, 32, 3, 1, 1).plan(torch.zeros(1, 32, 16, 16)) == (False, False, False)
    assert ODConv2d(64, 64, 3, 1, 1).plan(torch.zeros(1, 64, 8, 8)) == (False, False, False)
    layer = ODConv2d(16, 16, 3, 1, 1)
    layer.mode = "loop"
    with pytest.raises(ValueError, match="mode"):
        layer(torch.zeros(2, 16, 4, 4))


def test_odconv_rejects_k0():
    with pytest.raises(ValueError, match="K >= 1"):
        ODConv2d(4, 4, 3, K=0)


# ------------------------------------------------------------------------------------ gates

def _open_gates_(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, ChannelGate):
            with torch.no_grad():
                m.fc2.weight.zero_()
                m.fc2.bias.fill_(100.0)


def _copy_without_gates(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    sd = {k: v for k, v in src.state_dict().items() if ".gate." not in f".{k}"}
    dst.load_state_dict(sd, strict=True)


@pytest.mark.parametrize("block,args", [
    (BasicBlock, (16, 16, 1)), (BasicBlock, (16, 32, 2)), (Bottleneck, (16, 4, 1)), (Bottleneck, (16, 8, 2)),
])
@pytest.mark.parametrize("train", [False, True])
def test_gated_block_with_open_gates_equals_ungated_block(block, args, train, rng):
    torch.manual_seed(0)
    gated = block(*args, "static", {}, gated=True)
    plain = block(*args, "static", {}, gated=False)
    _randomize_(gated, rng, scale=0.1)  # random BN affine/stats, so the comparison is not trivial
    _open_gates_(gated)
    _copy_without_gates(gated, plain)
    gated.train(train)
    plain.train(train)  # train: Gumbel noise cannot close a gate whose logit is 100
    x = torch.randn(2, 16, 8, 8, generator=rng)
    with torch.no_grad():
        assert _max_err(gated(x), plain(x)) < 1e-6


def _gate(rng) -> ChannelGate:
    g = ChannelGate(8, 16)
    with torch.no_grad():
        g.fc1.weight.copy_(torch.randn(g.fc1.weight.shape, generator=rng))
        g.fc2.weight.copy_(torch.randn(g.fc2.weight.shape, generator=rng))
        g.fc2.bias.zero_()  # some gates open, some closed
    return g


def test_gate_training_is_binary_with_straight_through_gradient(rng):
    g = _gate(rng).train()
    torch.manual_seed(0)
    x = torch.randn(16, 8, 4, 4, generator=rng, requires_grad=True)
    gates = g(x)
    assert gates.shape == (16, 16)
    assert set(gates.detach().unique().tolist()) == {0.0, 1.0}
    w = torch.randn(16, 16, generator=rng)
    (gates * w).sum().backward()
    assert g.fc2.bias.grad is not None and g.fc2.bias.grad.abs().sum() > 0  # d loss / d logits != 0
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("surrogate", ["none", "bpda"])
def test_gate_eval_is_deterministic_threshold(surrogate, rng):
    g = _gate(rng).eval()
    g.surrogate = surrogate
    x = torch.randn(16, 8, 4, 4, generator=rng, requires_grad=True)
    gates = g(x)
    with torch.no_grad():
        hard = (g.logits(x) > 0).float()
    assert torch.equal(gates.detach(), hard)
    assert torch.equal(g(x).detach(), gates.detach())  # no noise at eval
    assert 0 < hard.mean() < 1
    w = torch.randn(16, 16, generator=rng)
    total = (gates * w).sum() + (x * 0).sum()  # the second term only keeps x in the graph
    (grad,) = torch.autograd.grad(total, x)
    if surrogate == "none":
        assert grad.abs().max() == 0  # exact: the hard threshold masks the gradient
    else:
        assert grad.abs().max() > 0  # BPDA: the sigmoid's gradient flows back to the input


def test_gate_bpda_does_not_change_forward(rng):
    g = _gate(rng).eval()
    x = torch.randn(4, 8, 4, 4, generator=rng)
    g.surrogate = "none"
    a = g(x)
    g.surrogate = "bpda"
    assert torch.equal(g(x).detach(), a)


# ------------------------------------------------------------------------------------ Beta prior and losses

@pytest.mark.parametrize("a,b", [(0.6, 0.4), (2.0, 3.0)])
def test_beta_cdf_matches_scipy(a, b):
    stats = pytest.importorskip("scipy.stats")
    x = torch.cat([torch.linspace(0.0, 1.0, 401, dtype=torch.float64),
                   torch.tensor([1e-9, 1e-6, 1e-4, 1 - 1e-4, 1 - 1e-6], dtype=torch.float64)])
    ours = beta_cdf(x, a, b)
    ref = torch.from_numpy(stats.beta.cdf(x.numpy(), a, b))
    assert (ours - ref).abs().max().item() < 1e-6
    assert ours.dtype == torch.float64 and torch.all(ours[1:401] >= ours[:400])  # monotone on the grid


def _beta_quantiles(B: int, C: int, a: float = 0.6, b: float = 0.4) -> torch.Tensor:
    stats = pytest.importorskip("scipy.stats")
    q = stats.beta.ppf((torch.arange(1, B + 1, dtype=torch.float64).numpy() - 0.5) / B, a, b)
    return torch.from_numpy(q).float()[:, None].repeat(1, C)


def test_batch_shaping_loss_is_zero_at_the_prior_and_positive_away_from_it():
    B, C = 256, 4
    at_prior = batch_shaping_loss(_beta_quantiles(B, C))
    at_half = batch_shaping_loss(torch.full((B, C), 0.5))
    assert at_prior.item() < 1e-5
    assert at_half.item() > 1e-2
    assert at_half.item() > 1000 * at_prior.item()
    # the loss is per channel: permuting the batch does not change it
    perm = torch.randperm(B)
    assert torch.allclose(batch_shaping_loss(_beta_quantiles(B, C)[perm]), at_prior)


def test_batch_shaping_loss_gradient_is_finite_and_pushes_towards_the_prior(rng):
    # all probabilities ~0.5: far from Beta(0.6, 0.4)
    logits = (0.01 * torch.randn(64, 8, generator=rng)).requires_grad_()
    loss = batch_shaping_loss(torch.sigmoid(logits))
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with torch.no_grad():
        stepped = batch_shaping_loss(torch.sigmoid(logits - 100.0 * logits.grad))
    assert stepped < loss  # a gradient step lowers it
    # saturated probabilities (0 and 1, where the Beta(0.6, 0.4) pdf is unbounded) stay finite
    p = torch.tensor([[0.0], [1.0], [0.5], [1e-9]], requires_grad=True)
    batch_shaping_loss(p).backward()
    assert torch.isfinite(p.grad).all()


def test_l0_loss_is_the_mean_gate_probability():
    p = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    assert l0_loss(p).item() == pytest.approx(0.5)
