"""Section 2 (robust accuracy vs eps, per attack) and section 3 (accuracy vs the number of kernels K)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..core import STANDARD_EPS, ReportContext, SectionResult, SectionSkipped, eps_text, pct, section, wilson
from ..plotting import titled
from ..plotting import yerr_pct as _yerr


def eps_axis(norm: str) -> tuple[float, str]:
    """(scale, x label): Linf eps is plotted in units of 1/255."""
    if norm == "Linf":
        return 255.0, "ε (L∞, in units of 1/255; pixels in [0, 1])"
    return 1.0, f"ε ({norm} norm; pixels in [0, 1])"


def curve_table(ctx: ReportContext) -> pd.DataFrame:
    """Robust accuracy per (model, attack, eps) on each model's longest grid, with eps 0 = clean accuracy."""
    rows = []
    for norm in ("Linf", "L2"):
        for lbl in ctx.attacks(norm):
            for m in ctx.models:
                cur = ctx.curve(m, lbl, norm)
                if cur.empty:
                    continue
                first = cur.iloc[0]
                if not (cur.eps == 0).any():
                    lo, hi = wilson(first.clean_k, first.n_done)
                    rows.append({"model": m, "attack": lbl, "norm": norm, "eps": 0.0, "eps_label": "0",
                                 "robust_acc": first.clean_acc, "ci_lo": lo, "ci_hi": hi, "n": int(first.n_done),
                                 "from": "clean predictions", "dataset": first.dataset_label, "device": first.device})
                for r in cur.itertuples():
                    lo, hi = wilson(r.robust_k, r.n_done)
                    rows.append({"model": m, "attack": lbl, "norm": norm, "eps": float(r.eps),
                                 "eps_label": eps_text(r.eps, norm), "robust_acc": r.robust_acc, "ci_lo": lo,
                                 "ci_hi": hi, "n": int(r.n_done), "from": f"run {r.run_id}",
                                 "dataset": r.dataset_label, "device": r.device})
    return pd.DataFrame(rows)


@section("eps_curves", "Robust accuracy vs eps", order=20, needs="attack runs at eps > 0")
def eps_curves(ctx: ReportContext) -> SectionResult:
    tab = curve_table(ctx)
    if tab.empty or not (tab.eps > 0).any():
        raise SectionSkipped("no attack ran at eps > 0 (only clean runs)" if len(ctx.runs) else
                             "no evaluated examples in the store")
    def n_eps(a: str, n: str) -> int:
        return tab[(tab.attack == a) & (tab.norm == n) & (tab.eps > 0)].groupby("model").eps.nunique().max()

    pairs = [(a, n) for n in ("Linf", "L2") for a in ctx.attacks(n) if ((tab.attack == a) & (tab.norm == n)).any()]
    # a curve needs two eps > 0: single-eps attacks (e.g. AutoAttack at 8/255) are in the main table only
    panels = [p for p in pairs if n_eps(*p) >= 2]
    single = [p for p in pairs if p not in panels]
    if not panels:
        raise SectionSkipped("no attack was run over an eps grid (two or more eps > 0); single-eps results are in the "
                             "main table")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = ctx.figure(nrows, ncols, size=(4.8, 3.7))
    handles = {}
    for k, (lbl, norm) in enumerate(panels):
        ax = axes[k // ncols][k % ncols]
        scale, xlabel = eps_axis(norm)
        sub = tab[(tab.attack == lbl) & (tab.norm == norm)]
        for m in ctx.models:
            g = sub[sub.model == m].sort_values("eps")
            if g.empty:
                continue
            st = ctx.style(m)
            x = g.eps.to_numpy() * scale
            (h,) = ax.plot(x, 100 * g.robust_acc, color=st["color"], linestyle=st["linestyle"], marker=st["marker"],
                           markersize=4, linewidth=1.8 if ctx.meta(m).family == "static" else 1.4,
                           label=ctx.label(m))
            ax.fill_between(x, 100 * g.ci_lo, 100 * g.ci_hi, color=st["color"], alpha=0.08, linewidth=0)
            handles[ctx.label(m)] = h
        ns = sorted(set(sub.n))
        ax.set_title(f"{lbl}{'' if norm in lbl else f' ({norm})'}, n={'/'.join(map(str, ns))}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(-2, 102)
        std = STANDARD_EPS.get(norm)
        if std is not None and sub.eps.max() >= std:
            ax.axvline(std * scale, color="#999999", linestyle=":", linewidth=1)
    for k in range(len(panels), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    any_at = any(ctx.meta(m).training == "at" for m in ctx.models)
    title = "model (static: black" + ("; dashed: adversarially trained)" if any_at else ")")
    if len(panels) < nrows * ncols:  # the legend fills the first empty panel
        lax = axes[nrows - 1][ncols - 1]
        lax.set_visible(True)
        lax.axis("off")
        lax.legend(list(handles.values()), list(handles.keys()), loc="center", frameon=False, title=title,
                   ncol=1 if len(handles) <= 8 else 2)
        bottom = 0.0
    else:
        n_items = len(handles)
        ncol = n_items if n_items <= 8 else math.ceil(n_items / 2)
        legend_rows = math.ceil(n_items / ncol)
        bottom = (0.55 + 0.22 * legend_rows) / fig.get_figheight()
        # matplotlib fills legend columns first: reorder so that models read row by row
        order = [r * ncol + c for c in range(ncol) for r in range(legend_rows) if r * ncol + c < n_items]
        hs, ls = list(handles.values()), list(handles.keys())
        fig.legend([hs[i] for i in order], [ls[i] for i in order], loc="lower center", ncol=ncol,
                   bbox_to_anchor=(0.5, 0.0), frameon=False, title=title)
    titled(fig, "Robust accuracy vs attack budget ε, per attack",
           f"{ctx.data_text(n=False)}; ε = 0: clean accuracy; bands: Wilson 95% CI; dotted line: standard ε",
           rect=(0, bottom, 1, 1))
    png = ctx.save_figure(fig, "robust_acc_vs_eps")
    csv = ctx.save_table(tab, "robust_acc_vs_eps")
    md = [f"Robust accuracy against the attack budget, one curve per model and one panel per attack "
          f"({ctx.data_text()}). An ascending sweep attacks at each ε only the examples still robust at the "
          "previous ε, so every curve is monotone.", "", ctx.md_figure(png, "Robust accuracy vs eps"), "",
          f"Data: {ctx.md_csv(csv, 'robust_acc_vs_eps.csv')}."]
    if single:
        md += ["", "Run at a single ε only (so not drawn as curves; see the main table): "
               + ", ".join(f"{a}" + ("" if n in a else f" ({n})") for a, n in single) + "."]
    return SectionResult("\n".join(md), files=[png, csv], findings=_curve_findings(ctx, tab))


def _curve_findings(ctx: ReportContext, tab: pd.DataFrame) -> list[str]:
    out = []
    for lbl, norm in [(a, n) for n in ("Linf", "L2") for a in ctx.attacks(n)]:
        sub = tab[(tab.attack == lbl) & (tab.norm == norm)]
        grid = sorted(set(sub[sub.eps > 0].eps))
        if len(grid) < 2:
            continue
        e = ctx.mid_eps(lbl, norm)
        if e is None:
            continue
        at = sub[(sub.eps - e).abs() < 1e-9].set_index("model")
        parts = []
        for m in ctx.models:
            if m not in at.index:
                continue
            r = at.loc[m]
            text = f"{m} {pct(r.robust_acc)}%"
            st = ctx.meta(m).base_static
            if ctx.meta(m).dynamic and st in at.index:
                text += f" ({100 * (r.robust_acc - at.loc[st].robust_acc):+.1f} pt vs {st})"
            parts.append(text)
        out.append(f"{lbl} at {eps_text(e, norm)} ({norm}; the grid ε where mean robust accuracy is closest to half "
                   f"the clean accuracy): " + ", ".join(parts) + ".")
    return out


# ------------------------------------------------------------------------------------ accuracy vs K

def _k_models(ctx: ReportContext, names) -> dict[int, str]:
    """K -> model name among static (K=1) and dyconv_kK, standard training, ResNet-20."""
    out = {}
    for m in names:
        meta = ctx.meta(m)
        if meta.arch == "resnet20" and meta.training == "standard" and meta.family in ("static", "dyconv"):
            out.setdefault(1 if meta.family == "static" else meta.K, m)
    return dict(sorted(out.items()))


def _kept_epoch(history: list[dict]) -> dict | None:
    kept = [h for h in history if h.get("kept")]
    return kept[-1] if kept else (history[-1] if history else None)


@section("kernels", "Accuracy vs number of kernels K", order=30,
         needs="static and dyconv_k2..k5 in the store or the zoo manifest")
def kernels(ctx: ReportContext) -> SectionResult:
    files, md, notes, findings = [], [], [], []
    ks = _k_models(ctx, ctx.models)
    # --- from the store: clean and robust accuracy vs K
    if len(ks) >= 2:
        rows = []
        ref = ctx.reference_attack(list(ks.values()))
        for K, m in ks.items():
            cr = ctx.clean_run(m)
            lo, hi = wilson(cr.clean_k, cr.n_done)
            rows.append({"K": K, "model": m, "what": "clean", "norm": "", "eps": 0.0, "acc": cr.clean_acc,
                         "ci_lo": lo, "ci_hi": hi, "n": int(cr.n_done)})
            for norm, eps in STANDARD_EPS.items():
                for lbl in ctx.attacks(norm):
                    r = ctx.select_run(m, lbl, norm, eps)
                    if r is not None:
                        lo, hi = wilson(r.robust_k, r.n_done)
                        rows.append({"K": K, "model": m, "what": f"{lbl} @ {eps_text(eps, norm)}", "norm": norm,
                                     "eps": eps, "acc": r.robust_acc, "ci_lo": lo, "ci_hi": hi, "n": int(r.n_done)})
            if ref is not None:
                for r in ctx.curve(m, *ref).itertuples():
                    if r.eps > 0:
                        lo, hi = wilson(r.robust_k, r.n_done)
                        rows.append({"K": K, "model": m, "what": f"{ref[0]} @ {eps_text(r.eps, ref[1])}",
                                     "norm": ref[1], "eps": float(r.eps), "acc": r.robust_acc, "ci_lo": lo,
                                     "ci_hi": hi, "n": int(r.n_done)})
        tab = pd.DataFrame(rows).drop_duplicates(["K", "what"])
        ncols = 2 if ref is not None else 1
        fig, axes = ctx.figure(1, ncols, size=(5.4, 3.9))
        ax = axes[0][0]
        std_whats = ["clean"] + [w for w in dict.fromkeys(tab.what) if w != "clean" and
                                 any(w.endswith(f"@ {eps_text(e, n)}") for n, e in STANDARD_EPS.items())]
        colors = ["#000000", "#1f77b4", "#d62728", "#9467bd", "#ff7f0e", "#2ca02c", "#8c564b"]
        for i, w in enumerate(std_whats):
            g = tab[tab.what == w].sort_values("K")
            ax.errorbar(g.K, 100 * g.acc, yerr=_yerr(g.acc, g.ci_lo, g.ci_hi),
                        color=colors[i % len(colors)], marker="o", capsize=3, linewidth=1.5, label=w)
        ax.set_title(f"Clean and robust accuracy at the standard ε (n={'/'.join(map(str, sorted(set(tab.n))))})")
        ax.set_xlabel("K (number of kernels; K=1: static ResNet-20)")
        ax.set_ylabel("accuracy (%)")
        ax.set_xticks(list(ks))
        ax.set_ylim(-2, 102)
        ax.legend(loc="best")
        if ref is not None:
            ax = axes[0][1]
            from matplotlib import colormaps

            whats = [w for w in dict.fromkeys(tab.what) if w.startswith(f"{ref[0]} @ ")]
            whats = sorted(whats, key=lambda w: float(tab[tab.what == w].eps.iloc[0]))
            cmap = colormaps["viridis"]
            g0 = tab[tab.what == "clean"].sort_values("K")
            ax.plot(g0.K, 100 * g0.acc, color="#000000", marker="o", linestyle="--", label="clean")
            for i, w in enumerate(whats):
                g = tab[tab.what == w].sort_values("K")
                ax.errorbar(g.K, 100 * g.acc, yerr=_yerr(g.acc, g.ci_lo, g.ci_hi),
                            color=cmap(i / max(1, len(whats) - 1) * 0.9), marker="o", capsize=3, linewidth=1.4,
                            label=f"ε = {w.split(' @ ')[1]}")
            ax.set_title(f"{ref[0]} ({ref[1]}) over its ε grid")
            ax.set_xlabel("K (number of kernels; K=1: static ResNet-20)")
            ax.set_ylabel("robust accuracy (%)")
            ax.set_xticks(list(ks))
            ax.set_ylim(-2, 102)
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="input")
        titled(fig, "Accuracy vs number of DyConv kernels K (ResNet-20, standard training)",
               f"{ctx.data_text(ctx.runs[ctx.runs.model.isin(list(ks.values()))])}; error bars: Wilson 95% CI")
        files += [ctx.save_figure(fig, "accuracy_vs_K"), ctx.save_table(tab, "accuracy_vs_K")]
        md += ["### Clean and robust accuracy vs K (results store)", "",
               f"Models: {', '.join(f'K={k}: {m}' for k, m in ks.items())}.", "",
               ctx.md_figure(files[-2], "Accuracy vs K"), "", f"Data: {ctx.md_csv(files[-1], 'accuracy_vs_K.csv')}.",
               ""]
        c = tab[tab.what == "clean"].sort_values("K")
        findings.append("Clean accuracy vs K: " + ", ".join(f"K={int(r.K)} {pct(r.acc)}%" for r in c.itertuples())
                        + f" (n={'/'.join(map(str, sorted(set(c.n))))}).")
        for w in std_whats[1:]:
            g = tab[tab.what == w].sort_values("K")
            findings.append(f"{w} vs K: " + ", ".join(f"K={int(r.K)} {pct(r.acc)}%" for r in g.itertuples()) + ".")
    else:
        notes.append("The store holds fewer than two of static, dyconv_k2..k5 (standard training): no clean/robust "
                     "accuracy vs K from the store.")
    # --- from the zoo manifest: training and validation accuracy vs K, training curves
    man = ctx.manifest
    mks = _k_models(ctx, list(man))
    if len(mks) >= 2:
        rows, curves = [], []
        for K, m in mks.items():
            e = man[m]
            hist = e.get("history") or []
            kept = _kept_epoch(hist) or {}
            met = e.get("metrics", {})
            rec = e.get("recipe") or {}
            rows.append({"K": K, "model": m, "epochs": len(hist), "kept_epoch": kept.get("epoch"),
                         "recipe": (rec.get("note") or "").split(";")[0].strip() or "the first zoo's recipe",
                         "batch_size": rec.get("batch_size"),
                         "train_acc": kept.get("train_acc"), "holdout_acc": kept.get("holdout_acc"),
                         "test_clean_acc": met.get("clean_acc"), "test_n": met.get("clean_n"),
                         "holdout_n": (e.get("recipe") or {}).get("holdout"),
                         "train_n": ((e.get("dataset") or {}).get("train") or {}).get("n_used"),
                         "data": met.get("clean_data") or (e.get("dataset") or {}).get("label"),
                         "device": e.get("device"), "sha256": e.get("sha256")})
            for h in hist:
                curves.append({"K": K, "model": m, **{k: h.get(k) for k in ("epoch", "train_acc", "holdout_acc",
                                                                             "train_loss", "lr", "temperature",
                                                                             "kept")}})
        tab = pd.DataFrame(rows)
        cur = pd.DataFrame(curves)
        data = ", ".join(sorted(set(map(str, tab.data.dropna())))) or "CIFAR-10"
        dev = ", ".join(sorted(set(map(str, tab.device.dropna())))) or "unknown device"
        hold_n = "/".join(str(int(v)) for v in sorted(set(tab.holdout_n.dropna())))
        test_n = "/".join(str(int(v)) for v in sorted(set(tab.test_n.dropna())))
        train_n = "/".join(str(int(v)) for v in sorted(set(tab.train_n.dropna()))) or "?"
        fig, axes = ctx.figure(1, 1, size=(9.6, 4.2))
        ax = axes[0][0]
        for col, ncol, name, color, mk in (
                ("train_acc", None, "train (running over the epoch, augmented; no CI)", "#1f77b4", "o"),
                ("holdout_acc", "holdout_n", f"validation (held-out train images, n={hold_n})", "#d62728", "s"),
                ("test_clean_acc", "test_n", f"test (n={test_n})", "#000000", "^")):
            g = tab.dropna(subset=[col])
            ns = g[ncol] if ncol else [math.nan] * len(g)
            ci = [wilson(a * n, n) if n == n and n else (a, a) for a, n in zip(g[col], ns, strict=True)]
            lo = np.array([a - c[0] for a, c in zip(g[col], ci, strict=True)])
            hi = np.array([c[1] - a for a, c in zip(g[col], ci, strict=True)])
            ax.errorbar(g.K, 100 * g[col], yerr=_yerr(0, -np.nan_to_num(lo), np.nan_to_num(hi)), marker=mk,
                        color=color, label=name, linewidth=1.6, capsize=3)
        ax.set_xlabel("K (number of kernels; K=1: static ResNet-20)")
        ax.set_ylabel("accuracy (%)")
        ax.set_xticks(list(mks))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_title("At the kept epoch (the checkpoint)")
        titled(fig, "Training and validation accuracy vs number of kernels K", f"{data}; train n={train_n}; trained "
               f"on {dev}; from models/manifest.json; error bars: Wilson 95% CI")
        files += [ctx.save_figure(fig, "train_val_acc_vs_K"), ctx.save_table(tab, "train_val_acc_vs_K")]
        fig, axes = ctx.figure(1, 2, size=(5.2, 3.8))
        from matplotlib.ticker import MaxNLocator

        for j, (col, what) in enumerate((("train_acc", "training accuracy (running, augmented)"),
                                         ("holdout_acc", f"validation accuracy (held-out, n={hold_n})"))):
            ax = axes[0][j]
            for K, m in mks.items():
                g = cur[cur.model == m].dropna(subset=[col])
                color = ctx.style(m)["color"]
                ax.plot(g.epoch, 100 * g[col], color=color, linewidth=1.5, label=f"K={K} ({m})")
                k = g[g.kept.fillna(False).astype(bool)]
                if len(k):
                    ax.plot(k.epoch.iloc[-1], 100 * k[col].iloc[-1], marker="*", markersize=10, color=color,
                            linestyle="none")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("accuracy (%)")
            ax.set_title(what)
            ax.legend(loc="lower right", fontsize=8)
        titled(fig, "Training curves per number of kernels K", f"{data}; train n={train_n}; trained on {dev}; "
               "★ = kept epoch (the checkpoint)")
        files += [ctx.save_figure(fig, "training_curves_vs_K"), ctx.save_table(cur, "training_curves_vs_K")]
        disp = pd.DataFrame({"K": tab.K, "model": tab.model, "epochs": tab.epochs, "kept epoch": tab.kept_epoch,
                             "train (%)": [pct(v) for v in tab.train_acc],
                             "validation (%)": [pct(v) for v in tab.holdout_acc],
                             "test (%)": [pct(v) for v in tab.test_clean_acc]})
        budgets = tab[["recipe", "epochs", "batch_size"]].astype(str).drop_duplicates()
        if len(budgets) > 1:
            parts = "; ".join(f"{', '.join(tab[(tab.recipe == b.recipe) & (tab.epochs.astype(str) == b.epochs)].model)}"
                              f": {b.recipe}, {b.epochs} epochs, batch {b.batch_size}" for b in budgets.itertuples())
            notes.append(f"These checkpoints were trained with different recipes or budgets ({parts}): their "
                         "accuracies vs K mix the effect of K with that of training; compare them once the zoo "
                         "shares one recipe.")
        md += ["### Training and validation accuracy vs K (zoo manifest)", "",
               f"From `models/manifest.json`: accuracy at the kept epoch (the checkpoint's epoch, chosen on the "
               f"validation split of {hold_n} held-out training images), and clean test accuracy on {test_n} test "
               f"images ({data}). Training accuracy is the running accuracy over the epoch on augmented images.", "",
               ctx.md_table(disp, ["r", "l", "r", "r", "r", "r", "r"]), "",
               ctx.md_figure(files[-4], "Training and validation accuracy vs K"), "",
               ctx.md_figure(files[-2], "Training curves per K"), "",
               f"Data: {ctx.md_csv(files[-3], 'train_val_acc_vs_K.csv')}, "
               f"{ctx.md_csv(files[-1], 'training_curves_vs_K.csv')}."]
        findings.append("Validation accuracy at the kept epoch vs K: " + ", ".join(
            f"K={int(r.K)} {pct(r.holdout_acc)}%" for r in tab.itertuples()) + f" (n={hold_n}); test accuracy: "
            + ", ".join(f"K={int(r.K)} {pct(r.test_clean_acc)}%" for r in tab.itertuples()) + f" (n={test_n}).")
        store_sha = {m: s for m, s in zip(ctx.runs.model, ctx.runs.checkpoint_sha256, strict=True)}
        differ = [r.model for r in tab.itertuples() if r.model in store_sha and r.sha256 and
                  store_sha[r.model] != r.sha256]
        if differ:
            notes.append(f"The manifest describes other checkpoints than the store's runs for {', '.join(differ)} "
                         "(different sha256): the two parts of this section are about different weights.")
    else:
        why = ctx.manifest_error or "the zoo manifest lists fewer than two of static, dyconv_k2..k5"
        notes.append(f"No training curves: {why}.")
    if not files:
        raise SectionSkipped("fewer than two of static, dyconv_k2..k5 in the store or the zoo manifest"
                             + (f" ({ctx.manifest_error})" if ctx.manifest_error else ""))
    return SectionResult("\n".join(md), files=files, findings=findings, notes=notes)
