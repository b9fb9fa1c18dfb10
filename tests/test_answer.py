"""Report sections "The answer" and "Why" (robustbench_dyn.report.answer_sections) on a tiny synthetic store
whose answer is known, and the paired statistics behind them (robustbench_dyn.stats)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from robustbench_dyn.report import build_report
from robustbench_dyn.report.core import ordered_sections
from robustbench_dyn.stats import (
    bootstrap_mean_diff,
    cohens_d,
    holm_adjust,
    mcnemar_exact,
    paired_bootstrap,
    rank_biserial,
    spearman_bootstrap,
)
from robustbench_dyn.store import ResultsStore, RunKey

LABEL = "CIFAR-10 (JPEG copy)"
EPS = 8 / 255
PGD = json.dumps({"amp": False, "bpda": False, "norm": "Linf", "random_start": True, "rel_step": 0.25, "restarts": 1,
                  "step": None, "steps": 20}, sort_keys=True, separators=(",", ":"))
N = 400


def _binom_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p by hand: 2 * sum_{k <= min(b, c)} C(b + c, k) / 2^(b + c), capped at 1."""
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n)


def _rows(idx, robust: np.ndarray, dynamic: bool, rng: np.random.Generator) -> list[dict]:
    """Example rows: idx < 20 clean-wrong, else clean-correct and robust where ``robust`` says so; dynamic models
    get an attention shift that is larger on broken examples."""
    rows = []
    for i, r in zip(idx, robust, strict=True):
        label = i % 10
        clean_ok = i >= 20
        adv_ok = clean_ok and bool(r)
        row = {"idx": int(i), "label": label, "clean_pred": label if clean_ok else (label + 1) % 10,
               "adv_pred": label if adv_ok else (label + 3) % 10, "broken_at": None if adv_ok else
               (0.0 if not clean_ok else EPS), "perturbation": EPS, "macs_clean": 40.5e6, "macs_adv": 40.5e6}
        if dynamic:
            kl = rng.gamma(2.0, 0.05) + (0.0 if adv_ok else 0.15)
            row.update(attn_kl=kl, attn_tv=kl / 2, attn_entropy_clean=1.0, attn_entropy_adv=1.0,
                       dominant_changed=float(rng.random() < (0.2 if adv_ok else 0.6)))
        rows.append(row)
    return rows


def _robust_sets() -> dict[str, np.ndarray]:
    """Robust flags per idx 0..399: static 170, dyconv_k4 110 (b=10, c=70: clearly less robust);
    static_at and dyconv_k4_at with b = c = 20 (no difference)."""
    i = np.arange(N)
    both = (i >= 20) & (i < 120)
    s_only, d_only = (i >= 120) & (i < 190), (i >= 190) & (i < 200)
    at_both, at_s, at_d = (i >= 20) & (i < 220), (i >= 220) & (i < 240), (i >= 240) & (i < 260)
    return {"static": both | s_only, "dyconv_k4": both | d_only, "static_at": at_both | at_s,
            "dyconv_k4_at": at_both | at_d, "odconv_k4": both}


def make_store(path) -> str:
    st = ResultsStore(path)
    rng = np.random.default_rng(0)
    sets = _robust_sets()
    for model, robust in sets.items():
        idx = np.arange(N)
        if model == "static":  # extra examples the dynamic model never saw: they must not enter the comparison
            idx, robust = np.arange(N + 50), np.concatenate([robust, np.ones(50, bool)])
        digest = "other-subset" if model == "odconv_k4" else "digest"
        sha = f"{model}-sha"
        st.upsert_model(model=model, checkpoint_sha256=sha, family=model.split("_")[0])
        key = RunKey(model, sha, "pgd", PGD, "Linf", EPS, json.dumps([EPS]), "cifar10-jpeg", digest, 0, len(idx))
        rid = st.run_id(key, eps_label="8/255", dataset_label=LABEL, device="cpu")
        st.add_examples({rid: _rows(idx, robust, model != "static" and model != "static_at", rng)})
    st.add_check(model="dyconv_k4_at", checkpoint_sha256="dyconv_k4_at-sha", check_name="zero_gradient",
                 dataset_digest="digest", n=N, seed=0, value=0.5, passed=False, threshold="<= 0.01",
                 meaning="masking", dataset_label=LABEL, device="cpu")
    st.close()
    return str(path)


def make_manifest(folder) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    att = {"entropy_ratio_mean": 0.7, "mean_replacement_loss": 5.0, "shuffle_loss": 9.0}
    models = {"dyconv_k4": {"sha256": "dyconv_k4-sha", "audit": {"verdict": "dynamic", "attention": att}},
              "dyconv_k4_at": {"sha256": "dyconv_k4_at-sha", "audit": {"verdict": "static", "attention": {
                  "entropy_ratio_mean": 0.99, "mean_replacement_loss": 0.1, "shuffle_loss": 0.2}}}}
    (folder / "manifest.json").write_text(json.dumps({"format": 1, "models": models}))
    return str(folder)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("answer")
    return build_report(make_store(d / "s.sqlite"), d / "out", models_dir=make_manifest(d / "models"),
                        sections=["answer", "why"], strict=True)


# ------------------------------------------------------------------------------------------ statistics

def test_mcnemar_exact():
    assert mcnemar_exact(0, 0) == 1.0  # no discordant pairs
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(3, 4) == 1.0  # capped at 1
    assert math.isclose(mcnemar_exact(10, 70), _binom_p(10, 70), rel_tol=1e-9)
    assert math.isclose(mcnemar_exact(70, 10), mcnemar_exact(10, 70))
    assert math.isclose(mcnemar_exact(0, 6), 2 / 64)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_holm_adjust():
    # textbook example: p = (0.01, 0.04, 0.03, 0.005), m = 4 -> sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> running max
    adj = holm_adjust([0.01, 0.04, 0.03, 0.005])
    assert np.allclose(adj, [0.03, 0.06, 0.06, 0.02])
    assert np.allclose(holm_adjust([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    nan = holm_adjust([0.02, float("nan"), 0.01])  # NaN stays NaN and is not counted in m
    assert math.isnan(nan[1]) and np.allclose(nan[[0, 2]], [0.02, 0.02])
    assert holm_adjust([]).size == 0
    assert (holm_adjust(np.random.default_rng(0).random(50)) >= 0).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm_adjust([0.1, 1.5])


def test_paired_bootstrap():
    assert paired_bootstrap(np.zeros(50)) == (0.0, 0.0, 0.0)  # all pairs identical: CI [0, 0]
    assert paired_bootstrap(np.ones(7)) == (1.0, 1.0, 1.0)
    assert all(math.isnan(v) for v in paired_bootstrap([]))
    d = np.r_[np.ones(10), -np.ones(70), np.zeros(320)]
    mean, lo, hi = paired_bootstrap(d, n_boot=2000, seed=0)
    assert math.isclose(mean, -0.15) and lo < -0.15 < hi < 0
    assert paired_bootstrap(d, seed=0) == (mean, lo, hi)  # fixed seed: reproducible
    assert 0.06 < hi - lo < 0.1  # ~ 2 * 1.96 * sd(d) / sqrt(400) = 0.078


def test_group_effects_and_spearman():
    x, y = np.arange(10, 20.0), np.arange(10.0)
    assert rank_biserial(x, y) == 1.0 and rank_biserial(y, x) == -1.0 and rank_biserial([1, 1], [1, 1]) == 0.0
    assert cohens_d(x, y) > 3 and math.isnan(cohens_d([1.0], y)) and math.isnan(cohens_d([1, 1], [1, 1]))
    diff, lo, hi = bootstrap_mean_diff(x, y)
    assert diff == 10 and lo < 10 < hi and lo > 7
    assert all(math.isnan(v) for v in bootstrap_mean_diff([], y))
    rho, lo, hi = spearman_bootstrap(np.arange(8), np.arange(8) ** 2)
    assert rho == pytest.approx(1.0) and lo == pytest.approx(1.0)
    assert all(math.isnan(v) for v in spearman_bootstrap([1, 2], [3, 4]))
    assert math.isnan(spearman_bootstrap([1, 2, 3], [5, 5, 5])[0])


# ---------------------------------------------------------------------------------------- the sections

def test_answer_comes_first():
    ids = [s.id for s in ordered_sections()]
    assert ids[:2] == ["answer", "why"]


def test_answer_verdicts_and_numbers(report):
    assert report.built == ["answer", "why"] and not report.failed
    t = pd.read_csv(report.out / "tables" / "answer.csv")
    row = t[(t.dynamic == "dyconv_k4") & (t.attack == "PGD-20")].iloc[0]
    # restricted to the shared idx: static's 50 extra (all robust) examples are not counted
    assert row.n_shared == N and row.n_static_run == N + 50
    assert math.isclose(row.acc_static, 170 / N) and math.isclose(row.acc_dynamic, 110 / N)
    assert (row.b, row.c) == (10, 70) and math.isclose(row.mcnemar_p, _binom_p(10, 70), rel_tol=1e-9)
    assert math.isclose(row.diff_pt, -15.0) and row.ci_lo_pt < -15 < row.ci_hi_pt < 0
    assert row.verdict == "less robust"
    # Holm over the whole table: the smallest p is multiplied by the number of comparisons
    # (the clean comparisons have no discordant pairs: they cannot reach p < 0.05 and stay out of the family)
    family = t[t.holm_p.notna()]
    assert set(family.attack) == {"PGD-20"} and t[t.attack == "clean"].holm_p.isna().all()
    assert math.isclose(row.holm_p, min(1.0, len(family) * row.mcnemar_p), rel_tol=1e-9) and row.survives_holm
    assert (family.holm_p >= family.mcnemar_p).all()
    assert not t[t.verdict.str.startswith("no detect")].survives_holm.any()
    at = t[(t.dynamic == "dyconv_k4_at") & (t.attack == "PGD-20")].iloc[0]
    assert at.static == "static_at" and (at.b, at.c) == (20, 20) and at.mcnemar_p == 1.0
    assert at.ci_lo_pt < 0 < at.ci_hi_pt and at.verdict == f"no detectable difference at n={N}"
    clean = t[(t.dynamic == "dyconv_k4") & (t.attack == "clean")].iloc[0]  # identical clean outcomes
    assert (clean.ci_lo_pt, clean.ci_hi_pt, clean.mcnemar_p) == (0, 0, 1) and clean.verdict.startswith("no detect")
    assert "odconv_k4" not in set(t.dynamic)  # other data subset: skipped


def test_answer_markdown_and_figure(report):
    md = report.index_md.read_text()
    ans = md.split("The answer", 2)[-1].split("\n## ")[0]
    assert md.index("The answer") < md.index("Why:")
    assert ("dyconv_k4 vs static under PGD-20 (Linf 8/255): −15.0 pt [" in ans
            and f"n={N}: less robust." in ans)
    assert "dyconv_k4_at [STATIC by audit] vs static_at" in ans and "the dynamism audit calls it static" in ans
    assert "under attack, 0 of 2 comparisons find the dynamic model more robust, 1 less robust, 1 no detectable" \
        in ans
    assert "Holm-Bonferroni over the 2 comparisons of the table that can reach p < 0.05" in ans
    assert "1 of the 1 claimed differences remain: dyconv_k4 vs static PGD-20 @ 8/255 (−15.0 pt" in ans
    assert "| Holm p |" in ans
    # in words, a difference that survives Holm is stated plainly (one that does not says so: see the real report)
    assert "McNemar p=3.2e-12, n=400: less robust." in ans
    # it opens with the answer: one bullet per pair, only Holm survivors named, before the method paragraph
    short = ans.split("**In short**", 1)[1].split("Each dynamic model against", 1)[0]
    assert "- dyconv_k4 vs static: **less robust** under PGD-20 @ 8/255 −15.0 pt [" in short
    assert f"(Holm p={row_holm(report)}, n={N})" in short
    assert "no detectable difference in 1 of 2 comparisons" in short
    assert "dyconv_k4_at [STATIC by audit] vs static_at: no detectable difference in" in short
    assert "odconv_k4 [STATIC? not audited] vs static under PGD-20 (Linf 8/255): different data subsets" in ans
    assert "fails sanity check zero_gradient" in ans and LABEL in ans and "cpu" in ans
    png = report.out / "figures" / "answer_forest.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "figures/answer_forest.png" in report.files


def row_holm(report) -> str:
    t = pd.read_csv(report.out / "tables" / "answer.csv")
    p = t[(t.dynamic == "dyconv_k4") & (t.attack == "PGD-20")].holm_p.iloc[0]
    return f"{p:.3g}"


def test_why_section(report):
    t = pd.read_csv(report.out / "tables" / "why_broken_vs_surviving.csv")
    kl = t[(t.model == "dyconv_k4") & (t.measure == "attn_kl")].iloc[0]
    assert (kl.n_broken, kl.n_surviving) == (270, 110)
    assert kl.mean_broken > kl.mean_surviving and kl.ci_lo > 0 and kl.direction == "higher"
    assert kl.rank_biserial > 0.5 and kl.cohens_d > 1
    assert "macs_ratio" not in set(t.measure)  # constant for DyConv: not a measure of it
    md = report.index_md.read_text()
    why = md.split("Why:", 2)[-1]
    assert "attention shift KL(clean‖adv) (nats) is higher on broken examples" in why
    # one audited model per training kind (dyconv_k4, dyconv_k4_at): no within-kind correlation to compute
    assert "no audit figure is shared by 2 or more audited models of one training kind" in why
    assert "Sanity checks (gradient masking): 0 of 1 pass" in why and "Adaptive attacks (BPDA/EOT): missing" in why


def test_answer_adds_the_small_linf_eps_where_the_store_has_it(tmp_path):
    """At 8/255 standard-trained models are all near 0 %; a 2/255 L∞ run of both twins joins the comparison."""
    path = make_store(tmp_path / "s.sqlite")
    st = ResultsStore(path)
    rng = np.random.default_rng(1)
    small = 2 / 255
    flags = {"static": np.arange(N) >= 20, "dyconv_k4": np.arange(N) >= 100,  # dynamic: 80 fewer robust
             "static_at": np.arange(N) >= 20, "dyconv_k4_at": np.arange(N) >= 30}
    for model, robust in flags.items():
        key = RunKey(model, f"{model}-sha", "pgd", PGD, "Linf", small, json.dumps([small]), "cifar10-jpeg", "digest",
                     0, N)
        rid = st.run_id(key, eps_label="2/255", dataset_label=LABEL, device="cpu")
        rows = _rows(np.arange(N), robust, not model.startswith("static"), rng)
        for r in rows:
            r["broken_at"] = None if r["broken_at"] is None else (0.0 if r["broken_at"] == 0.0 else small)
        st.add_examples({rid: rows})
    st.close()
    rep = build_report(path, tmp_path / "out", models_dir=make_manifest(tmp_path / "models"),
                       sections=["answer", "why"], strict=True)
    t = pd.read_csv(rep.out / "tables" / "answer.csv")
    row = t[(t.dynamic == "dyconv_k4") & (t.eps.sub(small).abs() < 1e-9)]
    assert len(row) == 1 and row.condition.iloc[0] == "PGD-20 @ 2/255"
    assert row.verdict.iloc[0] == "less robust" and row.diff_pt.iloc[0] == pytest.approx(-20.0)
    assert "2/255" in rep.index_md.read_text()
    # robustness vs the audit (one audited model per training kind here): see test_audit_correlations_*


def test_audit_correlations_within_each_training_kind_and_not_at_the_floor():
    """Pooled over standard and adversarial models the rank correlation would measure the training kind; each
    kind is correlated on its own, at 8/255 and 2/255, and a kind whose models sit at 0 % gets no rho."""
    from types import SimpleNamespace

    from robustbench_dyn.report.answer_sections import audit_correlations
    from robustbench_dyn.report.core import model_meta

    std = ["dyconv_k2", "dyconv_k3", "dyconv_k4", "dyconv_k5", "odconv_k1", "odconv_k4"]
    at = ["dyconv_k4_at", "odconv_k4_at"]
    loss = {m: float(i + 1) for i, m in enumerate(std + at)}  # mean-replacement loss rises along the list
    acc = {(m, EPS): 0.0 for m in std} | {(m, EPS): 40.0 + i for i, m in enumerate(at)}
    acc |= {(m, 2 / 255): 30.0 - i for i, m in enumerate(std)} | {(m, 2 / 255): 60.0 for m in at}
    acc = {(m, round(e, 12)): v for (m, e), v in acc.items()}
    ctx = SimpleNamespace(models=std + at, meta=model_meta, label=str,
                          audit=lambda m: {"attention": {"mean_replacement_loss": loss[m]}},
                          select_run=lambda m, a, n, e: SimpleNamespace(robust_acc=acc[(m, round(e, 12))] / 100))
    answer = pd.DataFrame([{"dynamic": m, "attack": "PGD-20", "norm": "Linf", "eps": e, "diff_pt": v - 10}
                           for (m, e), v in acc.items()])
    cor = audit_correlations(ctx, answer, ("PGD-20", "Linf"))
    assert set(cor.training) == {"standard", "at"} and set(cor.audit_figure) == {"mean_replacement_loss"}
    std_small = cor[(cor.training == "standard") & (cor.eps.sub(2 / 255).abs() < 1e-9)]
    assert list(std_small.n_models) == [6, 6] and not std_small.at_floor.any()
    assert std_small.rho.tolist() == pytest.approx([-1.0, -1.0])  # falls strictly with the loss
    std_big = cor[(cor.training == "standard") & (cor.eps.sub(EPS).abs() < 1e-9)]
    assert std_big.at_floor.all() and std_big.rho.isna().all() and set(std_big.n_at_floor) == {6}
    at_rows = cor[cor.training == "at"]
    assert set(at_rows.n_models) == {2} and not at_rows.at_floor.any()
    assert all(r.models.count(",") == 1 for r in at_rows.itertuples())  # never pooled across kinds


def test_answer_marks_comparisons_at_an_eps_where_the_adaptive_study_found_masking(tmp_path):
    """A BPDA 'masked' verdict for dyconv_k4 at 8/255 marks its PGD row with a dagger and the masking sentence
    carries the direct and worst-case accuracies; the other pair (at) stays unmarked."""
    from robustbench_dyn.threats.store import ThreatKey, ThreatStore

    store = make_store(tmp_path / "s.sqlite")
    result = {"acc_direct": 0.30, "acc_bpda": 0.25, "acc_worst": 0.24, "acc_clean": 0.9, "adaptive": "bpda",
              "verdict": "masked", "p_value": 0.01, "b": 15, "c": 3, "diff_pt": 5.0}
    with ThreatStore(store) as ts:
        ts.put(ThreatKey("dyconv_k4", "dyconv_k4-sha", "adaptive", "{}", EPS, "digest", 0, 200), result,
               eps_label="8/255", dataset_label=LABEL, device="cpu")
    build_report(store, tmp_path / "out", models_dir=make_manifest(tmp_path / "models"), sections=["answer"],
                 strict=True)
    md = (tmp_path / "out" / "index.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "@ 8/255" in line]
    assert len(rows) == 2
    assert [("†" in r) for r in rows] == [r.startswith("| dyconv_k4 ") for r in rows] and any("†" in r for r in rows)
    assert "masked under BPDA at ε = 8/255 (PGD direct 30.0 %, worst case of direct/BPDA/EOT 24.0 %" in md
    assert "n=200" in md and "† marks the comparisons" in md
    csv = pd.read_csv(tmp_path / "out" / "tables" / "answer.csv")
    csv = csv[csv.attack != "clean"]
    assert sorted(zip(csv.dynamic, csv.masked_at_eps, strict=True)) == [("dyconv_k4", True), ("dyconv_k4_at", False)]
