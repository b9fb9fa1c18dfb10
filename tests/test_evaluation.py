"""Evaluation engine: eps parsing, devices, sweep semantics (monotone, survivors only, carried
examples), verified adversarial examples, determinism, suites, user models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _tiny import sample, trained_model

from robustbench_dyn.attacks import ATTACKS, TorchattacksPGD, perturbation_norm, register_attack
from robustbench_dyn.errors import ConfigError
from robustbench_dyn.evaluation import (
    ModelInfo,
    eps_label,
    evaluate,
    parse_eps,
    parse_eps_grid,
    resolve_device,
    resolve_model,
    run_sweep,
)
from robustbench_dyn.suites import builtin_suites, load_suite, parse_suite

INFO = ModelInfo("tiny", "0" * 64)


@pytest.fixture(scope="module")
def model():
    return trained_model()


# ------------------------------------------------------------------------------------ eps, devices

@pytest.mark.parametrize("text,value", [("8/255", 8 / 255), (" 8 / 255 ", 8 / 255), ("0.5", 0.5), (0.25, 0.25),
                                        ("0", 0.0), (1, 1.0), ("1e-2", 0.01)])
def test_parse_eps(text, value):
    assert parse_eps(text) == value


@pytest.mark.parametrize("bad,match", [("-1/255", "negative"), ("2", "larger than 1"), ("abc", "cannot parse"),
                                       ("8/0", "cannot parse"), ("nan", "finite"), (True, "cannot parse")])
def test_parse_eps_rejects(bad, match):
    with pytest.raises(ConfigError, match=match):
        parse_eps(bad)


def test_grid_and_labels():
    assert parse_eps_grid("8/255, 0,2/255,8/255") == [0.0, 2 / 255, 8 / 255]
    assert eps_label(8 / 255) == "8/255" and eps_label(0.0) == "0" and eps_label(0.5, "L2") == "0.5"
    assert eps_label(1.0, "L2") == "1"
    with pytest.raises(ConfigError):
        parse_eps_grid(" , ")


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no usable CUDA GPU.*--device cpu"):
            resolve_device("cuda")


# --------------------------------------------------------------------------------------- sweeps

class _Counting(TorchattacksPGD):
    """PGD that records how many examples each call receives, per eps."""

    calls: list[tuple[float, int]] = []

    def perturb(self, model, x, y):
        type(self).calls.append((self.eps, len(x)))
        return super().perturb(model, x, y)


@pytest.fixture
def counting():
    _Counting.calls = []
    register_attack("pgd-count", _Counting, replace=True, steps=5)
    yield _Counting
    del ATTACKS["pgd-count"]


GRID = [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255]


def test_sweep_is_monotone_and_attacks_only_survivors(model, counting):
    data = sample()
    res = run_sweep(model, INFO, data, "pgd-count", GRID, n=64, seed=0, batch_size=64, keep_adv=True)
    accs = [res.robust_acc[e] for e in GRID]
    assert accs[0] == res.clean_acc > 0.15
    assert all(a >= b for a, b in zip(accs, accs[1:], strict=False)), accs
    assert accs[-1] < accs[0]
    ex = res.examples
    # survivors only: the attack at eps_j received exactly the examples robust at eps_{j-1}
    pairs = list(zip(GRID, GRID[1:], strict=False))
    robust_before = {e: int(ex[ex.eps == prev].broken_at.isna().sum()) for prev, e in pairs}
    assert [(e, n) for e, n in counting.calls] == [(e, robust_before[e]) for e in GRID[1:] if robust_before[e]]
    # carried examples: broken at eps_i -> broken at every larger eps with the same prediction and example
    by_eps = {e: ex[ex.eps == e].set_index("idx") for e in GRID}
    for prev, e in zip(GRID, GRID[1:], strict=False):
        broken = by_eps[prev].broken_at.notna()
        assert (by_eps[e].broken_at[broken] == by_eps[prev].broken_at[broken]).all()
        assert (by_eps[e].adv_pred[broken] == by_eps[prev].adv_pred[broken]).all()
    # broken_at is consistent with the predictions
    for e in GRID:
        d = by_eps[e]
        assert ((d.adv_pred != d.label) == d.broken_at.notna()).all()
        assert (d.broken_at.dropna() <= e + 1e-12).all()
        assert ((d.clean_pred != d.label) == (d.broken_at == 0)).all()
    assert (by_eps[0.0].adv_pred == by_eps[0.0].clean_pred).all()


def test_saved_adversarial_examples_respect_ball_and_range(model):
    data = sample()
    res = run_sweep(model, INFO, data, "pgd", GRID[1:], settings={"steps": 5}, n=48, seed=1, batch_size=24,
                    keep_adv=True)
    x, y = data.tensors(res.x_adv_indices)
    ex = res.examples
    for e in GRID[1:]:
        xa = res.x_adv[e]
        assert float(xa.min()) >= 0 and float(xa.max()) <= 1
        assert float(perturbation_norm(xa, x, "Linf").max()) <= e + 1e-6
        with torch.no_grad():
            pred = model(xa).argmax(1).numpy()
        d = ex[ex.eps == e].sort_values("idx")
        assert (pred == d.adv_pred.to_numpy()).all()  # the reported prediction is on the saved example
        assert np.allclose(d.perturbation.to_numpy(), perturbation_norm(xa, x, "Linf").numpy(), atol=1e-7)


def test_l2_sweep_and_deterministic(model):
    data = sample()
    kw = dict(settings={"steps": 3}, n=32, seed=3, batch_size=16)
    a = run_sweep(model, INFO, data, "pgd-l2", [0.25, 0.5], **kw)
    b = run_sweep(model, INFO, data, "pgd-l2", [0.5, 0.25], **kw)
    assert a.norm == "L2" and a.grid == [0.25, 0.5]
    assert a.robust_acc == b.robust_acc
    cols = ["eps", "idx", "adv_pred", "broken_at", "perturbation"]
    assert a.examples[cols].equals(b.examples[cols])


def test_evaluate_entry_point_with_untrained_registry_model(monkeypatch):
    monkeypatch.delenv("ROBUSTDYN_DATA", raising=False)  # no data anywhere: the bundled sample is used
    r = evaluate("dyconv_k2", "fgsm", "0,8/255", n=8, untrained=True, device="cpu", batch_size=8)
    assert r.model.untrained and r.model.name == "dyconv_k2" and r.n == 8
    assert set(r.robust_acc) == {0.0, 8 / 255}
    ex = r.examples
    assert ex.attn_entropy_clean.between(0, math.log(2) + 1e-9).all()
    assert (ex[ex.eps == 0].attn_kl == 0).all()
    assert r.dataset["id"] == "cifar10-jpeg-sample"


def test_resolve_user_model_file(tmp_path):
    f = tmp_path / "mine.py"
    f.write_text("import torch\n\ndef build():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
                 "torch.nn.Linear(3072, 10))\n\ndef bad():\n    return 3\n")
    model, info = resolve_model(f"{f}:build")
    assert info.name == "mine.py:build" and len(info.checkpoint_sha256) == 64 and info.source.startswith("file:")
    with pytest.raises(ConfigError, match="not an nn.Module"):
        resolve_model(f"{f}:bad")
    with pytest.raises(ConfigError, match="no function"):
        resolve_model(f"{f}:missing")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model(f"{tmp_path / 'nope.py'}:build")
    r = evaluate(f"{f}:build", "pgd", "4/255", settings={"steps": 2}, n=8, device="cpu")
    assert r.model.name == "mine.py:build"


def test_bad_batch_size(model):
    with pytest.raises(ConfigError, match="batch size"):
        run_sweep(model, INFO, sample(), "fgsm", [8 / 255], n=4, batch_size=0)


# ---------------------------------------------------------------------------------------- suites

def test_shipped_suites_parse():
    assert {"quick", "standard", "full"} <= set(builtin_suites())
    quick = load_suite("quick")
    assert quick.n == 64 and [a.name for a in quick.attacks] == ["fgsm", "pgd"]
    std = load_suite("standard")
    names = {(a.name, a.eps) for a in std.attacks}
    assert ("autoattack", (8 / 255,)) in names and ("pgd-l2", (0.5,)) in names and std.checks
    full = load_suite("full")
    pgd = next(a for a in full.attacks if a.name == "pgd")
    assert pgd.eps == tuple(k / 255 for k in (0, 1, 2, 4, 6, 8, 12, 16)) and pgd.eps_text[-1] == "16/255"
    l2 = next(a for a in full.attacks if a.name == "pgd-l2")
    assert l2.eps == (0.0, 0.25, 0.5, 1.0) and l2.norm == "L2"


@pytest.mark.parametrize("text,match", [
    ('[[attacks]]\nname = "pgd"\neps = ["8/255"]\nstepz = 3\n', "unknown setting 'stepz'"),
    ('bogus = 1\n[[attacks]]\nname = "pgd"\neps = [0.1]\n', "unknown key 'bogus'"),
    ('[[attacks]]\nname = "pgdd"\neps = [0.1]\n', "unknown attack 'pgdd'"),
    ('[[attacks]]\nname = "pgd"\neps = ["-1/255"]\n', "key 'eps'.*negative"),
    ('[[attacks]]\nname = "pgd"\neps = ["x"]\n', "key 'eps'.*cannot parse"),
    ('[[attacks]]\nname = "pgd"\n', "missing key 'eps'"),
    ('n = 0\n[[attacks]]\nname = "pgd"\neps = [0.1]\n', "'n' must be"),
    ('checks = ["nope"]\n[[attacks]]\nname = "pgd"\neps = [0.1]\n', "unknown check"),
    ('name = "x"\n', "no \\[\\[attacks\\]\\]"),
    ('[[attacks]\n', "not valid TOML"),
])
def test_suite_errors_name_key_and_file(text, match):
    with pytest.raises(ConfigError, match=match) as e:
        parse_suite(text, "my_suite.toml")
    assert "my_suite.toml" in str(e.value)


def test_missing_suite_file():
    with pytest.raises(ConfigError, match="does not exist.*quick"):
        load_suite("no_such_suite.toml")
