"""scripts/pilot_seeds.py: the multi-seed, seed-paired gap of a gated pilot to the static twin."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import pilot_seeds  # noqa: E402


def _gated(seed, acc, cond=0.6, macs=0.69, verdict="dynamic", mask_loss=3.0):
    return {"seed": seed, "metrics": {"clean_acc": acc, "executed_macs_ratio_vs_full": macs},
            "audit": {"verdict": verdict, "n": 1000,
                      "gates": {"conditional_frac": cond, "majority_mask_loss": mask_loss}}}


def _static(seed, acc):
    return {"seed": seed, "metrics": {"clean_acc": acc}}


def _data(**over):
    d = {"static@v2": _static(0, 0.80), "static@s1": _static(1, 0.82), "static@s2": _static(2, 0.81),
         "gated@p": _gated(0, 0.79), "gated@ps1": _gated(1, 0.80), "gated@ps2": _gated(2, 0.795),
         "gated@ps3": _gated(3, 0.90),  # no static twin with seed 3: no gap, but its audit counts
         "gated@px": _gated(0, 0.50), "gated@pslim": _gated(0, 0.5)}  # other pilots whose names start with "p"
    d.update(over)
    return d


def test_gaps_are_paired_by_seed_and_summarised():
    res = pilot_seeds.paired_gaps(_data(), "p")
    assert [r["seed"] for r in res["rows"]] == [0, 1, 2]
    assert [round(r["gap"], 6) for r in res["rows"]] == [-1.0, -2.0, -1.5]
    assert res["n"] == 3 and res["mean_gap"] == pytest.approx(-1.5)
    assert res["se"] == pytest.approx(0.5 / 3 ** 0.5)
    half = 4.302653 * 0.5 / 3 ** 0.5  # t(0.975, df=2)
    assert res["ci"] == pytest.approx((-1.5 - half, -1.5 + half), abs=1e-5)
    assert res["meets_target"]  # exactly -1.5 pt is within 1.5 pt
    assert "mean gap -1.50 pt over 3 seed(s)" in pilot_seeds.markdown(res)


@pytest.mark.parametrize("over", [{"gated@ps1": _gated(1, 0.79)},            # mean gap -1.83 pt
                                  {"gated@ps2": _gated(2, 0.795, cond=0.2)},  # too few conditional gates
                                  {"gated@ps2": _gated(2, 0.795, macs=0.71)},  # over the MAC budget
                                  {"gated@ps2": _gated(2, 0.795, verdict="static")}])
def test_target_needs_mean_gap_and_every_seed_dynamic_within_budget(over):
    res = pilot_seeds.paired_gaps(_data(**over), "p")
    assert not res["meets_target"] and len(res["misses"]) == 1
    assert "not met (" + res["misses"][0] + ")" in pilot_seeds.markdown(res)


def test_unknown_pilot_is_a_clear_error():
    with pytest.raises(SystemExit, match="no runs of pilot 'q'"):
        pilot_seeds.paired_gaps(_data(), "q")


def test_pairs_match_the_epoch_budget_too():
    def e30(entry):
        return {**entry, "epochs": 30}
    data = _data(**{"static@e30": e30(_static(0, 0.87)), "static@e30s1": e30(_static(1, 0.86)),
                    "gated@q": e30(_gated(0, 0.86)), "gated@qs1": e30(_gated(1, 0.84)),
                    "gated@qs2": e30(_gated(2, 0.85))})  # seed 2 has only a 10-epoch static: not paired
    res = pilot_seeds.paired_gaps(data, "q")
    assert [(r["seed"], r["epochs"]) for r in res["rows"]] == [(0, 30), (1, 30)]
    assert [round(r["gap"], 6) for r in res["rows"]] == [-1.0, -2.0]
    assert [r["static"] for r in pilot_seeds.paired_gaps(data, "p")["rows"]] == pytest.approx([80, 82, 81])


def test_unpaired_seed_counts_for_the_audit_not_the_gap():
    res = pilot_seeds.paired_gaps(_data(), "p")
    assert [r["seed"] for r in res["unpaired"]] == [3] and res["n"] == 3
    assert "| 3 | 10 | 90.00 | no twin |  |" in pilot_seeds.markdown(res)
    bad = pilot_seeds.paired_gaps(_data(**{"gated@ps3": _gated(3, 0.90, verdict="static")}), "p")
    assert bad["mean_gap"] == pytest.approx(-1.5) and bad["misses"] == ["seed 3: audit static (n=1000)"]


def test_full_test_set_audit_decides_where_present():
    g = _gated(2, 0.795)  # dynamic on the 1000-image audit
    g["audit_n10000"] = {"verdict": "static", "n": 10000,
                         "gates": {"conditional_frac": 0.64, "majority_mask_loss": 1.99}}
    res = pilot_seeds.paired_gaps(_data(**{"gated@ps2": g}), "p")
    row = res["rows"][2]
    assert (row["verdict"], row["audit_n"], row["mask_loss"], row["conditional"]) == ("static", 10000, 1.99, 0.64)
    assert res["misses"] == ["seed 2: audit static (n=10000)"]
    assert "| 1.99 | static (10000) |" in pilot_seeds.markdown(res)
