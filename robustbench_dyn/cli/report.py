"""`robustdyn report`: a thin shell over :func:`robustbench_dyn.report.build_report`."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ._app import app, console
from ._options import models_dir_option, store_option


@app.command("report")
def report_cmd(
    store: Path = store_option(),
    out: Path = typer.Option(Path("reports"), "--out", "-o", help="Output folder: index.md, index.html, figures/, "
                             "tables/."),
    models_dir: Path = models_dir_option("Zoo folder whose manifest.json gives the training curves (default: the "
                                              "repo's models/)."),
    sections: str = typer.Option(None, "--sections", help="Comma-separated section ids to build (default: all; "
                                 "see --list-sections)."),
    list_sections: bool = typer.Option(False, "--list-sections", help="List the registered sections and exit."),
    tsne_max: int = typer.Option(500, "--tsne-max", help="At most this many examples per model in the t-SNE "
                                 "(clean + adversarial: twice as many points; exact t-SNE up to 1000 points)."),
    self_contained: bool = typer.Option(False, "--self-contained", help="Embed the figures in index.html as "
                                        "data URIs: one file to mail or attach (several MB). Default: index.html "
                                        "links figures/*.png beside it."),
) -> None:
    """Tables and figures (markdown, HTML, PNG, CSV) from the results store.

    Writes OUT/index.md, OUT/index.html (open it in a browser; it links OUT/figures/), OUT/figures/*.png and
    OUT/tables/*.csv. Example: robustdyn report --store reports/results --out reports
    """
    from ..errors import ConfigError
    from ..report import SECTIONS, build_report
    from ..report.core import ordered_sections

    if list_sections:
        for s in ordered_sections():
            console.print(f"{s.id:<18} {s.title}" + (f"  [dim](needs {s.needs})[/]" if s.needs else ""))
        return
    if tsne_max < 10:
        raise ConfigError(f"--tsne-max must be at least 10, got {tsne_max}", "pass e.g. --tsne-max 1000")
    only = [s.strip() for s in sections.split(",") if s.strip()] if sections else None
    if only is not None:
        ordered_sections(only)  # an unknown section id fails here, before the store is opened
    t0 = time.perf_counter()
    status_text = {"done": "[green]done[/]", "missing": "[yellow]missing[/]", "failed": "[red]failed[/]"}
    started: dict[str, float] = {}

    def progress(sid: str, status: str) -> None:
        if status == "start":
            started[sid] = time.perf_counter()
            console.print(f"[dim]building[/] {SECTIONS[sid].title} ...", end=" ")
        else:
            console.print(f"{status_text.get(status, status)} [dim]({time.perf_counter() - started[sid]:.1f} s)[/]")

    rep = build_report(store, out, models_dir=models_dir, sections=only, progress=progress, tsne_max=tsne_max,
                       self_contained=self_contained)
    for sid, why in rep.missing.items():
        console.print(f"[yellow]missing[/] {SECTIONS[sid].title}: {why}", highlight=False)
    for sid, why in rep.failed.items():
        console.print(f"[red]failed[/] {SECTIONS[sid].title}: {why}", highlight=False)
    console.print(f"report: {len(rep.built)} sections, {len(rep.files)} files in {rep.out} "
                  f"({time.perf_counter() - t0:.0f} s): {rep.index_md}, {rep.index_html}")
