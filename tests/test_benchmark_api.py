"""``robustbench_dyn.benchmark()`` (issue 18): the RobustBench-style one call for any nn.Module: a DataFrame
row per attack and eps with Wilson intervals, the store written when asked (for `robustdyn report`), the
model contract checked before anything runs, the model's mode restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustbench_dyn
from robustbench_dyn import benchmark
from robustbench_dyn.benchmark import COLUMNS, wilson
from robustbench_dyn.errors import ConfigError, DataError, ModelContractError
from robustbench_dyn.store import ResultsStore
from tests._tiny import sample
from tests.test_contract import tiny as trained_model  # untrained but real: fast on a busy CPU


def test_top_level_exports():
    assert callable(robustbench_dyn.benchmark) and callable(robustbench_dyn.evaluate)
    assert {"benchmark", "evaluate", "check_model_contract", "ModelContractError"} <= set(robustbench_dyn.__all__)


def test_benchmark_table():
    model = trained_model().train()
    df = benchmark(model, attacks=["fgsm", ("pgd", {"steps": 3})], eps=["2/255", "8/255"], n=16, data=sample(),
                   device="cpu", name="tiny")
    assert list(df.columns) == COLUMNS and len(df) == 4
    assert df.attack.tolist() == ["fgsm", "fgsm", "pgd", "pgd"] and df.eps_label.tolist() == ["2/255", "8/255"] * 2
    assert (df.n == 16).all() and (df.model == "tiny").all() and (df.device == "cpu").all()
    assert (df.data == sample().label).all()
    assert (df.robust_ci_low <= df.robust_acc).all() and (df.robust_acc <= df.robust_ci_high).all()
    assert (df.clean_ci_low <= df.clean_acc).all() and (df.clean_acc <= df.clean_ci_high).all()
    for _, g in df.groupby("attack"):
        assert g.robust_acc.is_monotonic_decreasing and (g.robust_acc <= g.clean_acc).all()
    assert all(m.training for m in model.modules())  # the caller's mode is back


def test_benchmark_writes_the_store_for_the_report(tmp_path):
    from tests.test_contract import ProtoNet

    store = tmp_path / "r.sqlite"
    df = benchmark(ProtoNet(), attacks="fgsm", eps="8/255", n=8, data=sample(), device="cpu", store=store,
                   name="proto")
    assert len(df) == 1
    with ResultsStore(store) as st:
        runs = st.runs_df()
        models = st._df("SELECT model, layout, source FROM models")
    assert runs.model.tolist() == ["proto"] and int(runs.n_done.iloc[0]) == 8
    assert float(runs.robust_acc.iloc[0]) == pytest.approx(float(df.robust_acc.iloc[0]))
    assert '"channels": 5' in models.layout.iloc[0] and models.source.iloc[0] == "module"


def test_benchmark_defaults_eps_by_norm():
    df = benchmark(nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)), attacks={"pgd-l2": {"steps": 1}}, n=4,
                   data=sample(), device="cpu")
    assert df.eps.tolist() == [0.5] and df.norm.tolist() == ["L2"]


def test_benchmark_fails_before_anything_runs(tmp_path):
    store = tmp_path / "s" / "r.sqlite"

    class Tuple(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3072, 10)

        def forward(self, x):
            return self.fc(x.flatten(1)), x

    with pytest.raises(ModelContractError, match="returns a tuple"):
        benchmark(Tuple(), attacks="fgsm", n=4, data=sample(), store=store)
    with pytest.raises(ConfigError, match="unknown attack"):
        benchmark(trained_model(), attacks="pgdd", n=4, data=sample(), store=store)
    with pytest.raises(ConfigError, match="no attacks"):
        benchmark(trained_model(), attacks=[], n=4, data=sample(), store=store)
    with pytest.raises(DataError, match="larger than"):
        benchmark(trained_model(), attacks="fgsm", n=10 ** 6, data=sample(), store=store)
    assert not store.parent.exists()


def test_wilson():
    lo, hi = wilson(8, 16)
    assert lo < 0.5 < hi and wilson(0, 10)[0] == 0 and wilson(10, 10)[1] == pytest.approx(1)
    assert all(v != v for v in wilson(0, 0))
    # the bounds at 0 and n are exact (the float formula gave 4e-19 at 0 of 500: negative error bars in a plot)
    assert all(wilson(0, n)[0] == 0.0 and wilson(n, n)[1] == 1.0 for n in (1, 10, 200, 500, 1000, 2000, 10000))


def test_model_without_parameters_benchmarks():
    class Means(nn.Module):
        def forward(self, x):
            return torch.cat([x.mean((2, 3)), x.amax((2, 3)), x.amin((2, 3)), x[:, :1, 0, 0]], 1)

    df = benchmark(Means(), attacks="fgsm", n=4, data=sample(), device="cpu")
    assert len(df) == 1
