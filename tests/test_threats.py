"""Dynamic-aware threats: energy attack, attention attacks, BPDA/EOT, transfer, store and CLI.
CPU, tiny ResNet-8s, a few images from the bundled sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _tiny import sample
from torch import nn

from robustbench_dyn import create_model
from robustbench_dyn.attacks import ATTACKS, gate_surrogate, make_attack
from robustbench_dyn.dynamics import DynamicsProbe
from robustbench_dyn.errors import ConfigError
from robustbench_dyn.layers import ChannelGate, GateRecorder, KernelAttention, set_temperature
from robustbench_dyn.threats import (
    EOTPGD,
    ThreatKey,
    ThreatStore,
    adaptive_study,
    attention_study,
    energy_study,
    eot_gradient,
    is_stochastic,
    masking_verdict,
    read_threats,
    run_threats,
    transfer_matrix,
)
from robustbench_dyn.threats.attention import attention_layers, tap, targetable

EPS = 8 / 255


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a few images: one torch thread is as fast, and far faster on a busy shared CPU
    (intra-op threads spin against other processes). Restored after this module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def images(n: int = 8):
    return sample().tensors(np.arange(n))


def tiny(name: str, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return create_model(name, depth=8).eval()


def tiny_gated(x: torch.Tensor, seed: int = 0) -> nn.Module:
    """A depth-8 gated net with input-sensitive gates (gate head weights scaled up) whose biases put
    each gate's logit just below its median over ``x``: about half the gates closed, the closed ones near
    their threshold (so a small perturbation can open them)."""
    model = tiny("gated", seed)
    gates = [m for m in model.modules() if isinstance(m, ChannelGate)]
    for g in gates:  # one block at a time: each bias shift changes the inputs of the later gates
        with torch.no_grad():
            g.fc2.weight *= 20
            with GateRecorder(model) as rec:
                model(x)
            z = rec.logits[gates.index(g)]
            g.fc2.bias -= z.median(0).values + 0.1 * z.std(0)
    return model


def density(model, x) -> float:
    return float(DynamicsProbe(model).record(x).density_mean().mean())


# ------------------------------------------------------------------------------------------ registry

def test_threat_attacks_are_registered():
    assert {"energy", "attn-shift", "attn-target", "pgd-bpda", "pgd-eot"} <= set(ATTACKS)
    assert ATTACKS["energy"].settings()["bpda"] is True
    assert ATTACKS["pgd-bpda"].settings()["bpda"] is True
    with pytest.raises(ConfigError):
        ATTACKS["energy"].settings(form="nope")


# ------------------------------------------------------------------------------------------ energy

def test_energy_attack_raises_gate_density_and_macs():
    x, y = images(8)
    model = tiny_gated(x)
    before = density(model, x)
    assert 0.2 < before < 0.8
    torch.manual_seed(0)
    xa = make_attack("energy", model, EPS, steps=10)(x, y)
    assert (xa - x).abs().max() <= EPS + 1e-6
    assert density(model, xa) > before + 0.05
    (row,) = energy_study(model, x, y, [EPS], settings={"steps": 10})
    assert row["macs_adv"] > row["macs_clean"]
    assert row["frac_adv"] == pytest.approx(row["macs_adv"] / row["macs_static"])
    assert row["density_adv"] > row["density_clean"]
    assert 0 <= row["label_changed"] <= 1 and len(row["macs_adv_examples"]) == 8


def test_energy_attack_needs_gates():
    x, y = images(2)
    with pytest.raises(ConfigError):
        make_attack("energy", tiny("static"), EPS, steps=1)(x, y)


# ------------------------------------------------------------------------------------------ BPDA

def test_bpda_gives_gradient_through_hard_gates_and_is_restored():
    x, _ = images(4)
    model = tiny_gated(x)

    def gate_grad():
        xx = x.clone().requires_grad_(True)
        with GateRecorder(model) as rec:
            model(xx)
        total = sum(g.sum() for g in rec.gates)
        if not total.requires_grad:  # hard threshold: no path from the gates back to the input
            return torch.zeros_like(xx)
        (g,) = torch.autograd.grad(total, xx)
        return g

    assert gate_grad().abs().sum() == 0  # the direct gradient through the gates is exactly zero
    with gate_surrogate(model, "bpda"):
        g = gate_grad()
    assert g.abs().sum() > 0  # BPDA: the sigmoid surrogate's gradient
    assert all(m.surrogate == "none" for m in model.modules() if isinstance(m, ChannelGate))
    # the attack sets BPDA only while it runs (seen from inside the forward), then restores it
    seen = []
    gate = next(m for m in model.modules() if isinstance(m, ChannelGate))
    h = gate.register_forward_hook(lambda m, i, o: seen.append(m.surrogate))
    make_attack("pgd-bpda", model, EPS, steps=2)(x, torch.zeros(4, dtype=torch.long))
    h.remove()
    assert seen and set(seen) == {"bpda"}
    assert gate.surrogate == "none"
    # the forward pass is unchanged by BPDA
    with torch.no_grad(), gate_surrogate(model, "bpda"):
        out = model(x)
    with torch.no_grad():
        assert torch.equal(out, model(x))


def test_masking_verdict():
    direct = np.ones(200, bool)
    strong = direct.copy()
    strong[:20] = False
    v = masking_verdict(direct, strong)
    assert v["verdict"] == "masked" and v["b"] == 20 and v["c"] == 0 and "MASKED" in v["verdict_text"]
    weak = direct.copy()
    weak[:2] = False
    assert masking_verdict(direct, weak)["verdict"] == "possibly masked"  # 1 pt, p = 0.25
    assert masking_verdict(direct, direct)["verdict"] == "not masked"


def test_adaptive_study_on_gated_and_static():
    x, y = images(6)
    (g,) = adaptive_study(tiny_gated(x), x, y, [EPS], settings={"steps": 3})
    assert g["gated"] and not g["stochastic"] and g["acc_bpda"] is not None and g["acc_eot"] is None
    assert g["verdict"] in ("masked", "possibly masked", "not masked")
    assert "EOT = direct" in g["note"]
    (s,) = adaptive_study(tiny("static"), x, y, [EPS], settings={"steps": 1})
    assert s["verdict"] == "not applicable" and s["acc_bpda"] is None


# ------------------------------------------------------------------------------------------ EOT

class NoisyLinear(nn.Module):
    """A stochastic model even in eval mode: logits = W x * s with a random sign s in {-1, 1} per call."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        s = torch.randint(0, 2, (len(x), 1), device=x.device).float() * 2 - 1
        return self.fc(x.flatten(1)) * (1 + 0.5 * s)


def test_eot_gradient_averages_over_the_stochastic_component():
    torch.manual_seed(0)
    a = torch.randn(2, 5)
    x = torch.rand(2, 5)

    def fn(z):  # a random linear objective: coefficients a or -3a with probability 1/2
        coef = a if torch.rand(()) < 0.5 else -3 * a
        v = (coef * z).sum(1)
        return v, v.detach()

    torch.manual_seed(1)
    g, _ = eot_gradient(fn, x, samples=6)
    torch.manual_seed(1)
    manual = torch.stack([_grad(fn, x) for _ in range(6)]).mean(0)  # the same six draws
    assert torch.allclose(g, manual)
    torch.manual_seed(2)
    g_many, _ = eot_gradient(fn, x, samples=4000)
    assert torch.allclose(g_many, -a, atol=0.15)  # E[coef] = (a - 3a) / 2 = -a
    # one sample is one draw, not the expectation
    torch.manual_seed(3)
    singles = {tuple(eot_gradient(fn, x, samples=1)[0].flatten().tolist()) for _ in range(20)}
    assert len(singles) == 2


def _grad(fn, x):
    xs = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(xs)[0].sum(), xs)
    return g


def test_eot_pgd_on_stochastic_and_deterministic_models():
    x, y = images(4)
    noisy = NoisyLinear().eval()
    assert is_stochastic(noisy, x)
    calls = []
    noisy.register_forward_hook(lambda m, i, o: calls.append(1))
    EOTPGD(noisy, EPS, steps=3, eot=5)(x, y)
    assert len(calls) == 3 * 5 + 5  # eot forward passes per step, and for the final score
    det = tiny("static")
    assert not is_stochastic(det, x)
    torch.manual_seed(0)
    a = EOTPGD(det, EPS, steps=3, eot=1)(x, y)
    torch.manual_seed(0)
    b = EOTPGD(det, EPS, steps=3, eot=3)(x, y)
    assert torch.allclose(a, b, atol=1e-6)  # deterministic model: EOT == the plain attack
    (row,) = adaptive_study(noisy, x, y, [EPS], settings={"steps": 2}, eot_samples=2)
    assert row["stochastic"] and row["acc_eot"] is not None and row["adaptive"] == "eot"


# ------------------------------------------------------------------------------------------ attention

@pytest.mark.parametrize("name", ["dyconv_k4", "odconv_k4", "odconv_k1"])
def test_attention_shift_attack_raises_kl(name):
    x, y = images(6)
    model = tiny(name)
    set_temperature(model, 1.0)
    with torch.no_grad():
        clean = tap(model, x).shift

    def kl(xa):
        with torch.no_grad():
            q = tap(model, xa).shift
        return sum((p * (p.clamp_min(1e-12).log() - qq.clamp_min(1e-12).log())).sum(1)
                   for p, qq in zip(clean, q, strict=True))

    torch.manual_seed(0)
    noise = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    torch.manual_seed(0)
    xa = make_attack("attn-shift", model, EPS, steps=10)(x, y)
    assert float(kl(xa).mean()) > 2 * float(kl(noise).mean()) > 0


def test_targeted_attention_attack_moves_attention_onto_the_kernel():
    x, y = images(6)
    model = tiny("dyconv_k4")
    set_temperature(model, 1.0)
    with torch.no_grad():  # a random init's attention hardly depends on the input: make it depend
        for m in model.modules():
            if isinstance(m, KernelAttention):
                m.fc1.weight *= 5
                m.fc2.weight *= 5
    rows = attention_study(model, x, y, [EPS], target=2, attacks=("attn-target", "attn-shift"),
                           settings={"attn-target": {"steps": 10}, "attn-shift": {"steps": 5}})
    tgt = next(r for r in rows if r["attack"] == "attn-target")
    assert tgt["target_attn_adv"] > tgt["target_attn_clean"] + 0.01
    assert tgt["target_hit_adv"] >= tgt["target_hit_clean"]
    assert all(0 <= r["acc_adv"] <= r["acc_clean"] for r in rows)
    with pytest.raises(ConfigError):
        make_attack("attn-target", model, EPS, target=7, steps=1)(x, y)
    with pytest.raises(ConfigError):
        make_attack("attn-shift", tiny("static"), EPS, steps=1)(x, y)


def test_attention_target_skips_k1_layers_whose_kernel_attention_is_constant(tmp_path):
    """odconv_k1's kernel attention is the constant 1: attn-target has nothing to push (a clear error, not an
    autograd error), its per-layer target figures are not applicable (NaN), and run_threats plans no
    attn-target rows for it while attn-shift (on the spatial attention) still runs."""
    x, y = images(4)
    k1 = tiny("odconv_k1")
    assert not any(targetable(m.K, 0) for m in attention_layers(k1))
    with pytest.raises(ConfigError, match="constant"):
        make_attack("attn-target", k1, EPS, steps=1)(x, y)
    rows = attention_study(k1, x, y, [EPS], attacks=("attn-shift",), settings={"attn-shift": {"steps": 2}})
    assert np.isnan(rows[0]["target_hit_clean"]) and np.isnan(rows[0]["target_attn_adv"])
    assert rows[0]["kl_sum"] >= 0 and 0 <= rows[0]["acc_adv"] <= rows[0]["acc_clean"]
    k1.checkpoint_name = "tiny_odconv_k1"
    res = run_threats([k1], data=sample(), n=4, steps=1, eps_grid=[EPS], studies=("attention",),
                      store=tmp_path / "r.sqlite")
    assert set(res.attention["attack"]) == {"pgd", "attn-shift"}


# ------------------------------------------------------------------------------------------ transfer

def test_transfer_matrix_shape_and_white_box_diagonal():
    x, y = images(16)
    models = {"a": tiny("static", 0), "b": tiny("static", 1), "c": tiny_gated(x)}
    adv = {}
    res = transfer_matrix(models, x, y, EPS, settings={"steps": 3}, adversarial=adv)
    assert res.acc.shape == (3, 3) and res.frame().shape == (3, 3) and len(res.clean) == 3
    for i, (name, model) in enumerate(models.items()):
        with torch.no_grad():
            ok = (model(adv[name]).argmax(1) == y) & (model(x).argmax(1) == y)
        assert res.acc[i, i] == pytest.approx(float(ok.float().mean()))
    assert np.all(res.acc <= res.clean[None, :] + 1e-9)
    again = transfer_matrix(models, x, y, EPS, settings={"steps": 3}, adversarial=adv)  # reuses the examples
    assert np.array_equal(again.acc, res.acc)


# ------------------------------------------------------------------------------------------ store, run, CLI

def test_threat_store_roundtrip(tmp_path):
    path = tmp_path / "s.sqlite"
    key = ThreatKey("m", "sha", "energy", json.dumps({"a": 1}), EPS, "digest", 0, 8)
    with ThreatStore(path) as st:
        assert st.get(key) is None
        st.put(key, {"frac_adv": 0.5, "list": [1, 2]}, eps_label="8/255")
        assert st.get(key) == {"frac_adv": 0.5, "list": [1, 2]}
        st.put(key, {"frac_adv": 0.6})
        assert st.frame()["frac_adv"].tolist() == [0.6]
    df = read_threats(path)
    assert len(df) == 1 and df.loc[0, "threat"] == "energy"
    from robustbench_dyn.store import ResultsStore

    ResultsStore(path).close()  # the main schema is still valid
    assert read_threats(tmp_path / "absent.sqlite").empty


def test_run_threats_end_to_end_and_resume(tmp_path):
    x, _ = images(8)
    gated, dy = tiny_gated(x), tiny("dyconv_k2")
    gated.checkpoint_name, dy.checkpoint_name = "tiny_gated", "tiny_dyconv"
    kw = dict(data=sample(), n=4, steps=2, eps_grid=[4 / 255, EPS], store=tmp_path / "r.sqlite")
    res = run_threats([gated, dy], **kw)
    assert set(res.energy["model"]) == {"tiny_gated"} and len(res.energy) == 2
    assert set(res.attention["attack"]) == {"pgd", "attn-shift", "attn-target"}
    assert set(res.adaptive["model"]) == {"tiny_gated", "tiny_dyconv"}
    assert res.transfer.acc.shape == (2, 2) and not np.isnan(res.transfer.acc).any()
    n_rows = 2 + 3 * 2 + (2 + 1) + 4  # energy, attention, adaptive (gated: each eps; dyconv: the largest), transfer
    assert res.computed == n_rows and res.reused == 0
    again = run_threats([gated, dy], **kw)
    assert again.computed == 0 and again.reused == n_rows
    assert np.array_equal(again.transfer.acc, res.transfer.acc)
    assert len(read_threats(tmp_path / "r.sqlite")) == n_rows


def test_cli_threats_smoke(tmp_path, capsys):
    from robustbench_dyn.cli import main

    store = tmp_path / "cli.sqlite"
    with pytest.raises(SystemExit) as e:
        main(["threats", "--untrained", "--models", "gated,static", "--n", "2", "--steps", "1", "--eps-grid",
              "8/255", "--studies", "energy,adaptive,transfer", "--device", "cpu", "--store", str(store)])
    out, err = capsys.readouterr()
    assert (e.value.code or 0) == 0, out + err
    assert "Energy attack" in out and "Adaptive attacks" in out and "Transfer" in out
    assert "masking" in out.lower()
    assert len(read_threats(store)) == 1 + 2 + 4


def test_report_sections_from_the_store(tmp_path):
    import robustbench_dyn.report.threats_sections  # noqa: F401  (registers the sections)
    from robustbench_dyn.evaluation import ModelInfo, run_sweep
    from robustbench_dyn.report import build_report
    from robustbench_dyn.store import ResultsStore

    store = tmp_path / "rep.sqlite"
    with ResultsStore(store) as st:  # the report needs at least one evaluation run in the store
        run_sweep(tiny("static"), ModelInfo("tiny_static", "sha-static"), sample(), "pgd", [EPS],
                  settings={"steps": 1}, n=4, store=st)
    x, _ = images(8)
    gated, dy = tiny_gated(x), tiny("dyconv_k2")
    gated.checkpoint_name, dy.checkpoint_name = "tiny_gated", "tiny_dyconv"
    run_threats([gated, dy], data=sample(), n=4, steps=1, eps_grid=[EPS], store=store)
    ids = ["threat_energy", "threat_attention", "threat_adaptive", "threat_transfer"]
    rep = build_report(store, tmp_path / "report", sections=ids, strict=True)
    assert rep.built == ids and not rep.missing and not rep.failed
    md = rep.index_md.read_text()
    assert "executed MACs" in md and "masking" in md.lower() and "white-box" in md
    assert all((tmp_path / "report" / f).is_file() for f in rep.files)
    assert sum(f.endswith(".png") for f in rep.files) == 4
