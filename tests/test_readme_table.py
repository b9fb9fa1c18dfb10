"""scripts/readme_table.py: the README's results table is generated from the report's CSV tables, never copied."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import readme_table  # noqa: E402

EIGHT = 8 / 255


def _tables(tmp_path: Path, *, aa_complete: bool, corr_cells: int) -> Path:
    std = [
        # model, attack, norm, eps, eps_label, robust_acc, n, complete
        ("static_at", "FGSM", "Linf", EIGHT, "8/255", 0.419, 2000, True),
        ("static_at", "PGD-20 CE", "Linf", EIGHT, "8/255", 0.355, 2000, True),
        ("static_at", "PGD-20 DLR", "Linf", EIGHT, "8/255", 0.3495, 2000, True),
        ("static_at", "PGD-20 CE L2", "L2", 0.5, "0.5", 0.5265, 2000, True),
        ("static_at", "AutoAttack", "Linf", EIGHT, "8/255", 0.2067, 600, aa_complete),
        ("gated", "FGSM", "Linf", EIGHT, "8/255", 0.0425, 2000, True),
    ]
    pd.DataFrame(std, columns=["model", "attack", "norm", "eps", "eps_label", "robust_acc", "n", "complete"]) \
        .to_csv(tmp_path / "robust_accuracy_standard_eps.csv", index=False)
    pd.DataFrame({"model": ["gated", "static_at"], "clean_acc": [0.8458, 0.7276]}) \
        .to_csv(tmp_path / "main_table.csv", index=False)
    curves = [("static_at", "PGD-20 CE", "Linf", lab, acc) for lab, acc in
              (("1/255", 0.696), ("2/255", 0.653), ("4/255", 0.562))]
    pd.DataFrame(curves, columns=["model", "attack", "norm", "eps_label", "robust_acc"]) \
        .to_csv(tmp_path / "robust_acc_vs_eps.csv", index=False)
    corr = [("static_at", f"c{i}", 1 + i % 5, 0.6 if i % 2 else 0.7, True) for i in range(corr_cells)]
    pd.DataFrame(corr, columns=["model", "corruption", "severity", "acc", "complete"]) \
        .to_csv(tmp_path / "corruption_accuracy_long.csv", index=False)
    return tmp_path


def _cells(text: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    lines = text.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells[1:], strict=True))
    return header, rows


def test_the_table_carries_the_csv_numbers_in_zoo_order(tmp_path):
    header, rows = _cells(readme_table.build(_tables(tmp_path, aa_complete=True, corr_cells=75)))
    assert header == ["gated", "static_at"]  # zoo order, not the CSV's
    assert rows["clean (n=10000)"] == {"gated": "84.58", "static_at": "72.76"}
    assert rows["FGSM / PGD-20 CE / PGD-20 DLR (n=2000)"]["static_at"] == "41.90 / 35.50 / 34.95"
    assert rows["FGSM / PGD-20 CE / PGD-20 DLR (n=2000)"]["gated"] == "4.25 / n/a / n/a"
    assert rows["PGD-20 L2 at 0.5 (n=2000)"]["static_at"] == "52.65"
    assert rows["PGD-20 at 1 / 2 / 4 /255, no early stop (n=1000)"]["static_at"] == "69.6 / 65.3 / 56.2"
    assert rows["AutoAttack standard"]["static_at"] == "20.67 (n=600)"
    # 38 cells at 0.7 and 37 at 0.6
    assert rows["15 corruptions x 5 severities, mean (n=2000)"]["static_at"] == f"{100 * (38 * .7 + 37 * .6) / 75:.2f}"
    assert rows["15 corruptions x 5 severities, mean (n=2000)"]["gated"] == "n/a"


def test_incomplete_runs_are_marked(tmp_path):
    _, rows = _cells(readme_table.build(_tables(tmp_path, aa_complete=False, corr_cells=30)))
    assert rows["AutoAttack standard"]["static_at"] == "20.67 (n=600), incomplete (resumable)"
    assert rows["15 corruptions x 5 severities, mean (n=2000)"]["static_at"].endswith("(30 of 75 cells, incomplete)")


def test_missing_tables_name_the_fix(tmp_path, capsys):
    assert readme_table.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "main_table.csv" in err and "robustdyn report" in err
