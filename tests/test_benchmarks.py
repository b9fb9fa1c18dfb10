"""The benchmark scripts (scripts/bench_*.py) in their tiny CPU form: correctness only, never timings.

Each bench runs in-process on a few images with a few attack steps and must produce its JSON and
markdown, robust accuracies in [0, 1], and the invariants its method guarantees: the pruned sweep
spends no more gradient evaluations than the naive one and (with a deterministic attack) is never
weaker at any eps; no library call leaves a model in train mode; bench_all records a failing bench
and goes on.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

pytestmark = pytest.mark.zoo


@pytest.fixture(autouse=True)
def _needs_zoo():
    from robustbench_dyn.checkpoints import checkpoint_present

    missing = [m for m in ("static", "dyconv_k4", "static_at") if not checkpoint_present(m)]
    if missing:
        pytest.skip(f"trained checkpoints missing: {', '.join(missing)} (python scripts/train_zoo.py)")


def _outputs(out: Path, name: str) -> dict:
    j, m = out / f"{name}.json", out / f"{name}.md"
    assert j.is_file() and m.is_file()
    data = json.loads(j.read_text())
    text = m.read_text()
    assert "| model |" in text and "torch" in text and "command:" in text and "data:" in text
    assert data["env"]["torch"] and data["env"]["data"]["label"]
    return data


def test_bench_layers_quick(tmp_path):
    import bench_layers

    bench_layers.main(["--quick", "--models", "static,dyconv_k4", "--batches", "4", "--loop-n", "1",
                       "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)])
    data = _outputs(tmp_path, "bench_layers")
    labels = {r["label"] for r in data["rows"]}
    assert {"static", "dyconv_k4 (dense)", "dyconv_k4 (grouped)"} <= labels
    for r in data["rows"]:
        assert r["images_per_s"] > 0 and math.isfinite(r["vs_static"]) and r["vs_loop"] > 0
    assert {(q["label"], q["op"]) for q in data["loop"]} >= {("static", "forward"), ("static", "input-grad")}


def test_bench_attack_quick(tmp_path):
    import bench_attack

    bench_attack.main(["--quick", "--models", "static", "--n", "3", "--steps", "2", "--out", str(tmp_path)])
    data = _outputs(tmp_path, "bench_attack")
    variants = {r["variant"] for r in data["rows"]}
    assert {"plain", "obj-es", "engine-best"} <= variants
    for r in data["rows"]:
        assert 0.0 <= r["robust_acc"] <= 1.0
        assert r["seconds"] > 0 and r["grad_evals"] > 0
    plain = next(r for r in data["rows"] if r["variant"] == "plain")
    assert plain["grad_evals"] == 3 * 2  # n x steps: the counter sees every gradient evaluation
    assert all(r["grad_evals"] <= plain["grad_evals"] for r in data["rows"])  # early stop / clean filter only prune
    assert data["warnings"] == []  # no path left the model in train mode
    assert data["verdicts"]


def test_bench_sweep_pruned_never_weaker(tmp_path):
    import bench_sweep

    # random_start off: the attack is deterministic per example, so pruning provably never weakens it
    bench_sweep.main(["--quick", "--models", "static", "--n", "5", "--steps", "1", "--settings",
                      '{"random_start": false}', "--out", str(tmp_path)])
    data = _outputs(tmp_path, "bench_sweep")
    (row,) = data["rows"]
    naive, pruned = row["naive"], row["pruned"]
    assert pruned["grad_evals"] <= naive["grad_evals"] == 7 * 5 * 1
    labels = data["grid"]
    assert len(labels) == 8
    tol = 1 / 5 + 1e-9  # one example of slack for batch-composition rounding at a decision boundary
    accs = [pruned["robust_acc"][lab] for lab in labels]
    assert all(0.0 <= a <= 1.0 for a in accs)
    assert accs == sorted(accs, reverse=True)  # monotone by construction
    for lab in labels:
        assert 0.0 <= naive["robust_acc"][lab] <= 1.0
        assert pruned["robust_acc"][lab] <= naive["robust_acc"][lab] + tol
    assert pruned["robust_acc"]["0"] == naive["robust_acc"]["0"]  # clean accuracy: the same forward pass
    assert data["warnings"] == []


def test_bench_all_quick_training_autoattack_e2e(tmp_path):
    import bench_all

    report = bench_all.main(["--quick", "--only", "training,autoattack,e2e", "--out", str(tmp_path)])
    assert {k: v["status"] for k, v in report["benches"].items()} == {
        "training": "ok", "autoattack": "ok", "e2e": "ok"}
    saved = json.loads((tmp_path / "bench_all.json").read_text())
    md = (tmp_path / "bench_all.md").read_text()
    assert "Training: seconds per epoch" in md and "End to end" in md and "extrapolat" in md
    tr = saved["benches"]["training"]["result"]
    static = next(r for r in tr["manifest"] if r["model"] == "static")
    assert static["median_epoch_s"] > 0 and static["ratio_vs_static"] == 1.0
    assert all(m.get("step_s", 0) > 0 for m in tr["isolated"])
    aa = saved["benches"]["autoattack"]["result"]
    assert all(0.0 <= r["robust_acc"] <= r["clean_acc"] <= 1.0 for r in aa["rows"])
    e2e = saved["benches"]["e2e"]["result"]
    by = {r["model"]: r for r in e2e["rows"]}
    assert set(by) == {"static", "static_at"}
    assert by["static_at"]["autoattack"]["how"] == "measured (autoattack bench)"  # reused, not re-run
    for r in by.values():
        for k in ("fgsm", "pgd", "pgd_fast"):
            assert 0.0 <= r[k]["robust_acc"] <= 1.0 and r[k]["seconds_10k"] > 0
    assert e2e["total_10k_s"] > 0 and e2e["extrapolated"] is True


def test_bench_all_records_a_failing_bench_and_goes_on(tmp_path, monkeypatch):
    import bench_all

    def boom(args, ctx):
        raise RuntimeError("planted failure")

    benches = [bench_all._Bench("broken", bench_all.training_parser, boom, 1.0),
               bench_all._Bench("training", bench_all.training_parser, bench_all.run_training, 1.0)]
    monkeypatch.setattr(bench_all, "_benches", lambda: benches)
    report = bench_all.main(["--only", "broken,training", "--out", str(tmp_path)])
    assert report["benches"]["broken"]["status"] == "error"
    assert "planted failure" in report["benches"]["broken"]["error"]
    assert report["benches"]["training"]["status"] == "ok"
    assert "planted failure" in (tmp_path / "bench_all.md").read_text()
    assert json.loads((tmp_path / "bench_all.json").read_text())["benches"]["training"]["status"] == "ok"


def test_counting_model_stays_in_eval_mode():
    import bench_all
    import torch

    from robustbench_dyn import create_model
    from robustbench_dyn.costs import count_macs

    inner = create_model("static", depth=8).eval()
    counter = bench_all.CountingModel(inner)
    count_macs(counter)
    assert bench_all.training_modules(counter) == []
    counter.reset()
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    counter(x).sum().backward()
    with torch.no_grad():
        counter(x)
    assert (counter.grad_examples, counter.grad_calls, counter.nograd_examples) == (3, 1, 3)
