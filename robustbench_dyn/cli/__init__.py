"""`robustdyn`: a thin shell over the library. Each subcommand lives in its own module here and
registers itself on :data:`app`. Library errors (RobustDynError) become one line on stderr and exit
code 2, with no traceback."""

from __future__ import annotations

import sys

from . import list_cmd  # noqa: F401,E402  (registers `list`)
from ._app import app, console, err_console  # noqa: F401

_OPTIONAL = ("evaluate", "report", "bench", "threats")


def _register_optional() -> None:
    import importlib

    for mod in _OPTIONAL:
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise


def main(argv: list[str] | None = None) -> None:
    from ..errors import RobustDynError

    _register_optional()
    try:
        app(args=argv, standalone_mode=True)
    except RobustDynError as e:
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
