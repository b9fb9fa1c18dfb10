"""The built-in report sections; importing this package registers them in
:data:`robustbench_dyn.report.SECTIONS` (orders 10..90, findings 900)."""

from __future__ import annotations

from . import attention, curves, findings, gates, tables  # noqa: F401

BUILTIN = ("main_table", "eps_curves", "kernels", "entropy", "attention_shift", "tsne", "gates", "checks", "findings")
