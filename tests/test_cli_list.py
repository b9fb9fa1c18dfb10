"""`robustdyn list` and the CLI shell (help, version, one-line errors with exit code 2)."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import robustbench_dyn as rd
import robustbench_dyn.cli  # noqa: F401  (registers the subcommands on the app)
from robustbench_dyn.checkpoints import save_checkpoint, update_manifest
from robustbench_dyn.cli._app import app

runner = CliRunner()
ALL = rd.list_models("*")


@pytest.fixture(scope="module")
def zoo_csv(tmp_path_factory) -> list[dict]:
    mdir = tmp_path_factory.mktemp("models")
    result = runner.invoke(app, ["list", "--csv", "--models-dir", str(mdir)])
    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.stdout)))


def test_list_csv_has_every_model(zoo_csv):
    assert [r["name"] for r in zoo_csv] == ALL and len(ALL) == 20
    assert set(zoo_csv[0]) >= {"name", "family", "depth", "K", "training", "params (M)", "MACs (M)", "checkpoint",
                               "clean acc (%)"}
    rows = {r["name"]: r for r in zoo_csv}
    assert rows["static"]["params (M)"] == "0.270" and rows["static"]["MACs (M)"] == "40.55"
    assert rows["dyconv_k4"]["family"] == "dyconv" and rows["dyconv_k4"]["K"] == "4"
    assert rows["gated_at"]["family"] == "gated" and rows["gated_at"]["training"] == "at"
    assert rows["resnet50_static"]["depth"] == "50" and float(rows["resnet50_static"]["params (M)"]) == 23.521
    assert all(r["checkpoint"] == "no" and r["clean acc (%)"] == "" for r in zoo_csv)  # empty models dir


def test_list_table_shows_every_name(tmp_path):
    result = runner.invoke(app, ["list", "--models-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in ALL:
        assert name in result.stdout


def test_list_pattern_and_manifest_metrics(tmp_models_dir):
    entry = save_checkpoint(rd.create_model("static"), "static", {"arch": "cifar_resnet"}, tmp_models_dir)
    update_manifest("static", {**entry, "metrics": {"clean_acc": 0.9123},
                               "dataset": {"label": "CIFAR-10 (JPEG copy)"}}, tmp_models_dir)
    result = runner.invoke(app, ["list", "static*,gated", "--csv", "--models-dir", str(tmp_models_dir)])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in csv.DictReader(io.StringIO(result.stdout))}
    assert list(rows) == ["static", "static_at", "gated"]
    assert rows["static"]["checkpoint"] == "yes" and rows["static"]["clean acc (%)"] == "91.23"
    assert rows["static"]["data"] == "CIFAR-10 (JPEG copy)" and rows["static_at"]["checkpoint"] == "no"


def test_help_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "list" in result.stdout and "dynamic CNNs" in result.stdout
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and rd.__version__ in result.stdout


def test_module_entry_point_help_and_one_line_errors(tmp_path):
    """Through ``python -m robustbench_dyn`` (what the ``robustdyn`` script runs): a library error is one
    line on stderr with exit code 2, no traceback."""
    out = subprocess.run([sys.executable, "-m", "robustbench_dyn", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "list" in out.stdout
    (tmp_path / "manifest.json").write_text("{broken")
    out = subprocess.run([sys.executable, "-m", "robustbench_dyn", "list", "static", "--models-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: ") and "manifest" in out.stderr and "Traceback" not in out.stderr
