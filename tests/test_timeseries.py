"""Time series (issue #16): 1-D dynamic layers, the FCN-ResNet, ts_* registry names, bundled aeon data
(skipped with a reason when aeon or a set is absent), compact checkpoints, training, evaluation through
the engine and the CLI, and the "Beyond images" report section."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from robustbench_dyn.dynamics import DynamicsProbe, attention_modules
from robustbench_dyn.layers import DyConv1d, KernelAttention, ODConv1d, OmniAttention, set_temperature
from robustbench_dyn.registry import create_model, get_spec, list_models
from robustbench_dyn.timeseries.data import BUNDLED, INPUT_SPAN, bundled_path, eps_input, eps_std, znormalise
from robustbench_dyn.timeseries.models import TSResNet
from robustbench_dyn.timeseries.train import TSRecipe, compact_tensors, load_compact, temperature_at, train_model

torch.set_num_threads(1)


def _need_set(name: str):
    if bundled_path(name) is None:
        pytest.skip(f"aeon (or its bundled {name}) is not installed: pip install 'robustbench_dyn[timeseries]'")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTDYN_OFFLINE", "1")
    monkeypatch.setenv("ROBUSTDYN_STORE", str(tmp_path / "default.sqlite"))


# ---------------------------------------------------------------------------------------------- layers

def test_dyconv1d_matches_per_example_reference():
    torch.manual_seed(0)
    layer = DyConv1d(3, 5, 4, K=3, temperature=1.0).eval()
    x = torch.randn(4, 3, 20)
    y = layer(x)
    attn = layer.attention(x)
    for b in range(4):
        w = torch.einsum("k,koil->oil", attn[b], layer.weight)
        assert torch.allclose(y[b:b + 1], F.conv1d(x[b:b + 1], w), atol=1e-5)
    assert isinstance(layer.attention, KernelAttention)


def test_odconv1d_matches_reference_and_has_temporal_attention():
    torch.manual_seed(0)
    layer = ODConv1d(3, 5, 5, K=2, temperature=1.0, padding="same").eval()
    x = torch.randn(4, 3, 16)
    y = layer(x)
    att = layer.attention(x)
    assert isinstance(layer.attention, OmniAttention) and att.spatial.shape == (4, 5)
    for b in range(4):
        w = torch.einsum("k,koil->oil", att.kernel[b], layer.weight) * att.spatial[b][None, None]
        ref = F.conv1d(F.pad(x[b:b + 1] * att.channel[b][None, :, None], (2, 2)), w) * att.filter[b][None, :, None]
        assert torch.allclose(y[b:b + 1], ref, atol=1e-5)


def test_probes_see_1d_layers_and_temperature_reaches_them():
    m = TSResNet(2, 3, 32, conv="odconv", K=4)
    layers = attention_modules(m)
    assert len(layers) == 9 and all(a.kind == "odconv" and a.spatial in (8, 5, 3) for _, _, a in layers)
    set_temperature(m, 1.0)
    assert all(float(mod.temperature) == 1.0 for _, mod, _ in layers)


@pytest.mark.parametrize("conv,K,gated", [("static", 1, False), ("dyconv", 4, False), ("odconv", 4, False),
                                          ("static", 1, True)])
def test_tsresnet_forward_probe_and_costs(conv, K, gated):
    torch.manual_seed(0)
    m = TSResNet(6, 4, 40, conv=conv, K=K, gated=gated).eval()
    x = torch.rand(5, 6, 40)
    assert m(x).shape == (5, 4)
    probe = DynamicsProbe(m)
    rec = probe.record(x)
    assert rec.logits.shape == (5, 4) and np.isfinite(rec.macs()).all()
    assert probe.has_attention == (conv != "static") and probe.has_gates == gated
    xa = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
    shift = probe.compare(rec, probe.record(xa))
    assert shift.kl.shape[0] == 5


def test_compact_storage_round_trip():
    torch.manual_seed(0)
    m = TSResNet(1, 2, 30, conv="dyconv", K=4)
    m.train()
    for _ in range(3):  # give the BatchNorms non-trivial statistics
        m(torch.rand(8, 1, 30))
    m.eval()
    t = compact_tensors(m)
    assert t["blocks.0.conv1.weight"].dtype == torch.int8 and t["fc.weight"].dtype == torch.float16
    m2 = load_compact(TSResNet(1, 2, 30, conv="dyconv", K=4), t)
    x = torch.rand(6, 1, 30)
    with torch.no_grad():
        a, b = m(x), m2(x)
    assert (a - b).abs().max() < 0.05 * a.abs().max() + 1e-3
    assert set(t) == set(m.state_dict())



@pytest.mark.parametrize("conv", ["odconv", "static"])
def test_compact_fold_is_exact_when_variance_is_near_eps(conv):
    """The int8 scale folded into the BatchNorm changes nothing but the rounding, also for channels whose
    running variance is ~eps (ODConv's attentions shrink outputs that far: the fold without eps halved
    ts_gunpoint_odconv_k4's accuracy). Reference: the same model with its int8-rounded weights dequantized."""
    torch.manual_seed(0)
    kw = {"K": 4} if conv != "static" else {}
    m = TSResNet(1, 2, 30, conv=conv, **kw)
    with torch.no_grad():
        for conv_mod, bn in m.conv_bn_pairs():
            conv_mod.weight.mul_(3e-3)  # conv outputs ~1e-5 in variance: around BatchNorm's eps
            bn.momentum = 1.0  # running statistics = the next batch's
        m.train()(torch.rand(16, 1, 30))
    m.eval()
    assert min(float(bn.running_var.min()) for _, bn in m.conv_bn_pairs()) < 1e-5
    t = compact_tensors(m)
    ref = TSResNet(1, 2, 30, conv=conv, **kw).eval()
    ref.load_state_dict(m.state_dict())
    names = dict((mod, n) for n, mod in m.named_modules())
    for conv_mod, bn in m.conv_bn_pairs():
        cn, bnn = names[conv_mod], names[bn]
        w = m.state_dict()[f"{cn}.weight"]
        out_dim = 1 if w.ndim == 4 else 0
        s = 127.0 / w.double().abs().amax(dim=tuple(d for d in range(w.ndim) if d != out_dim))  # int8 full range
        shape = [1] * w.ndim
        shape[out_dim] = -1
        ref.state_dict()[f"{cn}.weight"].copy_((t[f"{cn}.weight"].double() / s.reshape(shape)).float())
        ref.state_dict()[f"{bnn}.running_mean"].copy_(m.state_dict()[f"{bnn}.running_mean"])
    for k, v in t.items():  # the other tensors as stored (float16)
        if v.dtype == torch.float16:
            ref.state_dict()[k].copy_(v.float())
    stored = load_compact(TSResNet(1, 2, 30, conv=conv, **kw), t)
    x = torch.rand(6, 1, 30)
    with torch.no_grad():
        a, b = ref(x), stored(x)
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-4 * float(a.abs().max())), float((a - b).abs().max())


# ---------------------------------------------------------------------------------------------- registry

def test_registry_names_and_specs():
    names = list_models("ts_*")
    assert len(names) == 16 and "ts_gunpoint_dyconv_k4" in names
    spec = get_spec("ts_gunpoint_odconv_k4")
    assert spec.dataset == "GunPoint" and spec.arch_kwargs["attn_norm"] is True and spec.input_size == (1, 1, 150)
    m = create_model("ts_basicmotions_gated")
    assert m(torch.rand(2, 6, 100)).shape == (2, 4)
    assert "dyconv_k4" in list_models("*") and not [n for n in list_models("*") if n.startswith("ts_")]


def test_eps_units():
    assert math.isclose(eps_std(1 / 255), 0.1) and math.isclose(eps_input(0.5), 5 / 255)
    z = znormalise(np.random.default_rng(0).normal(3, 7, size=(4, 2, 50)))
    assert np.allclose(z.mean(-1), 0, atol=1e-5) and np.allclose(z.std(-1), 1, atol=1e-4)
    assert np.abs(z).max() <= INPUT_SPAN / 2


# ---------------------------------------------------------------------------------------------- data

@pytest.mark.parametrize("name", ["GunPoint", "ArrowHead", "ItalyPowerDemand", "BasicMotions"])
def test_bundled_sets_load_offline(name, monkeypatch):
    _need_set(name)
    import urllib.request

    def no_network(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    from robustbench_dyn.timeseries.data import SHAPES, load_timeseries

    te = load_timeseries(name.lower(), "test")
    c, length, k, ntr, nte = SHAPES[name]
    assert te.x.shape == (nte, c, length) and len(te.classes) == k and te.x.min() >= 0 and te.x.max() <= 1
    assert len(load_timeseries(name, "train")) == ntr
    assert name in BUNDLED


def test_unbundled_set_is_a_clear_error():
    from robustbench_dyn.errors import DataError
    from robustbench_dyn.timeseries.data import load_timeseries

    with pytest.raises(DataError, match="bundled"):
        load_timeseries("Coffee")


# ---------------------------------------------------------------------------------------------- training

def test_training_schedule_and_gate_losses():
    r = TSRecipe(steps=10)
    assert temperature_at(0, r) == 30.0 and temperature_at(1, r) == 1.0 and temperature_at(9, r) == 1.0

    class Tiny:
        def __init__(self, n=12):
            g = torch.Generator().manual_seed(0)
            self.x = torch.rand(n, 1, 24, generator=g)
            self.y = (self.x.mean((1, 2)) > 0.5).long()

        def tensors(self):
            return self.x, self.y

    for conv, gated in (("dyconv", False), ("static", True)):
        torch.manual_seed(0)
        m = TSResNet(1, 2, 24, conv=conv, K=2, gated=gated)
        info = train_model(m, Tiny(), TSRecipe(steps=3, batch_size=6))
        assert math.isfinite(info["final_loss"]) and not m.training
        if conv == "dyconv":
            assert all(float(a.temperature) == 1.0 for _, a, _ in attention_modules(m))
        else:
            assert info["gate_prob_mean"] is not None


# ---------------------------------------------------------------------------------------------- evaluation

def test_evaluate_dispatches_to_the_series_data():
    _need_set("GunPoint")
    from robustbench_dyn.evaluation import evaluate

    r = evaluate("ts_gunpoint_dyconv_k4", "pgd", [0, 1 / 255], n=4, untrained=True, settings={"steps": 2},
                 device="cpu")
    assert r.dataset["id"] == "ucr-gunpoint" and r.n == 4 and set(r.robust_acc) == {0, 1 / 255}


def test_cli_evaluate_series_model(capsys):
    _need_set("ItalyPowerDemand")
    from robustbench_dyn.cli import main

    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--model", "ts_italypowerdemand_odconv_k4", "--untrained", "--attack", "fgsm", "--n", "6",
              "--no-store", "--device", "cpu", "--eps", "1/255"])
    out, err = capsys.readouterr()
    assert (e.value.code or 0) == 0, err
    assert "ItalyPowerDemand" in out and "standard deviation" in out



def test_audit_checkpoint_uses_the_series_test_split():
    """`robustdyn audit --model ts_*` audits on the model's own test series (not CIFAR-10 images)."""
    _need_set("GunPoint")
    from robustbench_dyn.audit import audit_checkpoint
    from robustbench_dyn.checkpoints import checkpoint_present

    if not checkpoint_present("ts_gunpoint_gated"):
        pytest.skip("ts_gunpoint_gated has no committed checkpoint here")
    res = audit_checkpoint("ts_gunpoint_gated", n=12, per_layer=False)
    assert res["n"] == 12 and "GunPoint" in res["data"] and res["verdict"] in ("dynamic", "static")
    assert res["checkpoint_sha256"] and res["gates"]["conditional_frac"] is not None

# ---------------------------------------------------------------------------------------------- report

class _Ctx:
    def __init__(self, out):
        from pathlib import Path

        self.out = Path(out)
        self.runs = pd.DataFrame()

    def save_table(self, df, name):
        (self.out / "tables").mkdir(parents=True, exist_ok=True)
        df.to_csv(self.out / "tables" / f"{name}.csv", index=False)
        return f"tables/{name}.csv"

    def figure(self, nrows=1, ncols=1, size=(3, 3), **kw):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), **kw)

    def save_figure(self, fig, name):
        (self.out / "figures").mkdir(parents=True, exist_ok=True)
        fig.savefig(self.out / "figures" / f"{name}.png")
        return f"figures/{name}.png"

    @staticmethod
    def md_table(df, align=None):
        from robustbench_dyn.report.core import md_table

        return md_table(df, align)

    @staticmethod
    def md_figure(path, alt):
        return f"![{alt}]({path})"


def test_report_section_from_csvs(tmp_path):
    from robustbench_dyn.report.timeseries_sections import beyond_images

    d = tmp_path / "timeseries"
    d.mkdir()
    rows = []
    for v, drop in (("static", 0.4), ("dyconv_k4", 0.3), ("odconv_k4", 0.5), ("gated", 0.35)):
        for e in (0.05, 0.1, 0.2):
            rows.append({"model": f"ts_gunpoint_{v}", "dataset": "GunPoint", "variant": v, "attack": "pgd",
                         "eps_input": e / 25.5, "eps_std": e, "n": 150, "clean_acc": 0.98,
                         "robust_acc": max(0.0, 0.98 - drop * e * 10), "attn_kl": 0.01 if v != "static" else np.nan,
                         "attn_tv": 0.02, "dominant_changed": 0.1, "gate_density_clean": np.nan,
                         "gate_density_adv": np.nan})
    pd.DataFrame(rows).to_csv(d / "robustness.csv", index=False)
    pd.DataFrame([{"model": "ts_gunpoint_dyconv_k4", "dataset": "GunPoint", "variant": "dyconv_k4",
                   "verdict": "dynamic", "entropy_ratio": 0.5, "mean_replacement_loss_pt": 3.0}]).to_csv(
        d / "audit.csv", index=False)
    res = beyond_images(_Ctx(tmp_path))
    assert "Robust accuracy" in res.markdown and "GunPoint" in res.markdown and "Compared with CIFAR-10" in res.markdown
    assert any("dyconv_k4: robust-accuracy gap" in f for f in res.findings)
    assert (tmp_path / "figures" / "ts_robust_acc_vs_eps.png").exists()


def test_report_reads_the_worst_case_and_flags_pgd_weaker_than_fgsm(tmp_path):
    """With FGSM, PGD and their per-series worst case in the CSV, the comparison reads the worst case, and a
    model on which PGD is far weaker than FGSM (a gradient-masking sign) gets a finding with the numbers."""
    from robustbench_dyn.report.timeseries_sections import beyond_images

    d = tmp_path / "timeseries"
    d.mkdir()
    rows = []
    for v in ("static", "odconv_k4"):
        for e in (0.05, 0.1, 0.2):
            acc = {"fgsm": 0.9 - 2 * e, "pgd": 0.9 - 2.5 * e, "worst": 0.9 - 2.5 * e}
            if v == "odconv_k4":
                acc = {"fgsm": 0.1, "pgd": 0.85, "worst": 0.05}
            for attack, a in acc.items():
                rows.append({"model": f"ts_gunpoint_{v}", "dataset": "GunPoint", "variant": v, "attack": attack,
                             "eps_input": e / 25.5, "eps_std": e, "n": 150, "clean_acc": 0.9, "robust_acc": a,
                             "attn_kl": 0.02 if (v != "static" and attack == "pgd") else np.nan})
    pd.DataFrame(rows).to_csv(d / "robustness.csv", index=False)
    res = beyond_images(_Ctx(tmp_path))
    flagged = [f for f in res.findings if "weaker than one FGSM step" in f]
    assert len(flagged) == 1 and flagged[0].startswith("ts_gunpoint_odconv_k4") and "3 of 3 eps" in flagged[0]
    gap = next(f for f in res.findings if f.startswith("odconv_k4: robust-accuracy gap"))
    assert "worst case of FGSM and PGD" in res.markdown
    # eps* of static (worst case) is 0.2 std (0.40, nearest half of 0.9); odconv's worst case there is 0.05
    assert "-35.0 pt" in gap.replace("−", "-")
