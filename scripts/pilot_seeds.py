#!/usr/bin/env python3
"""Multi-seed gap of a gated recipe pilot to the static twin, from ``reports/recipe_pilot.json``.

#12's gated target (within 1.5 pt of static at the same budget, >= 30 % conditional gates, <= 0.7x MACs) is
judged on the mean over seeds, not on the best seed. The pilot runs are paired by seed and epoch budget:
seed ``s`` of a pilot ``P`` (key ``gated@P`` for seed 0, ``gated@PsS`` otherwise) against the static net
trained with the same seed for the same number of epochs (10 epochs: keys ``static@v2`` for seed 0,
``static@sS`` otherwise; E epochs: ``static@eE`` and ``static@eEsS``); the seed fixes the data order and
the augmentation, so the paired difference removes part of the run-to-run noise the two nets share.

    python scripts/pilot_seeds.py g10 g12 g12e30   # markdown table per pilot, mean gap, t-interval

Every figure comes from the JSON (clean accuracy on the full 10,000-image test set, the audit's gate figures);
nothing is recomputed here. The audit figures (verdict, conditional gates, majority-mask loss) are those of the
full-test-set audit (``audit_n10000``) where the entry has one, else of the 1000-image audit run when training
ended: the larger sample decides. Seeds without a static twin are listed below the table (audit only) and do
not count toward the mean gap, but their audit does count toward the target.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path

from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
PILOT_JSON = ROOT / "reports" / "recipe_pilot.json"


def _seed(entry: dict) -> int:
    """The entry's training seed. The session-3 entries (``static@v2``) predate the field: they ran the default, 0."""
    return int(entry.get("seed", 0))


def _epochs(entry: dict) -> int:
    """The entry's epoch budget. The pilots were 10-epoch runs unless the entry says otherwise."""
    return int(entry.get("epochs") or 10)


def static_runs(data: dict) -> dict[tuple[int, int], dict]:
    """Static twins by (epochs, seed): ``static@v2``, ``static@s<N>``, ``static@e<E>`` and ``static@e<E>s<N>``."""
    return {(_epochs(e), _seed(e)): e for k, e in data.items() if re.fullmatch(r"static@(v2|s\d+|e\d+(s\d+)?)", k)}


def pilot_runs(data: dict, pilot: str) -> dict[int, dict]:
    """A gated pilot's runs by seed: ``gated@<pilot>`` and ``gated@<pilot>s<N>``."""
    pat = re.compile(rf"gated@{re.escape(pilot)}(s\d+)?")
    return {_seed(e): e for k, e in data.items() if pat.fullmatch(k)}


def audit_of(entry: dict) -> dict:
    """The entry's audit, the full-test-set one (``audit_n10000``) where present."""
    return entry.get("audit_n10000") or entry["audit"]


def _audit_row(seed: int, e: dict) -> dict:
    a = audit_of(e)
    return {"seed": seed, "epochs": _epochs(e), "conditional": a["gates"]["conditional_frac"],
            "mask_loss": a["gates"].get("majority_mask_loss", math.nan), "audit_n": a.get("n"),
            "macs": e["metrics"]["executed_macs_ratio_vs_full"], "verdict": a["verdict"]}


def paired_gaps(data: dict, pilot: str, target_pt: float = 1.5) -> dict:
    """Per-seed rows and the summary (mean gap in points, its standard error and 95 % t-interval)."""
    statics, runs = static_runs(data), pilot_runs(data, pilot)
    if not runs:
        raise SystemExit(f"no runs of pilot {pilot!r} in the JSON (keys gated@{pilot}, gated@{pilot}s<N>)")
    rows, unpaired = [], []
    for seed, e in sorted(runs.items()):
        row = _audit_row(seed, e)
        row["gated"] = 100 * e["metrics"]["clean_acc"]
        twin = statics.get((_epochs(e), seed))
        if twin is None:  # no static twin with this seed and epoch budget: no gap, but the audit still counts
            unpaired.append(row)
            continue
        row["static"] = 100 * twin["metrics"]["clean_acc"]
        row["gap"] = row["gated"] - row["static"]
        rows.append(row)
    gaps = [r["gap"] for r in rows]
    out = {"pilot": pilot, "rows": rows, "unpaired": unpaired, "n": len(gaps),
           "mean_gap": statistics.mean(gaps) if gaps else math.nan}
    if len(gaps) > 1:
        se = statistics.stdev(gaps) / math.sqrt(len(gaps))
        half = stats.t.ppf(0.975, len(gaps) - 1) * se
        out.update(se=se, ci=(out["mean_gap"] - half, out["mean_gap"] + half))
    misses = [] if rows else ["no seed paired with a static twin"]
    if rows and not out["mean_gap"] >= -target_pt:
        misses.append(f"mean gap {out['mean_gap']:+.2f} pt < -{target_pt} pt")
    for r in rows + unpaired:
        s = r["seed"]
        if r["conditional"] < 0.30:
            misses.append(f"seed {s}: {100 * r['conditional']:.0f} % conditional gates < 30 %")
        if r["macs"] > 0.70:  # strict: 0.7005 is over the 0.7x budget
            misses.append(f"seed {s}: executed MACs {r['macs']:.4f} > 0.70x")
        if r["verdict"] != "dynamic":
            misses.append(f"seed {s}: audit {r['verdict']} (n={r['audit_n']})")
    out["misses"] = misses
    out["meets_target"] = not misses
    return out


def markdown(res: dict) -> str:
    lines = [f"**{res['pilot']}**", "",
             "| seed | epochs | gated % | static % | gap pt | conditional gates | exec. MACs / full "
             "| majority-mask loss pt | audit (n) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"] + res["unpaired"]:
        static, gap = (f"{r['static']:.2f}", f"{r['gap']:+.2f}") if "gap" in r else ("no twin", "")
        lines.append(f"| {r['seed']} | {r['epochs']} | {r['gated']:.2f} | {static} | {gap} | "
                     f"{100 * r['conditional']:.0f}% | {r['macs']:.4f} | {r['mask_loss']:.2f} | "
                     f"{r['verdict']} ({r['audit_n']}) |")
    summary = f"mean gap {res['mean_gap']:+.2f} pt over {res['n']} seed(s)"
    if "se" in res:
        summary += f", SE {res['se']:.2f}, 95 % t-interval [{res['ci'][0]:+.2f}, {res['ci'][1]:+.2f}]"
    verdict = "met" if res["meets_target"] else f"not met ({'; '.join(res['misses'])})"
    lines += ["", summary + f"; target (mean gap >= -1.5 pt, every seed >= 30 % conditional, <= 0.7x MACs, "
                            f"dynamic): {verdict}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pilots", nargs="+", help="pilot names, e.g. g10 g12")
    ap.add_argument("--json", type=Path, default=PILOT_JSON, help="recipe pilot results (default: %(default)s)")
    args = ap.parse_args(argv)
    data = json.loads(args.json.read_text())
    print("\n\n".join(markdown(paired_gaps(data, p)) for p in args.pilots))


if __name__ == "__main__":
    main()
