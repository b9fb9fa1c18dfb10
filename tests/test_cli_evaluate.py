"""`robustdyn evaluate | sweep | check`: smoke runs on untrained models and resume. The bad inputs
(exit code 2, one 'error: ... Fix: ...' line, no traceback) are tests/test_bad_inputs.py's table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _cli import run_cli as run

from robustbench_dyn.store import ResultsStore

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTDYN_OFFLINE", "1")
    monkeypatch.setenv("ROBUSTDYN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ROBUSTDYN_STORE", str(tmp_path / "default.sqlite"))




# ------------------------------------------------------------------------------------------ smoke

def test_evaluate_untrained_writes_store_and_resumes(capsys, tmp_path):
    store = tmp_path / "r.sqlite"
    args = ["evaluate", "--model", "static", "--untrained", "--attack", "fgsm", "--eps-grid", "0,8/255", "--n", "8",
            "--store", store, "--device", "cpu"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "UNTRAINED" in out and "static (untrained)" in out
    for needle in ("clean accuracy", "robust accuracy @ 8/255", "n=8", "CIFAR-10", "cpu", "seconds"):
        assert needle in out, needle
    with ResultsStore(store) as st:
        runs = st.runs_df()
    assert len(runs) == 2 and (runs.untrained == 1).all() and (runs.status == "complete").all()
    code, out, _ = run(capsys, *args)
    assert code == 0 and "8 of 8 examples resumed" in out


def test_evaluate_no_store_and_settings(capsys, tmp_path):
    code, out, err = run(capsys, "evaluate", "-m", "dyconv_k2", "--untrained", "--n", "4", "--set", "steps=2",
                         "--no-store", "--device", "cpu")
    assert code == 0, err
    assert "steps=2" in out and "not written" in out
    assert not (tmp_path / "default.sqlite").exists()


def test_sweep_quick_suite_and_resume(capsys, tmp_path):
    store = tmp_path / "s.sqlite"
    args = ["sweep", "--suite", REPO / "attacks" / "quick.toml", "--models", "static", "--untrained", "--n", "8",
            "--store", store, "--device", "cpu"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "suite quick" in out and "PGD-5" in out
    with ResultsStore(store) as st:
        assert len(st.runs_df()) == 4 and len(st.examples_df()) == 32
    code, out, _ = run(capsys, *args)
    assert code == 0 and "8 resumed" in out
    with ResultsStore(store) as st:
        assert len(st.examples_df()) == 32


def test_sweep_runs_checks_when_the_suite_says_so(capsys, tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text('n = 4\nchecks = ["logits", "eval_mode"]\n[[attacks]]\nname = "fgsm"\neps = ["8/255"]\n')
    store = tmp_path / "c.sqlite"
    code, out, err = run(capsys, "sweep", "--suite", suite, "--models", "static", "--untrained", "--store", store,
                         "--device", "cpu")
    assert code == 0, err
    assert "PASS  logits" in out
    with ResultsStore(store) as st:
        assert sorted(st.checks_df().check_name) == ["eval_mode", "logits"]
    code, out, err = run(capsys, "sweep", "--suite", suite, "--models", "static", "--untrained", "--store", store,
                         "--device", "cpu")
    assert code == 0 and "2 already stored" in out and "PASS  logits" not in out


def test_check_prints_pass_fail_lines(capsys, tmp_path):
    code, out, err = run(capsys, "check", "--model", "static", "--untrained", "--n", "8", "--square-queries", "10",
                         "--checks", "eval_mode,deterministic,logits,zero_gradient,black_box", "--store",
                         tmp_path / "k.sqlite", "--device", "cpu")
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(lines) == 5 and "checks passed" in out


# ------------------------------------------------------------------------------------- bad inputs
# Every bad input (names, eps, n, seeds, settings, devices, data, checkpoints, stores, suites, usage errors) is
# one row of the table in tests/test_bad_inputs.py; here only the installed console script end to end.

def test_console_script_error_has_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("robustdyn")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "robustbench_dyn"]
    env = {**os.environ, "ROBUSTDYN_OFFLINE": "1", "ROBUSTDYN_CACHE": str(tmp_path / "c")}
    p = subprocess.run([*cmd, "evaluate", "--model", "nosuchmodel", "--device", "cpu"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("error: unknown model")
