"""Section 1 (the accuracy-robustness table at the standard eps) and section 8 (sanity checks)."""

from __future__ import annotations

import math

import pandas as pd

from ..core import STANDARD_EPS, ReportContext, SectionResult, SectionSkipped, eps_text, pct, section, wilson


def _fmt(v: float | None, digits: int = 2) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def standard_columns(ctx: ReportContext) -> list[tuple[str, str, float]]:
    """(attack label, norm, eps) of every attack run at the standard eps (8/255 Linf, 0.5 L2)."""
    cols = []
    for norm, eps in STANDARD_EPS.items():
        r = ctx.runs[(ctx.runs.norm == norm) & ((ctx.runs.eps - eps).abs() < 1e-9)]
        cols += [(lbl, norm, eps) for lbl in ctx.attack_order(r.attack_label)]
    return cols


def robust_long(ctx: ReportContext) -> pd.DataFrame:
    """One row per (model, attack at a standard eps): robust accuracy, Wilson 95% CI, clean accuracy, n."""
    rows = []
    for m in ctx.models:
        for lbl, norm, eps in standard_columns(ctx):
            r = ctx.select_run(m, lbl, norm, eps)
            if r is None:
                continue
            lo, hi = wilson(r.robust_k, r.n_done)
            rows.append({"model": m, "attack": lbl, "norm": norm, "eps": eps, "eps_label": eps_text(eps, norm),
                         "clean_acc": r.clean_acc, "robust_acc": r.robust_acc, "robust_ci_lo": lo,
                         "robust_ci_hi": hi, "n": int(r.n_done), "complete": bool(r.complete), "run_id": int(r.run_id),
                         "dataset": r.dataset_label, "device": r.device})
    return pd.DataFrame(rows)


@section("main_table", "Accuracy and robustness at the standard eps", order=10,
         needs="runs of any model")
def main_table(ctx: ReportContext) -> SectionResult:
    if ctx.runs.empty:
        raise SectionSkipped("no evaluated examples in the store")
    cols = standard_columns(ctx)
    long = robust_long(ctx)
    has_latency = not ctx.models_table.empty and ctx.models_table.latency_ms.notna().any()
    rows, disp = [], []
    any_gated = False
    for m in ctx.models:
        info, meta = ctx.model_info(m), ctx.meta(m)
        man = ctx.manifest.get(m, {})
        params = info.get("params") or man.get("params")
        full = info.get("macs") or man.get("macs")
        executed = info.get("mean_executed_macs")
        gated = meta.family == "gated"
        any_gated |= gated
        macs = executed if gated and executed is not None and not pd.isna(executed) else full
        cr = ctx.clean_run(m)
        row = {"model": ctx.label(m), "family": meta.family, "K": meta.K, "training": meta.training,
               "params_M": None if params is None else params / 1e6,
               "macs_M": None if macs is None or pd.isna(macs) else macs / 1e6,
               "macs_full_density_M": None if full is None or pd.isna(full) else full / 1e6}
        if has_latency:
            row["latency_ms"] = info.get("latency_ms")
            row["latency_device"] = info.get("latency_device")
        row["clean_acc"] = cr.clean_acc
        lo, hi = wilson(cr.clean_k, cr.n_done)
        row["clean_ci_lo"], row["clean_ci_hi"] = lo, hi
        ns = {int(cr.n_done)}
        d = {"model": ctx.label(m), "params (M)": _fmt(row["params_M"], 3),
             "MACs (M)": _fmt(row["macs_M"]) + (" *" if gated and executed is not None else "")}
        if has_latency:
            d["latency (ms)"] = _fmt(row["latency_ms"])
        d["clean (%)"] = pct(cr.clean_acc)
        for lbl, norm, eps in cols:
            sel = long[(long.model == m) & (long.attack == lbl) & (long.norm == norm) & ((long.eps - eps).abs() < 1e-9)]
            key = f"{lbl} @ {eps_text(eps, norm)}"
            if sel.empty:
                row[key] = None
                d[f"{key} (%)"] = "–"
            else:
                s = sel.iloc[0]
                row[key] = s.robust_acc
                row[f"{key} ci_lo"], row[f"{key} ci_hi"] = s.robust_ci_lo, s.robust_ci_hi
                d[f"{key} (%)"] = pct(s.robust_acc) + ("" if s.complete else " †")
                ns.add(int(s.n))
        r_m = ctx.runs[ctx.runs.model == m]
        row["n"] = "/".join(str(v) for v in sorted(ns))
        row["data"] = ", ".join(sorted(set(map(str, r_m.dataset_label))))
        row["device"] = ", ".join(sorted(set(map(str, r_m.device))))
        d["n"], d["data"] = row["n"], row["data"]
        rows.append(row)
        disp.append(d)
    table = pd.DataFrame(rows)
    csv = ctx.save_table(table, "main_table")
    files = [csv]
    if len(long):
        files.append(ctx.save_table(long, "robust_accuracy_standard_eps"))
    dd = pd.DataFrame(disp)
    md = [f"Clean and robust accuracy (%) per model; {ctx.data_text()}. Attacks at the standard eps "
          "(8/255 L∞, 0.5 L2); each cell is the accuracy on the verified adversarial examples of one run. "
          "Params and MACs per 32x32 image (torch's FLOP counter).", "",
          ctx.md_table(dd, ["l"] + ["r"] * (len(dd.columns) - 2) + ["l"])]
    foot = []
    if any_gated:
        foot.append("\\* gated models: mean MACs executed per clean example (from the gate densities); the "
                    "full-density count is in the CSV.")
    if (~ctx.runs.complete).any():
        foot.append("† incomplete run: the examples committed so far.")
    if has_latency:
        devs = sorted(set(ctx.models_table.latency_device.dropna().astype(str)))
        foot.append(f"Latency measured on {', '.join(devs)}.")
    else:
        foot.append("Latency: not measured in this store (see the Cost section).")
    if not cols:
        foot.append("No attack ran at the standard eps (8/255 L∞ or 0.5 L2): the table holds clean accuracy only.")
    md += ["", " ".join(foot), "", f"Tables: {ctx.md_csv(csv, 'main_table.csv')}"
           + (f", {ctx.md_csv(files[1], 'robust_accuracy_standard_eps.csv')} (with Wilson 95% intervals)"
              if len(files) > 1 else "") + "."]
    return SectionResult("\n".join(md), files=files, findings=_main_findings(ctx, long, table))


def _main_findings(ctx: ReportContext, long: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    out = []
    clean = {m: ctx.clean_run(m) for m in ctx.models}
    parts = []
    for m in ctx.models:
        c = clean[m]
        st = ctx.meta(m).base_static
        text = f"{m} {pct(c.clean_acc)}%"
        if ctx.meta(m).dynamic and st in clean:
            text += f" ({100 * (c.clean_acc - clean[st].clean_acc):+.1f} pt vs {st})"
        parts.append(text)
    ns = sorted({int(c.n_done) for c in clean.values()})
    out.append(f"Clean accuracy (n={'/'.join(map(str, ns))}): " + ", ".join(parts) + ".")
    if long.empty:
        return out
    for (lbl, norm, eps), g in long.groupby(["attack", "norm", "eps"], sort=False):
        by = {r.model: r for r in g.itertuples()}
        parts = []
        for m in ctx.models:
            if m not in by:
                continue
            r = by[m]
            drop = 100 * (r.clean_acc - r.robust_acc)
            text = f"{m} loses {drop:.1f} pt ({pct(r.clean_acc)}% → {pct(r.robust_acc)}%)"
            st = ctx.meta(m).base_static
            if ctx.meta(m).dynamic and st in by:
                s = by[st]
                sdrop = 100 * (s.clean_acc - s.robust_acc)
                diff = drop - sdrop
                text += (f", {abs(diff):.1f} pt {'more' if diff > 0 else 'less'} than {st}" if abs(diff) >= 0.05
                         else f", as much as {st}")
                overlap = not (r.robust_ci_hi < s.robust_ci_lo or s.robust_ci_hi < r.robust_ci_lo)
                text += (f"; robust accuracy {100 * (r.robust_acc - s.robust_acc):+.1f} pt vs {st}, 95% CIs "
                         f"{'overlap' if overlap else 'do not overlap'}")
            parts.append(text)
        ns = sorted({int(v) for v in g.n})
        out.append(f"{lbl} at {eps_text(eps, norm)} ({norm}, n={'/'.join(map(str, ns))}): " + "; ".join(parts) + ".")
    return out


@section("checks", "Sanity checks (gradient masking)", order=80, needs="rows in the checks table (`robustdyn check` "
         "or a suite with checks = true)")
def checks_section(ctx: ReportContext) -> SectionResult:
    ch = ctx.checks
    if ch is None or ch.empty:
        raise SectionSkipped("no sanity checks in the store (run `robustdyn check --model NAME` or a suite with "
                             "checks = true)")
    ch = ch.copy()
    # one row per (model, check): the largest n, then the newest
    ch = ch.sort_values(["n", "created_at"], ascending=False).drop_duplicates(["model", "check_name"])
    ch["status"] = ch.passed.map({1: "PASS", 0: "FAIL"})
    ch["model_label"] = [ctx.label(m) if m in ctx.models else m for m in ch.model]
    from ..core import model_sort_key

    models = sorted(set(ch.model), key=model_sort_key)
    order = list(dict.fromkeys(ch.sort_values("check_name").check_name))
    try:
        from ...checks import CHECKS

        known = [c for c in CHECKS if c in order]
        order = known + [c for c in order if c not in known]
    except Exception:
        pass
    pivot_rows = []
    for m in models:
        g = ch[ch.model == m].set_index("check_name")
        row = {"model": g.model_label.iloc[0]}
        for c in order:
            if c in g.index:
                r = g.loc[c]
                row[c] = f"{r.status} {_fmt_value(r.value)}"
            else:
                row[c] = "–"
        row["n"] = "/".join(str(int(v)) for v in sorted(set(g.n)))
        row["device"] = ", ".join(sorted(set(map(str, g.device.fillna("?")))))
        pivot_rows.append(row)
    pivot = pd.DataFrame(pivot_rows)
    legend = (ch.drop_duplicates("check_name").set_index("check_name").loc[order, ["threshold", "meaning"]]
              .reset_index().rename(columns={"check_name": "check", "threshold": "PASS if",
                                             "meaning": "a FAIL means"}))
    long_cols = ["model", "check_name", "status", "value", "threshold", "meaning", "detail", "n", "seed",
                 "dataset_label", "device", "untrained", "created_at", "settings"]
    csv = ctx.save_table(ch[[c for c in long_cols if c in ch.columns]], "sanity_checks")
    csv2 = ctx.save_table(pivot, "sanity_checks_summary")
    labels = ", ".join(sorted(set(map(str, ch.dataset_label.fillna("?")))))
    md = [f"Each cell: PASS/FAIL and the check's value, per model ({labels}). A FAIL flags possible gradient "
          "masking or an evaluation bug: treat that model's white-box robust accuracy as an upper bound.", "",
          ctx.md_table(pivot, ["l"] + ["l"] * len(order) + ["r", "l"]), "", "What each check measures:", "",
          ctx.md_table(legend, ["l", "l", "l"]), "",
          f"Tables: {ctx.md_csv(csv, 'sanity_checks.csv')}, {ctx.md_csv(csv2, 'sanity_checks_summary.csv')}."]
    findings = []
    fails = ch[ch.passed == 0]
    n_total = len(ch)
    findings.append(f"{n_total - len(fails)} of {n_total} sanity checks pass over {len(models)} model(s).")
    for r in fails.itertuples():
        findings.append(f"{r.model} FAILS {r.check_name}: value {_fmt_value(r.value)} (PASS if {r.threshold}); "
                        f"{r.meaning}.".replace("..", "."))
    return SectionResult("\n".join(md), files=[csv, csv2], findings=findings)


def _fmt_value(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3g}"
