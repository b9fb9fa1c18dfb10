"""`robustdyn evaluate | sweep | check`: smoke runs on untrained models, resume, and every bad input
-> exit code 2 with one 'error: ... Fix: ...' line and no traceback."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustbench_dyn.cli import main
from robustbench_dyn.store import ResultsStore

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTDYN_OFFLINE", "1")
    monkeypatch.setenv("ROBUSTDYN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ROBUSTDYN_STORE", str(tmp_path / "default.sqlite"))


def run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code or 0, out, err


def assert_one_line_error(code, out, err, *needles):
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert "Fix:" in errors[0] or "did you mean" in errors[0], errors[0]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


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

EVAL = ["evaluate", "--device", "cpu", "--no-store"]


@pytest.mark.parametrize("args,needles", [
    (["--model", "dyconf_k4", "--untrained"], ["unknown model", "dyconv_k4"]),
    (["--model", "static", "--untrained", "--attack", "pgdd"], ["unknown attack", "pgd"]),
    (["--model", "static", "--untrained", "--eps=-1/255"], ["negative"]),
    (["--model", "static", "--untrained", "--eps", "2"], ["larger than 1"]),
    (["--model", "static", "--untrained", "--eps", "8/2x5"], ["cannot parse"]),
    (["--model", "static", "--untrained", "--eps-grid", "0,abc"], ["cannot parse"]),
    (["--model", "static", "--untrained", "--eps", "8/255", "--eps-grid", "0,8/255"], ["both"]),
    (["--model", "static", "--untrained", "--n", "100000000"], ["larger than"]),
    (["--model", "static", "--untrained", "--n", "0"], ["positive"]),
    (["--model", "static", "--untrained", "--set", "stepz=3"], ["unknown setting"]),
    (["--model", "static", "--untrained", "--device", "tpu"], ["unknown device"]),
])
def test_bad_evaluate_inputs(capsys, args, needles):
    assert_one_line_error(*run(capsys, *EVAL, *args), *needles)


def test_missing_data(capsys, tmp_path):
    assert_one_line_error(*run(capsys, *EVAL, "--model", "static", "--untrained", "--data-dir", tmp_path / "nodata"),
                          "does not exist")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_absent_device(capsys):
    assert_one_line_error(*run(capsys, *EVAL, "--model", "static", "--untrained", "--device", "cuda"), "CUDA")


def test_missing_and_corrupt_checkpoint(capsys, tmp_path):
    from robustbench_dyn import create_model
    from robustbench_dyn.checkpoints import save_checkpoint

    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(*run(capsys, *EVAL, "--model", "dyconv_k4", "--models-dir", empty), "no checkpoint",
                          "scripts/train.py")
    zoo = tmp_path / "zoo"
    save_checkpoint(create_model("static"), "static", {"arch_kwargs": {}}, models_dir=zoo)
    f = zoo / "static.safetensors"
    f.write_bytes(f.read_bytes()[:-10] + b"0123456789")
    assert_one_line_error(*run(capsys, *EVAL, "--model", "static", "--models-dir", zoo), "corrupt")


def test_incompatible_store(capsys, tmp_path):
    p = tmp_path / "old.sqlite"
    ResultsStore(p).close()
    con = sqlite3.connect(p)
    con.execute("UPDATE meta SET value = '0' WHERE key = 'version'")
    con.commit()
    con.close()
    assert_one_line_error(*run(capsys, "evaluate", "--device", "cpu", "--model", "static", "--untrained", "--n", "2",
                               "--store", p), "old.sqlite", "schema version 0")
    junk = tmp_path / "junk.sqlite"
    junk.write_text("junk")
    assert_one_line_error(*run(capsys, "evaluate", "--device", "cpu", "--model", "static", "--untrained", "--n", "2",
                               "--store", junk), "junk.sqlite")


@pytest.mark.parametrize("args,needles", [
    (["sweep", "--suite", "nosuchsuite", "--models", "static", "--untrained"], ["does not exist"]),
    (["sweep", "--suite", "quick", "--models", "dyconf_*", "--untrained"], ["no registered model"]),
    (["sweep", "--suite", "quick", "--models", "static,dyconf_k4", "--untrained"], ["unknown model", "dyconv_k4"]),
    (["check", "--model", "static", "--untrained", "--checks", "logitz"], ["unknown check", "logits"]),
    (["check", "--model", "static", "--untrained", "--eps", "-"], ["cannot parse"]),
])
def test_bad_sweep_and_check_inputs(capsys, args, needles):
    assert_one_line_error(*run(capsys, *args, "--device", "cpu"), *needles)


def test_bad_suite_file(capsys, tmp_path):
    suite = tmp_path / "bad.toml"
    suite.write_text('[[attacks]]\nname = "pgd"\neps = ["8/255"]\nstepz = 3\n')
    assert_one_line_error(*run(capsys, "sweep", "--suite", suite, "--models", "static", "--untrained", "--device",
                               "cpu"), "bad.toml", "stepz")


def test_sweep_without_checkpoints(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(*run(capsys, "sweep", "--suite", "quick", "--models", "dyconv_*", "--models-dir", empty,
                               "--device", "cpu"), "no checkpoint", "--skip-missing")


def test_console_script_error_has_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("robustdyn")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "robustbench_dyn"]
    env = {**os.environ, "ROBUSTDYN_OFFLINE": "1", "ROBUSTDYN_CACHE": str(tmp_path / "c")}
    p = subprocess.run([*cmd, "evaluate", "--model", "nosuchmodel", "--device", "cpu"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("error: unknown model")
