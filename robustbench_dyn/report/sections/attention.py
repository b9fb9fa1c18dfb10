"""Sections 4-6: robustness vs attention entropy, attention shift under attack, attention t-SNE."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..core import STANDARD_EPS, ReportContext, SectionResult, SectionSkipped, eps_text, pct, section, wilson
from ..plotting import titled
from ..plotting import yerr_pct as _yerr


def attention_models(ctx: ReportContext) -> tuple[tuple[str, str] | None, list[str]]:
    """(reference attack, models with attention statistics under it)."""
    ref = ctx.reference_attack()
    if ref is None:
        return None, []
    out = []
    for m in ctx.models:
        cur = ctx.curve(m, *ref)
        cur = cur[cur.eps > 0]
        if cur.empty:
            continue
        ex = ctx.examples(int(cur.iloc[0].run_id))
        if ex.attn_entropy_clean.notna().any():
            out.append(m)
    return ref, out


def _require(ctx: ReportContext) -> tuple[tuple[str, str], list[str]]:
    ref, models = attention_models(ctx)
    if ref is None:
        raise SectionSkipped("no L∞ attack at eps > 0 in the store" + (" (only clean runs)" if len(ctx.runs) and
                                                                      not (ctx.runs.eps > 0).any() else ""))
    if not models:
        raise SectionSkipped(f"no model with attention (DyConv/ODConv) was attacked with {ref[0]} in the store")
    return ref, models


def _grid(n: int, ncols: int = 3) -> tuple[int, int]:
    ncols = min(ncols, n)
    return math.ceil(n / ncols), ncols


# ----------------------------------------------------------------------------------------- entropy

def entropy_bins(ex: pd.DataFrame, n_bins: int) -> pd.Series | None:
    """Quantile bin (0..k-1) of each example's clean attention entropy; None when it is (nearly) constant."""
    h = ex.attn_entropy_clean.astype(float)
    if h.nunique() < 2:
        return None
    try:
        b = pd.qcut(h.rank(method="first"), q=n_bins, labels=False)
    except ValueError:
        return None
    return b


@section("entropy", "Robustness vs attention entropy", order=40,
         needs="attacked DyConv/ODConv models (attn_entropy_clean)")
def entropy_section(ctx: ReportContext) -> SectionResult:
    ref, models = _require(ctx)
    rows, notes, findings = [], [], []
    usable = []
    for m in models:
        cur = ctx.curve(m, *ref)
        cur = cur[cur.eps > 0]
        n = int(cur.n_done.min())
        n_bins = int(min(5, max(2, n // 20)))
        ok = False
        for r in cur.itertuples():
            ex = ctx.examples(int(r.run_id))
            b = entropy_bins(ex, n_bins)
            if b is None:
                break
            ok = True
            ex = ex.assign(bin=b.to_numpy(), robust=ex.broken_at.isna(), correct=ex.clean_pred == ex.label)
            for k, g in ex.groupby("bin"):
                nr, nc, nn = int(g.robust.sum()), int(g.correct.sum()), len(g)
                lo, hi = wilson(nr, nn)
                clo, chi = wilson(nc, nn)
                rows.append({"model": m, "attack": ref[0], "norm": ref[1], "eps": float(r.eps),
                             "eps_label": eps_text(r.eps, ref[1]), "bin": int(k) + 1, "n_bins": n_bins,
                             "entropy_lo": g.attn_entropy_clean.min(), "entropy_hi": g.attn_entropy_clean.max(),
                             "entropy_median": g.attn_entropy_clean.median(), "n": nn, "n_robust": nr,
                             "frac_robust": nr / nn, "ci_lo": lo, "ci_hi": hi, "clean_acc": nc / nn,
                             "clean_ci_lo": clo, "clean_ci_hi": chi})
        if ok:
            usable.append(m)
        else:
            notes.append(f"{m}: its clean attention entropy is constant over the examples (e.g. K = 1), so it cannot "
                         "be binned.")
    if not usable:
        raise SectionSkipped("the attention entropy of every attacked dynamic model is constant")
    tab = pd.DataFrame(rows)
    nrows, ncols = _grid(len(usable))
    fig, axes = ctx.figure(nrows, ncols, size=(4.6, 3.6))
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    epss_all = sorted(set(tab.eps))

    def eps_color(e: float):
        return cmap(0.9 * epss_all.index(e) / max(1, len(epss_all) - 1))

    shown_any: set[float] = set()
    for i, m in enumerate(usable):
        ax = axes[i // ncols][i % ncols]
        g = tab[tab.model == m]
        epss = sorted(set(g.eps))
        first = g[g.eps == epss[0]].sort_values("bin")
        ax.errorbar(first.entropy_median, 100 * first.clean_acc,
                    yerr=_yerr(first.clean_acc, first.clean_ci_lo, first.clean_ci_hi),
                    color="#777777", linestyle="--", marker="s", markersize=3, capsize=2, label="clean accuracy")
        shown = [e for e in epss if g[g.eps == e].n_robust.sum() > 0]
        for e in shown:
            s = g[g.eps == e].sort_values("bin")
            ax.errorbar(s.entropy_median, 100 * s.frac_robust,
                        yerr=_yerr(s.frac_robust, s.ci_lo, s.ci_hi),
                        color=eps_color(e), marker="o", markersize=4, capsize=2,
                        linewidth=1.4, label=f"ε = {eps_text(e, ref[1])}")
        shown_any.update(shown)
        K = _max_k(ctx, m)
        extra = [f"max log K = {math.log(K):.2f} nats"] if K and K > 1 else []
        if len(shown) < len(epss):
            extra.append("none robust at ε ≥ " + eps_text(min(set(epss) - set(shown)), ref[1]))
        ax.set_title(f"{ctx.label(m)}: n={int(first.n.sum())}, {int(first.n_bins.iloc[0])} quantile bins"
                     + (f"\n({'; '.join(extra)})" if extra else ""), fontsize=10)
        ax.set_xlabel("clean attention entropy, bin median (nats)")
        from matplotlib.ticker import ScalarFormatter

        fmt = ScalarFormatter(useOffset=False)
        fmt.set_scientific(False)
        ax.xaxis.set_major_formatter(fmt)
        ax.tick_params(axis="x", labelrotation=25)
        ax.set_ylabel("examples robust (%)")
        ax.set_ylim(-2, 102)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="#777777", linestyle="--", marker="s", markersize=3, label="clean accuracy")]
    handles += [Line2D([], [], color=eps_color(e), marker="o", markersize=4, label=f"ε = {eps_text(e, ref[1])}")
                for e in epss_all if e in shown_any]
    for k in range(len(usable), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    data = ctx.data_text(ctx.runs[ctx.runs.model.isin(usable)], n=False)
    if len(usable) < nrows * ncols:  # the legend fills the first empty panel
        lax = axes[nrows - 1][ncols - 1]
        lax.set_visible(True)
        lax.axis("off")
        lax.legend(handles=handles, loc="center", frameon=False, title="robust under", fontsize=9)
    else:
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                   title="robust under", fontsize=8)
    titled(fig, f"Fraction of examples robust to {ref[0]} ({ref[1]}) per clean attention-entropy bin",
           f"{data}; entropy averaged over layers; error bars: Wilson 95% CI")
    png = ctx.save_figure(fig, "robustness_vs_entropy")
    csv = ctx.save_table(tab, "robustness_vs_entropy")
    md = [f"Each example's clean kernel-attention entropy (nats, mean over the dynamic layers) is binned into "
          f"quantiles per model; per bin, the fraction of examples still correctly classified under {ref[0]} "
          f"({ref[1]}) at each ε of the sweep (robust accuracy within the bin), and the clean accuracy of the bin "
          f"(dashed). {ctx.data_text(ctx.runs[ctx.runs.model.isin(usable)])}.", "",
          ctx.md_figure(png, "Robustness vs attention entropy"), "",
          f"Data: {ctx.md_csv(csv, 'robustness_vs_entropy.csv')}."]
    e_mid = ctx.mid_eps(ref[0], ref[1], usable)
    for m in usable:
        g = tab[(tab.model == m)]
        if e_mid is not None and ((g.eps - e_mid).abs() < 1e-9).any():
            g = g[(g.eps - e_mid).abs() < 1e-9]
        else:
            g = g[g.eps == g.eps.min()]
        lo_b, hi_b = g.sort_values("bin").iloc[0], g.sort_values("bin").iloc[-1]
        findings.append(f"{m}, {ref[0]} at {eps_text(lo_b.eps, ref[1])}: {pct(lo_b.frac_robust)}% "
                        f"[{pct(lo_b.ci_lo)}, {pct(lo_b.ci_hi)}] of the lowest-entropy bin (H ≤ {lo_b.entropy_hi:.3f} "
                        f"nats, n={int(lo_b.n)}) stay robust vs {pct(hi_b.frac_robust)}% [{pct(hi_b.ci_lo)}, "
                        f"{pct(hi_b.ci_hi)}] of the highest-entropy bin (H ≥ {hi_b.entropy_lo:.3f}, n={int(hi_b.n)}); "
                        f"clean accuracy {pct(lo_b.clean_acc)}% vs {pct(hi_b.clean_acc)}%.")
    return SectionResult("\n".join(md), files=[png, csv], findings=findings, notes=notes)


def _max_k(ctx: ReportContext, m: str) -> int | None:
    att = ctx.layout(m).get("attention") or []
    ks = [int(a.get("K", 1)) for a in att]
    return max(ks) if ks else (ctx.meta(m).K or None)


# --------------------------------------------------------------------------------- attention shift

#: The store keeps per-layer KL to 6 decimals; below this it is 0 and is drawn at the floor on a log axis.
LAYER_KL_FLOOR = 1e-6

def _layer_names(ctx: ReportContext, m: str, n_layers: int) -> list[str]:
    att = ctx.layout(m).get("attention") or []
    names = [a.get("name", str(i)) for i, a in enumerate(att)]
    if len(names) != n_layers:
        return [str(i + 1) for i in range(n_layers)]
    return [short_name(n) for n in names]


def short_name(name: str) -> str:
    """'layers.1.2.conv1' -> '1.2.c1' (stage.block.conv), 'layers.0.1.gate' -> '0.1'."""
    import re

    return re.sub(r"^layers?\.", "", name).replace(".gate", "").replace("conv", "c")


@section("attention_shift", "Attention shift under attack", order=50,
         needs="attacked DyConv/ODConv models with per-layer detail")
def attention_shift(ctx: ReportContext) -> SectionResult:
    ref, models = _require(ctx)
    files, md, findings, notes, summary, per_layer = [], [], [], [], [], []
    from scipy.stats import mannwhitneyu

    for m in models:
        sel = ctx.balanced_split(m, ref, detail=True)
        if sel is None:
            continue
        run, ok = sel
        if "kl_layers" not in ok.columns or ok.kl_layers.isna().all():
            notes.append(f"{m}: no per-layer detail stored; skipped.")
            continue
        ok = ok[ok.kl_layers.notna()]
        broken = ok[ok.broken]
        surv = ok[~ok.broken]
        eps = float(run.eps)
        kl_b = np.stack(broken.kl_layers.to_numpy()) if len(broken) else np.zeros((0, 0))
        kl_s = np.stack(surv.kl_layers.to_numpy()) if len(surv) else np.zeros((0, 0))
        n_layers = (kl_b if len(broken) else kl_s).shape[1]
        names = _layer_names(ctx, m, n_layers)
        p = math.nan
        if len(broken) and len(surv):
            p = float(mannwhitneyu(broken.attn_kl, surv.attn_kl, alternative="two-sided").pvalue)
        summary.append({"model": m, "attack": ref[0], "norm": ref[1], "eps": eps, "eps_label": eps_text(eps, ref[1]),
                        "n_broken": len(broken), "n_surviving": len(surv),
                        "median_kl_broken": broken.attn_kl.median() if len(broken) else math.nan,
                        "median_kl_surviving": surv.attn_kl.median() if len(surv) else math.nan,
                        "median_tv_broken": broken.attn_tv.median() if len(broken) else math.nan,
                        "median_tv_surviving": surv.attn_tv.median() if len(surv) else math.nan,
                        "mannwhitney_p": p})
        for grp, arr in (("broken", kl_b), ("surviving", kl_s)):
            if not len(arr):
                continue
            q25, q50, q75 = np.percentile(arr, [25, 50, 75], axis=0)
            for j in range(n_layers):
                per_layer.append({"model": m, "eps": eps, "group": grp, "layer": j + 1, "layer_name": names[j],
                                  "n": len(arr), "kl_median": q50[j], "kl_q25": q25[j], "kl_q75": q75[j],
                                  "kl_mean": float(arr[:, j].mean())})
        fig, axes = ctx.figure(1, 2, size=(5.4, 3.8), gridspec_kw={"width_ratios": [1, 1.5]})
        ax = axes[0][0]
        raw = ok.attn_kl.astype(float).to_numpy()
        floor = max(float(raw[raw > 0].min()) / 2, 1e-12) if (raw > 0).any() else 1e-9
        allv = np.clip(raw, floor, None)
        bins = np.logspace(np.log10(allv.min()), np.log10(max(allv.max(), allv.min() * 10)), 25)
        for grp, g, color in (("broken", broken, "#d62728"), ("surviving", surv, "#1f77b4")):
            if len(g):
                v = np.clip(g.attn_kl.astype(float).to_numpy(), floor, None)
                ax.hist(v, bins=bins, histtype="stepfilled", alpha=0.35, color=color, density=False,
                        label=f"{grp} (n={len(g)}), median {np.median(v):.2g}")
                ax.axvline(np.median(v), color=color, linewidth=1.5)
        ax.set_xscale("log")
        ax.set_xlabel("KL(clean ‖ adversarial attention), mean over layers (nats, log scale)")
        ax.set_ylabel("examples (count)")
        ax.set_title("Distribution over examples" + (f" (Mann-Whitney p = {p:.2g})" if not math.isnan(p) else ""),
                     fontsize=10)
        ax.legend(loc="upper left", fontsize=7.5)
        ax = axes[0][1]
        x = np.arange(1, n_layers + 1)
        for grp, arr, color in (("broken", kl_b, "#d62728"), ("surviving", kl_s, "#1f77b4")):
            if not len(arr):
                continue
            q25, q50, q75 = (np.clip(v, LAYER_KL_FLOOR, None) for v in np.percentile(arr, [25, 50, 75], axis=0))
            ax.plot(x, q50, color=color, marker="o", markersize=3.5, label=f"{grp}: median (n={len(arr)})")
            ax.fill_between(x, q25, q75, color=color, alpha=0.18, linewidth=0, label=f"{grp}: 25-75%")
        ax.set_yscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=60, fontsize=7)
        ax.set_xlabel("attention layer (stage.block.conv, input → output)")
        ax.set_ylabel("KL(clean ‖ adv) (nats, log scale)")
        ax.set_title("Per layer (values < 1e-6 nats, the stored precision, shown at 1e-6)", fontsize=9)
        ax.legend(loc="best", fontsize=7.5)
        titled(fig, f"{ctx.label(m)}: attention shift under {ref[0]} ({ref[1]}) at ε = {eps_text(eps, ref[1])}, "
                    "broken vs surviving examples",
               f"{run.dataset_label}, clean-correct examples n={len(ok)} of {int(run.n_done)}, {run.device}; "
               "broken = misclassified at this ε")
        png = ctx.save_figure(fig, f"attention_shift_{m}")
        files.append(png)
        md += [f"### {ctx.label(m)}", "", ctx.md_figure(png, f"Attention shift {m}"), ""]
        if len(broken) and len(surv):
            findings.append(f"{m}, {ref[0]} at {eps_text(eps, ref[1])}: median KL(clean‖adv) "
                            f"{broken.attn_kl.median():.3g} "
                            f"nats for broken examples (n={len(broken)}) vs {surv.attn_kl.median():.3g} for surviving "
                            f"ones (n={len(surv)}); Mann-Whitney p = {p:.2g}.")
        else:
            findings.append(f"{m}, {ref[0]} at {eps_text(eps, ref[1])}: every clean-correct example is "
                            f"{'broken' if len(broken) else 'surviving'} (n={len(ok)}); no comparison possible.")
    if not summary:
        raise SectionSkipped(f"no attacked dynamic model has per-example detail under {ref[0]}")
    tab = pd.DataFrame(summary)
    files.append(ctx.save_table(tab, "attention_shift_summary"))
    files.append(ctx.save_table(pd.DataFrame(per_layer), "attention_shift_per_layer"))
    disp = pd.DataFrame({"model": tab.model, "ε": tab.eps_label, "n broken": tab.n_broken,
                         "n surviving": tab.n_surviving,
                         "median KL broken": [f"{v:.3g}" for v in tab.median_kl_broken],
                         "median KL surviving": [f"{v:.3g}" for v in tab.median_kl_surviving],
                         "median TV broken": [f"{v:.3g}" for v in tab.median_tv_broken],
                         "median TV surviving": [f"{v:.3g}" for v in tab.median_tv_surviving],
                         "Mann-Whitney p": [f"{v:.2g}" for v in tab.mannwhitney_p]})
    head = [f"KL(clean ‖ adversarial) of the kernel attention (for ODConv with K = 1: of its spatial attention), "
            f"per example and layer, for clean-correct examples the attack broke vs those that survived, under "
            f"{ref[0]} ({ref[1]}). Per model the ε of the sweep with the most even split of the two groups is shown. "
            f"For a broken example the adversarial attention is the one on the adversarial example that broke it.",
            "", ctx.md_table(disp, ["l", "r"] + ["r"] * 7), "",
            f"Data: {ctx.md_csv(files[-2], 'attention_shift_summary.csv')}, "
            f"{ctx.md_csv(files[-1], 'attention_shift_per_layer.csv')}.", ""]
    return SectionResult("\n".join(head + md), files=files, findings=findings, notes=notes)


# ------------------------------------------------------------------------------------------- t-SNE

def _knn_agreement(X: np.ndarray, y: np.ndarray, k: int = 5) -> float:
    """Fraction of the k nearest neighbours (Euclidean, attention space) that share the example's class."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(X) - 1)
    if k < 1:
        return math.nan
    nn = NearestNeighbors(n_neighbors=k + 1).fit(X)
    idx = nn.kneighbors(X, return_distance=False)[:, 1:]
    return float((y[idx] == y[:, None]).mean())


@section("tsne", "Attention t-SNE", order=60, needs="attacked DyConv/ODConv models with attention vectors (detail)")
def tsne_section(ctx: ReportContext) -> SectionResult:
    ref, models = _require(ctx)
    from sklearn.manifold import TSNE

    from ...data import CLASSES

    files, md, findings, rows, summary = [], [], [], [], []
    for m in models:
        cur = ctx.curve(m, *ref)
        cur = cur[cur.eps > 0]
        std = STANDARD_EPS[ref[1]]
        at = cur[(cur.eps - std).abs() < 1e-9]
        run = at.iloc[0] if len(at) else cur.iloc[-1]
        ex = ctx.examples(int(run.run_id), detail=True)
        if "attn_clean" not in ex.columns:
            continue
        ex = ex[ex.attn_clean.notna()]
        if len(ex) < 10:
            continue
        ex = ex.sort_values("idx").head(ctx.tsne_max)
        A = np.stack(ex.attn_clean.to_numpy()).astype(np.float32)
        B = np.stack(ex.attn_adv.to_numpy()).astype(np.float32)
        y = ex.label.to_numpy().astype(int)
        n = len(ex)
        X = np.concatenate([A, B])
        perp = float(min(30.0, max(5.0, (len(X) - 1) / 4)))
        # exact gradients for small sets (faster and deterministic there), Barnes-Hut above
        Z = TSNE(n_components=2, perplexity=perp, init="pca", learning_rate="auto", random_state=0, max_iter=1000,
                 method="exact" if len(X) <= 1000 else "barnes_hut").fit_transform(X)
        za, zb = Z[:n], Z[n:]
        agree_c, agree_a = _knn_agreement(A, y), _knn_agreement(B, y)
        fooled = (ex.adv_pred != ex.label).to_numpy()
        summary.append({"model": m, "attack": ref[0], "eps": float(run.eps), "n": n, "dim": A.shape[1],
                        "knn5_class_agreement_clean": agree_c, "knn5_class_agreement_adv": agree_a,
                        "misclassified_adv": float(fooled.mean()), "perplexity": perp})
        for side, z in (("clean", za), ("adversarial", zb)):
            rows += [{"model": m, "idx": int(i), "label": int(lab), "class": CLASSES[int(lab)], "side": side,
                      "x": float(p[0]), "y": float(p[1])} for i, lab, p in zip(ex.idx, y, z, strict=True)]
        fig, axes = ctx.figure(1, 2, size=(5.0, 4.6), sharex=True, sharey=True)
        from matplotlib import colormaps

        cmap = colormaps["tab10"]
        for ax, z, title in ((axes[0][0], za, f"clean (5-NN class agreement {pct(agree_c)}%)"),
                             (axes[0][1], zb, f"{ref[0]} at ε = {eps_text(run.eps, ref[1])} (5-NN agreement "
                                              f"{pct(agree_a)}%; {pct(fooled.mean())}% misclassified)")):
            for c in range(len(CLASSES)):
                sel = y == c
                if sel.any():
                    ax.scatter(z[sel, 0], z[sel, 1], s=9 if n > 300 else 16, color=cmap(c), alpha=0.75,
                               linewidths=0, label=CLASSES[c])
            ax.set_title(title, fontsize=9.5)
            ax.set_xlabel("t-SNE 1 (arbitrary units)")
            ax.set_ylabel("t-SNE 2 (arbitrary units)")
            ax.grid(False)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", title="true class", markerscale=2, frameon=False,
                   bbox_to_anchor=(1.0, 0.5))
        titled(fig, f"{ctx.label(m)}: t-SNE of per-example attention vectors ({A.shape[1]} values over all dynamic "
                    "layers), coloured by true class",
               f"{run.dataset_label}, n={n} examples (clean and adversarial embedded jointly), {run.device}; "
               f"perplexity {perp:.0f}, random_state 0", rect=(0, 0, 0.86, 1))
        png = ctx.save_figure(fig, f"attention_tsne_{m}")
        files.append(png)
        md += [f"### {ctx.label(m)}", "", ctx.md_figure(png, f"Attention t-SNE {m}"), ""]
        findings.append(f"{m}: in attention space, {pct(agree_c)}% of each clean example's 5 nearest neighbours "
                        f"share its class vs {pct(agree_a)}% under {ref[0]} at {eps_text(run.eps, ref[1])} (n={n}; "
                        "chance is about 10%).")
    if not summary:
        raise SectionSkipped("no attacked dynamic model has attention vectors (detail) in the store")
    files.append(ctx.save_table(pd.DataFrame(summary), "attention_tsne_summary"))
    files.append(ctx.save_table(pd.DataFrame(rows), "attention_tsne_points"))
    head = [f"Per-example attention vectors (kernel attention of every dynamic layer concatenated; ODConv adds its "
            f"spatial attention) on clean inputs and on their {ref[0]} adversarial examples at the standard ε, "
            f"embedded together with t-SNE (scikit-learn, random_state 0, at most {ctx.tsne_max} examples per "
            "model) and shown side by side on the same axes. The 5-NN class agreement is computed in the "
            "attention space itself, not on the t-SNE map.", "",
            f"Data: {ctx.md_csv(files[-2], 'attention_tsne_summary.csv')}, "
            f"{ctx.md_csv(files[-1], 'attention_tsne_points.csv')}.", ""]
    return SectionResult("\n".join(head + md), files=files, findings=findings)
