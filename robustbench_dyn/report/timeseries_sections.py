"""Report section "Beyond images": the ``ts_*`` zoo (dynamic convolutions on UCR/UEA time series).

Reads the compact results store of the time-series study, ``timeseries/{accuracy,robustness,audit}.csv``
under the report's output folder or the repository's ``reports/`` (written by
``python -m robustbench_dyn.timeseries.evaluate``), and, for the comparison with CIFAR-10, the PGD runs
of the CIFAR zoo in the results store. Every sentence is generated from these numbers.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .core import ReportContext, SectionResult, SectionSkipped, section

VARIANT_ORDER = ("static", "dyconv_k4", "odconv_k4", "gated")
_REPO_TS = Path(__file__).resolve().parents[2] / "reports" / "timeseries"


def ts_results_dir(ctx: ReportContext | None = None) -> Path | None:
    """Where the time-series CSVs are: $ROBUSTDYN_TS_RESULTS, the report folder's timeseries/, the repo's."""
    cands = [Path(os.environ["ROBUSTDYN_TS_RESULTS"])] if os.environ.get("ROBUSTDYN_TS_RESULTS") else []
    if ctx is not None:
        cands.append(Path(ctx.out) / "timeseries")
    cands.append(_REPO_TS)
    return next((c for c in cands if (c / "robustness.csv").exists()), None)


def _vkey(v: str) -> int:
    return VARIANT_ORDER.index(v) if v in VARIANT_ORDER else 9


def _eps_star(curve: pd.Series, clean: float) -> float | None:
    """The grid eps (> 0) where robust accuracy is nearest half the clean accuracy."""
    c = curve[curve.index > 0]
    if c.empty or not clean:
        return None
    return float((c - clean / 2).abs().idxmin())


def _cifar_pgd(ctx: ReportContext) -> pd.DataFrame:
    """CIFAR-10 zoo PGD (Linf) robust accuracy per model and eps, with the mean attention KL of the attacked."""
    runs = getattr(ctx, "runs", pd.DataFrame())
    if runs is None or runs.empty:
        return pd.DataFrame()
    r = runs[(runs.attack == "pgd") & (runs.norm == "Linf") & runs.model.isin(VARIANT_ORDER)]
    rows = []
    for x in r.itertuples():
        kl = np.nan
        try:
            ex = ctx.examples(int(x.run_id))
            if "attn_kl" in ex and x.eps > 0:
                att = ex[ex.clean_pred == ex.label]
                kl = float(pd.to_numeric(att.attn_kl, errors="coerce").mean())
        except Exception:  # examples unreadable: the accuracy is still usable
            pass
        rows.append({"model": x.model, "eps": float(x.eps), "clean_acc": float(x.clean_acc),
                     "robust_acc": float(x.robust_acc), "attn_kl": kl, "n": int(x.n_done)})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return df.sort_values("n").drop_duplicates(["model", "eps"], keep="last")


def _domain_rows(df: pd.DataFrame, domain: str, unit: str) -> list[dict]:
    """Per dataset/domain and dynamic variant: robust accuracy gap to static at eps* (static's half-clean eps)."""
    out = []
    static = df[df.variant == "static"]
    if static.empty:
        return out
    s_curve = static.set_index("eps").robust_acc.sort_index()
    s_clean = float(static.clean_acc.iloc[0])
    e = _eps_star(s_curve, s_clean)
    if e is None:
        return out
    for v in VARIANT_ORDER[1:]:
        d = df[(df.variant == v) & (np.isclose(df.eps, e))]
        if d.empty:
            continue
        out.append({"domain": domain, "variant": v, "eps*": f"{e * (25.5 if unit == 'std' else 255):g}"
                    + (" std" if unit == "std" else "/255"),
                    "static robust": float(s_curve.loc[e]), "variant robust": float(d.robust_acc.iloc[0]),
                    "gap (pt)": 100 * (float(d.robust_acc.iloc[0]) - float(s_curve.loc[e])),
                    "clean gap (pt)": 100 * (float(d.clean_acc.iloc[0]) - s_clean),
                    "attention KL at eps*": float(d.attn_kl.iloc[0]) if "attn_kl" in d else np.nan})
    return out


def _fmt_pct(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


@section("beyond_images", "Beyond images: dynamic convolutions on time series", order=89,
         needs="reports/timeseries/*.csv (python -m robustbench_dyn.timeseries.evaluate)")
def beyond_images(ctx: ReportContext) -> SectionResult:
    d = ts_results_dir(ctx)
    if d is None:
        raise SectionSkipped("no time-series results (reports/timeseries/robustness.csv); run "
                             "`python -m robustbench_dyn.timeseries.evaluate`")
    rob = pd.read_csv(d / "robustness.csv")
    #: the attack the figures and the comparison read: the per-series worst case over FGSM and PGD where the
    #: evaluation wrote it (PGD alone can be weaker than FGSM on these models), else PGD
    main = "worst" if (rob.attack == "worst").any() else "pgd"
    main_txt = "worst case of FGSM and PGD per series" if main == "worst" else "PGD"
    acc = pd.read_csv(d / "accuracy.csv") if (d / "accuracy.csv").exists() else pd.DataFrame()
    aud = pd.read_csv(d / "audit.csv") if (d / "audit.csv").exists() else pd.DataFrame()
    files, findings, md = [], [], []

    md.append("The Wang et al. (2017) fully convolutional ResNet (3 blocks, 64-128-128 channels, kernels 8/5/3) "
              "with static, DyConv1d (K=4), ODConv1d (K=4) or channel-gated blocks, trained on the CPU on UCR/UEA "
              "sets bundled with aeon. Series are z-normalised per series and channel; eps is an Linf radius in "
              "units of each series' own standard deviation (model inputs u = 0.5 + z/25.5: eps k/255 = k/10 std). "
              "Attacks run on every test series.")
    if not acc.empty:
        t = acc.copy()
        t["_o"] = [_vkey(v) for v in t.variant]
        t = t.sort_values(["dataset", "_o"])
        tbl = pd.DataFrame({
            "dataset": t.dataset, "variant": t.variant, "n test": t.n_test,
            "acc % (mean ± std over seeds)": [f"{100 * m:.1f} ± {100 * s:.1f} ({k})" for m, s, k in
                                              zip(t.acc_mean, t.acc_std, t.seeds, strict=True)],
            "committed checkpoint %": [f"{100 * a:.1f}" for a in t.committed_acc],
            "published (static nets)": t.published.fillna("")})
        files.append(ctx.save_table(tbl, "ts_accuracy"))
        md += ["### Clean accuracy", ctx.md_table(tbl)]
        st = t[t.variant == "static"].dropna(subset=["published_resnet"])
        for r in st.itertuples():
            gap = 100 * r.acc_mean - r.published_resnet
            findings.append(f"{r.dataset}: the static FCN-ResNet reaches {100 * r.acc_mean:.1f} ± "
                            f"{100 * r.acc_std:.1f} % ({r.seeds} seeds) vs {r.published_resnet:.1f} % published "
                            f"({gap:+.1f} pt).")
    rob["_o"] = [_vkey(v) for v in rob.variant]
    rob = rob.sort_values(["dataset", "_o", "attack", "eps_std"])
    piv = rob.pivot_table(index=["dataset", "variant", "_o"], columns=["attack", "eps_std"], values="robust_acc")
    piv = piv.sort_index(level=[0, 2]).droplevel("_o")
    piv.columns = [f"{a.upper()} @ {e:g} std" for a, e in piv.columns]
    clean = rob.groupby(["dataset", "variant"]).clean_acc.first()
    piv.insert(0, "clean", [clean.loc[i] for i in piv.index])
    tbl = piv.map(_fmt_pct).reset_index()
    files.append(ctx.save_table(tbl, "ts_robust_acc_vs_eps"))
    md += ["### Robust accuracy (%) vs eps", ctx.md_table(tbl)]

    datasets = sorted(set(rob.dataset))
    fig, axes = ctx.figure(1, len(datasets), size=(3.2, 2.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        sub = rob[(rob.dataset == ds) & (rob.attack == main)]
        for v in sorted(set(sub.variant), key=_vkey):
            c = sub[sub.variant == v].sort_values("eps_std")
            xs = [0.0] + list(c.eps_std)
            ys = [100 * c.clean_acc.iloc[0]] + list(100 * c.robust_acc)
            ax.plot(xs, ys, marker="o", label=v)
        ax.set_title(ds)
        ax.set_xlabel("eps (fraction of series std)")
        ax.set_ylabel("robust acc (%)")
    axes[0][0].legend(fontsize=7)
    png = ctx.save_figure(fig, "ts_robust_acc_vs_eps")
    files.append(png)
    md.append(ctx.md_figure(png, f"Robust accuracy ({main_txt}) vs eps on the time-series sets"))

    if {"fgsm", "pgd"} <= set(rob.attack):  # an iterative attack weaker than one step: gradient-masking sign
        w = rob[rob.attack.isin(["fgsm", "pgd"])].pivot_table(index=["model", "eps_std"], columns="attack",
                                                               values="robust_acc").reset_index()
        w["n"] = [int(rob[rob.model == m].n.iloc[0]) for m in w.model]
        se = ((w.pgd * (1 - w.pgd) + w.fgsm * (1 - w.fgsm)) / w.n) ** 0.5
        bad = w[(w.pgd - w.fgsm) > 2 * se + 0.02]
        for m, g in bad.groupby("model", sort=False):
            worst = g.loc[(g.pgd - g.fgsm).idxmax()]
            findings.append(f"{m}: PGD-20 (step eps/4, random start) is weaker than one FGSM step at {len(g)} of "
                            f"{int((w.model == m).sum())} eps (largest at {worst.eps_std:g} std: PGD "
                            f"{100 * worst.pgd:.1f} % vs FGSM {100 * worst.fgsm:.1f} %, n={int(worst.n)}): a "
                            "gradient-masking sign; read the worst-case column, and treat PGD alone as an upper bound.")
    dyn = rob[(rob.variant != "static") & (rob.attack == "pgd")]
    if not dyn.empty:
        sh = dyn[[c for c in ("dataset", "variant", "eps_std", "attn_kl", "attn_tv", "dominant_changed",
                              "gate_density_clean", "gate_density_adv") if c in dyn]].copy()
        files.append(ctx.save_table(sh, "ts_dynamics_shift"))
        md += ["### Attention and gate shift under PGD (means over the attacked series)",
               ctx.md_table(sh.round(4).astype(object).where(sh.notna(), ""))]

    if not aud.empty:
        cols = [c for c in ("model", "verdict", "entropy_ratio", "mean_replacement_loss_pt", "shuffle_loss_pt",
                            "conditional_gates", "majority_mask_loss_pt", "executed_macs_ratio") if c in aud]
        a = aud[cols].copy()
        files.append(ctx.save_table(a, "ts_audit"))
        md += ["### Dynamism audit (whole test set)", ctx.md_table(a.round(3).astype(object).where(a.notna(), ""))]
        nd = aud[aud.variant != "static"]
        if len(nd):
            k = int((nd.verdict == "dynamic").sum())
            findings.append(f"Time series: {k} of {len(nd)} dynamic ts_ models pass the dynamism audit "
                            f"({', '.join(nd[nd.verdict == 'dynamic'].model) or 'none'}).")

    # comparison with CIFAR-10 (unit-free: each domain at the eps where its static model keeps half its accuracy)
    rows = []
    for ds in datasets:
        sub = rob[(rob.dataset == ds) & (rob.attack == main)].rename(columns={"eps_input": "eps"})
        if main != "pgd":  # the attention shift is measured under PGD
            kl = rob[rob.attack == "pgd"].set_index(["model", "eps_input"]).attn_kl
            sub = sub.assign(attn_kl=[kl.get((m, e), np.nan) for m, e in zip(sub.model, sub.eps, strict=True)])
        rows += _domain_rows(sub, ds, "std")
    cif = _cifar_pgd(ctx)
    if not cif.empty:
        cif = cif.rename(columns={"model": "variant"})
        rows += _domain_rows(cif, "CIFAR-10", "255")
    if rows:
        cmp_ = pd.DataFrame(rows)
        files.append(ctx.save_table(cmp_, "ts_vs_cifar"))
        show = cmp_.copy()
        for c in ("static robust", "variant robust"):
            show[c] = show[c].map(_fmt_pct)
        for c in ("gap (pt)", "clean gap (pt)"):
            show[c] = show[c].map(lambda v: f"{v:+.1f}")
        show["attention KL at eps*"] = show["attention KL at eps*"].map(lambda v: "" if pd.isna(v) else f"{v:.3g}")
        md += ["### Compared with CIFAR-10",
               "Each domain at eps*, the grid eps where its static model keeps closest to half its clean accuracy "
               f"(time series: {main_txt}; CIFAR-10: PGD); gap = dynamic minus static robust accuracy there; "
               "attention KL under PGD.", ctx.md_table(show)]
        for v in VARIANT_ORDER[1:]:
            ts_g = cmp_[(cmp_.variant == v) & (cmp_.domain != "CIFAR-10")]["gap (pt)"]
            cf_g = cmp_[(cmp_.variant == v) & (cmp_.domain == "CIFAR-10")]["gap (pt)"]
            if len(ts_g):
                s = (f"{v}: robust-accuracy gap to static at eps* is {ts_g.mean():+.1f} pt on average over "
                     f"{len(ts_g)} time-series sets (range {ts_g.min():+.1f} to {ts_g.max():+.1f})")
                s += f", vs {cf_g.iloc[0]:+.1f} pt on CIFAR-10." if len(cf_g) else " (no CIFAR-10 PGD run to compare)."
                findings.append(s)
    else:
        md.append("_No comparison with CIFAR-10: the store holds no PGD runs of static/dyconv_k4/odconv_k4/gated._")
    md.append(ctx.md_csv(files[0], "CSV") if hasattr(ctx, "md_csv") and files else "")
    return SectionResult("\n\n".join(m for m in md if m), files=files, findings=findings)
