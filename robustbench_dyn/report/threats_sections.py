"""Report sections for the dynamic-aware threat studies (the ``threats`` table, see
:mod:`robustbench_dyn.threats`): energy attack on gates, attention attacks, BPDA/EOT with the masking
verdict, and the transfer matrix. Importing this module registers the four sections (orders 82-88,
after the sanity checks); each builder is also a plain function of a :class:`ReportContext`.

Each section reads the rows of each model's newest checkpoint and, where a (model, threat, eps) was run
several times, the row with the most examples (then the newest).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .core import ReportContext, SectionResult, SectionSkipped, eps_text, model_sort_key, model_style, pct, section
from .plotting import titled

_THREAT_ORDER = {"pgd": 0, "attn-shift": 1, "attn-target": 2}


def threats_frame(ctx: ReportContext, threat: str | tuple[str, ...]) -> pd.DataFrame:
    """The decoded ``threats`` rows of ``threat`` (one row per model, threat, eps and target)."""
    from ..threats.store import read_threats

    df = read_threats(ctx.store_path)
    if df.empty:
        return df
    wanted = (threat,) if isinstance(threat, str) else threat
    df = df[df.threat.isin(wanted)].copy()
    if df.empty:
        return df
    latest = df.sort_values("created_at").groupby("model")["checkpoint_sha256"].last()
    df = df[df.checkpoint_sha256 == df.model.map(latest)]
    df["target_model"] = df["target_model"].fillna("")
    df = df.sort_values(["n", "created_at"], ascending=[False, False])
    df = df.drop_duplicates(["model", "threat", "eps", "target_model"])
    df["_order"] = [model_sort_key(m) for m in df.model]
    df["_threat"] = [_THREAT_ORDER.get(t, 9) for t in df.threat]
    return df.sort_values(["_order", "_threat", "eps"]).drop(columns=["_order", "_threat"]).reset_index(drop=True)


def _subtitle(df: pd.DataFrame) -> str:
    labels = " + ".join(sorted(set(map(str, df.dataset_label.fillna(df.dataset_id)))))
    ns = sorted({int(v) for v in df.n})
    devs = " + ".join(sorted(set(map(str, df.device.fillna("unknown device")))))
    return f"{labels}, n={ns[0] if len(ns) == 1 else f'{ns[0]}-{ns[-1]}'}, {devs}"


def _untrained_note(df: pd.DataFrame) -> list[str]:
    names = sorted(set(df[df.untrained == 1].model))
    return [f"UNTRAINED (random weights, smoke test only): {', '.join(names)}."] if names else []


# ------------------------------------------------------------------------------------------- energy

@section("threat_energy", "Energy attack on gates: executed MACs", order=82,
         needs="`robustdyn threats` rows of the energy study (gated models)")
def energy_section(ctx: ReportContext) -> SectionResult:
    df = threats_frame(ctx, "energy")
    if df.empty:
        raise SectionSkipped("no energy-attack rows in the store (run `robustdyn threats` on a gated model)")
    sub = _subtitle(df)
    table = pd.DataFrame({
        "model": df.model, "eps": [eps_text(e, "Linf") for e in df.eps], "n": df.n,
        "MACs clean (M)": (df.macs_clean / 1e6).round(3), "MACs attacked (M)": (df.macs_adv / 1e6).round(3),
        "% of static MACs, clean": (100 * df.frac_clean).round(2),
        "% of static MACs, attacked": (100 * df.frac_adv).round(2),
        "increase (x)": df.increase.round(4),
        "gate density clean": df.density_clean.round(4), "gate density attacked": df.density_adv.round(4),
        "examples with more MACs (%)": (100 * df.frac_examples_up).round(1),
        "label changed (%)": (100 * df.label_changed).round(1),
        "acc clean (%)": (100 * df.acc_clean).round(1), "acc attacked (%)": (100 * df.acc_adv).round(1),
    })
    csv = ctx.save_table(table.assign(eps_value=df.eps, macs_static=df.macs_static, macs_full=df.macs_full),
                         "threat_energy")
    models = list(dict.fromkeys(df.model))
    fig, axes = ctx.figure(1, 2, size=(5.2, 3.8))
    ax = axes[0][0]
    for m in models:
        g = df[df.model == m].sort_values("eps")
        st = model_style(m)
        x = 255 * g.eps.to_numpy()
        ax.plot(x, 100 * g.frac_adv, marker=st["marker"], color=st["color"], linestyle=st["linestyle"],
                markerfacecolor="white" if st["linestyle"] != "-" else st["color"], label=f"{m}: attacked")
        ax.plot(x, 100 * g.frac_clean, color=st["color"], linestyle=":", linewidth=1.0, label=f"{m}: clean")
        ax.annotate(m, (x[-1], 100 * g.frac_adv.iloc[-1]), xytext=(4, 4), textcoords="offset points", fontsize=8,
                    color=st["color"])
    ax.axhline(100, color="#000000", linewidth=0.8, linestyle="--", label="static ResNet-20 (100%)")
    ax.set_xlabel("ε (Linf, ×1/255)")
    ax.set_ylabel("executed MACs (% of the static network)")
    ax.set_ylim(0, 105)
    ax.set_title("Executed MACs: clean vs energy attack", fontsize=10)
    ax.legend(fontsize=7.5, loc="center right")
    ax = axes[0][1]
    m0 = models[0]
    g = df[df.model == m0].sort_values("eps")
    dc = np.asarray(g.result.iloc[-1].get("density_blocks_clean") or [], dtype=float)
    da = np.asarray(g.result.iloc[-1].get("density_blocks_adv") or [], dtype=float)
    if len(dc):
        idx = np.arange(len(dc))
        ax.bar(idx - 0.2, 100 * dc, width=0.4, color="#9ecae1", label="clean")
        ax.bar(idx + 0.2, 100 * da, width=0.4, color="#238b45",
               label=f"energy attack, ε = {eps_text(float(g.eps.iloc[-1]), 'Linf')}")
        ax.set_xticks(idx)
        ax.set_xticklabels([f"B{i + 1}" for i in idx])
        ax.set_xlabel("gated block")
        ax.set_ylabel("open gates (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{m0}: gate density per block", fontsize=10)
        ax.legend(fontsize=7.5)
    else:
        ax.set_visible(False)
    titled(fig, "Energy attack (PGD maximising gate activation): executed MACs", sub)
    png = ctx.save_figure(fig, "threat_energy")
    findings = []
    for m in models:
        g = df[df.model == m].sort_values("eps")
        r = g.iloc[-1]
        findings.append(f"{m}: under the energy attack at ε = {eps_text(r.eps, 'Linf')} the executed MACs go from "
                        f"{pct(r.frac_clean)}% to {pct(r.frac_adv)}% of the static ResNet-20's (x{r.increase:.3f}; "
                        f"{pct(r.frac_examples_up)}% of examples cost more), and the label changes on "
                        f"{pct(r.label_changed)}% of examples (n={int(r.n)}).")
    md = ["An ILFO-style energy attack (Haque et al., CVPR 2020): PGD-20 maximising the gates' soft activation "
          "(sigmoid of the gate logits, weighted by each block's share of the gated MACs; BPDA through the hard "
          "gates of earlier blocks). Executed MACs use the hard gates in eval mode (`costs.gated_cost` with the "
          "measured per-block densities) and are shown as a fraction of the static ResNet-20's MACs. The returned "
          "example per input is the iterate with the most executed MACs; the label is not targeted, so "
          "'label changed' is a side effect.", "",
          ctx.md_table(table), "", ctx.md_csv(csv, "CSV"), "", ctx.md_figure(png, "Executed MACs under the energy "
                                                                                  "attack")]
    return SectionResult("\n".join(md), [csv, png], findings, _untrained_note(df))


# ---------------------------------------------------------------------------------------- attention

_ATTN_LABEL = {"pgd": "label PGD-20 (CE)", "attn-shift": "attention shift (KL)", "attn-target": "targeted kernel"}
_ATTN_STYLE = {"pgd": ("#444444", "-"), "attn-shift": ("#d62728", "--"), "attn-target": ("#9467bd", ":")}


@section("threat_attention", "Attention attacks vs label PGD", order=84,
         needs="`robustdyn threats` rows of the attention study (DyConv/ODConv models)")
def attention_section(ctx: ReportContext) -> SectionResult:
    df = threats_frame(ctx, ("pgd", "attn-shift", "attn-target"))
    if df.empty:
        raise SectionSkipped("no attention-attack rows in the store (run `robustdyn threats` on dyconv/odconv)")
    sub = _subtitle(df)

    def label(r) -> str:
        base = _ATTN_LABEL.get(r.threat, r.threat)
        return base + (f" (k={int(r.target)})" if r.threat == "attn-target" and r.target == r.target else "")

    table = pd.DataFrame({
        "model": df.model, "attack": [label(r) for r in df.itertuples()], "eps": [eps_text(e, "Linf") for e in df.eps],
        "n": df.n, "acc clean (%)": (100 * df.acc_clean).round(1), "acc attacked (%)": (100 * df.acc_adv).round(1),
        "drop (pt)": (100 * df.acc_drop).round(1), "KL (mean/layer)": df.kl.round(5), "KL (sum)": df.kl_sum.round(4),
        "TV (mean/layer)": df.tv.round(4), "dominant kernel changed (%)": (100 * df.dominant_changed).round(1),
        "attn on target, clean": df.get("target_attn_clean", pd.Series(np.nan, index=df.index)).round(3),
        "attn on target, attacked": df.get("target_attn_adv", pd.Series(np.nan, index=df.index)).round(3),
    })
    csv = ctx.save_table(table.assign(eps_value=df.eps), "threat_attention")
    models = list(dict.fromkeys(df.model))
    fig, axes = ctx.figure(2, len(models), size=(4.4, 3.3))
    for j, m in enumerate(models):
        for a in ("pgd", "attn-shift", "attn-target"):
            g = df[(df.model == m) & (df.threat == a)].sort_values("eps")
            if g.empty:
                continue
            color, ls = _ATTN_STYLE[a]
            x = 255 * g.eps.to_numpy()
            axes[0][j].plot(x, 100 * g.acc_drop, marker="o", color=color, linestyle=ls, label=_ATTN_LABEL[a])
            axes[1][j].plot(x, g.kl, marker="o", color=color, linestyle=ls, label=_ATTN_LABEL[a])
        axes[0][j].set_title(m, fontsize=10)
        axes[0][j].set_ylabel("accuracy drop (pt)")
        axes[0][j].set_ylim(bottom=0)
        axes[1][j].set_ylabel("attention shift: KL(clean‖attacked), mean/layer")
        axes[1][j].set_xlabel("ε (Linf, ×1/255)")
        if (df[df.model == m].kl > 0).all():
            axes[1][j].set_yscale("log")
        axes[0][j].legend(fontsize=7)
    titled(fig, "Attention attacks vs label PGD: accuracy drop (top) and attention shift (bottom)", sub)
    png = ctx.save_figure(fig, "threat_attention")
    findings = []
    for m in models:
        g = df[df.model == m]
        emax = g.eps.max()
        at = {r.threat: r for r in g[(g.eps - emax).abs() < 1e-12].itertuples()}
        if "pgd" in at and "attn-shift" in at:
            p, s = at["pgd"], at["attn-shift"]
            ratio = s.kl / p.kl if p.kl > 0 else math.inf
            findings.append(f"{m} at ε = {eps_text(emax, 'Linf')}: the attention-shift attack moves the kernel "
                            f"attention {ratio:.1f}x as far as label PGD (KL {s.kl:.2g} vs {p.kl:.2g} per layer) but "
                            f"costs {100 * s.acc_drop:.1f} pt of accuracy against PGD's {100 * p.acc_drop:.1f} pt "
                            f"(n={int(p.n)}).")
        if "attn-target" in at:
            t = at["attn-target"]
            findings.append(f"{m}: the targeted attack raises the attention on kernel {int(t.target)} from "
                            f"{t.target_attn_clean:.3f} to {t.target_attn_adv:.3f} (mean over layers) at "
                            f"ε = {eps_text(emax, 'Linf')}, with {100 * t.acc_drop:.1f} pt accuracy drop.")
    md = ["Two attacks aimed at the kernel attention rather than the label, next to label PGD-20 (cross-entropy) at "
          "the same ε, all 20 steps of size ε/4 from the same random starts: **attention shift** maximises "
          "Σ_layers KL(clean attention ‖ attacked attention); **targeted kernel** maximises Σ_layers log a[k] for "
          "a chosen kernel k. Accuracy is robust accuracy (correct on the clean and on the attacked input); the "
          "shift is measured per layer (mean over layers) by the dynamics probe, on the kernel attention "
          "(ODConv K=1: the spatial attention).", "", ctx.md_table(table), "", ctx.md_csv(csv, "CSV"), "",
          ctx.md_figure(png, "Attention attacks vs label PGD")]
    return SectionResult("\n".join(md), [csv, png], findings, _untrained_note(df))


# ----------------------------------------------------------------------------------------- adaptive

@section("threat_adaptive", "Adaptive attacks (BPDA, EOT) and the masking verdict", order=86,
         needs="`robustdyn threats` rows of the adaptive study")
def adaptive_section(ctx: ReportContext) -> SectionResult:
    from .core import wilson

    df = threats_frame(ctx, "adaptive")
    if df.empty:
        raise SectionSkipped("no adaptive-attack rows in the store (run `robustdyn threats`)")
    sub = _subtitle(df)

    def ci(acc, n) -> str:
        if acc is None or (isinstance(acc, float) and math.isnan(acc)):
            return ""
        lo, hi = wilson(round(acc * n), n)
        return f"{100 * acc:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"

    table = pd.DataFrame({
        "model": df.model, "eps": [eps_text(e, "Linf") for e in df.eps], "n": df.n,
        "clean (%)": (100 * df.acc_clean).round(1),
        "direct PGD (%) [95% CI]": [ci(a, n) for a, n in zip(df.acc_direct, df.n, strict=True)],
        "BPDA (%) [95% CI]": [ci(a, n) for a, n in zip(df.acc_bpda, df.n, strict=True)],
        "EOT (%)": [ci(a, n) for a, n in zip(df.get("acc_eot", pd.Series([None] * len(df))), df.n, strict=True)],
        "worst case (%)": (100 * df.acc_worst).round(1),
        "b / c": [f"{int(b)} / {int(c)}" for b, c in zip(df.b, df.c, strict=True)],
        "McNemar p": [f"{p:.2g}" for p in df.p_value],
        "verdict": [f"**{v.upper()}**" if v == "masked" else v for v in df.verdict],
    })
    csv = ctx.save_table(df[["model", "eps", "n", "acc_clean", "acc_direct", "acc_bpda", "acc_eot", "acc_worst",
                             "b", "c", "diff_pt", "p_value", "verdict", "verdict_text", "note"]].assign(
        eps_label=[eps_text(e, "Linf") for e in df.eps]), "threat_adaptive")
    files = [csv]
    gated = df[df.gated == 1] if "gated" in df else df.iloc[0:0]
    png = None
    if not gated.empty:
        models = list(dict.fromkeys(gated.model))
        fig, axes = ctx.figure(1, len(models), size=(4.6, 3.6))
        for j, m in enumerate(models):
            ax = axes[0][j]
            g = gated[gated.model == m].sort_values("eps")
            idx = np.arange(len(g))
            for off, col, color, lab in ((-0.2, "acc_direct", "#7f7f7f", "direct PGD-20"),
                                         (0.2, "acc_bpda", "#238b45", "PGD-20 + BPDA")):
                vals = g[col].astype(float).to_numpy()
                los, his = zip(*[wilson(round(v * n), n) for v, n in zip(vals, g.n, strict=True)], strict=True)
                ax.bar(idx + off, 100 * vals, width=0.4, color=color, label=lab,
                       yerr=np.clip([100 * (vals - np.array(los)), 100 * (np.array(his) - vals)], 0, None), capsize=3)
            for i, r in enumerate(g.itertuples()):
                if r.verdict in ("masked", "possibly masked"):
                    ax.annotate("MASKED" if r.verdict == "masked" else "masked?", (i, 100 * max(r.acc_direct, 0) + 4),
                                ha="center", color="#b2182b", fontsize=8, fontweight="bold")
            ax.set_xticks(idx)
            ax.set_xticklabels([eps_text(e, "Linf") for e in g.eps])
            ax.set_xlabel("ε (Linf)")
            ax.set_ylabel("robust accuracy (%), 95% CI")
            ax.set_title(m, fontsize=10)
            ax.legend(fontsize=7.5)
        titled(fig, "Direct attack vs BPDA through the hard gates", sub)
        png = ctx.save_figure(fig, "threat_adaptive")
        files.append(png)
    masked = df[df.verdict == "masked"]
    possibly = df[df.verdict == "possibly masked"]
    findings, lines = [], []
    for r in masked.itertuples():
        s = (f"**{r.model} @ ε = {eps_text(r.eps, 'Linf')}: the direct robust accuracy ({pct(r.acc_direct)}%) was "
             f"MASKED** — {r.adaptive.upper()} brings it to {pct(r.acc_adaptive)}% ({r.diff_pt:.1f} pt lower, "
             f"b={int(r.b)}, c={int(r.c)}, McNemar p={r.p_value:.2g}, n={int(r.n)}).")
        lines.append(s)
        findings.append(s.replace("**", ""))
    for r in possibly.itertuples():
        s = (f"{r.model} @ ε = {eps_text(r.eps, 'Linf')}: {r.adaptive.upper()} is {r.diff_pt:.1f} pt below the direct "
             f"attack, not significant at n={int(r.n)} (p={r.p_value:.2g}): possibly masked; rerun with more examples.")
        lines.append(s)
        findings.append(s)
    applicable = df[df.verdict != "not applicable"]
    if masked.empty and possibly.empty:
        s = ("No masking detected: on every gated model and ε, BPDA through the hard gates is no stronger than the "
             f"direct attack by more than 0.5 pt ({len(applicable)} comparisons)." if len(applicable) else
             "No model with hard gates or a stochastic component: BPDA and EOT reduce to the direct attack.")
        lines.append(s)
        findings.append(s)
    notes = sorted({str(n) for n in df.note if n})
    md = ["**Direct** is PGD-20 (cross-entropy, step ε/4, random start) through the exact eval-mode model, whose "
          "hard gates have zero input gradient. **BPDA** (Athalye et al. 2018) keeps the hard-gate forward pass and "
          "backpropagates through the sigmoid of the gate logits (`ChannelGate.surrogate = 'bpda'`, set on every "
          "gate only during the attack), from the same random starts. **EOT** averages the gradient over samples of "
          "the model's randomness; every model here is deterministic in eval mode, so EOT equals the direct attack "
          "and is not run (it is implemented and tested on a stochastic model). Verdict: *masked* when the adaptive "
          "attack's robust accuracy is lower by more than 0.5 pt and the exact one-sided McNemar test on the paired "
          "outcomes (b = broken only by the adaptive attack, c = only by the direct one) gives p < 0.05.", "",
          *[f"- {s}" for s in lines], "", ctx.md_table(table), "", ctx.md_csv(csv, "CSV")]
    if png:
        md += ["", ctx.md_figure(png, "Direct vs BPDA")]
    if notes:
        md += ["", *[f"Note: {n}." for n in notes]]
    return SectionResult("\n".join(md), files, findings, _untrained_note(df))


# ----------------------------------------------------------------------------------------- transfer

@section("threat_transfer", "Transfer attacks between static and dynamic models", order=88,
         needs="`robustdyn threats` rows of the transfer study")
def transfer_section(ctx: ReportContext) -> SectionResult:
    df = threats_frame(ctx, "transfer")
    if df.empty:
        raise SectionSkipped("no transfer rows in the store (run `robustdyn threats` on two models or more)")
    sub = _subtitle(df)
    eps = float(df.eps.max())
    df = df[(df.eps - eps).abs() < 1e-12]
    names = sorted(set(df.model) | set(df.target_model), key=model_sort_key)
    mat = pd.DataFrame(np.nan, index=names, columns=names)
    clean = {}
    for r in df.itertuples():
        mat.loc[r.model, r.target_model] = r.acc
        clean[r.target_model] = r.clean_acc
    csv = ctx.save_table(mat.reset_index(names="source \\ target"), "threat_transfer")
    fig, axes = ctx.figure(1, 1, size=(1.3 * len(names) + 2.2, 1.0 * len(names) + 1.6))
    ax = axes[0][0]
    ax.grid(False)
    im = ax.imshow(100 * mat.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=100)
    for i in range(len(names)):
        for j in range(len(names)):
            v = mat.iloc[i, j]
            if v == v:
                ax.text(j, i, f"{100 * v:.1f}", ha="center", va="center", fontsize=9,
                        color="white" if v < 0.5 else "black", fontweight="bold" if i == j else "normal")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{n}\n(clean {pct(clean.get(n))})" for n in names], fontsize=8)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("target model (evaluated)")
    ax.set_ylabel("source model (crafted on)")
    fig.colorbar(im, ax=ax, label="robust accuracy of the target (%)")
    titled(fig, f"Transfer of PGD-20 examples at ε = {eps_text(eps, 'Linf')} (diagonal: white-box)", sub)
    png = ctx.save_figure(fig, "threat_transfer")
    findings, hints = [], []
    for t in names:
        col = mat[t]
        wb = col.get(t)
        others = col.drop(t).dropna()
        if others.empty or wb != wb:
            continue
        src = others.idxmin()
        findings.append(f"{t}: white-box robust accuracy {pct(wb)}%; the strongest transfer (from {src}) leaves "
                        f"{pct(others.min())}%, the weakest {pct(others.max())}% (ε = {eps_text(eps, 'Linf')}).")
        if others.min() < wb:
            hints.append(f"**{t}: a transfer attack (from {src}, {pct(others.min())}%) beats the white-box attack "
                         f"({pct(wb)}%)** — a sign of gradient masking on {t}.")
    md = [f"Adversarial examples crafted with PGD-20 (cross-entropy, final iterate) at ε = {eps_text(eps, 'Linf')} on "
          "each source model (rows) and evaluated on every target (columns): robust accuracy of the target, i.e. "
          "correct on the clean and on the transferred image. The diagonal is each model's white-box robust accuracy "
          "on the same examples. A column whose off-diagonal minimum is below its diagonal would point to gradient "
          "masking on that target.", ""]
    md += [f"- {h}" for h in hints] + ([""] if hints else [])
    md += [ctx.md_table(mat.map(lambda v: round(100 * v, 1) if v == v else v).reset_index(names="source \\ target")),
           "", ctx.md_csv(csv, "CSV"), "", ctx.md_figure(png, "Transfer matrix")]
    return SectionResult("\n".join(md), [csv, png], findings + [h.replace("**", "") for h in hints],
                         _untrained_note(df))
