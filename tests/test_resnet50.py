"""The ResNet-50 family (issue #17): bfloat16 checkpoint storage, one tiny CPU smoke test of the model and the
training engine, and the report's handling of resnet50_* rows next to the ResNet-20 zoo. The real training and
evaluation need a GPU: scripts/gpu_train_r50.sh."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import robustbench_dyn as rd
from robustbench_dyn.checkpoints import (
    default_storage_dtype,
    load_checkpoint,
    read_manifest,
    read_state_dict,
    save_checkpoint,
    sha256_file,
)
from robustbench_dyn.errors import CheckpointError
from robustbench_dyn.report import build_report
from robustbench_dyn.report.core import model_meta, model_sort_key
from robustbench_dyn.store import ResultsStore, RunKey

R50 = ("resnet50_static", "resnet50_dyconv_k4", "resnet50_odconv_k4", "resnet50_gated")


# ------------------------------------------------------------------------------------ bfloat16 storage

def _trained_like(name: str) -> torch.nn.Module:
    """A registry model with non-trivial BatchNorm statistics and attention temperature 1 (as shipped)."""
    torch.manual_seed(0)
    model = rd.create_model(name)
    model.train()
    with torch.no_grad():
        model(torch.rand(16, 3, 32, 32))
    for m in model.modules():
        if isinstance(getattr(m, "temperature", None), torch.Tensor):
            m.temperature.fill_(1.0)
    return model.eval()


def test_bfloat16_storage_round_trip(tmp_models_dir):
    model = _trained_like("dyconv_k2")
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    e32 = save_checkpoint(model, "static", {"recipe": "test"}, tmp_models_dir, dtype="float32")  # a size reference
    entry = save_checkpoint(model, "dyconv_k2", {"recipe": "test", "storage_dtype": "stale"}, tmp_models_dir,
                            dtype="bfloat16")
    path = tmp_models_dir / "dyconv_k2.safetensors"
    assert entry["storage_dtype"] == "bfloat16" and "storage_dtype" not in e32
    assert read_manifest(tmp_models_dir)["dyconv_k2"]["storage_dtype"] == "bfloat16"
    assert entry["sha256"] == sha256_file(path)  # the sha256 of the file as stored
    assert entry["bytes"] < 0.6 * e32["bytes"]

    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        stored = {k: f.get_tensor(k).dtype for k in f.keys()}
        assert f.metadata()["storage_dtype"] == "bfloat16"
    params = {k for k, _ in model.named_parameters()}
    assert {stored[k] for k in params} == {torch.bfloat16}
    assert stored["layers.0.0.bn1.running_var"] == torch.float32  # buffers stay float32
    assert all(stored[k] == torch.float32 for k in stored if k.endswith("temperature"))

    tensors, _ = read_state_dict("dyconv_k2", tmp_models_dir)
    assert {v.dtype for v in tensors.values() if v.is_floating_point()} == {torch.float32}
    loaded = load_checkpoint("dyconv_k2", tmp_models_dir)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    with torch.no_grad():
        out = loaded(x)
    # weights rounded to 8 significant bits: logits agree to bfloat16 precision, predictions agree
    err = (out - ref).abs().max().item()
    assert err <= 0.03 * ref.abs().max().item() + 1e-3, err
    assert torch.equal(out.argmax(1), ref.argmax(1))
    for k, v in model.state_dict().items():  # each stored value is the bfloat16 rounding of the original
        assert torch.equal(loaded.state_dict()[k], v.to(torch.bfloat16).float() if k in params else v), k

    raw = bytearray(path.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 16):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint("dyconv_k2", tmp_models_dir)


def test_storage_dtype_default_and_bad_value(tmp_models_dir):
    assert {default_storage_dtype(n) for n in R50} == {"bfloat16"}
    assert default_storage_dtype("static") == default_storage_dtype("dyconv_k4_at") == "float32"
    assert default_storage_dtype("ts_not_a_registry_name") == "float32"
    entry = save_checkpoint(rd.create_model("static"), "static", {}, tmp_models_dir)  # auto: float32 for ResNet-20
    assert "storage_dtype" not in entry
    with pytest.raises(CheckpointError, match="storage dtype") as err:
        save_checkpoint(rd.create_model("static"), "static", {}, tmp_models_dir, dtype="int8")
    assert "bfloat16" in str(err.value)


# ------------------------------------------------------------------------------------ model and training smoke

def _tiny_data_dir(folder):
    """train.npz / test.npz cut from the bundled 500-image sample: no CIFAR-10 download or decode of 60k JPEGs."""
    from robustbench_dyn.data import load_sample

    s = load_sample()
    folder.mkdir()
    np.savez(folder / "train.npz", x=s.x[:24], y=s.y[:24])
    np.savez(folder / "test.npz", x=s.x[24:32], y=s.y[24:32])
    return folder


@pytest.mark.slow
def test_resnet50_gated_smoke_and_one_training_step(tmp_path):
    """create_model + forward/backward on 2 images, then the training engine for one step on a tiny subset
    (checkpoint written in bfloat16, manifest entry complete, reloads)."""
    torch.manual_seed(0)
    model = rd.create_model("resnet50_gated").train()
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()

    from robustbench_dyn.training import make_recipe, train

    recipe = make_recipe("resnet50_gated", epochs=1, max_steps=1, batch_size=4, train_subset=8, holdout=4,
                         final_test_n=4, audit_n=0, threads=1, bf16=False, note="test")
    mdir = tmp_path / "models"
    entry = train("resnet50_gated", recipe, data_dir=_tiny_data_dir(tmp_path / "data"), models_dir=mdir,
                  run_dir=tmp_path / "run", device="cpu", log=lambda s: None, verbose=False)
    assert entry["storage_dtype"] == "bfloat16" and entry["spec"]["depth"] == 50
    assert entry["metrics"]["clean_n"] == 4 and 0 <= entry["metrics"]["clean_acc"] <= 1
    assert (mdir / "resnet50_gated.safetensors").stat().st_size < 0.6 * 4 * entry["params"]
    loaded = load_checkpoint("resnet50_gated", mdir)
    assert sum(p.numel() for p in loaded.parameters()) == entry["params"]


# ------------------------------------------------------------------------------------ the report

def test_resnet50_names_meta_and_order():
    for name in R50:
        m = model_meta(name)
        assert m.arch == "resnet50" and m.base_static == "resnet50_static", m
    assert model_meta("resnet50_gated").family == "gated" and model_meta("resnet50_odconv_k4").K == 4
    names = ["resnet50_gated", "gated", "resnet50_static", "static", "resnet50_dyconv_k4", "dyconv_k4"]
    assert sorted(names, key=model_sort_key) == ["static", "dyconv_k4", "gated", "resnet50_static",
                                                 "resnet50_dyconv_k4", "resnet50_gated"]


def _store_with_resnet50(path) -> str:
    from test_report import ATTACKS, LABEL, N, _rows

    st = ResultsStore(path)
    rng = np.random.default_rng(0)
    strengths = {"static": 2 / 255, "dyconv_k4": 3 / 255, "resnet50_static": 2.5 / 255,
                 "resnet50_dyconv_k4": 3.5 / 255, "resnet50_odconv_k4": 3 / 255, "resnet50_gated": 1.5 / 255}
    for model, strength in strengths.items():
        sha = f"{model}-sha"
        big = model.startswith("resnet50")
        st.upsert_model(model=model, checkpoint_sha256=sha, family=model_meta(model).family,
                        params=23.5e6 if big else 270000, macs=1.298e9 if big else 40.5e6,
                        mean_executed_macs=0.9e9 if model.endswith("gated") else None, layout={})
        for attack in ("fgsm", "pgd"):
            settings, norm, grid = ATTACKS[attack]
            rows = _rows(model, rng, grid, strength)
            for eps in grid:
                key = RunKey(model, sha, attack, json.dumps(settings, sort_keys=True, separators=(",", ":")), norm,
                             eps, json.dumps(grid), "cifar10-jpeg", "digest", 0, N)
                rid = st.run_id(key, eps_label=str(eps), dataset_label=LABEL, device="cuda (H200)")
                st.add_examples({rid: rows[eps]}, {rid: 1.0})
    st.close()
    return str(path)


def test_report_puts_resnet50_rows_next_to_their_static_twin(tmp_path):
    import pandas as pd

    from robustbench_dyn.report.sections import BUILTIN

    store = _store_with_resnet50(tmp_path / "s.sqlite")
    mdir = tmp_path / "models"
    mdir.mkdir()
    audit = {"verdict": "dynamic", "n": 1000, "clean_acc": 0.8, "rule": "the rule", "data": "CIFAR-10 (JPEG copy)",
             "attention": {"entropy_ratio_mean": 0.7, "mean_replacement_loss": 5.0, "shuffle_loss": 9.0,
                           "layers_entropy_low_frac": 0.6, "kernel_info_ratio_mean": 0.2}}
    models = {n: {"name": n, "sha256": f"{n}-sha", "metrics": {"clean_acc": 0.8}, "storage_dtype": "bfloat16"}
              for n in R50}
    models["resnet50_dyconv_k4"]["audit"] = audit
    (mdir / "manifest.json").write_text(json.dumps({"format": 1, "models": models}))
    rep = build_report(store, tmp_path / "out", models_dir=mdir, strict=True, sections=(*BUILTIN, "audit"))
    assert rep.failed == {}, rep.failed
    t = pd.read_csv(rep.out / "tables" / "main_table.csv")
    order = [m.split(" [")[0] for m in t.model]
    assert order == ["static", "dyconv_k4", "resnet50_static", "resnet50_dyconv_k4", "resnet50_odconv_k4",
                     "resnet50_gated"]
    r50 = t[t.model.str.startswith("resnet50_static")].iloc[0]
    assert math.isclose(r50["macs_M"], 1298.0)
    md = rep.index_md.read_text()
    findings = [ln for ln in md.splitlines() if "loses" in ln and "resnet50_dyconv_k4" in ln]
    assert findings, "no robustness finding for the ResNet-50 models"
    # each dynamic ResNet-50 is compared with resnet50_static, never with the ResNet-20 static
    assert "resnet50_dyconv_k4 loses" in findings[0] and "than resnet50_static" in findings[0]
    seg = findings[0].split("resnet50_dyconv_k4 loses", 1)[1].split(";", 1)[0]
    assert "than static" not in seg
    assert "resnet50_odconv_k4" in md and "pt vs resnet50_static" in md


# ------------------------------------------------------------------------------------ the GPU script's arithmetic

def test_epoch_and_precision_choice():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("train_r50", REPO / "scripts" / "train_r50.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # the four share one GPU: an epoch of the group costs the sum of the four
    assert mod.choose_epochs({"a": 10.0, "b": 30.0}, 200.0, 1.0, 200) == 5
    assert mod.choose_epochs({"a": 10.0, "b": 30.0}, 200.0, 1.2, 200) == 4
    assert mod.choose_epochs({"a": 500.0}, 200.0, 1.2, 200) == 1  # at least one epoch (the deadline guards)
    assert mod.choose_epochs({"a": 0.1}, 200.0, 1.0, 30) == 30
    calib = {"bf16": {"s": (5.0, 10.0), "o": (200.0, 50.0)}, "fp32": {"s": (8.0, 20.0), "o": (60.0, 100.0)}}
    assert mod.choose_precision(calib, 130.0) == "fp32"  # faster, and fits
    assert mod.choose_precision(calib, 100.0) == "bf16"  # fp32 would not fit together
    assert mod.choose_precision(calib, 10.0) == "bf16"  # nothing fits: the smaller footprint
