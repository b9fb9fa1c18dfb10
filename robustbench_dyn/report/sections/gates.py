"""Section 7: gate density per block, channel usage per class, executed MACs of gated models."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..core import STANDARD_EPS, ReportContext, SectionResult, SectionSkipped, eps_text, pct, section
from ..plotting import titled


def gated_models(ctx: ReportContext) -> list[str]:
    out = []
    for m in ctx.models:
        r = ctx.clean_run(m)
        if r is None:
            continue
        ex = ctx.examples(int(r.run_id))
        if ex.gate_density_clean.notna().any():
            out.append(m)
    return out


def _static_macs(ctx: ReportContext, m: str) -> tuple[float | None, str]:
    """MACs of the static counterpart (models table, else the zoo manifest) and its name."""
    st = ctx.meta(m).base_static
    info = ctx.model_info(st)
    if info.get("macs"):
        return float(info["macs"]), st
    man = ctx.manifest.get(st, {})
    if man.get("macs"):
        return float(man["macs"]), st
    return None, st


def _block_names(layout: dict, n: int) -> tuple[list[str], list[int | None]]:
    g = layout.get("gates") or []
    if len(g) != n:
        return [f"B{i + 1}" for i in range(n)], [None] * n
    from .attention import short_name

    names = [short_name(str(b.get("name", i))) for i, b in enumerate(g)]
    return names, [int(b["channels"]) if b.get("channels") else None for b in g]


@section("gates", "Gates: density, channel usage per class, executed MACs", order=70,
         needs="channel-gated models in the store")
def gates_section(ctx: ReportContext) -> SectionResult:
    models = gated_models(ctx)
    if not models:
        raise SectionSkipped("no channel-gated model in the store")
    ref = ctx.reference_attack(models)
    from ...data import CLASSES

    files, md, findings, notes = [], [], [], []
    dens_rows, macs_rows, usage_rows = [], [], []
    for m in models:
        cur = ctx.curve(m, *ref) if ref else pd.DataFrame()
        cur_adv = cur[cur.eps > 0] if len(cur) else cur
        std = STANDARD_EPS.get(ref[1]) if ref else None
        at_std = cur_adv[(cur_adv.eps - std).abs() < 1e-9] if len(cur_adv) else cur_adv
        main_run = at_std.iloc[0] if len(at_std) else (cur_adv.iloc[-1] if len(cur_adv) else ctx.clean_run(m))
        ex = ctx.examples(int(main_run.run_id), detail=True)
        has_detail = "density_blocks_clean" in ex.columns and ex.density_blocks_clean.notna().any()
        if has_detail:
            ex = ex[ex.density_blocks_clean.notna()]
        layout = ctx.layout(m)
        # --- density per block, clean and under attack at each eps
        if has_detail:
            Dc = np.stack(ex.density_blocks_clean.to_numpy())
            nb = Dc.shape[1]
            names, chans = _block_names(layout, nb)
            for j in range(nb):
                dens_rows.append({"model": m, "side": "clean", "eps": 0.0, "block": j + 1, "block_name": names[j],
                                  "channels": chans[j], "density": float(Dc[:, j].mean()), "n": len(Dc)})
            for r in cur_adv.itertuples():
                e2 = ctx.examples(int(r.run_id), detail=True)
                if "density_blocks_adv" not in e2.columns:
                    continue
                Da = np.stack(e2.density_blocks_adv.dropna().to_numpy())
                for j in range(nb):
                    dens_rows.append({"model": m, "side": f"{ref[0]} {eps_text(r.eps, ref[1])}", "eps": float(r.eps),
                                      "block": j + 1, "block_name": names[j], "channels": chans[j],
                                      "density": float(Da[:, j].mean()), "n": len(Da)})
        else:
            notes.append(f"{m}: no per-block gate detail stored; per-block densities and channel usage are omitted.")
        # --- executed MACs, clean and under each attack
        for norm in ("Linf", "L2"):
            for lbl in ctx.attacks(norm):
                c = ctx.curve(m, lbl, norm)
                for r in c.itertuples():
                    e2 = ctx.examples(int(r.run_id))
                    if r.Index == c.index[0]:
                        macs_rows.append({"model": m, "attack": lbl, "norm": norm, "eps": 0.0, "side": "clean",
                                          "macs_mean": e2.macs_clean.mean(), "macs_std": e2.macs_clean.std(),
                                          "density_mean": e2.gate_density_clean.mean(), "n": len(e2)})
                    if r.eps > 0:
                        macs_rows.append({"model": m, "attack": lbl, "norm": norm, "eps": float(r.eps),
                                          "side": "adversarial", "macs_mean": e2.macs_adv.mean(),
                                          "macs_std": e2.macs_adv.std(), "density_mean": e2.gate_density_adv.mean(),
                                          "n": len(e2)})
        if not macs_rows or all(r["model"] != m for r in macs_rows):
            e2 = ctx.examples(int(ctx.clean_run(m).run_id))
            macs_rows.append({"model": m, "attack": "clean", "norm": "", "eps": 0.0, "side": "clean",
                              "macs_mean": e2.macs_clean.mean(), "macs_std": e2.macs_clean.std(),
                              "density_mean": e2.gate_density_clean.mean(), "n": len(e2)})
        dens = pd.DataFrame([r for r in dens_rows if r["model"] == m])
        mac = pd.DataFrame([r for r in macs_rows if r["model"] == m])
        smacs, sname = _static_macs(ctx, m)
        full = ctx.model_info(m).get("macs")
        # --- figure A: density per block + MACs vs eps
        fig, axes = ctx.figure(1, 2, size=(5.4, 3.9))
        ax = axes[0][0]
        if len(dens):
            from matplotlib import colormaps

            cmap = colormaps["magma"]
            sides = list(dict.fromkeys(dens.side))
            for i, s in enumerate(sides):
                g = dens[dens.side == s].sort_values("block")
                color = "#1f77b4" if s == "clean" else cmap(0.25 + 0.6 * (i - 1) / max(1, len(sides) - 2))
                ax.plot(g.block, 100 * g.density, marker="o", markersize=4, color=color,
                        linewidth=2.0 if s == "clean" else 1.3,
                        label="clean" if s == "clean" else f"ε = {s.split()[-1]}")
            g = dens[dens.side == "clean"].sort_values("block")
            ax.set_xticks(g.block)
            ax.set_xticklabels([f"{a}\n({c})" if c else a for a, c in zip(g.block_name, g.channels, strict=True)],
                               fontsize=7)
            ax.set_xlabel("gated block: stage.block (gated channels)")
            ax.set_ylabel("open gates (% of the block's channels)")
            ax.set_ylim(0, 100)
            ax.set_title("Gate density per block: clean" + (f" vs {ref[0]}" if ref else ""), fontsize=10)
            ax.legend(loc="best", fontsize=7.5)
        else:
            ax.set_visible(False)
        ax = axes[0][1]
        for lbl in dict.fromkeys(mac.attack):
            g = mac[mac.attack == lbl].sort_values("eps")
            norm = g.norm.iloc[0]
            if norm == "L2":
                continue
            scale = 255.0
            ax.plot(g.eps * scale, g.macs_mean / 1e6, marker="o", markersize=4, label=f"gated, {lbl}")
        if smacs:
            ax.axhline(smacs / 1e6, color="#000000", linestyle="--", linewidth=1.3, label=f"{sname} (fixed)")
        if full:
            ax.axhline(float(full) / 1e6, color="#999999", linestyle=":", linewidth=1.2,
                       label=f"{m} at full gate density")
        ax.set_xlabel("ε (L∞, in units of 1/255; 0 = clean)")
        ax.set_ylabel("MACs executed per image (M)")
        ax.set_ylim(bottom=0)
        ax.set_title("Executed MACs, clean and under attack (mean over examples)", fontsize=10)
        ax.legend(loc="best", fontsize=7.5)
        n = int(main_run.n_done)
        titled(fig, f"{ctx.label(m)}: gates and compute, clean vs adversarial",
               f"{main_run.dataset_label}, n={n}, {main_run.device}")
        png = ctx.save_figure(fig, f"gates_{m}")
        files.append(png)
        md += [f"### {ctx.label(m)}", "", ctx.md_figure(png, f"Gate density and MACs {m}"), ""]
        # --- figure B: channel usage per class (clean and adversarial)
        # the gate bits are stored for 500 examples of a run at the standard eps (store.VECTOR_EXAMPLES)
        gx = ex[ex.gates_clean.notna()] if has_detail and "gates_clean" in ex.columns else ex.iloc[:0]
        if len(gx):
            ex = gx
            nb = len(ex.gates_clean.iloc[0])
            names, chans = _block_names(layout, nb)
            y = ex.label.to_numpy().astype(int)
            attacked = ref is not None and float(main_run.eps) > 0
            adv_title = f"{ref[0]} at ε = {eps_text(main_run.eps, ref[1])}" if attacked else ""
            sides = [("clean", "clean")] + ([("adv", adv_title)] if attacked else [])
            mats = {}
            for side, side_title in sides:
                col = f"gates_{side}"
                blocks = []
                for j in range(nb):
                    G = np.stack([g[j][: chans[j]] if chans[j] else g[j] for g in ex[col]]).astype(float)
                    M = np.full((len(CLASSES), G.shape[1]), np.nan)
                    for c in range(len(CLASSES)):
                        if (y == c).any():
                            M[c] = G[y == c].mean(0)
                    blocks.append(M)
                    for c in range(len(CLASSES)):
                        for ch in range(G.shape[1]):
                            usage_rows.append({"model": m, "side": side_title, "block": j + 1,
                                               "block_name": names[j], "channel": ch, "class": CLASSES[c],
                                               "n_class": int((y == c).sum()), "frac_open": M[c, ch]})
                mats[side] = blocks
            widths = [b.shape[1] for b in mats["clean"]]
            import matplotlib.pyplot as plt

            fig = plt.figure(figsize=(max(10.0, sum(widths) / 22 + 2.5), 3.4 * len(sides)))
            gs = fig.add_gridspec(len(sides), nb + 1, width_ratios=[*widths, max(1.0, 0.02 * sum(widths))], wspace=0.08,
                                  hspace=0.35)
            im = None
            for row, (side, title) in enumerate(sides):
                for j in range(nb):
                    ax = fig.add_subplot(gs[row, j])
                    im = ax.imshow(mats[side][j], aspect="auto", cmap="viridis", vmin=0, vmax=1,
                                   interpolation="nearest")
                    ax.set_xticks([0, widths[j] - 1])
                    ax.set_xticklabels(["0", str(widths[j] - 1)], fontsize=6)
                    ax.grid(False)
                    if j == 0:
                        ax.set_yticks(range(len(CLASSES)))
                        ax.set_yticklabels(CLASSES, fontsize=7)
                        ax.set_ylabel(f"{title}\ntrue class", fontsize=8.5)
                    else:
                        ax.set_yticks([])
                    ax.set_title(names[j], fontsize=7.5)
                    if row == len(sides) - 1 and j == nb // 2:
                        ax.set_xlabel("gated channel index within each block", fontsize=8.5)
            cax = fig.add_subplot(gs[:, nb])
            fig.colorbar(im, cax=cax, label="fraction of the class's examples with the gate open")
            counts = np.bincount(y, minlength=len(CLASSES))
            titled(fig, f"{ctx.label(m)}: channel usage per class (fraction of examples with the gate open)",
                   f"{main_run.dataset_label}, n={len(ex)} (per class {int(counts.min())}-{int(counts.max())}), "
                   f"{main_run.device}" + ("; top: clean inputs, bottom: adversarial inputs" if attacked else
                                           "; clean inputs"), layout=False)
            png2 = ctx.save_figure(fig, f"gate_usage_per_class_{m}")
            files.append(png2)
            md += [ctx.md_figure(png2, f"Channel usage per class {m}"), ""]
            # class with most / fewest open gates (clean)
            per_class = [np.nanmean(np.concatenate([b[c] for b in mats["clean"]])) for c in range(len(CLASSES))]
            valid = [c for c in range(len(CLASSES)) if not math.isnan(per_class[c])]
            if valid:
                hi = max(valid, key=lambda c: per_class[c])
                lo = min(valid, key=lambda c: per_class[c])
                findings.append(f"{m}: on clean inputs the mean fraction of open gates per class ranges from "
                                f"{pct(per_class[lo])}% ({CLASSES[lo]}) to {pct(per_class[hi])}% ({CLASSES[hi]}) "
                                f"(n={len(ex)}).")
        # --- findings: density and MACs clean vs adversarial
        clean_m = mac[mac.side == "clean"]
        if len(clean_m):
            c0 = clean_m.iloc[0]
            text = f"{m}: {c0.macs_mean / 1e6:.2f} M MACs per clean image (gate density {pct(c0.density_mean)}%)"
            adv = mac[(mac.side == "adversarial") & (mac.norm == (ref[1] if ref else "Linf"))]
            if ref is not None and std is not None:
                a = adv[(adv.attack == ref[0]) & ((adv.eps - std).abs() < 1e-9)]
                if len(a):
                    a0 = a.iloc[0]
                    text += (f", {a0.macs_mean / 1e6:.2f} M under {ref[0]} at {eps_text(std, ref[1])} "
                             f"({100 * (a0.macs_mean / c0.macs_mean - 1):+.1f}%; density {pct(a0.density_mean)}%)")
            if smacs:
                text += f"; {sname}: {smacs / 1e6:.2f} M ({100 * c0.macs_mean / smacs:.1f}% of it clean)"
            findings.append(text + f" (n={int(c0.n)}).")
    files.append(ctx.save_table(pd.DataFrame(macs_rows), "gates_executed_macs"))
    if dens_rows:
        files.append(ctx.save_table(pd.DataFrame(dens_rows), "gates_density_per_block"))
    if usage_rows:
        files.append(ctx.save_table(pd.DataFrame(usage_rows), "gates_usage_per_class"))
    mr = pd.DataFrame(macs_rows)
    # one clean row per model (every attack's run shares the clean inputs), then the attacked rows
    mr = pd.concat([mr[mr.side == "clean"].drop_duplicates("model").assign(attack="none", norm=""),
                    mr[mr.side != "clean"]]).sort_values(["model"], kind="stable")
    disp = pd.DataFrame({"model": mr.model, "attack": mr.attack, "ε": [eps_text(e, n or "Linf") for e, n in
                                                                      zip(mr.eps, mr.norm, strict=True)],
                         "input": mr.side, "MACs (M)": [f"{v / 1e6:.2f}" for v in mr.macs_mean],
                         "gate density (%)": [pct(v) for v in mr.density_mean], "n": mr.n})
    csvs = [f for f in files if f.endswith(".csv")]
    head = ["Channel gates (hard threshold at eval) per gated block: the fraction open on clean inputs and on "
            "adversarial inputs, the per-class channel usage, and the MACs actually executed per image "
            "(base + Σ density_b × gated MACs_b), against the static ResNet-20's fixed count.", "",
            ctx.md_table(disp, ["l", "l", "r", "l", "r", "r", "r"]), "",
            "Data: " + ", ".join(ctx.md_csv(f, f.split("/")[-1]) for f in csvs) + ".", ""]
    return SectionResult("\n".join(head + md), files=files, findings=findings, notes=notes)
