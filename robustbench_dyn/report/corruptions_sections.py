"""Report section: common corruptions (the CIFAR-10-C protocol, :mod:`robustbench_dyn.corruptions`).

Reads the corruption runs of the results store (``attack = 'corruption'``, ``norm = 'corruption'``, ``eps``
= severity) and writes: accuracy per corruption and severity; the mean corruption error (mCE) and the
relative mCE of Hendrycks & Dietterich (2019) with ``static`` (and ``static_at``, when present) as the
reference network in place of their AlexNet; how attention and gates move under corruption compared
with under attack; and whether adversarial training helps or hurts corruption robustness.

Definitions (E = top-1 error; f the model, r the reference; c a corruption, s = 1..5 its severities):
``CE_c = sum_s E_{s,c}^f / sum_s E_{s,c}^r``, ``mCE = mean_c CE_c``;
``relative CE_c = sum_s (E_{s,c}^f - E_clean^f) / sum_s (E_{s,c}^r - E_clean^r)``, ``relative mCE =
mean_c``. The clean error is measured on the same images as the corruptions (the clean predictions
stored in the corruption rows of each model), not taken from another run.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from .core import ATTACK_LABELS, STANDARD_EPS, ReportContext, SectionResult, SectionSkipped, eps_text, section, wilson
from .plotting import titled

ATTACK_LABELS.setdefault("corruption", lambda s: f"corruption {s.get('corruption', '?')}")

_SHIFT_COLS = {"attn_kl": "attention KL", "attn_tv": "attention TV", "dominant_changed": "dominant kernel changed",
               "gate_density": "gate density", "macs_ratio": "MACs / clean MACs"}


def corruption_runs(ctx: ReportContext) -> pd.DataFrame:
    """One run per (model, corruption, severity): most examples, then complete, then newest."""
    r = ctx.runs[(ctx.runs.attack == "corruption") & (ctx.runs.norm == "corruption")].copy()
    if r.empty:
        return r
    r["corruption"] = [json.loads(s).get("corruption") for s in r.settings]
    r["severity"] = r.eps.round().astype(int)
    r = r.sort_values(["n_done", "complete", "run_id"], ascending=False)
    r = r.drop_duplicates(["model", "corruption", "severity"])
    return r.sort_values(["model", "corruption", "severity"]).reset_index(drop=True)


def _order(ctx: ReportContext, names) -> list[str]:
    from ..corruptions import CORRUPTIONS

    return [c for c in CORRUPTIONS if c in set(names)] + sorted(set(names) - set(CORRUPTIONS))


def mce_table(runs: pd.DataFrame, reference: str) -> pd.DataFrame:
    """mCE and relative mCE of every model against ``reference`` (over the (corruption, severity) pairs
    both have); NaN where the reference is absent or has zero error."""
    rows = []
    if reference not in set(runs.model):
        return pd.DataFrame(columns=["model", "mCE", "relative mCE", "pairs"])
    ref = runs[runs.model == reference].set_index(["corruption", "severity"])
    ref_clean = 1 - float(np.average(ref.clean_acc, weights=ref.n_done))
    for m, g in runs.groupby("model", sort=False):
        g = g.set_index(["corruption", "severity"])
        common = g.index.intersection(ref.index)
        if common.empty:
            continue
        clean = 1 - float(np.average(g.clean_acc, weights=g.n_done))
        ces, rces = [], []
        for c in sorted({k[0] for k in common}):
            keys = [k for k in common if k[0] == c]
            ef = np.array([1 - g.loc[k, "robust_acc"] for k in keys])
            er = np.array([1 - ref.loc[k, "robust_acc"] for k in keys])
            ces.append(ef.sum() / er.sum() if er.sum() > 0 else math.nan)
            den = (er - ref_clean).sum()
            rces.append((ef - clean).sum() / den if den > 0 else math.nan)
        rows.append({"model": m, "mCE": float(np.nanmean(ces)) if not np.all(np.isnan(ces)) else math.nan,
                     "relative mCE": float(np.nanmean(rces)) if not np.all(np.isnan(rces)) else math.nan,
                     "pairs": len(common)})
    return pd.DataFrame(rows)


def _shift_stats(df: pd.DataFrame) -> dict:
    """Mean attention/gate shift over clean-correct examples (like under attack)."""
    d = df[df.clean_pred == df.label]
    if d.empty:
        return {}
    out = {"n": len(d)}
    for col in ("attn_kl", "attn_tv", "dominant_changed"):
        if col in d and d[col].notna().any():
            out[col] = float(d[col].mean())
    if "gate_density_adv" in d and d.gate_density_adv.notna().any():
        out["gate_density"] = float(d.gate_density_adv.mean())
        out["gate_density_clean"] = float(d.gate_density_clean.mean())
    if d.macs_clean.notna().any() and (d.macs_clean > 0).all():
        out["macs_ratio"] = float((d.macs_adv / d.macs_clean).mean())
    return out


# Known reasons why a corruption can hurt less at a higher severity (measured with
# scripts/corruption_severity_probe.py); keyed by corruption, with a predicate on the data label.
_NON_MONOTONE_REASONS = {
    "glass_blur": (lambda data: True,
                   "CIFAR-10-C's glass-blur severities keep the pixel shuffle and raise the blur sigma "
                   "(0.05, 0.25, 0.4 with one shuffle pass, 0.25 and 0.4 with two); the blur smooths the shuffle's "
                   "high-frequency noise, so at a fixed shuffle accuracy rises with sigma up to about 0.4: a property "
                   "of the original parameters"),
    "jpeg_compression": (lambda data: "JPEG copy" in data,
                         "the JPEG copy of CIFAR-10 is already libjpeg quality 75, and quality 50 (severity 4) "
                         "quantises with steps exactly twice quality 75's, the worst case of double quantisation: "
                         "on this data severity 4 hurts more than quality 40 (severity 5)"),
}


def non_monotone_severities(ctx: ReportContext, runs: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Consecutive severities where a model is significantly *more* accurate at the higher one.

    Paired on the images both runs share (exact McNemar on the discordant images), Bonferroni-corrected over
    every consecutive pair tested; ``b`` counts images right only at the higher severity, ``c`` only at the
    lower one."""
    from ..stats import mcnemar_exact

    tests = []
    for (m, c), g in runs.groupby(["model", "corruption"], sort=False):
        g = g.sort_values("severity")
        for lo, hi in zip(g.itertuples(index=False), list(g.itertuples(index=False))[1:], strict=False):
            if hi.severity != lo.severity + 1:
                continue
            a = ctx.examples(int(lo.run_id))[["idx", "label", "adv_pred"]]
            b = ctx.examples(int(hi.run_id))[["idx", "label", "adv_pred"]]
            j = a.merge(b, on=["idx", "label"], suffixes=("_lo", "_hi"))
            if j.empty:
                continue
            ok_lo = (j.adv_pred_lo == j.label).to_numpy()
            ok_hi = (j.adv_pred_hi == j.label).to_numpy()
            up, down = int((ok_hi & ~ok_lo).sum()), int((ok_lo & ~ok_hi).sum())
            tests.append({"model": m, "corruption": c, "from": int(lo.severity), "to": int(hi.severity),
                          "n": len(j), "acc_from": float(ok_lo.mean()), "acc_to": float(ok_hi.mean()),
                          "b": up, "c": down, "p": mcnemar_exact(up, down)})
    t = pd.DataFrame(tests, columns=["model", "corruption", "from", "to", "n", "acc_from", "acc_to", "b", "c", "p"])
    if t.empty:
        return t
    t["p_bonferroni"] = (t.p * len(t)).clip(upper=1.0)
    return t[(t.b > t.c) & (t.p_bonferroni < alpha)].reset_index(drop=True)


@section("corruptions", "Common corruptions (CIFAR-10-C protocol)", order=78,
         needs="corruption runs: `robustdyn evaluate --model NAME --attack corruptions`")
def corruptions_section(ctx: ReportContext) -> SectionResult:
    from ..corruptions import CATEGORIES, category

    runs = corruption_runs(ctx)
    if runs.empty:
        raise SectionSkipped("no corruption runs in the store (run `robustdyn evaluate --model NAME --attack "
                             "corruptions`)")
    models = [m for m in ctx.models if m in set(runs.model)]
    names = _order(ctx, runs.corruption)
    sevs = sorted(set(runs.severity))
    files, findings, notes, md = [], [], [], []
    frost = {json.loads(s).get("frost") for s in runs[runs.corruption == "frost"].settings}
    md.append("Accuracy (%) on the test images corrupted with the 15 corruptions of Hendrycks & Dietterich (ICLR "
              "2019) at severities 1-5, **generated** with the CIFAR parameters of their generator "
              "(`robustbench_dyn.corruptions`; the published CIFAR-10-C files are not used, so numbers are "
              "comparable with each other, not exactly with papers). "
              + ("Frost uses procedural textures instead of the original photographs (a deviation). "
                 if any(str(f).startswith("procedural") for f in frost) else "")
              + f"{ctx.data_text(runs)}.")
    # ---- accuracy per corruption (mean over severities) and per severity (mean over corruptions)
    long = runs.assign(ci=[wilson(a * n, n) for a, n in zip(runs.robust_acc, runs.n_done, strict=True)])
    long_out = pd.DataFrame({"model": long.model, "corruption": long.corruption, "category":
                             [category(c) if c in sum(CATEGORIES.values(), ()) else "" for c in long.corruption],
                             "severity": long.severity, "n": long.n_done, "acc": long.robust_acc,
                             "ci_lo": [c[0] for c in long.ci], "ci_hi": [c[1] for c in long.ci],
                             "clean_acc": long.clean_acc, "complete": long.complete})
    files.append(ctx.save_table(long_out, "corruption_accuracy_long"))
    wide = long_out.pivot_table(index="model", columns="corruption", values="acc", aggfunc="mean")
    wide = wide.reindex(index=models, columns=names)
    sev_tab = long_out.pivot_table(index="model", columns="severity", values="acc", aggfunc="mean").reindex(models)
    table = pd.DataFrame({"model": [ctx.label(m) for m in models],
                          "clean": [100 * float(np.average(runs[runs.model == m].clean_acc,
                                                           weights=runs[runs.model == m].n_done)) for m in models]})
    for s in sevs:
        table[f"s{s}"] = (100 * sev_tab[s].values).round(1)
    table["mean"] = (100 * wide.mean(axis=1).values).round(1)
    table["clean"] = table["clean"].round(1)
    files.append(ctx.save_table(table, "corruption_accuracy_by_severity"))
    md += ["", "**Accuracy (%) by severity** (mean over the corruptions run):", "", ctx.md_table(table)]
    per_c = (100 * wide).round(1).reset_index().rename(columns={"index": "model"})
    per_c["model"] = [ctx.label(m) for m in per_c.model]
    files.append(ctx.save_table(per_c, "corruption_accuracy_by_corruption"))
    md += ["", "**Accuracy (%) by corruption** (mean over severities):", "", ctx.md_table(per_c)]
    # ---- figure: accuracy vs severity
    fig, axes = ctx.figure(1, 1, size=(5.6, 3.8))
    ax = axes[0][0]
    for m in models:
        st = ctx.style(m)
        ax.plot([0] + sevs, [float(table.loc[table.model == ctx.label(m), "clean"].iloc[0])]
                + [100 * float(sev_tab.loc[m, s]) for s in sevs], label=ctx.label(m), **st)
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel("accuracy (%, mean over the corruptions)")
    ax.set_xticks([0] + sevs)
    ax.legend(fontsize=7, ncol=2)
    titled(fig, "Accuracy vs corruption severity", f"{len(names)} generated corruptions (CIFAR-10-C parameters); "
           f"{ctx.data_text(runs)}")
    png = ctx.save_figure(fig, "corruption_accuracy_vs_severity")
    files.append(png)
    md += ["", ctx.md_figure(png, "Accuracy vs corruption severity")]
    # ---- mCE
    refs = [r for r in ("static", "static_at") if r in set(runs.model)]
    if refs:
        mt = None
        for ref in refs:
            t = mce_table(runs, ref).rename(columns={"mCE": f"mCE vs {ref} (%)",
                                                     "relative mCE": f"relative mCE vs {ref} (%)",
                                                     "pairs": f"pairs vs {ref}"})
            mt = t if mt is None else mt.merge(t, on="model", how="outer")
        mt = mt.set_index("model").reindex([m for m in models if m in set(mt.model)]).reset_index()
        for c in mt.columns:
            if "mCE" in c:
                mt[c] = (100 * mt[c]).round(1)
        mt["model"] = [ctx.label(m) for m in mt.model]
        files.append(ctx.save_table(mt, "corruption_mce"))
        md += ["", "**Mean corruption error** (Hendrycks & Dietterich's mCE and relative mCE, with "
               + " and ".join(f"`{r}`" for r in refs) + " as the reference instead of AlexNet; 100 = as robust as "
               "the reference, lower is better; the clean error in the relative mCE is each model's error on the "
               "same uncorrupted images):", "", ctx.md_table(mt)]
        col = "mCE vs static (%)"
        if col in mt and mt[col].notna().sum() > 1:
            dyn = mt[(mt.model != "static") & mt[col].notna()]
            if len(dyn):
                best = dyn.loc[dyn[col].idxmin()]
                findings.append(f"Common corruptions: lowest mCE vs static is {best.model} ({best[col]:.1f}); "
                                + ", ".join(f"{m} {v:.1f}" for m, v in zip(dyn.model, dyn[col], strict=True)
                                            if m != best.model)[:300] + ".")
    else:
        notes.append("mCE needs the reference model `static` (or `static_at`) evaluated under the same corruptions; "
                     "it is not in the store, so only accuracies are shown.")
    # ---- dynamics: attention and gates, corrupted vs clean, compared with an attack
    dyn_rows = []
    ref_attack = ctx.reference_attack()
    for m in models:
        rm = runs[runs.model == m]
        ex = ctx.examples(list(rm.run_id))
        if ex.empty or not (ex.attn_kl.notna().any() or ex.gate_density_adv.notna().any()):
            continue
        sev_of = dict(zip(rm.run_id, rm.severity, strict=True))
        ex = ex.assign(severity=ex.run_id.map(sev_of))
        for s, g in ex.groupby("severity"):
            st = _shift_stats(g)
            if st:
                dyn_rows.append({"model": m, "under": f"corruptions s{s}", **st})
        if ref_attack is not None:
            lbl, norm = ref_attack
            r = ctx.select_run(m, lbl, norm, STANDARD_EPS[norm])
            if r is not None:
                st = _shift_stats(ctx.examples(int(r.run_id)))
                if st:
                    dyn_rows.append({"model": m, "under": f"{lbl} @ {eps_text(float(r.eps), norm)}", **st})
    if dyn_rows:
        dt = pd.DataFrame(dyn_rows)
        cols = ["model", "under", "n"] + [c for c in ("attn_kl", "attn_tv", "dominant_changed", "gate_density_clean",
                                                       "gate_density", "macs_ratio") if c in dt]
        dt = dt[cols]
        files.append(ctx.save_table(dt, "corruption_dynamics_shift"))
        show = dt.rename(columns={**_SHIFT_COLS, "gate_density_clean": "gate density clean",
                                  "gate_density": "gate density shifted"}).round(4)
        show["model"] = [ctx.label(m) for m in show.model]
        md += ["", "**How attention and gates move** (clean-correct images; the same measures as under attack, "
               "`DynamicsProbe.compare`: KL(clean || shifted) and total variation of the kernel attention, mean over "
               "layers; fraction of layers whose dominant kernel changed; gate density; executed MACs relative to "
               "clean), per severity (mean over corruptions) and under the reference attack:", "",
               ctx.md_table(show)]
        if "attn_kl" in dt:
            fig, axes = ctx.figure(1, 1, size=(5.6, 3.6))
            ax = axes[0][0]
            for m, g in dt.groupby("model", sort=False):
                c = g[g.under.str.startswith("corruptions")]
                if c.attn_kl.notna().any():
                    st = ctx.style(m)
                    ax.plot([int(u[-1]) for u in c.under], c.attn_kl, label=ctx.label(m), **st)
                    a = g[~g.under.str.startswith("corruptions")]
                    if len(a) and a.attn_kl.notna().any():
                        ax.axhline(float(a.attn_kl.iloc[0]), color=st["color"], linestyle=":", linewidth=1)
            ax.set_xlabel("corruption severity")
            ax.set_ylabel("attention KL(clean || corrupted)")
            ax.set_title("dotted: under the reference attack", fontsize=8)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
            png = ctx.save_figure(fig, "corruption_attention_shift")
            files.append(png)
            md += ["", ctx.md_figure(png, "Attention shift under corruption vs attack")]
            for m, g in dt.groupby("model", sort=False):
                c = g[g.under == f"corruptions s{max(sevs)}"]
                a = g[~g.under.str.startswith("corruptions")]
                if len(c) and len(a) and c.attn_kl.notna().all() and a.attn_kl.notna().all():
                    ratio = float(c.attn_kl.iloc[0]) / max(float(a.attn_kl.iloc[0]), 1e-12)
                    findings.append(f"{ctx.label(m)}: attention KL at corruption severity {max(sevs)} is "
                                    f"{ratio:.2f}x that under {a.under.iloc[0]}.")
    # ---- adversarial training: helps or hurts?
    pairs = [(m, f"{m}_at") for m in models if not m.endswith("_at") and f"{m}_at" in models]
    if pairs:
        rows = []
        for m, mat in pairs:
            common = runs[runs.model == m].set_index(["corruption", "severity"]).index.intersection(
                runs[runs.model == mat].set_index(["corruption", "severity"]).index)
            if common.empty:
                continue
            row = {"model": m}
            for cat, members in CATEGORIES.items():
                keys = [k for k in common if k[0] in members]
                if keys:
                    a = runs[runs.model == m].set_index(["corruption", "severity"]).loc[keys, "robust_acc"].mean()
                    b = runs[runs.model == mat].set_index(["corruption", "severity"]).loc[keys, "robust_acc"].mean()
                    row[f"{cat} (pp)"] = round(100 * (b - a), 1)
            a = runs[runs.model == m].set_index(["corruption", "severity"]).loc[list(common), "robust_acc"].mean()
            b = runs[runs.model == mat].set_index(["corruption", "severity"]).loc[list(common), "robust_acc"].mean()
            row["all (pp)"] = round(100 * (b - a), 1)
            rows.append(row)
        if rows:
            at = pd.DataFrame(rows)
            files.append(ctx.save_table(at, "corruption_adversarial_training"))
            md += ["", "**Adversarial training and corruptions**: accuracy of the adversarially trained model minus "
                   "its standard counterpart, percentage points, by corruption category (positive: adversarial "
                   "training helps):", "", ctx.md_table(at)]
            for r in at.itertuples(index=False):
                d = dict(zip(at.columns, r, strict=True))
                helps = [k.split(" ")[0] for k, v in d.items() if k != "model" and k != "all (pp)" and v > 0]
                hurts = [k.split(" ")[0] for k, v in d.items() if k != "model" and k != "all (pp)" and v < 0]
                findings.append(f"Adversarial training of {d['model']}: {d['all (pp)']:+.1f} pp mean corruption "
                                f"accuracy (helps on {', '.join(helps) or 'none'}; "
                                f"hurts on {', '.join(hurts) or 'none'}).")
    else:
        notes.append("No (model, model_at) pair evaluated under corruptions: the effect of adversarial training is "
                     "not shown.")
    # ---- severities that hurt less than the one below them
    nm = non_monotone_severities(ctx, runs)
    if len(nm):
        data = " + ".join(sorted(set(map(str, runs.dataset_label))))
        show = nm.assign(model=[ctx.label(m) for m in nm.model],
                         acc_from=(100 * nm.acc_from).round(2), acc_to=(100 * nm.acc_to).round(2))
        show = show.rename(columns={"acc_from": "acc lower severity (%)", "acc_to": "acc higher severity (%)",
                                    "b": "right only at higher", "c": "right only at lower"})
        show["p"] = [f"{v:.1e}" for v in show.p]
        show["p_bonferroni"] = [f"{v:.1e}" for v in show.p_bonferroni]
        files.append(ctx.save_table(nm, "corruption_non_monotone"))
        md += ["", "**Severities that hurt less than the one below them** (paired on the same images, exact McNemar, "
               "Bonferroni over all consecutive pairs tested, 5 % level):", "", ctx.md_table(show)]
        for c, g in nm.groupby("corruption", sort=False):
            known = _NON_MONOTONE_REASONS.get(c)
            pairs = ", ".join(f"{ctx.label(r['model'])} s{r['from']}->s{r['to']} {100 * r['acc_from']:.1f}->"
                              f"{100 * r['acc_to']:.1f} % (p={r['p']:.1e}, n={r['n']})"
                              for r in g.head(4).to_dict("records"))
            if known and known[0](data):
                md.append(f"- {c}: {pairs}. Why: {known[1]} (`scripts/corruption_severity_probe.py` measures it).")
            else:
                md.append(f"- {c}: {pairs}. Not explained yet: check the generator's parameters for this corruption.")
    incomplete = runs[~runs.complete]
    if len(incomplete):
        notes.append(f"{len(incomplete)} corruption run(s) are incomplete; their accuracies use the rows committed "
                     "so far.")
    return SectionResult("\n".join(md), files=files, findings=findings, notes=notes)
