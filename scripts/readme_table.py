"""Print the README's "Evaluated so far" table (markdown, one column per model) from a built report's CSV tables,
so the README never carries a hand-copied number.

    robustdyn report --store reports/results --out reports
    python scripts/readme_table.py reports/tables            # paste the output into README.md

Rows: clean accuracy; FGSM / PGD-20 CE / PGD-20 DLR at 8/255; PGD-20 L2 at 0.5; PGD-20 at 1, 2, 4/255 (the eps
curve); AutoAttack standard at 8/255 (with its n, and the examples done where the run is incomplete); the mean over
the 15 corruptions x 5 severities. A model column appears once the store has its clean run. Reads CSV only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ORDER = ("static", "dyconv_k2", "dyconv_k3", "dyconv_k4", "dyconv_k5", "odconv_k1", "odconv_k4", "gated",
         "static_at", "dyconv_k4_at", "odconv_k4_at", "gated_at")


def _pct(v, digits: int = 2) -> str:
    return "n/a" if v is None or pd.isna(v) else f"{100 * float(v):.{digits}f}"


def build(tables: Path) -> str:
    std = pd.read_csv(tables / "robust_accuracy_standard_eps.csv")
    main = pd.read_csv(tables / "main_table.csv").set_index("model")
    curves = pd.read_csv(tables / "robust_acc_vs_eps.csv")
    corr_path = tables / "corruption_accuracy_long.csv"
    corr = pd.read_csv(corr_path) if corr_path.is_file() else pd.DataFrame(columns=["model", "acc", "complete"])
    # the mean over all 75 (corruption, severity) cells, each on the same n; only where all 75 are complete
    cells = corr.groupby("model").agg(acc=("acc", "mean"), cells=("acc", "size"), complete=("complete", "all"))
    models = [m for m in ORDER if m in main.index] + [m for m in main.index if m not in ORDER]

    def std_acc(m: str, attack: str, norm: str = "Linf", label: str = "8/255"):
        r = std[(std.model == m) & (std.attack == attack) & (std.norm == norm) & (std.eps_label == label)]
        return None if r.empty else r.iloc[0]

    def curve(m: str, label: str) -> str:
        r = curves[(curves.model == m) & (curves.attack == "PGD-20 CE") & (curves.norm == "Linf")
                   & (curves.eps_label == label)]
        return "n/a" if r.empty else _pct(r.iloc[0].robust_acc, 1)

    rows = {
        "clean (n=10000)": [],
        "FGSM / PGD-20 CE / PGD-20 DLR (n=2000)": [],
        "PGD-20 L2 at 0.5 (n=2000)": [],
        "PGD-20 at 1 / 2 / 4 /255, no early stop (n=1000)": [],
        "AutoAttack standard": [],
        "15 corruptions x 5 severities, mean (n=2000)": [],
    }
    for m in models:
        rows["clean (n=10000)"].append(_pct(main.loc[m, "clean_acc"]))
        three = [std_acc(m, a) for a in ("FGSM", "PGD-20 CE", "PGD-20 DLR")]
        rows["FGSM / PGD-20 CE / PGD-20 DLR (n=2000)"].append(
            " / ".join("n/a" if r is None else _pct(r.robust_acc) for r in three))
        l2 = std_acc(m, "PGD-20 CE L2", "L2", "0.5")
        rows["PGD-20 L2 at 0.5 (n=2000)"].append("n/a" if l2 is None else _pct(l2.robust_acc))
        rows["PGD-20 at 1 / 2 / 4 /255, no early stop (n=1000)"].append(
            " / ".join(curve(m, lab) for lab in ("1/255", "2/255", "4/255")))
        aa = std_acc(m, "AutoAttack")
        if aa is None:
            cell = "n/a"
        else:
            cell = f"{_pct(aa.robust_acc)} (n={int(aa.n)})"
            if not bool(aa.complete):
                cell += ", incomplete (resumable)"
        rows["AutoAttack standard"].append(cell)
        if m not in cells.index:
            cell = "n/a"
        else:
            c = cells.loc[m]
            cell = _pct(c.acc)
            if c.cells < 75 or not c.complete:
                cell += f" ({int(c.cells)} of 75 cells, incomplete)"
        rows["15 corruptions x 5 severities, mean (n=2000)"].append(cell)
    out = ["| | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    out += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows.items()]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tables", nargs="?", default="reports/tables", help="the report's tables folder")
    a = p.parse_args(argv)
    tables = Path(a.tables)
    missing = [f for f in ("robust_accuracy_standard_eps.csv", "main_table.csv", "robust_acc_vs_eps.csv")
               if not (tables / f).is_file()]
    if missing:
        print(f"error: {tables} lacks {', '.join(missing)}: build the report first "
              "(robustdyn report --store reports/results --out reports)", file=sys.stderr)
        return 2
    print(build(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
