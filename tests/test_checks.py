"""Sanity checks: they run on a tiny model, print PASS/FAIL lines, catch what they are for, and
land in the results store."""

from __future__ import annotations

import pytest
import torch
from _tiny import sample, trained_model
from torch import nn

from robustbench_dyn.checks import CHECKS, check_model, run_checks
from robustbench_dyn.errors import ConfigError
from robustbench_dyn.evaluation import ModelInfo
from robustbench_dyn.store import ResultsStore


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTDYN_OFFLINE", "1")
    monkeypatch.setenv("ROBUSTDYN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def xy():
    x, y = sample().tensors(range(24))
    return x, y


def test_all_checks_on_a_tiny_model(xy, tmp_path):
    m = trained_model()
    lines = []
    results = run_checks(m, *xy, square_queries=30, on_result=lambda r: lines.append(r.line()))
    assert [r.name for r in results] == list(CHECKS)
    assert all(line.startswith(("PASS", "FAIL")) for line in lines)
    by = {r.name: r for r in results}
    for name in ("eval_mode", "deterministic", "logits", "large_eps", "more_steps"):
        assert by[name].passed, by[name].line()
    assert by["large_eps"].value <= 0.01
    assert 0 <= by["zero_gradient"].value <= 1
    assert "Square" in by["black_box"].detail


class _Softmaxed(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return torch.softmax(self.m(x), 1)


class _Noisy(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x) + torch.randn(len(x), 10)


class _Masked(nn.Module):
    """Quantises its input: zero gradient everywhere (the textbook gradient masking)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(torch.round(x * 4) / 4)


def test_checks_catch_what_they_are_for(xy):
    base = trained_model()
    fails = {r.name for r in run_checks(_Softmaxed(base), *xy, names=["logits"]) if not r.passed}
    assert fails == {"logits"}
    assert not run_checks(_Noisy(base), *xy, names=["deterministic"])[0].passed
    masked = run_checks(_Masked(base), *xy, names=["zero_gradient", "large_eps"])
    assert not masked[0].passed and masked[0].value == 1.0
    assert not masked[1].passed  # PGD cannot move: accuracy stays up at 64/255
    train_mode = trained_model().train()
    r = run_checks(train_mode, *xy, names=["eval_mode"])[0]
    assert not r.passed and "train mode" in r.line()
    assert train_mode.training  # restored


def test_unknown_check_name(xy):
    with pytest.raises(ConfigError, match="unknown check"):
        run_checks(trained_model(), *xy, names=["nope"])


def test_check_model_writes_the_store(tmp_path):
    info = ModelInfo("tiny", "c" * 64)
    with ResultsStore(tmp_path / "c.sqlite") as st:
        res = check_model(trained_model(), info, sample(), n=16, store=st, names=["logits", "more_steps"])
        df = st.checks_df()
    assert len(res) == 2 and sorted(df.check_name) == ["logits", "more_steps"]
    assert set(df.columns) >= {"model", "check_name", "value", "passed", "threshold", "meaning", "detail", "n"}
    assert (df.n == 16).all() and (df.model == "tiny").all()
