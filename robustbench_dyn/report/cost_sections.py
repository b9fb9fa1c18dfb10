"""Report section "Cost": MACs, executed MACs and measured latency per model (the ``bench`` table written
by `robustdyn bench`, see :mod:`robustbench_dyn.bench`), and latency against clean and robust accuracy.

Every benchmarked model is shown, whether or not it was attacked; the accuracy figure places the models that
have runs in the store. Rows of each model's newest checkpoint; per (model, device, path, mode, batch) the
newest measurement.
"""

from __future__ import annotations

import math

import pandas as pd

from .core import STANDARD_EPS, ReportContext, SectionResult, SectionSkipped, model_sort_key, model_style, pct, section
from .plotting import spread_labels, titled


def bench_frame(ctx: ReportContext) -> pd.DataFrame:
    from ..bench import read_bench

    df = read_bench(ctx.store_path)
    if df.empty:
        return df
    latest = df.sort_values("created_at").groupby("model")["checkpoint_sha256"].last()
    df = df[df.checkpoint_sha256 == df.model.map(latest)]
    df = df.sort_values("created_at").drop_duplicates(["model", "device", "path", "mode", "batch"], keep="last")
    return df.reset_index(drop=True)


def _f(v, digits: int = 2) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _accuracies(ctx: ReportContext, model: str) -> tuple[float | None, float | None, str | None]:
    """(clean accuracy, robust accuracy at 8/255 Linf under the reference attack, its label) from the store."""
    if model not in getattr(ctx, "models", []):
        return None, None, None
    cr = ctx.clean_run(model)
    clean = None if cr is None else float(cr.clean_acc)
    ref = ctx.reference_attack()
    if ref is None:
        return clean, None, None
    r = ctx.select_run(model, ref[0], ref[1], STANDARD_EPS["Linf"])
    return clean, (None if r is None else float(r.robust_acc)), ref[0]


@section("cost", "Cost: MACs, executed MACs and measured latency", order=75,
         needs="`robustdyn bench` rows (the bench table)")
def cost_section(ctx: ReportContext) -> SectionResult:
    from ..bench import summary

    df = bench_frame(ctx)
    if df.empty:
        raise SectionSkipped("no latency measurements in the store (run `robustdyn bench --models '*'`)")
    s = summary(df)
    s["_k"] = [model_sort_key(m) for m in s.model]
    s = s.sort_values(["device", "_k"]).drop(columns="_k").reset_index(drop=True)
    accs = {m: _accuracies(ctx, m) for m in s.model.unique()}
    s["clean_acc"] = [accs[m][0] for m in s.model]
    s["robust_acc_8_255"] = [accs[m][1] for m in s.model]
    s["robust_attack"] = [accs[m][2] for m in s.model]
    csv = ctx.save_table(s, "cost")
    csv_raw = ctx.save_table(df, "cost_measurements")
    big = s.big_batch.dropna()
    bigtxt = f"@{int(big.max())}" if len(big) else ""
    disp = pd.DataFrame({
        "model": [m + (" (untrained)" if u else "") for m, u in zip(s.model, s.untrained, strict=True)],
        "device": [f"{d} ({t} thr)" for d, t in zip(s.device, s.threads, strict=True)],
        "MACs (M)": [_f(v / 1e6) for v in s.macs],
        "executed MACs (M)": [_f(v / 1e6) + (" *" if f == "gated" else "")
                              for v, f in zip(s.executed_macs, s.family, strict=True)],
        "latency b1 (ms)": [_f(v) for v in s.latency_ms],
        "p90 (ms)": [_f(v) for v in s.latency_p90_ms],
        "attack step b1 (ms)": [_f(v) for v in s.attack_step_ms],
        "latency / static": [_f(v) for v in s.latency_vs_static],
        "MACs / static": [_f(v) for v in s.macs_vs_static],
        f"clean img/s {bigtxt}": [_f(v, 0) for v in s.clean_images_per_s],
        f"attack-step img/s {bigtxt}": [_f(v, 0) for v in s.attack_images_per_s],
    })
    has_skip = s.skip_latency_ms.notna().any()
    if has_skip:
        disp["skip path b1 (ms)"] = [_f(v) for v in s.skip_latency_ms]
        disp["skip speed-up"] = [_f(v) for v in s.skip_speedup]
    devs = sorted(set(f"{r.device_name} ({r.device}, {r.threads} threads)" for r in s.itertuples()))
    loads = df.load_1min.dropna()
    torch_v = ", ".join(sorted(set(map(str, df.torch_version.dropna()))))
    when = f"{str(df.created_at.min())[:10]} to {str(df.created_at.max())[:10]}"
    inputs = "; ".join(sorted(set(map(str, df.inputs.dropna()))))
    md = [f"Measured on {', '.join(devs)}, torch {torch_v}, {when}; inputs: {inputs}. Latency: median (and p90) "
          "milliseconds per call at batch 1 after a warm-up, each call on another test image; the attack step is "
          "forward + cross-entropy + gradient w.r.t. the input (one PGD iteration). Throughput at the largest "
          "batch timed. MACs per 32x32 image from torch's FLOP counter.", ""]
    if len(loads) and loads.max() > 0.5:
        md += [f"> The machine was busy while timing (1-minute load average up to {loads.max():.2f}): latencies are "
               "slower and noisier than on an idle machine; ratios between models timed in the same run are more "
               "reliable than absolute milliseconds.", ""]
    md += [ctx.md_table(disp, ["l", "l"] + ["r"] * (len(disp.columns) - 2)), ""]
    notes = ["MACs are nominal: DyConv and ODConv add per-example attention and kernel aggregation, whose time need "
             "not follow their share of the MACs (compare *latency / static* with *MACs / static*)."]
    if (s.family == "gated").any():
        notes.append("\\* gated: the MACs that the open gates need (mean over the timed images). The model's own "
                     "forward (the *masked* path, the latency column) computes every channel and multiplies the "
                     "closed ones by zero, so it executes the full MACs; only the *skip* path "
                     "(`robustbench_dyn.layers.gate_skip`: conv1/bn1 on the open output channels, conv2 on the "
                     "open input channels, per example) executes the smaller figure. Its output equals the masked "
                     "path's up to float summation order.")
    md += [" ".join(notes), ""]
    files = [csv, csv_raw]
    fig_md, fig_file = _figure(ctx, s)
    if fig_file:
        files.append(fig_file)
        md += [fig_md, ""]
    md.append(f"Tables: {ctx.md_csv(csv, 'cost.csv')}, {ctx.md_csv(csv_raw, 'cost_measurements.csv')} (every "
              "measurement).")
    return SectionResult("\n".join(md), files=files, findings=_findings(s))


def _figure(ctx: ReportContext, s: pd.DataFrame) -> tuple[str, str | None]:
    dev = s.groupby("device").model.count().idxmax()  # the device with most models
    g = s[(s.device == dev) & s.latency_ms.notna()]
    if g.empty:
        return "", None
    panels = [("macs", "MACs per image (M)", 1e-6)]
    if g.clean_acc.notna().any():
        panels.append(("clean_acc", "clean accuracy (%)", 100.0))
    if g.robust_acc_8_255.notna().any():
        lbl = next((a for a in g.robust_attack if isinstance(a, str)), "attack")
        panels.append(("robust_acc_8_255", f"robust accuracy (%), {lbl} @ 8/255", 100.0))
    fig, axes = ctx.figure(1, len(panels), size=(4.6, 3.8))
    for ax, (col, xlabel, scale) in zip(axes[0], panels, strict=True):
        labels = []
        for r in g.itertuples():
            v = getattr(r, col)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            st = model_style(r.model)
            face = "white" if st["linestyle"] != "-" else st["color"]
            ax.plot([v * scale], [r.latency_ms], marker=st["marker"], color=st["color"], markerfacecolor=face,
                    linestyle="none")
            labels.append((v * scale, r.latency_ms, r.model, st["color"]))
            if r.skip_latency_ms is not None and not math.isnan(r.skip_latency_ms):
                ex = r.executed_macs if col == "macs" else v
                ax.annotate("", (ex * scale, r.skip_latency_ms), (v * scale, r.latency_ms),
                            arrowprops={"arrowstyle": "->", "color": st["color"], "linewidth": 0.8})
                ax.plot([ex * scale], [r.skip_latency_ms], marker="*", color=st["color"], linestyle="none",
                        markersize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("latency, batch 1 (ms, median)")
        ax.set_ylim(bottom=0)
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo, hi + 0.22 * (hi - lo))  # room for the labels right of the points
        spread_labels(ax, [(x + 0.02 * (hi - lo), y, t, c) for x, y, t, c in labels])
    dname = g.device_name.iloc[0]
    titled(fig, "Measured latency vs cost and accuracy",
           f"{dname} ({dev}, {int(g.threads.iloc[0])} threads); ★ gated skip path (at its executed MACs)")
    png = ctx.save_figure(fig, "cost_latency")
    return ctx.md_figure(png, "Latency at batch 1 against MACs, clean and robust accuracy"), png


def _findings(s: pd.DataFrame) -> list[str]:
    out = []
    for r in s.itertuples():
        if r.family in ("dyconv", "odconv") and not math.isnan(r.latency_vs_static):
            out.append(f"{r.model} ({r.device}): {r.macs_vs_static:.2f}x the MACs of {_static(r.model)} but "
                       f"{r.latency_vs_static:.2f}x its batch-1 latency ({r.latency_ms:.2f} ms).")
        if r.skip_latency_ms is not None and not math.isnan(r.skip_latency_ms):
            out.append(f"{r.model} ({r.device}): the open gates need {pct(r.executed_macs / r.macs)}% of the MACs; "
                       f"the masked forward takes {r.latency_ms:.2f} ms at batch 1, the path that skips closed "
                       f"channels {r.skip_latency_ms:.2f} ms (speed-up {r.skip_speedup:.2f}x).")
    return out


def _static(name: str) -> str:
    from .core import model_meta

    return model_meta(name).base_static
