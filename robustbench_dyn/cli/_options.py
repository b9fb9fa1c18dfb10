"""Options and store opening that several commands share (same flag, default and help text everywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

#: the default results store, as the --store help says it (each command adds its own ending)
STORE_DEFAULT = "Results store (default: $ROBUSTDYN_STORE or results/robustdyn.sqlite)"


def store_option(help: str = f"{STORE_DEFAULT}.") -> Any:
    """``--store PATH`` (None: the default store)."""
    return typer.Option(None, "--store", help=help)


def no_store_option(help: str = "Do not write the results store.") -> Any:
    return typer.Option(False, "--no-store", help=help)


def models_dir_option(help: str = "Checkpoint folder (default: the repo's models/).") -> Any:
    return typer.Option(None, "--models-dir", help=help)


def data_dir_option(help: str = "CIFAR-10 folder (default: ROBUSTDYN_DATA, cache, sample).") -> Any:
    return typer.Option(None, "--data-dir", help=help)


def open_store(store: Path | None, no_store: bool, cls: Any = None):
    """``cls(store)`` (default: :class:`~robustbench_dyn.store.ResultsStore`), or None with ``--no-store``."""
    if no_store:
        return None
    if cls is None:
        from ..store import ResultsStore as cls
    return cls(store)
