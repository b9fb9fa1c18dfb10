"""Training engine: CI-sized runs on a tiny synthetic CIFAR-10 folder (CPU, a few steps)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robustbench_dyn import load_model
from robustbench_dyn.checkpoints import read_manifest
from robustbench_dyn.costs import gated_cost
from robustbench_dyn.errors import ConfigError
from robustbench_dyn.layers import ChannelGate, GateRecorder
from robustbench_dyn.registry import create_model
from robustbench_dyn.training import (
    DeviceLoader,
    Recipe,
    _gate_schedule,
    _gates_held_open,
    _lr_at,
    _shaped,
    _temperature,
    catastrophic_overfit,
    fgsm_rs,
    file_epoch_sync,
    gate_stats,
    mac_ratio,
    make_recipe,
    param_groups,
    train,
    zero_gate_weights,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """A CIFAR-10-shaped npz folder: 192 train and 64 test images with learnable labels."""
    rng = np.random.default_rng(0)
    d = tmp_path / "data"
    d.mkdir()
    for split, n in (("train", 192), ("test", 64)):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
        x[:, :, :, 0] += (y * 19)[:, None, None].astype(np.uint8)  # class signal in the red channel
        np.savez(d / f"{split}.npz", x=x, y=y)
    return d


def _recipe(**kw) -> Recipe:
    base = dict(epochs=1, batch_size=32, holdout=32, check_n=16, final_pgd_n=16, max_steps=2)
    base.update(kw)
    return Recipe(**base)


def test_device_loader_augments_within_padding():
    x = np.random.default_rng(1).integers(1, 255, (40, 32, 32, 3)).astype(np.uint8)
    loader = DeviceLoader(x, np.arange(40) % 10, torch.device("cpu"), 16)
    assert len(loader) == 2  # full batches only
    batches = list(loader.epoch(torch.Generator().manual_seed(0)))
    assert len(batches) == 2
    xb, yb = batches[0]
    assert xb.shape == (16, 3, 32, 32) and xb.dtype == torch.float32
    assert 0.0 <= xb.min() and xb.max() <= 1.0
    # each crop is a shifted (possibly flipped) window of the zero-padded image: every non-zero pixel
    # value of the crop exists in the source image
    src = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    for img in xb[:4]:
        vals = set(torch.unique(img).tolist()) - {0.0}
        assert vals and vals <= set(torch.unique(src).tolist())
    # same generator seed -> identical batches (resumed epochs draw the same augmentation)
    again = list(loader.epoch(torch.Generator().manual_seed(0)))
    assert torch.equal(again[0][0], xb) and torch.equal(again[0][1], yb)


def test_schedules():
    assert _lr_at(0, 10, 100, 0.2) == pytest.approx(0.02)
    assert _lr_at(10, 10, 100, 0.2) == pytest.approx(0.2)
    assert _lr_at(100, 10, 100, 0.2) == pytest.approx(0.0, abs=1e-12)
    r = Recipe(epochs=10)
    assert _temperature(0, r) == 30.0 and _temperature(r.temp_anneal_frac, r) == 1.0
    assert _temperature(0.05, r) == pytest.approx(30 - 29 * 0.05 / r.temp_anneal_frac)
    assert _temperature(0.999, r) == 1.0  # exactly temp_end after the anneal: the shipped value
    assert _gate_schedule(0.0, r) == (r.bs_weight, r.gate_noise_start, r.budget_weight)
    assert _gate_schedule(1.0, r) == (0.0, r.gate_noise_end, r.budget_weight)
    bs, noise, wb = _gate_schedule(0.5, r)
    assert bs == r.bs_weight and noise == pytest.approx((r.gate_noise_start + r.gate_noise_end) / 2)
    # gate warm-up: all three gate terms ramp in linearly from 0 and are untouched after the ramp
    w = Recipe(epochs=10, gate_warmup=0.2)
    assert _gate_schedule(0.0, w) == (0.0, 0.0, 0.0)
    bs, noise, wb = _gate_schedule(0.1, w)
    assert bs == pytest.approx(w.bs_weight / 2) and wb == pytest.approx(w.budget_weight / 2)
    assert noise == pytest.approx(_gate_schedule(0.1, r)[1] / 2)
    assert _gate_schedule(0.6, w) == _gate_schedule(0.6, r)
    with pytest.raises(ConfigError, match="gate_warmup"):
        Recipe(epochs=10, gate_warmup=1.0).validate()


def test_gate_open_holds_the_gates_open_then_ramps_them_in():
    r = Recipe(epochs=10, gate_open=0.4, gate_warmup=0.2)
    r.validate()
    assert _gates_held_open(0.0, r) and _gates_held_open(0.399, r) and not _gates_held_open(0.4, r)
    assert _gate_schedule(0.2, r) == (0.0, 0.0, 0.0)  # nothing acts on the gates while they are held open
    bs, noise, wb = _gate_schedule(0.5, r)  # half-way up the ramp that starts at gate_open
    assert wb == pytest.approx(r.budget_weight / 2) and bs == pytest.approx(r.bs_weight / 2)
    assert _gate_schedule(0.7, r) == _gate_schedule(0.7, Recipe(epochs=10))
    no_ramp = Recipe(epochs=10, gate_open=0.3)
    assert _gate_schedule(0.29, no_ramp)[2] == 0.0 and _gate_schedule(0.3, no_ramp)[2] == no_ramp.budget_weight
    with pytest.raises(ConfigError, match="gate_open"):
        Recipe(epochs=10, gate_open=0.8, gate_warmup=0.2).validate()
    # the layer: forced open, every gate is 1 in training and eval; cleared, the learned rule is back
    torch.manual_seed(0)
    g = ChannelGate(8, 6, init_bias=-5.0)
    x = torch.randn(4, 8, 5, 5)
    g.force_open = True
    for mode in (True, False):
        g.train(mode)
        assert torch.equal(g(x), torch.ones(4, 6))
    g.force_open = False
    g.eval()
    assert g(x).sum() == 0  # bias -5: every gate closed


def test_gate_detach_keeps_the_gate_gradient_out_of_the_trunk_in_training_only():
    torch.manual_seed(0)
    g = ChannelGate(8, 6, init_bias=0.0)
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    g.train()
    g.detach_input = True
    g(x).sum().backward()
    assert x.grad is None and g.fc2.weight.grad is not None  # the gate layers learn, the trunk gets nothing
    g.detach_input = False
    g(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    g.eval()
    g.surrogate = "bpda"
    g.detach_input = True  # eval: the flag does nothing, an attack's BPDA gradient still reaches the input
    x.grad = None
    g(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_no_weight_decay_on_attention_and_gates():
    for name, attn_types in (("dyconv_k2", "attention"), ("gated", "gate")):
        model = create_model(name)
        decay, no_decay = param_groups(model, 5e-4)
        names = {id(p): n for n, p in model.named_parameters()}
        assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
        assert not any(f".{attn_types}." in names[id(p)] for p in decay["params"])
        assert any(f".{attn_types}." in names[id(p)] and p.ndim == 2 for p in no_decay["params"])
        # the convolution kernels (DyConv's K kernels included) still decay
        assert any(p.ndim >= 4 for p in decay["params"])
        old_decay, _ = param_groups(model, 5e-4, no_decay_dynamic=False)
        assert any(f".{attn_types}." in names[id(p)] for p in old_decay["params"])


def test_mac_ratio_tracks_gate_density():
    model = create_model("gated")
    cost = gated_cost(model)
    n_blocks = len(cost.gated)
    full = [torch.ones(4, 16) for _ in range(n_blocks)]
    half = [torch.full((4, 16), 0.5) for _ in range(n_blocks)]
    assert mac_ratio(full, cost).item() == pytest.approx(1.0)
    r = mac_ratio(half, cost).item()
    assert r == pytest.approx((cost.base + 0.5 * sum(cost.gated)) / cost.full, rel=1e-6) and r < 1.0
    p = torch.full((4, 16), 0.9, requires_grad=True)
    mac_ratio([p] * n_blocks, cost).backward()
    assert p.grad is not None and (p.grad > 0).all()  # more open gates, more MACs


def test_hard_budget_sees_the_executed_gates():
    """budget_gates="hard": the hinge's ratio is the executed-MAC ratio of the 0/1 gates that ran (soft
    probabilities can average under the budget while most hard gates are open), with a gradient."""
    from robustbench_dyn.training import Recipe

    torch.manual_seed(0)
    model = create_model("gated").train()
    for m in model.modules():
        if hasattr(m, "noise"):
            m.noise = 0.0
    cost = gated_cost(model)
    with GateRecorder(model) as rec:
        model(torch.rand(8, 3, 32, 32))
    hard = mac_ratio(rec.gates, cost)
    executed = (cost.base + sum(float(g.detach().mean()) * c for g, c in zip(rec.gates, cost.gated, strict=True)))
    assert hard.item() == pytest.approx(executed / cost.full, rel=1e-5)
    assert hard.item() != pytest.approx(mac_ratio(rec.probabilities(), cost).item(), rel=1e-3)
    hard.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "gate" in n)
    assert Recipe().budget_gates == "hard"
    with pytest.raises(Exception, match="budget_gates"):
        Recipe(epochs=1, budget_gates="medium").validate()


def test_catastrophic_overfitting_rule():
    # 2000 held-out images: a 2-point dip is noise, a 10-point collapse is catastrophic overfitting
    assert not catastrophic_overfit(0.40, 0.38, 2000, 4.0)
    assert catastrophic_overfit(0.40, 0.30, 2000, 4.0)
    assert catastrophic_overfit(0.40, 0.02, 2000, 4.0)
    assert not catastrophic_overfit(0.40, 0.45, 2000, 4.0)


def test_fgsm_rs_stays_in_ball():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    x = torch.rand(6, 3, 8, 8)
    y = torch.randint(0, 10, (6,))
    xa = fgsm_rs(model, x, y, 8 / 255, 10 / 255)
    assert (xa - x).abs().max() <= 8 / 255 + 1e-6
    assert xa.min() >= 0 and xa.max() <= 1
    assert not torch.equal(xa, x)


def test_recipe_validation():
    with pytest.raises(ConfigError, match="epochs or --time-budget"):
        Recipe().validate()
    with pytest.raises(ConfigError, match="adversarial training mode"):
        Recipe(epochs=1, adv="trades").validate()
    assert make_recipe("static_at", epochs=1).adv == "fgsm-rs"
    assert make_recipe("static", epochs=1).adv == "none"


def test_v3_preset_changes_only_the_gate_knobs():
    v2, v3 = make_recipe("gated", "v2", epochs=1), make_recipe("gated", "v3", epochs=1)
    changed = {k for k in Recipe.__dataclass_fields__ if getattr(v2, k) != getattr(v3, k)}
    assert changed == {"bs_weight", "gate_detach", "gate_warmup", "gate_noise_start", "mac_budget",
                       "budget_weight", "note"}
    assert v3.bs_weight == 0 and v3.gate_detach and v3.note.startswith("recipe v3")
    v3.validate()
    assert make_recipe("gated_at", "v3", epochs=1, bs_weight=0.5).bs_weight == 0.5  # overrides still win
    v4 = make_recipe("gated", "v4", epochs=1)
    assert {k for k in Recipe.__dataclass_fields__ if getattr(v3, k) != getattr(v4, k)} == {"mac_budget", "note"}
    assert v4.mac_budget == 0.68 and v3.mac_budget == 0.70 and v4.note.startswith("recipe v4")
    with pytest.raises(ConfigError, match="unknown recipe 'v9'"):
        make_recipe("gated", "v9", epochs=1)


@pytest.mark.parametrize("name", ["static", "dyconv_k2", "gated_at"])
def test_train_writes_a_loadable_checkpoint(name, tiny_data, tmp_models_dir, tmp_path):
    entry = train(name, make_recipe(name, **_recipe().__dict__ | {"adv": None}), data_dir=tiny_data,
                  models_dir=tmp_models_dir, run_dir=tmp_path / "run", device="cpu", verbose=False)
    manifest = read_manifest(tmp_models_dir)
    assert manifest[name]["sha256"] == entry["sha256"]
    m = entry["metrics"]
    assert 0.0 <= m["clean_acc"] <= 1.0 and m["clean_n"] == 64
    assert entry["recipe"]["max_steps"] == 2 and entry["dataset"]["train"]["n_used"] == 160
    if name.endswith("_at"):
        assert entry["recipe"]["adv"] == "fgsm-rs" and 0.0 <= m["pgd20_acc"] <= 1.0
    if name.startswith("gated"):
        assert 0.0 <= m["mean_gate_density"] <= 1.0 and m["mean_executed_macs"] > 0
    model = load_model(name, models_dir=tmp_models_dir)
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    if name.startswith("dyconv"):  # the annealed temperature buffer was saved
        assert entry["history"][-1]["temperature"] == pytest.approx(
            float(model.layers[0][0].conv1.attention.temperature))


def test_gated_training_with_the_pilot_gate_knobs(tiny_data, tmp_models_dir, tmp_path):
    knobs = {"gate_open": 0.4, "gate_warmup": 0.2, "gate_detach": True, "bs_channels": 0.5, "gate_zero_init": True}
    entry = train("gated", make_recipe("gated", **_recipe().__dict__ | {"adv": None} | knobs), data_dir=tiny_data,
                  models_dir=tmp_models_dir, run_dir=tmp_path / "run", device="cpu", verbose=False)
    assert {k: entry["recipe"][k] for k in knobs} == knobs  # recorded in the manifest
    assert 0.0 <= entry["metrics"]["mean_gate_density"] <= 1.0
    model = load_model("gated", models_dir=tmp_models_dir)
    assert not any(getattr(m, "force_open", False) for m in model.modules())  # a loaded model runs its gates


def test_resume_continues_from_saved_epoch(tiny_data, tmp_models_dir, tmp_path):
    r = _recipe(epochs=2, max_steps=None)
    run_dir = tmp_path / "run"
    first = train("static", Recipe(**{**r.__dict__, "epochs": 2}), data_dir=tiny_data, models_dir=tmp_models_dir,
                  run_dir=run_dir, device="cpu", verbose=False, save=False)
    state = json.loads((run_dir / "state.json").read_text())
    assert state["epoch"] == 2 and len(state["history"]) == 2
    # a rerun with the same recipe finds the run finished and trains no further epoch
    logs = []
    again = train("static", Recipe(**{**r.__dict__, "epochs": 2}), data_dir=tiny_data, models_dir=tmp_models_dir,
                  run_dir=run_dir, device="cpu", log=logs.append, verbose=False, save=False)
    assert any("resumed after epoch 2/2" in line for line in logs)
    assert again["epochs"] == 2 and again["metrics"]["clean_acc"] == pytest.approx(first["metrics"]["clean_acc"])


def test_resume_refuses_another_recipe_but_tolerates_new_fields_and_notes(tiny_data, tmp_models_dir, tmp_path):
    r = Recipe(**{**_recipe(epochs=1, max_steps=None).__dict__, "note": "first"})
    run_dir = tmp_path / "run"
    train("static", r, data_dir=tiny_data, models_dir=tmp_models_dir, run_dir=run_dir, device="cpu",
          verbose=False, save=False)
    state_file = run_dir / "state.json"
    state = json.loads(state_file.read_text())
    # a state written before a recipe field existed (the field takes its default) still resumes
    del state["recipe"]["budget_gates"]
    state_file.write_text(json.dumps(state))
    logs = []
    train("static", Recipe(**{**r.__dict__, "note": "another note", "threads": 1}), data_dir=tiny_data,
          models_dir=tmp_models_dir, run_dir=run_dir, device="cpu", log=logs.append, verbose=False, save=False)
    assert any("resumed after epoch 1/1" in line for line in logs)
    # a real change is refused, naming the setting, and the saved state is kept
    before = state_file.read_bytes()
    with pytest.raises(ConfigError, match=r"lr: .* then, 0\.5 now") as err:
        train("static", Recipe(**{**r.__dict__, "lr": 0.5}), data_dir=tiny_data, models_dir=tmp_models_dir,
              run_dir=run_dir, device="cpu", verbose=False, save=False)
    assert "--no-resume" in err.value.fix
    assert state_file.read_bytes() == before


def test_time_budget_and_epoch_sync(tiny_data, tmp_models_dir, tmp_path):
    sync = tmp_path / "sync"
    sync.mkdir()
    (sync / "decision").write_text("3")  # the coordinator's decision is already there
    entry = train("static", _recipe(epochs=None, time_budget_s=1e6, max_steps=None), data_dir=tiny_data,
                  models_dir=tmp_models_dir, run_dir=tmp_path / "run", device="cpu", verbose=False,
                  epoch_sync=file_epoch_sync(sync, timeout_s=5))
    assert entry["epochs"] == 3
    assert float((sync / "static.t").read_text()) > 0


def test_deadline_stops_early(tiny_data, tmp_models_dir, tmp_path):
    entry = train("static", _recipe(epochs=5, max_steps=None), data_dir=tiny_data, models_dir=tmp_models_dir,
                  run_dir=tmp_path / "run", device="cpu", verbose=False, deadline=0.0)
    assert entry["stopped_early"] is True and entry["epochs"] == 1


def test_train_script_cpu_smoke(tiny_data, tmp_models_dir, tmp_path):
    """`python scripts/train.py --model static --epochs 1` in CI-sized form."""
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--model", "static", "--epochs", "1",
           "--batch-size", "32", "--holdout", "32", "--max-steps", "2", "--data-dir", str(tiny_data),
           "--models-dir", str(tmp_models_dir), "--run-dir", str(tmp_path / "run"), "--device", "cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "static: clean_acc=" in out.stdout
    assert read_manifest(tmp_models_dir)["static"]["recipe"]["note"] == "recipe v2; trained on the CPU"
    bad = subprocess.run(cmd[:3] + ["static_typo", "--epochs", "1", "--data-dir", str(tiny_data)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown model" in bad.stderr and "Traceback" not in bad.stderr


def test_pilot_slim_control_replaces_the_gates_by_one_fixed_mask(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("pilot_slim", Path(__file__).resolve().parent.parent / "scripts"
                                                  / "pilot_slim_control.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(ChannelGate, "forward", ChannelGate.forward)  # restored after the test
    mod.install_fixed_mask(0.75)
    g = ChannelGate(8, 16).train()
    x = torch.randn(5, 8, 4, 4)
    m = g(x)
    assert torch.equal(m, torch.cat([torch.ones(5, 12), torch.zeros(5, 4)], 1))  # same 12 of 16 for every input
    model = create_model("gated").eval()
    dens = gate_stats(model, torch.rand(6, 3, 32, 32))[0]
    assert dens == pytest.approx(0.75)  # 12/16, 24/32, 48/64 in every block
    with pytest.raises(SystemExit, match="density"):
        mod.install_fixed_mask(0.0)


def test_bs_channels_limits_batch_shaping_to_the_first_channels_of_each_block():
    p = torch.rand(7, 64)
    assert _shaped(p, 1.0) is p
    assert torch.equal(_shaped(p, 0.4), p[:, :26])  # round(0.4 * 64)
    assert _shaped(torch.rand(7, 2), 0.1).shape == (7, 1)  # at least one channel
    Recipe(epochs=10, bs_channels=0.5).validate()
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="bs_channels"):
            Recipe(epochs=10, bs_channels=bad).validate()


def test_gate_zero_init_gives_every_input_the_same_open_gates_until_the_weights_learn():
    torch.manual_seed(0)
    model = create_model("gated").eval()
    x = torch.rand(8, 3, 32, 32)
    with GateRecorder(model) as rec:
        model(x)
    assert any(z.std(dim=0).max() > 0 for z in rec.logits)  # the default init: input-dependent logits
    assert zero_gate_weights(model) == 9
    with GateRecorder(model) as rec:
        model(x)
    for z, g in zip(rec.logits, rec.gates, strict=True):
        assert torch.equal(z, z[:1].expand_as(z))  # the same logits (the bias) for every input
        assert bool((g == 1).all())  # the bias starts at +0.5: every gate open
    loss = model.train()(x).logsumexp(1).mean()
    loss.backward()
    gate = next(m for m in model.modules() if isinstance(m, ChannelGate))
    assert gate.fc2.weight.grad.abs().sum() > 0  # the weights still learn: input dependence can grow
