"""`robustdyn bench` and the gated skip path: exactness of the skip path against the masked forward, the MACs it
executes, the bench table and CSV, the report's Cost section, and bad inputs (one line, exit 2). Timings are
never asserted (tiny repeat counts; correctness only)."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest
import torch
from _cli import run_cli as run
from torch.utils.flop_counter import FlopCounterMode

from robustbench_dyn.bench import BenchRow, BenchStore, parse_batch_sizes, read_bench, summary
from robustbench_dyn.checkpoints import checkpoint_present
from robustbench_dyn.costs import gated_cost
from robustbench_dyn.data import load_sample
from robustbench_dyn.errors import ConfigError
from robustbench_dyn.layers import GateRecorder
from robustbench_dyn.layers.gate_skip import gate_skip, supports_gate_skip
from robustbench_dyn.registry import create_model, load_model


def _images(n: int) -> torch.Tensor:
    x, _ = load_sample().tensors()
    return x[:n]


def _mixed_gates(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random gate biases around 0, so each block has some gates open and some shut, input-dependent."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if type(m).__name__ == "ChannelGate":
            with torch.no_grad():
                m.fc2.bias.copy_(torch.randn(m.fc2.bias.shape, generator=g) * 0.5)
    for m in model.modules():  # non-trivial BN statistics, so a wrong channel gather would show
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


# ------------------------------------------------------------------------------------------ skip path

@pytest.mark.parametrize("batch", [1, 3])
def test_skip_path_equals_masked_path_basic_block(batch):
    model = _mixed_gates(create_model("gated"))
    x = _images(batch)
    with torch.no_grad(), GateRecorder(model, detach=True) as rec:
        ref = model(x)
    dens = torch.stack([g.mean(1) for g in rec.gates], 1)
    assert ((dens > 0) & (dens < 1)).any(), "the test needs partly open blocks"
    with torch.no_grad(), gate_skip(model):
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert "forward" not in vars(model.layers[0][0])  # the context restores the class forward
    torch.testing.assert_close(model(x).detach(), ref)


def test_skip_path_executes_only_the_open_channels():
    """At batch 1 the skip path's FLOPs are exactly the executed MACs of costs.gated_cost at the example's
    gate densities; the masked path's are the full-density MACs."""
    model = _mixed_gates(create_model("gated"), seed=1)
    x = _images(1)
    cost = gated_cost(model)
    with torch.no_grad(), GateRecorder(model, detach=True) as rec:
        model(x)
    dens = torch.stack([g.float().mean(1) for g in rec.gates], 1)
    fc = FlopCounterMode(display=False)
    with torch.no_grad(), gate_skip(model), fc:
        model(x)
    assert fc.get_total_flops() / 2 == pytest.approx(float(cost.macs(dens)[0]), rel=1e-9)
    fc = FlopCounterMode(display=False)
    with torch.no_grad(), fc:
        model(x)
    assert fc.get_total_flops() / 2 == pytest.approx(cost.full, rel=1e-9)
    assert float(cost.macs(dens)[0]) < 0.9 * cost.full


def test_skip_path_all_gates_closed_and_all_open():
    model = _mixed_gates(create_model("gated"))
    x = _images(2)
    for bias in (-100.0, 100.0):
        for m in model.modules():
            if type(m).__name__ == "ChannelGate":
                torch.nn.init.constant_(m.fc2.bias, bias)
        with torch.no_grad():
            ref = model(x)
            with gate_skip(model):
                out = model(x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_skip_path_bottleneck():
    model = _mixed_gates(create_model("resnet50_gated", blocks=(1, 1, 1, 1)))
    x = _images(2)
    with torch.no_grad():
        ref = model(x)
        with gate_skip(model):
            out = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not checkpoint_present("gated"), reason="no trained gated checkpoint in models/")
def test_skip_path_exact_on_the_trained_checkpoint():
    model = load_model("gated")
    x = _images(16)
    with torch.no_grad():
        ref = torch.cat([model(x[i:i + 1]) for i in range(len(x))])
        with gate_skip(model):
            out = torch.cat([model(x[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert (out.argmax(1) == ref.argmax(1)).all()


def test_skip_path_refuses_what_it_cannot_do():
    with pytest.raises(ConfigError, match="no gated blocks"), gate_skip(create_model("static")):
        pass
    model = create_model("gated").train()
    with pytest.raises(ConfigError, match="training mode"), gate_skip(model):
        pass
    dyn = create_model("dyconv_k2", gated=True).eval()
    assert not supports_gate_skip(dyn)
    with pytest.raises(ConfigError, match="dynamic convs"), gate_skip(dyn):
        pass


# ------------------------------------------------------------------------------------------ library

def test_parse_batch_sizes():
    assert parse_batch_sizes("256, 1,1") == (1, 256)
    for bad in ("1,x", "0", "-4", "", " , "):
        with pytest.raises(ConfigError, match="--batch-sizes"):
            parse_batch_sizes(bad)


# ------------------------------------------------------------------------------------------ CLI

def test_bench_cli_writes_store_csv_and_report(capsys, tmp_path):
    store, csv = tmp_path / "s.sqlite", tmp_path / "bench.csv"
    code, out, err = run(capsys, "bench", "--models", "static,gated", "--untrained", "--models-dir", tmp_path / "none",
                         "--batch-sizes", "1,4", "--repeats", "3", "--max-seconds", "0.01", "--images", "3",
                         "--threads", "1", "--store", store, "--csv", csv)
    assert code == 0, err
    assert "static (untrained)" in out and "gated (untrained)" in out and "skip speed-up" in out
    df = pd.read_csv(csv)
    # static: forward x {clean, attack} x {1, 4}; gated: masked x 4 + skip at batch 1
    assert len(df) == 9 and set(df.path) == {"forward", "masked", "skip"}
    assert set(df[df.path == "skip"].batch) == {1} and set(df[df.path == "skip"]["mode"]) == {"clean"}
    assert (df.threads == 1).all() and (df.untrained).all() and df.median_ms.gt(0).all()
    assert df.torch_version.notna().all() and df.created_at.notna().all() and df.device_name.notna().all()
    g = df[df.model == "gated"]
    assert (g.executed_macs < g.macs).all()  # untrained gates: fc2 bias 0.5, yet some shut
    assert len(read_bench(store)) == 9
    with sqlite3.connect(store) as con:
        lat = dict(con.execute("SELECT model, latency_ms FROM models").fetchall())
    assert set(lat) == {"static", "gated"} and all(v > 0 for v in lat.values())
    # a rerun replaces the rows (same key), it does not add
    code, *_ = run(capsys, "bench", "--models", "static", "--untrained", "--models-dir", tmp_path / "none",
                   "--batch-sizes", "1", "--repeats", "2", "--max-seconds", "0.01", "--images", "2", "--threads", "1",
                   "--store", store, "--csv", csv)
    assert code == 0 and len(read_bench(store)) == 9
    # the report's Cost section shows every benchmarked model, from a store with no attack runs
    from robustbench_dyn.report import build_report

    rep = build_report(store, tmp_path / "rep", sections=["cost"], strict=True)
    md = rep.index_md.read_text()
    assert rep.built == ["cost"] and "static (untrained)" in md and "gated (untrained)" in md
    assert "skip speed-up" in md and "figures/cost_latency.png" in md and (tmp_path / "rep" / "tables" /
                                                                          "cost.csv").is_file()


def test_cost_section_with_accuracy_runs(tmp_path):
    """Latency next to clean and robust accuracy: the figure gets its accuracy panels from the runs."""
    from test_report import make_store

    from robustbench_dyn.report import build_report

    store = make_store(tmp_path / "store.sqlite", models=("static", "dyconv_k4", "gated"), checks=False)
    rows = []
    for model, fam, macs, ms in (("static", "static", 40.5e6, 2.0), ("dyconv_k4", "dyconv", 42e6, 5.0),
                                 ("gated", "gated", 40.5e6, 2.2), ("odconv_k4", "odconv", 43e6, 7.0)):
        for path in (("masked", "skip") if fam == "gated" else ("forward",)):
            for mode, batch in (("clean", 1), ("attack", 1), ("clean", 64), ("attack", 64)):
                if path == "skip" and (mode, batch) != ("clean", 1):
                    continue
                t = ms * (0.8 if path == "skip" else 1.0) * (3 if mode == "attack" else 1) * (20 if batch > 1 else 1)
                rows.append(BenchRow(model, f"{model}-sha", "cpu", 2, path, mode, batch, False, fam, "Test CPU", t,
                                     1.2 * t, t, 0.9 * t, batch / t * 1e3, 10, 3, 270000, macs,
                                     12e6 if fam == "gated" else macs, "", "test images", 0.1,
                                     created_at="2026-01-01T00:00:00+00:00"))
    with BenchStore(store) as bs:
        bs.add(rows)
    s = summary(rows)
    gated = s[s.model == "gated"].iloc[0]
    assert gated.skip_speedup == pytest.approx(1 / 0.8) and gated.executed_macs == 12e6
    assert s[s.model == "dyconv_k4"].iloc[0].latency_vs_static == pytest.approx(2.5)
    rep = build_report(store, tmp_path / "out", sections=["main_table", "cost", "findings"], strict=True)
    md = rep.index_md.read_text()
    assert rep.failed == {} and rep.missing == {}
    cost = md.split("Cost: MACs")[2]
    for m in ("static", "dyconv_k4", "gated", "odconv_k4"):
        assert f"| {m} |" in cost, m
    assert "robustdyn bench" not in md.split("Cost: MACs")[1]  # main table: no pointer to a command
    assert "latency (ms)" in md  # the main table reads the models table's latency
    assert "1.25x" in md or "speed-up 1.25x" in md
    t = pd.read_csv(tmp_path / "out" / "tables" / "cost.csv")
    assert t.set_index("model").loc["static", "clean_acc"] > 0 and t.robust_acc_8_255.notna().sum() == 3


@pytest.mark.parametrize("args, needle", [
    (["--models", "nosuchmodel*"], "no registered model matches"),
    (["--models", "statik"], "did you mean static"),
    (["--batch-sizes", "1,abc"], "--batch-sizes"),
    (["--batch-sizes", "0"], "--batch-sizes"),
    (["--threads", "0"], "--threads"),
    (["--max-seconds", "0"], "--max-seconds"),
    (["--models", "resnet50_*"], "has a checkpoint"),
])
def test_bench_bad_inputs(capsys, tmp_path, args, needle):
    code, out, err = run(capsys, "bench", "--store", tmp_path / "s.sqlite", "--csv", tmp_path / "b.csv",
                         "--models-dir", tmp_path, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Fix:" in lines[0] and needle in lines[0], err
    assert not (tmp_path / "b.csv").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bench_cuda_unavailable(capsys, tmp_path):
    code, out, err = run(capsys, "bench", "--device", "cuda", "--store", tmp_path / "s.sqlite")
    assert code == 2 and err.startswith("error: ") and "Fix:" in err and len(err.strip().splitlines()) == 1


def test_bench_help_teaches(capsys):
    code, out, err = run(capsys, "bench", "--help")
    assert code == 0
    for word in ("latency", "throughput", "attack step", "executed MACs", "skip", "--untrained", "Examples"):
        assert word in out, word
