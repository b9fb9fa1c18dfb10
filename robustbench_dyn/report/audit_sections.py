"""Report section "Dynamism audit": is each dynamic model really dynamic? (robustbench_dyn.audit)

Reads the audits the zoo manifest records for the checkpoints in the store (written when training
ends, or by `robustdyn audit --write-manifest`). Every other table marks a dynamic model that the audit
calls static through :meth:`ReportContext.label`."""

from __future__ import annotations

import pandas as pd

from .core import ReportContext, SectionResult, SectionSkipped, section


def _pct(v, digits=1) -> str:
    return "" if v is None else f"{100 * v:.{digits}f}"


def _num(v, fmt="{:.2f}") -> str:
    return "" if v is None else fmt.format(v)


@section("audit", "Dynamism audit: do the dynamic models act dynamically?", order=12,
         needs="dynamic models in the store with an audit in the zoo manifest")
def audit_section(ctx: ReportContext) -> SectionResult:
    rows, unaudited, rule, seen = [], [], None, set()
    for model in ctx.models:
        meta = ctx.meta(model)
        if not meta.dynamic or meta.family == "other" or model in seen:
            continue
        seen.add(model)
        audit = ctx.audit(model)
        if audit is None:
            unaudited.append(model)
            continue
        rule = rule or audit.get("rule")
        a, g = audit.get("attention") or {}, audit.get("gates") or {}
        rows.append({
            "model": model, "verdict": audit.get("verdict"), "n": audit.get("n"),
            "clean %": _pct(audit.get("clean_acc"), 2),
            "H/logK": _num(a.get("entropy_ratio_mean"), "{:.3f}"),
            "layers H/logK<=0.85": _pct(a.get("layers_entropy_low_frac"), 0),
            "I(x;k)/logK": _num(a.get("kernel_info_ratio_mean"), "{:.3f}"),
            "mean-repl. loss (pt)": _num(a.get("mean_replacement_loss"), "{:.1f}"),
            "shuffle loss (pt)": _num(a.get("shuffle_loss"), "{:.1f}"),
            "conditional gates %": _pct(g.get("conditional_frac"), 0),
            "majority-mask loss (pt)": _num(g.get("majority_mask_loss"), "{:.1f}"),
            "matched-mask loss (pt)": _num(g.get("matched_mask_loss"), "{:.1f}"),
            "gate-class MI (bits)": _num(g.get("gate_class_mi_bits"), "{:.4f}"),
            "exec. MACs / full": _num(g.get("executed_macs_ratio"), "{:.3f}"),
            "data": audit.get("data", ""),
        })
    if not rows and not unaudited:
        raise SectionSkipped("no dynamic model in the store")
    lines, findings, files = [], [], []
    if rows:
        df = pd.DataFrame(rows)
        files.append(ctx.save_table(df, "audit"))
        show = df.drop(columns=["data"]).copy()
        show["model"] = [f"**{m}**" if v != "dynamic" else m for m, v in zip(show.model, show.verdict, strict=True)]
        lines += [f"Rule: {rule}.", "",
                  "Figures on the seeded test subset named by n (subset seed 0), eval mode, fp32, data: "
                  f"{', '.join(sorted(set(df.data)))}. H/logK: per-example kernel-attention entropy over log K "
                  "(1 = uniform); I(x;k): information the kernel choice carries about the input; losses: accuracy "
                  "points lost when every layer's attention is replaced by the subset mean or shuffled across "
                  "examples, or the gates by a fixed per-channel majority mask.", "",
                  ctx.md_table(show), "", ctx.md_csv(files[-1])]
        static = list(df[df.verdict != "dynamic"].model)
        if static:
            findings.append(f"The audit calls {len(static)} of {len(df)} audited dynamic model(s) static "
                            f"({', '.join(static)}): tables mark them [STATIC by audit], and their robustness "
                            "measures a static network.")
        else:
            findings.append(f"All {len(df)} audited dynamic models pass the dynamism audit.")
    if unaudited:
        lines += ["", f"Not audited (no audit of the evaluated checkpoint in the manifest): {', '.join(unaudited)}. "
                  "Run `robustdyn audit --model NAME --write-manifest`."]
    return SectionResult("\n".join(lines), files=files, findings=findings)
