"""Report sections "The answer" and "Why": the report opens with the question it exists for, answered from
numbers. Is each dynamic model more or less robust than its static twin (same arch and training kind)?

"The answer" compares each dynamic model with its static twin on the examples both runs share (same data
subset and example idx): accuracy of each, the paired difference with a 95% bootstrap interval over the
shared examples and the exact McNemar test on the discordant pairs, and a verdict that claims a difference
only when both agree. "Why" relates the answer to what the dynamic parts do: attention shift and gate flips
of broken vs surviving examples, robustness vs the dynamism audit across the zoo, and the masking checks.
Every sentence is generated from numbers and carries them. Orders 1 and 2: before every other section.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from ..stats import (
    bootstrap_mean_diff,
    cohens_d,
    holm_adjust,
    mcnemar_exact,
    paired_bootstrap,
    rank_biserial,
    spearman_bootstrap,
)
from .core import STANDARD_EPS, ReportContext, SectionResult, SectionSkipped, eps_text, pct, section
from .plotting import titled

N_BOOT, BOOT_SEED, ALPHA = 2000, 0, 0.05
#: fewer models than this: a correlation across the zoo is shown but not read as a conclusion
MIN_MODELS = 6
#: robust accuracy (%) at or below which a model is "at the floor": where most models of a group are there, their
#: ranks are ties and a rank correlation over them says nothing
FLOOR_PCT = 1.0
TRAINING_LABEL = {"standard": "standard-trained", "at": "adversarially trained"}
_VERDICT_COLOR = {"more": "#2166ac", "less": "#b2182b", "none": "#777777"}


def _pt(v: float, signed: bool = True) -> str:
    """Percentage points with a real minus sign: '−2.1', '+0.4'."""
    return "n/a" if v is None or math.isnan(v) else (f"{v:+.1f}" if signed else f"{v:.1f}").replace("-", "−")


def _g(v: float, signed: bool = False) -> str:
    return "n/a" if v is None or math.isnan(v) else (f"{v:+.3g}" if signed else f"{v:.3g}").replace("-", "−")


def _cond_text(cond: tuple[str, str, float]) -> str:
    lbl, norm, eps = cond
    return "clean accuracy" if lbl == "clean" else f"{lbl} ({norm} {eps_text(eps, norm)})"


def _under(cond: tuple[str, str, float]) -> str:
    return ("on " if cond[0] == "clean" else "under ") + _cond_text(cond)


# --------------------------------------------------------------------------------- pairs and runs

def static_twins(ctx: ReportContext) -> tuple[list[tuple[str, str]], list[str]]:
    """([(dynamic model, its static twin)], [why a dynamic model has no comparison])."""
    pairs, missing = [], []
    for m in ctx.models:
        meta = ctx.meta(m)
        if not meta.dynamic or meta.family == "other":
            continue
        if meta.base_static in ctx.models:
            pairs.append((m, meta.base_static))
        else:
            missing.append(f"{ctx.label(m)}: its static twin {meta.base_static} is not in the store")
    return pairs, missing


def _best(runs: pd.DataFrame) -> pd.Series:
    return runs.sort_values(["n_done", "complete", "grid_len", "run_id"], ascending=False).iloc[0]


def matched_runs(rd: pd.DataFrame, rs: pd.DataFrame) -> tuple[pd.Series, pd.Series] | str:
    """The runs to compare from the candidates of the dynamic (``rd``) and static (``rs``) model: both on the
    same data subset (dataset digest), the one with most examples in both; else why there is none."""
    common = set(rd.dataset_digest) & set(rs.dataset_digest)
    if not common:
        def dig(r: pd.DataFrame) -> str:
            return "/".join(sorted(str(d)[:8] for d in set(r.dataset_digest)))

        return f"different data subsets (dataset digest {dig(rd)} vs {dig(rs)})"
    g = max(sorted(common), key=lambda d: min(rd[rd.dataset_digest == d].n_done.max(),
                                              rs[rs.dataset_digest == d].n_done.max()))
    return _best(rd[rd.dataset_digest == g]), _best(rs[rs.dataset_digest == g])


#: A second, small L∞ eps for the answer, fixed in advance: at 8/255 standard-trained models are all near 0 %
#: robust accuracy, so their comparison there says little; at 2/255 they are not (the eps curves run it).
SMALL_LINF_EPS = 2 / 255


def conditions(ctx: ReportContext) -> list[tuple[str, str, float]]:
    """('clean', '', 0), then (attack label, norm, eps) of every attack run at the standard eps, then every L∞
    attack run at :data:`SMALL_LINF_EPS`."""
    from .sections.tables import standard_columns

    r = ctx.runs[(ctx.runs.norm == "Linf") & ((ctx.runs.eps - SMALL_LINF_EPS).abs() < 1e-9)]
    small = [(lbl, "Linf", SMALL_LINF_EPS) for lbl in ctx.attack_order(r.attack_label)]
    return [("clean", "", 0.0), *standard_columns(ctx), *small]


def paired_outcomes(ctx: ReportContext, run_d: pd.Series, run_s: pd.Series, clean: bool
                    ) -> tuple[np.ndarray, np.ndarray] | str:
    """(correct_dynamic, correct_static) on the examples both runs share (same idx), or why they can't be paired.
    Correct = clean prediction right (clean) or not broken at the run's eps (robust, as the store counts it)."""
    cols = ["idx", "label", "clean_pred", "broken_at"]
    m = ctx.examples(int(run_d.run_id))[cols].merge(ctx.examples(int(run_s.run_id))[cols], on="idx",
                                                     suffixes=("_d", "_s"))
    if m.empty:
        return "no shared examples"
    bad = int((m.label_d != m.label_s).sum())
    if bad:
        return f"labels disagree on {bad} of {len(m)} shared idx (not the same examples)"
    if clean:
        return (m.clean_pred_d == m.label_d).to_numpy(), (m.clean_pred_s == m.label_s).to_numpy()
    return m.broken_at_d.isna().to_numpy(), m.broken_at_s.isna().to_numpy()


def compare(yd: np.ndarray, ys: np.ndarray, *, clean: bool = False) -> dict:
    """Paired comparison of two models' per-example correctness (booleans on the same examples): accuracies,
    difference in points with its paired bootstrap 95% CI, McNemar b, c and p, and the verdict."""
    yd, ys = np.asarray(yd, dtype=bool), np.asarray(ys, dtype=bool)
    diff, lo, hi = paired_bootstrap(yd.astype(float) - ys, n_boot=N_BOOT, seed=BOOT_SEED)
    b, c = int((yd & ~ys).sum()), int((~yd & ys).sum())
    p = mcnemar_exact(b, c)
    n = len(yd)
    if lo > 0 and p < ALPHA:
        kind, verdict = "more", "more accurate" if clean else "more robust"
    elif hi < 0 and p < ALPHA:
        kind, verdict = "less", "less accurate" if clean else "less robust"
    else:
        kind, verdict = "none", f"no detectable difference at n={n}"
    return {"n_shared": n, "acc_dynamic": float(yd.mean()), "acc_static": float(ys.mean()), "diff_pt": 100 * diff,
            "ci_lo_pt": 100 * lo, "ci_hi_pt": 100 * hi, "b": b, "c": c, "mcnemar_p": p, "kind": kind,
            "verdict": verdict}


def comparisons(ctx: ReportContext) -> tuple[pd.DataFrame, list[str]]:
    """Every (dynamic model, static twin, condition) comparison (cached on ``ctx``) and the skipped ones' reasons."""
    cached = getattr(ctx, "_answer_cache", None)
    if cached is not None:
        return cached
    pairs, skipped = static_twins(ctx)
    rows = []
    runs = ctx.runs
    for dyn, st in pairs:
        absent = []
        for cond in conditions(ctx):
            lbl, norm, eps = cond
            if lbl == "clean":  # clean predictions of the L∞/L2 attack runs (not of corruption runs), else any
                rd, rs = runs[runs.model == dyn], runs[runs.model == st]
                if rd.norm.isin(list(STANDARD_EPS)).any() and rs.norm.isin(list(STANDARD_EPS)).any():
                    rd, rs = rd[rd.norm.isin(list(STANDARD_EPS))], rs[rs.norm.isin(list(STANDARD_EPS))]
            else:
                sel = runs[(runs.attack_label == lbl) & (runs.norm == norm) & ((runs.eps - eps).abs() < 1e-9)]
                rd, rs = sel[sel.model == dyn], sel[sel.model == st]
            if rd.empty or rs.empty:
                if len(rd) or len(rs):
                    absent.append(f"{_cond_text(cond)} (run on {dyn if len(rd) else st} only)")
                continue
            why = matched_runs(rd, rs)
            if not isinstance(why, str):
                run_d, run_s = why
                why = paired_outcomes(ctx, run_d, run_s, lbl == "clean")
            if isinstance(why, str):
                skipped.append(f"{ctx.label(dyn)} vs {ctx.label(st)} {_under(cond)}: {why}")
                continue
            res = compare(*why, clean=lbl == "clean")
            both = pd.DataFrame([run_d, run_s])
            rows.append({"dynamic": dyn, "static": st, "dynamic_label": ctx.label(dyn), "static_label": ctx.label(st),
                         "condition": "clean" if lbl == "clean" else f"{lbl} @ {eps_text(eps, norm)}",
                         "attack": lbl, "norm": norm, "eps": eps, **res,
                         "n_dynamic_run": int(run_d.n_done), "n_static_run": int(run_s.n_done),
                         "run_id_dynamic": int(run_d.run_id), "run_id_static": int(run_s.run_id),
                         "dataset": ctx.data_text(both, n=False), "dataset_digest": run_d.dataset_digest,
                         "seed": int(run_d.seed), "settings": run_d.settings if lbl != "clean" else "",
                         "complete": bool(run_d.complete and run_s.complete)})
        if absent:
            skipped.append(f"{ctx.label(dyn)} vs {ctx.label(st)}: not compared under " + "; ".join(absent))
    tab = pd.DataFrame(rows)
    if len(tab):
        # one family: every comparison of the table (clean and attacked) that can reach p < ALPHA at all,
        # Holm-corrected together. With d discordant pairs the exact McNemar p is at least 2 * 0.5^d, so a
        # comparison with few discordant pairs (e.g. 0 / 0 at 0 % robust accuracy) can never reject: leaving it out
        # of the family keeps the family-wise error control (Tarone 1990) without diluting the others.
        testable = (2.0 * 0.5 ** (tab.b + tab.c)) < ALPHA
        tab["holm_p"] = np.nan
        tab.loc[testable, "holm_p"] = holm_adjust(tab.mcnemar_p[testable])
        tab["survives_holm"] = (tab.kind != "none") & (tab.holm_p < ALPHA)
    out = (tab, skipped)
    ctx._answer_cache = out
    return out


def _masking_flags(ctx: ReportContext) -> dict[str, str]:
    """model -> 'fails sanity check(s) X' / 'masked under BPDA at 8/255' (evidence its robustness is overstated)."""
    flags: dict[str, list[str]] = {}
    ch = ctx.checks
    if ch is not None and not ch.empty:
        ch = ch.sort_values(["n", "created_at"], ascending=False).drop_duplicates(["model", "check_name"])
        for r in ch[ch.passed == 0].itertuples():
            flags.setdefault(r.model, []).append(f"fails sanity check {r.check_name} (value {r.value:.3g})")
    for r in _masked(ctx).itertuples():
        flags.setdefault(r.model, []).append(
            f"masked under {str(r.adaptive).upper()} at ε = {eps_text(r.eps, 'Linf')} (PGD direct {pct(r.acc_direct)} "
            f"%, worst case of direct/BPDA/EOT {pct(r.acc_worst)} %, McNemar p={r.p_value:.2g}, n={int(r.n)})")
    return {m: "; ".join(v) for m, v in flags.items()}


def _masked(ctx: ReportContext) -> pd.DataFrame:
    """The adaptive-attack rows (BPDA/EOT study) whose verdict is 'masked'."""
    ad = _threats(ctx, "adaptive")
    return ad[ad.verdict == "masked"] if len(ad) and "verdict" in ad else pd.DataFrame()


def _masked_rows(ctx: ReportContext, tab: pd.DataFrame) -> np.ndarray:
    """Which comparisons are L∞ attacks at an ε where the adaptive study found the dynamic model masked."""
    m = _masked(ctx)
    hit = {(r.model, round(float(r.eps) * 255, 3)) for r in m.itertuples()} if len(m) else set()
    return np.array([a != "clean" and n == "Linf" and (d, round(float(e) * 255, 3)) in hit
                     for d, a, n, e in zip(tab.dynamic, tab.attack, tab.norm, tab.eps, strict=True)], dtype=bool)


def _threats(ctx: ReportContext, threat: str) -> pd.DataFrame:
    """The threat-study rows of ``threat`` (empty when the store has none or the threats module is absent)."""
    try:
        from .threats_sections import threats_frame

        return threats_frame(ctx, threat)
    except Exception:  # no threats table / module: the caller says the results are missing
        return pd.DataFrame()


# ------------------------------------------------------------------------------------- the answer

@section("answer", "The answer: are dynamic models more or less robust than their static twins?", order=1,
         needs="runs of a dynamic model and its static twin (same arch and training) on the same data")
def answer_section(ctx: ReportContext) -> SectionResult:
    if ctx.runs.empty:
        raise SectionSkipped("no evaluated examples in the store")
    tab, skipped = comparisons(ctx)
    if tab.empty:
        raise SectionSkipped("no dynamic model could be compared with its static twin"
                             + (f" ({'; '.join(skipped)})" if skipped else " (no dynamic model in the store)"))
    masked_rows = _masked_rows(ctx, tab)
    csv = ctx.save_table(tab.drop(columns=["kind"]).assign(masked_at_eps=masked_rows), "answer")
    png = _forest_plot(ctx, tab, masked_rows)
    disp = pd.DataFrame({
        "dynamic": tab.dynamic_label, "static twin": tab.static_label, "accuracy": tab.condition,
        "n shared": tab.n_shared, "dynamic (%)": [pct(v) for v in tab.acc_dynamic],
        "static (%)": [pct(v) for v in tab.acc_static], "Δ (pt)": [_pt(v) for v in tab.diff_pt],
        "95% CI (pt)": [f"[{_pt(lo)}, {_pt(hi)}]" for lo, hi in zip(tab.ci_lo_pt, tab.ci_hi_pt, strict=True)],
        "b / c": [f"{b} / {c}" for b, c in zip(tab.b, tab.c, strict=True)],
        "McNemar p": [f"{p:.2g}" for p in tab.mcnemar_p], "Holm p": [_holm_text(p) for p in tab.holm_p],
        "verdict": [(f"**{v}**" if k != "none" else v) + (" (not after Holm)" if k != "none" and not h else "")
                    + (" †" if mk else "")
                    for v, k, h, mk in zip(tab.verdict, tab.kind, tab.survives_holm, masked_rows, strict=True)]})
    sentences = [f"{r.dynamic_label} vs {r.static_label} {_under((r.attack, r.norm, r.eps))}: "
                 f"{_pt(r.diff_pt)} pt [{_pt(r.ci_lo_pt)}, {_pt(r.ci_hi_pt)}], McNemar p={r.mcnemar_p:.2g}, "
                 f"n={r.n_shared}: {r.verdict}"
                 + (f" (not after Holm: Holm p={_holm_text(r.holm_p)})" if r.kind != "none" and not r.survives_holm
                    else "")
                 + (" (direct attack; the adaptive study finds this model masked at this ε, see below)" if mk else "")
                 + "."
                 for r, mk in zip(tab.itertuples(), masked_rows, strict=True)]
    counts = []
    for what, g in (("under attack", tab[tab.attack != "clean"]), ("clean", tab[tab.attack == "clean"])):
        if len(g):
            k = g.kind.value_counts()
            adj = "robust" if what == "under attack" else "accurate"
            counts.append(f"{what}, {k.get('more', 0)} of {len(g)} comparisons find the dynamic model more {adj}, "
                          f"{k.get('less', 0)} less {adj}, {k.get('none', 0)} no detectable difference")
    overall = "Overall: " + "; ".join(counts) + "." + _holm_sentence(tab)
    marks = []
    for m in dict.fromkeys(tab.dynamic):
        mark = ctx.audit_mark(m)
        if mark == "STATIC by audit":
            marks.append(f"{ctx.label(m)}: the dynamism audit calls it static, so its comparison measures a network "
                         "that does not act dynamically")
        elif mark:
            marks.append(f"{ctx.label(m)}: not audited, so it is not claimed to act dynamically")
    flags = _masking_flags(ctx)
    masked = [f"{ctx.label(m)} {flags[m]}: its white-box robust accuracy may be an upper bound"
              for m in dict.fromkeys([*tab.dynamic, *tab.static]) if m in flags]
    runs = ctx.runs[ctx.runs.run_id.isin(set(tab.run_id_dynamic) | set(tab.run_id_static))]
    attacks = [f"{r.attack} at ε = {eps_text(r.eps, r.norm)} ({r.norm}, seed {r.seed})"
               for r in tab[tab.attack != "clean"].drop_duplicates(["attack", "norm", "eps"]).itertuples()]
    data = ctx.data_text(runs, n=False)
    md = ["**In short** (a difference counts here only if it survives Holm's correction; the details follow):", "",
          *_short_answer(tab, masked_rows), "",
          f"Each dynamic model against its static twin (same architecture, same training: standard or adversarial), "
          f"on the examples both runs share (same data subset and example idx; {data}; n shared = {_ns(tab)}). "
          f"Attacks at the standard ε, and at ε = 2/255 L∞ where the store has it (at 8/255 standard-trained models "
          f"are all near 0 %, so a small ε is where their robustness can differ): "
          f"{', '.join(attacks) or 'none (clean accuracy only)'}. Δ = dynamic − static in accuracy points; its 95% "
          f"interval is a paired bootstrap over the shared examples ({N_BOOT} resamples, seed {BOOT_SEED}); b / c = "
          f"examples only the dynamic / only the static model gets right; p = exact two-sided McNemar test on b and c. "
          f"A difference is claimed only when the interval excludes 0 and p < {ALPHA}. Holm p = the McNemar p "
          f"adjusted by Holm's step-down method over the comparisons of the table that can reach p < {ALPHA} "
          f"(with d discordant pairs the exact McNemar p is at least 2 × 0.5^d, so comparisons with fewer than 6 "
          f"can never reach it: they are left out of the family, after Tarone (1990), and their Holm p reads –); a "
          f"claimed difference whose Holm p is not below {ALPHA} is marked \"not after Holm\": with this many "
          f"comparisons it may be a chance finding.", "", overall]
    if marks:
        md += ["", "Marked models stay in the comparison: " + "; ".join(marks) + "."]
    if masked:
        md += ["", "Masking evidence: " + "; ".join(masked) + "."
               + (" † marks the comparisons at an ε where the dynamic model is masked: their Δ comes from the direct "
                  "attack, which overstates the dynamic model's robust accuracy by at least the gap between direct and "
                  "worst case found there (a stronger adaptive attack can only widen it)."
                  if masked_rows.any() else "")]
    md += ["", ctx.md_table(disp, ["l", "l", "l"] + ["r"] * 8 + ["l"]), "", ctx.md_csv(csv, "answer.csv"), "",
           ctx.md_figure(png, "Dynamic minus static accuracy with paired 95% CIs"), "",
           f"Figure: accuracy of each dynamic model minus its static twin's (points), per attack, with paired 95% "
           f"bootstrap intervals; n shared examples per row as in the table ({_ns(tab)}); {data}."]
    md += ["", "Each comparison in words: " + " ".join(sentences)]
    if skipped:
        md += ["", "Not compared: " + "; ".join(skipped) + "."]
    findings = [s[:-1] + f" ({row.dataset})." for s, row in zip(sentences, tab.itertuples(), strict=True)]
    findings += [overall] + [f"{s}." for s in marks + masked]
    return SectionResult("\n".join(md), files=[csv, png], findings=findings)


def _short_answer(tab: pd.DataFrame, masked: np.ndarray) -> list[str]:
    """One bullet per dynamic model vs its twin: the differences that survive Holm (with Δ, CI, Holm p, n), how many
    nominal claims do not, and how many comparisons find no difference, so the section opens with its answer."""
    out = []
    tab = tab.assign(masked_here=masked)
    for (dyn, sta), g in tab.groupby(["dynamic_label", "static_label"], sort=False):
        parts = []
        hit = g[(g.kind != "none") & g.survives_holm.astype(bool)]
        for verdict, h in hit.groupby("verdict", sort=False):
            items = [f"{'clean' if r.attack == 'clean' else 'under ' + r.condition} {_pt(r.diff_pt)} pt "
                     f"[{_pt(r.ci_lo_pt)}, {_pt(r.ci_hi_pt)}] (Holm p={_holm_text(r.holm_p)}, n={r.n_shared}"
                     + ("; masked at this ε, so overstated" if r.masked_here else "") + ")" for r in h.itertuples()]
            parts.append(f"**{verdict}** " + ", ".join(items))
        weak = g[(g.kind != "none") & ~g.survives_holm.astype(bool)]
        if len(weak):
            parts.append(f"{len(weak)}{' more' if len(hit) else ''} nominal difference{'s' if len(weak) > 1 else ''} "
                         f"({', '.join(f'{_pt(d)} pt' for d in weak.diff_pt)}) do{'es' if len(weak) == 1 else ''} "
                         "not survive Holm")
        none = int((g.kind == "none").sum())
        if none:
            parts.append(f"no detectable difference in {none} of {len(g)} comparisons")
        out.append(f"- {dyn} vs {sta}: " + "; ".join(parts) + ".")
    return out


def _holm_sentence(tab: pd.DataFrame) -> str:
    """' Corrected for multiple comparisons (...): k of the n claimed differences remain: ...' ('' if none)."""
    claimed = tab[tab.kind != "none"]
    if claimed.empty:
        return ""
    kept = [f"{r.dynamic_label} vs {r.static_label} {'clean' if r.attack == 'clean' else r.condition} "
            f"({_pt(r.diff_pt)} pt, Holm p={_holm_text(r.holm_p)})"
            for r in claimed[claimed.survives_holm].itertuples()]
    return (f" Corrected for multiple comparisons (Holm-Bonferroni over the {int(tab.holm_p.notna().sum())} "
            f"comparisons of the table that can reach p < {ALPHA}, family-wise error rate {ALPHA}): {len(kept)} of "
            f"the {len(claimed)} claimed differences remain" + (": " + ", ".join(kept) if kept else "") + ".")


def _holm_text(p: float) -> str:
    """A Holm p with 3 significant digits (2 would print 0.0496 as 0.05); '–' outside the family."""
    return "–" if p is None or math.isnan(p) else f"{p:.3g}"


def _ns(tab: pd.DataFrame) -> str:
    ns = sorted(set(int(v) for v in tab.n_shared))
    return str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"


def _forest_plot(ctx: ReportContext, tab: pd.DataFrame, masked: np.ndarray | None = None) -> str:
    """One figure that reads alone: per condition (attack), each dynamic model's Δ vs its static twin with CI;
    ``masked`` (per row of ``tab``) adds '† masked' where the adaptive study found masking at that ε. Rows with
    no discordant pair (both models right and wrong on exactly the same examples, e.g. both at 0 % under PGD at
    8/255) carry no information beyond the table and are left out; the axis label says how many."""
    tab = tab.assign(masked_flag=masked if masked is not None else np.zeros(len(tab), dtype=bool))
    order = list(dict.fromkeys(tab.condition))  # the table's condition order, before rows are left out
    n_same = int(((tab.b + tab.c) == 0).sum())
    if n_same < len(tab):
        tab = tab[(tab.b + tab.c) > 0]
    else:
        n_same = 0
    from matplotlib.transforms import blended_transform_factory

    n_rows = len(tab) + tab.condition.nunique()
    fig, axes = ctx.figure(1, 1, size=(7.5, 0.8 + 0.32 * n_rows))
    ax = axes[0][0]
    trans = blended_transform_factory(ax.transAxes, ax.transData)
    y, ticks, labels, heads = 0, [], [], []
    for _, g in sorted(tab.groupby("condition", sort=False), key=lambda kv: order.index(kv[0])):
        y -= 1
        ticks.append(y)
        labels.append(_cond_text((g.attack.iloc[0], g.norm.iloc[0], g.eps.iloc[0])))
        heads.append(len(labels) - 1)
        for r in g.itertuples():
            y -= 1
            color = _VERDICT_COLOR[r.kind]
            weak = r.kind != "none" and not getattr(r, "survives_holm", True)  # claimed, but not after Holm
            ax.errorbar([r.diff_pt], [y], xerr=[[max(r.diff_pt - r.ci_lo_pt, 0)], [max(r.ci_hi_pt - r.diff_pt, 0)]],
                        fmt="o", color=color, capsize=3, markersize=5, markerfacecolor="white" if weak else color)
            ax.text(1.02, y, f"{_pt(r.diff_pt)} [{_pt(r.ci_lo_pt)}, {_pt(r.ci_hi_pt)}]  p={r.mcnemar_p:.2g}  "
                    f"n={r.n_shared}" + ("  not after Holm" if weak else "") + ("  † masked" if r.masked_flag else ""),
                    transform=trans, va="center", fontsize=8, color=color)
            ticks.append(y)
            labels.append(f"{r.dynamic_label} − {r.static_label}")
    ax.axvline(0, color="#000000", linewidth=1)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=8)
    for i in heads:
        ax.get_yticklabels()[i].set_fontweight("bold")
    ax.set_ylim(y - 0.7, -0.3)
    ax.set_xlabel("accuracy of the dynamic model − its static twin (points), paired 95% bootstrap CI\nred: dynamic "
                  "less robust, blue: more robust, grey: no detectable difference\n(a difference needs the CI to "
                  f"exclude 0 and McNemar p < {ALPHA}; hollow: not after Holm's correction)"
                  + ("\n† masked: BPDA/EOT beat the direct attack at this ε, so Δ is overstated"
                     if tab.masked_flag.any() else "")
                  + (f"\nnot shown: {n_same} comparisons with identical outcomes on every shared example (Δ = 0, "
                     "see the table)" if n_same else ""), fontsize=9)
    lo, hi = min(0.0, float(tab.ci_lo_pt.min())), max(0.0, float(tab.ci_hi_pt.max()))
    pad = max(1.0, 0.08 * (hi - lo))
    ax.set_xlim(lo - pad, hi + pad)
    runs = ctx.runs[ctx.runs.run_id.isin(set(tab.run_id_dynamic) | set(tab.run_id_static))]
    titled(fig, "Dynamic model vs its static twin: accuracy difference on shared examples",
           f"{ctx.data_text(runs, n=False)}; n shared examples = {_ns(tab)}")
    return ctx.save_figure(fig, "answer_forest")


# -------------------------------------------------------------------------------------------- why

#: per-example measure -> (what it is, how it is computed from the example rows)
MEASURES = {
    "attn_kl": ("attention shift KL(clean‖adv) (nats)", lambda e: e.attn_kl),
    "attn_tv": ("attention shift TV", lambda e: e.attn_tv),
    "dominant_changed": ("fraction of layers whose dominant kernel changed", lambda e: e.dominant_changed),
    "gate_flip": ("gate flip |density adv − clean|", lambda e: (e.gate_density_adv - e.gate_density_clean).abs()),
    "macs_ratio": ("executed MACs adv / clean", lambda e: e.macs_adv / e.macs_clean),
}

#: audit figure -> (what it is, path in the audit dict)
AUDIT_FIGURES = {
    "mean_replacement_loss": ("mean-replacement loss (pt)", ("attention", "mean_replacement_loss")),
    "shuffle_loss": ("shuffle loss (pt)", ("attention", "shuffle_loss")),
    "entropy_ratio": ("attention entropy ratio H/logK", ("attention", "entropy_ratio_mean")),
    "conditional_gate_frac": ("conditional gate fraction", ("gates", "conditional_frac")),
}


def _settings(run: pd.Series) -> dict:
    try:
        return json.loads(run.settings) if isinstance(run.settings, str) else {}
    except ValueError:
        return {}


def broken_vs_surviving(ctx: ReportContext, models: list[str], ref: tuple[str, str]) -> tuple[pd.DataFrame, list[str]]:
    """Per dynamic model and measure: means of broken and surviving examples, difference with bootstrap 95% CI,
    Cohen's d and rank-biserial r; and notes on models with no comparison."""
    rows, notes = [], []
    for m in models:
        sel = ctx.balanced_split(m, ref)
        if sel is None:
            notes.append(f"{ctx.label(m)}: no {ref[0]} run at ε > 0")
            continue
        run, ok = sel
        nb, ns = int(ok.broken.sum()), int((~ok.broken).sum())
        if nb < 2 or ns < 2:
            notes.append(f"{ctx.label(m)} under {ref[0]} at {eps_text(run.eps, ref[1])}: {nb} broken and {ns} "
                         f"surviving of {len(ok)} clean-correct examples; too few in one group for a comparison")
            continue
        for key, (what, fn) in MEASURES.items():
            with np.errstate(divide="ignore", invalid="ignore"):
                v = pd.to_numeric(fn(ok), errors="coerce").replace([np.inf, -np.inf], np.nan)
            if v.notna().sum() < 4 or v.dropna().nunique() < 2:
                continue  # not measured for this model (e.g. gates of a DyConv) or constant
            b, s = v[ok.broken].dropna().to_numpy(), v[~ok.broken].dropna().to_numpy()
            if len(b) < 2 or len(s) < 2:
                continue
            diff, lo, hi = bootstrap_mean_diff(b, s, n_boot=N_BOOT, seed=BOOT_SEED)
            rows.append({"model": m, "model_label": ctx.label(m), "attack": ref[0], "norm": ref[1],
                         "eps": float(run.eps), "measure": key, "what": what, "n_broken": len(b), "n_surviving": len(s),
                         "mean_broken": float(b.mean()), "mean_surviving": float(s.mean()), "diff": diff,
                         "ci_lo": lo, "ci_hi": hi, "cohens_d": cohens_d(b, s), "rank_biserial": rank_biserial(b, s),
                         "direction": "higher" if lo > 0 else "lower" if hi < 0 else "no detectable difference",
                         "run_id": int(run.run_id), "data": ctx.data_text(run),
                         "early_stop": bool(_settings(run).get("early_stop", False))})
    return pd.DataFrame(rows), notes


def audit_correlations(ctx: ReportContext, answer: pd.DataFrame, ref: tuple[str, str] | None) -> pd.DataFrame:
    """Spearman rho (bootstrap 95% CI over models) of robust accuracy under the reference attack, and of the
    robust-accuracy difference to the static twin, against each audit figure: at the standard eps, and for an
    L∞ reference also at :data:`SMALL_LINF_EPS`, where standard-trained models are not all at 0 %.

    Within one training kind at a time (column ``training``): pooled over standard and adversarially trained
    models, the correlation would measure the training kind (which sets robust accuracy, and also the audit
    figures) rather than the dynamics. A group where more than half of the models are at the floor (robust
    accuracy <= :data:`FLOOR_PCT` %) gets ``at_floor`` and no rho: their ranks are ties, and even the difference
    to the twin is then 0 for most of them."""
    if ref is None:
        return pd.DataFrame()
    feats: dict[str, dict[str, float]] = {k: {} for k in AUDIT_FIGURES}
    audited = []
    for m in ctx.models:
        meta, audit = ctx.meta(m), ctx.audit(m)
        if not meta.dynamic or audit is None:
            continue
        audited.append(m)
        for k, (_, (part, name)) in AUDIT_FIGURES.items():
            v = (audit.get(part) or {}).get(name)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                feats[k][m] = float(v)
    eps_list = [e for e in (STANDARD_EPS.get(ref[1]), SMALL_LINF_EPS if ref[1] == "Linf" else None) if e is not None]
    rows = []
    for eps in eps_list:
        at = f"{ref[0]} ({ref[1]} {eps_text(eps, ref[1])})"
        ys: dict[str, tuple[str, dict[str, float]]] = {
            "robust_acc": (f"robust accuracy under {at}, %", {}),
            "diff_vs_static": (f"robust accuracy − static twin under {at}, pt", {})}
        for m in audited:
            r = ctx.select_run(m, ref[0], ref[1], eps)
            if r is not None:
                ys["robust_acc"][1][m] = 100 * float(r.robust_acc)
            a = answer[(answer.dynamic == m) & (answer.attack == ref[0]) & (answer.norm == ref[1])
                       & ((answer.eps - eps).abs() < 1e-9)] if len(answer) else []
            if len(a):
                ys["diff_vs_static"][1][m] = float(a.diff_pt.iloc[0])
        acc = ys["robust_acc"][1]
        kinds = list(dict.fromkeys(ctx.meta(m).training for m in audited))
        for kind in kinds:
            for yk, (ywhat, yv) in ys.items():
                for fk, fv in feats.items():
                    ms = [m for m in ctx.models if m in yv and m in fv and ctx.meta(m).training == kind]
                    if len(ms) < 2:
                        continue
                    n_floor = sum(1 for m in ms if acc.get(m, math.inf) <= FLOOR_PCT)
                    at_floor = n_floor > len(ms) / 2
                    if at_floor:
                        rho = lo = hi = math.nan
                    else:
                        rho, lo, hi = spearman_bootstrap([fv[m] for m in ms], [yv[m] for m in ms], n_boot=N_BOOT,
                                                         seed=BOOT_SEED)
                    rows.append({"y": yk, "y_what": ywhat, "eps": eps, "training": kind,
                                 "training_what": TRAINING_LABEL.get(kind, kind), "audit_figure": fk,
                                 "audit_what": AUDIT_FIGURES[fk][0], "n_models": len(ms), "n_at_floor": n_floor,
                                 "at_floor": at_floor, "rho": rho, "ci_lo": lo, "ci_hi": hi,
                                 "models": ", ".join(ctx.label(m) for m in ms)})
    return pd.DataFrame(rows)


def masking_lines(ctx: ReportContext) -> list[str]:
    """One line each for the sanity checks, the adaptive attacks (BPDA/EOT) and the transfer study."""
    out = []
    ch = ctx.checks
    if ch is None or ch.empty:
        out.append("Sanity checks (gradient masking): missing (no rows in the checks table; run `robustdyn check`).")
    else:
        ch = ch.sort_values(["n", "created_at"], ascending=False).drop_duplicates(["model", "check_name"])
        fails = ch[ch.passed == 0]
        ns = sorted({int(v) for v in ch.n})
        text = (f"Sanity checks (gradient masking): {len(ch) - len(fails)} of {len(ch)} pass over {ch.model.nunique()} "
                f"model(s) (n={'/'.join(map(str, ns))})")
        if len(fails):
            text += "; FAIL: " + ", ".join(f"{ctx.label(r.model) if r.model in ctx.models else r.model} "
                                           f"{r.check_name} = {r.value:.3g} (PASS if {r.threshold})"
                                           for r in fails.itertuples())
        out.append(text + ".")
    ad = _threats(ctx, "adaptive")
    if ad.empty:
        out.append("Adaptive attacks (BPDA/EOT): missing (no adaptive rows in the threats table; run `robustdyn "
                   "threats`).")
    else:
        app = ad[ad.verdict != "not applicable"]
        masked, maybe = app[app.verdict == "masked"], app[app.verdict == "possibly masked"]
        text = f"Adaptive attacks (BPDA/EOT): masking detected in {len(masked)} of {len(app)} (model, ε) comparisons"
        if len(masked):
            text += " (" + "; ".join(f"{r.model} at {eps_text(r.eps, 'Linf')}: {_pt(-abs(r.diff_pt))} pt, "
                                     f"p={r.p_value:.2g}, n={int(r.n)}" for r in masked.itertuples()) + ")"
        if len(maybe):
            text += f", possibly masked in {len(maybe)} more (not significant)"
        if len(app) and "diff_pt" in app:
            text += f"; largest adaptive gain {abs(app.diff_pt).max():.1f} pt"
        out.append(text + ".")
    tr = _threats(ctx, "transfer")
    if tr.empty:
        out.append("Transfer attacks: missing (no transfer rows in the threats table).")
    else:
        tr = tr[(tr.eps - tr.eps.max()).abs() < 1e-12]
        beats, targets = [], 0
        for t, g in tr.groupby("target_model"):
            wb = g[g.model == t].acc
            other = g[g.model != t]
            if wb.empty or other.empty:
                continue
            targets += 1
            if other.acc.min() < wb.iloc[0]:
                beats.append(f"{t} ({pct(other.acc.min())}% vs white-box {pct(wb.iloc[0])}%)")
        out.append(f"Transfer attacks at ε = {eps_text(float(tr.eps.max()), 'Linf')}: a transfer attack beats the "
                   f"white-box one on {len(beats)} of {targets} target(s)" + (f": {', '.join(beats)}" if beats else "")
                   + ("; a sign of gradient masking there." if beats else " (no sign of gradient masking)."))
    return out


@section("why", "Why: what the dynamic parts do under attack", order=2,
         needs="per-example dynamics of attacked dynamic models, dynamism audits, or masking checks")
def why_section(ctx: ReportContext) -> SectionResult:
    if ctx.runs.empty:
        raise SectionSkipped("no evaluated examples in the store")
    dyn = [m for m in ctx.models if ctx.meta(m).dynamic and ctx.meta(m).family != "other"]
    if not dyn:
        raise SectionSkipped("no dynamic model in the store")
    answer, _ = comparisons(ctx)
    ref = ctx.reference_attack(dyn)
    md, files, findings = [], [], []
    # 1. broken vs surviving
    md += ["### Broken vs surviving examples", ""]
    if ref is None:
        md.append("Skipped: no L∞ attack at ε > 0 on a dynamic model in the store.")
        bvs, notes = pd.DataFrame(), []
    else:
        bvs, notes = broken_vs_surviving(ctx, dyn, ref)
    if ref is not None and bvs.empty:
        md.append(f"Skipped: no dynamic model has per-example attention or gate measures under {ref[0]} with both "
                  "groups present" + (f" ({'; '.join(notes)})" if notes else "") + ".")
    elif len(bvs):
        files.append(ctx.save_table(bvs, "why_broken_vs_surviving"))
        md.append(f"Clean-correct examples under {ref[0]} ({ref[1]}), split into **broken** "
                  "(a correct prediction the attack changed) and "
                  "**surviving** (still correct); per model the ε of its sweep with the most even split. Δ = mean of "
                  f"broken − mean of surviving, 95% bootstrap interval ({N_BOOT} resamples per group, seed "
                  f"{BOOT_SEED}); "
                  "r = rank-biserial correlation (P(broken > surviving) − P(broken < surviving)); d = Cohen's d.")
        md.append("")
        for r in bvs.itertuples():
            s = (f"{r.model_label} ({r.attack} at {eps_text(r.eps, r.norm)}, {r.norm}): {r.what} is "
                 + (f"{r.direction} on broken examples" if r.direction != "no detectable difference"
                    else "not detectably different between broken and surviving examples")
                 + f": mean {_g(r.mean_broken)} vs {_g(r.mean_surviving)} (Δ {_g(r.diff, True)} [{_g(r.ci_lo, True)}, "
                   f"{_g(r.ci_hi, True)}], r={_g(r.rank_biserial, True)}, d={_g(r.cohens_d, True)}; n={r.n_broken} "
                   f"broken, {r.n_surviving} surviving; {r.data}).")
            md.append(f"- {s}")
            findings.append(s)
        md += [f"- {n}." for n in notes]
        if bvs.early_stop.any():
            md += ["", "Caveat: these runs stop attacking an example at its first misclassified iterate (early "
                   "stop), so a broken example carries the perturbation of fewer steps than a surviving one, "
                   "which gets all of them (their perturbation sizes in the attack's norm can still be equal: "
                   "both reach ε); a shift that is smaller on broken examples may be that effect rather than the "
                   "model's. Runs without early stop (attacks/zoo_curves.toml's PGD-20 L∞) avoid it."]
        md += ["", ctx.md_csv(files[-1], "why_broken_vs_surviving.csv")]
    # 2. robustness vs the audit across the zoo
    md += ["", "### Robustness vs the dynamism audit across the zoo", ""]
    cor = audit_correlations(ctx, answer, ref)
    if cor.empty:
        audited = [m for m in dyn if ctx.audit(m) is not None]
        md.append("Skipped: " + ("no dynamic model has an audit of its evaluated checkpoint in the zoo manifest"
                                 if not audited else "no audit figure is shared by 2 or more audited models of one "
                                 f"training kind with a robust accuracy under {ref[0] if ref else 'an L∞ attack'} at "
                                 "the standard ε or 2/255 "
                                 f"(audited: {', '.join(ctx.label(m) for m in audited)})") + ".")
    else:
        files.append(ctx.save_table(cor, "why_audit_correlation"))
        md.append(f"Spearman ρ across the dynamic models between each audit figure and robustness; 95% bootstrap "
                  f"interval over models ({N_BOOT} resamples, seed {BOOT_SEED}), within one training kind at a time "
                  "(standard or adversarial): pooled, the correlation would measure the training kind, which sets "
                  "both robust accuracy and the audit figures. Fewer than "
                  f"{MIN_MODELS} models: too few for a conclusion. Where more than half of a group's models are at "
                  f"the floor (≤ {FLOOR_PCT:g} % robust accuracy: the standard-trained models at 8/255) their ranks "
                  "are ties, and no ρ is computed; ε = 2/255 is where the standard-trained models differ.")
        md.append("")
        for r in cor.itertuples():
            if r.n_models < MIN_MODELS:
                tail = f"too few models (n={r.n_models} < {MIN_MODELS}) for a conclusion"
            elif r.at_floor:
                tail = (f"not computed: {r.n_at_floor} of {r.n_models} models are at the floor (≤ {FLOOR_PCT:g} % "
                        "robust accuracy)")
            elif math.isnan(r.rho):
                tail = "undefined (one of the two is constant over these models)"
            elif r.ci_lo > 0 or r.ci_hi < 0:
                tail = f"robustness {'rises' if r.rho > 0 else 'falls'} with the audit figure (CI excludes 0)"
            else:
                tail = "no detectable association (CI includes 0)"
            rho = "n/a" if r.at_floor else f"{_g(r.rho, True)} [{_g(r.ci_lo, True)}, {_g(r.ci_hi, True)}]"
            s = (f"{r.training_what} models, {r.y_what} vs {r.audit_what}: Spearman ρ={rho} over n={r.n_models} "
                 f"models ({r.models}): {tail}.")
            md.append(f"- {s}")
            findings.append(s)
        md += ["", ctx.md_csv(files[-1], "why_audit_correlation.csv")]
    # 3. masking checks
    md += ["", "### Is the measured robustness real? Masking checks", ""]
    lines = masking_lines(ctx)
    md += [f"- {s}" for s in lines]
    findings += [s for s in lines if "missing (" not in s]
    if bvs.empty and cor.empty and all("missing (" in s for s in lines):
        raise SectionSkipped("no per-example dynamics under an attack, no dynamism audits and no masking checks")
    return SectionResult("\n".join(md), files=files, findings=findings)

