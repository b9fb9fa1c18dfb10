"""Attacks: registry, settings validation, eval mode, eps ball / [0, 1] verification, strength."""

from __future__ import annotations

import pytest
import torch
from _tiny import accuracy, sample, trained_model
from torch import nn

from robustbench_dyn.attacks import (
    ATTACKS,
    LOSSES,
    Attack,
    AttackError,
    LossPGD,
    get_attack,
    make_attack,
    perturbation_norm,
    register_attack,
    register_loss,
    verify_adversarial,
)
from robustbench_dyn.attacks.pgd import ce_loss, dlr_margin
from robustbench_dyn.errors import ConfigError


@pytest.fixture(scope="module")
def model():
    return trained_model()


@pytest.fixture(scope="module")
def batch(model):
    """48 examples the tiny model classifies correctly."""
    x, y = sample().tensors()
    with torch.no_grad():
        ok = (model(x).argmax(1) == y).nonzero().flatten()[:48]
    return x[ok], y[ok]


def test_registry_names_and_norms():
    assert {"fgsm", "pgd", "pgd-l2", "pgd-ce", "pgd-dlr", "autoattack", "square"} <= set(ATTACKS)
    assert get_attack("pgd").norm() == "Linf"
    assert get_attack("pgd-l2").norm() == "L2"
    assert get_attack("pgd-ce").norm(norm="L2") == "L2"
    s = get_attack("pgd").settings()
    assert s["steps"] == 20 and s["rel_step"] == 0.25 and s["random_start"] is True


def test_unknown_attack_and_settings_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean pgd"):
        get_attack("pgdd")
    with pytest.raises(ConfigError, match="unknown setting 'stepz'.*steps"):
        get_attack("pgd").settings(stepz=3)
    with pytest.raises(ConfigError, match="steps"):
        get_attack("pgd").settings(steps=-1)
    with pytest.raises(ConfigError, match="norm"):
        get_attack("pgd-ce").settings(norm="L1")
    with pytest.raises(ConfigError, match="loss"):
        get_attack("pgd-ce").settings(loss="nope")
    with pytest.raises(ConfigError, match="custom"):
        get_attack("autoattack").settings(version="custom")


@pytest.mark.parametrize("name,eps,kw", [
    ("fgsm", 8 / 255, {}),
    ("pgd", 8 / 255, {"steps": 10}),
    ("pgd-l2", 1.0, {"steps": 10}),
    ("pgd-ce", 8 / 255, {"steps": 10}),
    ("pgd-dlr", 8 / 255, {"steps": 10}),
    ("pgd-ce", 1.0, {"steps": 10, "norm": "L2"}),
])
def test_attacks_lower_accuracy_and_stay_in_ball(model, batch, name, eps, kw):
    x, y = batch
    atk = make_attack(name, model, eps, **kw)
    torch.manual_seed(0)
    xa = atk(x, y)
    assert xa.dtype == torch.float32 and xa.shape == x.shape
    assert float(xa.min()) >= 0 and float(xa.max()) <= 1
    assert float(perturbation_norm(xa, x, atk.norm).max()) <= eps + 1e-5
    acc = accuracy(model, xa, y)
    assert acc < 0.6, f"{name} left {acc:.2f} of 48 correctly classified examples"


def test_square_and_autoattack_through_pyautoattack(model, batch):
    x, y = batch[0][:12], batch[1][:12]
    xa = make_attack("square", model, 8 / 255, n_queries=50)(x, y)
    verify_adversarial(xa, x, 8 / 255, "Linf")
    assert accuracy(model, xa, y) < 1.0
    xa = make_attack("autoattack", model, 8 / 255, version="custom", attacks=["apgd-ce"])(x, y)
    verify_adversarial(xa, x, 8 / 255, "Linf")
    assert accuracy(model, xa, y) < 0.5


def test_eval_mode_forced_and_restored(batch):
    m = trained_model()
    m.train()
    seen = []
    handle = m.register_forward_hook(lambda mod, i, o: seen.append(mod.training))
    make_attack("pgd", m, 8 / 255, steps=2)(*batch)
    handle.remove()
    assert seen and not any(seen), "the attack ran the model in train mode"
    assert m.training and all(mod.training for mod in m.modules())


def test_eps_zero_returns_inputs(model, batch):
    x, y = batch
    assert torch.equal(make_attack("pgd", model, 0.0)(x, y), x)


class _Rogue(Attack):
    defaults = {"how": "ball"}

    def perturb(self, model, x, y):
        return (x + 2 * self.eps).clamp(0, 1) if self.settings["how"] == "ball" else x + 0.5


def test_verification_rejects_out_of_ball_and_range(model, batch):
    x, y = batch
    x = x.clamp(0.1, 0.8)
    register_attack("rogue-test", _Rogue, replace=True)
    try:
        with pytest.raises(AttackError, match="ball"):
            make_attack("rogue-test", model, 8 / 255)(x, y)
        with pytest.raises(AttackError, match=r"\[0, 1\]"):
            make_attack("rogue-test", model, 8 / 255, how="range")(x, y)
    finally:
        del ATTACKS["rogue-test"]


def test_losspgd_early_stop_and_restarts_keep_results(model, batch):
    x, y = batch
    outs = []
    for early in (False, True):
        torch.manual_seed(1)
        outs.append(make_attack("pgd-ce", model, 4 / 255, steps=8, restarts=2, early_stop=True if early else False,
                                prune_every=2)(x, y))
    with torch.no_grad():
        p0, p1 = model(outs[0]).argmax(1), model(outs[1]).argmax(1)
    assert torch.equal(p0 != y, p1 != y)  # pruning changes the work, not the outcome
    torch.manual_seed(1)
    one = make_attack("pgd-ce", model, 4 / 255, steps=8, restarts=1)(x, y)
    assert accuracy(model, outs[0], y) <= accuracy(model, one, y)  # restarts only add breaks


def test_losspgd_amp_bf16_returns_verified_fp32(model, batch):
    x, y = batch
    xa = make_attack("pgd-ce", model, 8 / 255, steps=5, amp=True)(x, y)
    assert xa.dtype == torch.float32
    verify_adversarial(xa, x, 8 / 255, "Linf")
    assert accuracy(model, xa, y) < 0.5


def test_losspgd_amp_confirms_breaks_in_fp32(model, batch):
    """bf16 logits may call an example misclassified that fp32 does not: with amp, LossPGD confirms
    each break in fp32 before it stops attacking the example. Here the "bf16" path lies outright (it
    adds 100 to class 0's logit, so every example with y != 0 looks broken at the first step):
    without the confirmation early stop would return the random starts, with it the attack goes on
    (with the lying logits' still useful gradient) and breaks most examples in fp32."""
    from robustbench_dyn.attacks.base import AutocastLogits

    class Lying(AutocastLogits):
        def forward(self, x):
            out = self.model(x).float().clone()
            out[:, 0] += 100.0
            return out

    x, y = batch
    keep = y != 0
    x, y = x[keep], y[keep]
    atk = make_attack("pgd-ce", model, 8 / 255, steps=8, early_stop=True, prune_every=2)
    torch.manual_seed(0)
    xa = atk.perturb(Lying(model), x, y)
    verify_adversarial(xa, x, 8 / 255, "Linf")
    torch.manual_seed(0)
    start = (x + torch.empty_like(x).uniform_(-8 / 255, 8 / 255)).clamp(0, 1)  # the random start, for reference
    assert accuracy(model, xa, y) < 0.5 < accuracy(model, start, y)


def test_pluggable_loss_sees_context(model, batch):
    x, y = batch
    calls = []

    def margin_loss(model, x_adv, y, ctx):
        calls.append((ctx.step, ctx.steps, len(ctx.index), ctx.x_clean.shape == x_adv.shape))
        ctx.state.setdefault("n_calls", 0)
        ctx.state["n_calls"] += 1
        logits = model(x_adv)
        return dlr_margin(logits, y), logits

    register_loss("margin-test", margin_loss, replace=True)
    try:
        xa = make_attack("pgd-ce", model, 8 / 255, steps=3, loss="margin-test")(x, y)
    finally:
        del LOSSES["margin-test"]
    assert [c[0] for c in calls] == [0, 1, 2, 3] and all(c[1] == 3 and c[3] for c in calls)
    assert accuracy(model, xa, y) < 1.0


def test_ce_loss_is_per_example(model, batch):
    x, y = batch
    loss, logits = ce_loss(model, x, y, None)
    assert loss.shape == (len(x),) and logits.shape == (len(x), 10)


def test_dlr_margin_sign():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    m = dlr_margin(logits, torch.tensor([0, 0]))
    assert m[0] < 0 < m[1]  # correct -> negative, misclassified -> positive


def test_bpda_setting_switches_gates_and_restores():
    from robustbench_dyn import create_model
    from robustbench_dyn.layers import ChannelGate

    m = create_model("gated").eval()
    seen = []
    gates = [g for g in m.modules() if isinstance(g, ChannelGate)]
    h = gates[0].register_forward_hook(lambda mod, i, o: seen.append(mod.surrogate))
    x = torch.rand(2, 3, 32, 32)
    make_attack("pgd", m, 8 / 255, steps=1, bpda=True)(x, torch.tensor([0, 1]))
    h.remove()
    assert seen and set(seen) == {"bpda"}
    assert all(g.surrogate == "none" for g in gates)


def test_attack_without_parameters_model():
    class Fixed(nn.Module):
        def forward(self, x):
            return torch.stack([x.mean((1, 2, 3)), 1 - x.mean((1, 2, 3))], 1)

    x = torch.rand(4, 3, 8, 8)
    xa = make_attack("pgd", Fixed(), 8 / 255, steps=2)(x, torch.zeros(4, dtype=torch.long))
    verify_adversarial(xa, x, 8 / 255, "Linf")


def test_losspgd_is_registered_class():
    assert get_attack("pgd-ce").cls is LossPGD and get_attack("pgd-dlr").settings()["loss"] == "dlr"
