"""Section 9: the findings, as the numbers state them (collected from every section built before it)."""

from __future__ import annotations

from ..core import SECTIONS, ReportContext, SectionResult, SectionSkipped, section


@section("findings", "Findings", order=900, needs="any other section with findings")
def findings_section(ctx: ReportContext) -> SectionResult:
    md = ["What the numbers above show, section by section, written out automatically; n is the number of "
          "examples behind each figure. No interpretation is added.", ""]
    any_ = False
    for sid, res in ctx.results.items():
        if not res.findings:
            continue
        any_ = True
        md.append(f"**{SECTIONS[sid].title}**")
        md.append("")
        md += [f"- {f}" for f in res.findings]
        md.append("")
    if not any_:
        raise SectionSkipped("no section produced findings")
    return SectionResult("\n".join(md))
