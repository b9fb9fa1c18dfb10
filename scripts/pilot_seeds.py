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
nothing is recomputed here.
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


def paired_gaps(data: dict, pilot: str, target_pt: float = 1.5) -> dict:
    """Per-seed rows and the summary (mean gap in points, its standard error and 95 % t-interval)."""
    statics, runs = static_runs(data), pilot_runs(data, pilot)
    if not runs:
        raise SystemExit(f"no runs of pilot {pilot!r} in the JSON (keys gated@{pilot}, gated@{pilot}s<N>)")
    rows = []
    for seed, e in sorted(runs.items()):
        twin = statics.get((_epochs(e), seed))
        if twin is None:
            continue  # no static twin with this seed and epoch budget yet: not paired, not counted
        acc, ref = 100 * e["metrics"]["clean_acc"], 100 * twin["metrics"]["clean_acc"]
        rows.append({"seed": seed, "epochs": _epochs(e), "gated": acc, "static": ref, "gap": acc - ref,
                     "conditional": e["audit"]["gates"]["conditional_frac"],
                     "macs": e["metrics"]["executed_macs_ratio_vs_full"], "verdict": e["audit"]["verdict"]})
    gaps = [r["gap"] for r in rows]
    out = {"pilot": pilot, "rows": rows, "n": len(gaps), "mean_gap": statistics.mean(gaps) if gaps else math.nan}
    if len(gaps) > 1:
        se = statistics.stdev(gaps) / math.sqrt(len(gaps))
        half = stats.t.ppf(0.975, len(gaps) - 1) * se
        out.update(se=se, ci=(out["mean_gap"] - half, out["mean_gap"] + half))
    misses = [] if rows else ["no seed paired with a static twin"]
    if rows and not out["mean_gap"] >= -target_pt:
        misses.append(f"mean gap {out['mean_gap']:+.2f} pt < -{target_pt} pt")
    for r in rows:
        s = r["seed"]
        if r["conditional"] < 0.30:
            misses.append(f"seed {s}: {100 * r['conditional']:.0f} % conditional gates < 30 %")
        if r["macs"] > 0.70:  # strict: 0.7005 is over the 0.7x budget
            misses.append(f"seed {s}: executed MACs {r['macs']:.4f} > 0.70x")
        if r["verdict"] != "dynamic":
            misses.append(f"seed {s}: audit {r['verdict']}")
    out["misses"] = misses
    out["meets_target"] = not misses
    return out


def markdown(res: dict) -> str:
    lines = [f"**{res['pilot']}**", "",
             "| seed | epochs | gated % | static % | gap pt | conditional gates | exec. MACs / full | audit |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['seed']} | {r['epochs']} | {r['gated']:.2f} | {r['static']:.2f} | {r['gap']:+.2f} | "
                     f"{100 * r['conditional']:.0f}% | {r['macs']:.4f} | {r['verdict']} |")
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
