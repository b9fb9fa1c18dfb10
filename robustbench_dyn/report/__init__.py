"""The report: tables and figures a paper can use, from the results store (and the zoo manifest).

>>> from robustbench_dyn.report import build_report
>>> rep = build_report("results/robustdyn.sqlite", "reports/")   # index.md, index.html, figures/, tables/
>>> rep.built, rep.missing

The report is a list of sections in :data:`SECTIONS`, each a builder function registered with the
:func:`section` decorator; other modules add theirs the same way (see :mod:`robustbench_dyn.report.core`).
"""

from __future__ import annotations

from . import sections as _sections  # noqa: E402,F401  (registers the built-in sections)
from .core import (
    ATTACK_LABELS,
    SECTIONS,
    STANDARD_EPS,
    EmptyStoreError,
    ModelMeta,
    Report,
    ReportContext,
    ReportError,
    Section,
    SectionResult,
    SectionSkipped,
    attack_label,
    build_report,
    eps_text,
    model_meta,
    model_style,
    register_section,
    section,
    wilson,
)
from .html import markdown_to_html

__all__ = [
    "ATTACK_LABELS", "SECTIONS", "STANDARD_EPS", "EmptyStoreError", "ModelMeta", "Report", "ReportContext",
    "ReportError", "Section", "SectionResult", "SectionSkipped", "attack_label", "build_report", "eps_text",
    "markdown_to_html", "model_meta", "model_style", "register_section", "section", "wilson",
]
