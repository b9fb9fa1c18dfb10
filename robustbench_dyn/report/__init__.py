"""The report: tables and figures a paper can use, from the results store (and the zoo manifest).

>>> from robustbench_dyn.report import build_report
>>> rep = build_report("results/robustdyn.sqlite", "reports/")   # index.md, index.html, figures/, tables/
>>> rep.built, rep.missing

The report is a list of sections in :data:`SECTIONS`, each a builder function registered with the
:func:`section` decorator; other modules add theirs the same way (see :mod:`robustbench_dyn.report.core`).
Modules of this package named ``*_sections.py`` (e.g. ``threats_sections.py``) are imported here, so
their sections register themselves; one that fails to import is named in the report's header
(:data:`EXTENSION_ERRORS`) instead of breaking it. Modules elsewhere register by being imported
before :func:`build_report` runs.
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

#: extension module name -> import error (shown in the report header).
EXTENSION_ERRORS: dict[str, str] = {}


def _load_extensions() -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name.endswith("_sections"):
            try:
                importlib.import_module(f"{__name__}.{info.name}")
            except Exception as e:  # a broken extension must not take the whole report down
                EXTENSION_ERRORS[info.name] = f"{type(e).__name__}: {e}"


_load_extensions()

__all__ = [
    "ATTACK_LABELS", "EXTENSION_ERRORS", "SECTIONS", "STANDARD_EPS", "EmptyStoreError", "ModelMeta", "Report",
    "ReportContext", "ReportError", "Section", "SectionResult", "SectionSkipped", "attack_label", "build_report",
    "eps_text", "markdown_to_html", "model_meta", "model_style", "register_section", "section", "wilson",
]
