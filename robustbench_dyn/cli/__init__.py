"""`robustdyn`: a thin shell over the library. Each subcommand lives in its own module here and
registers itself on :data:`app`.

Every bad input ends the same way: one line on stderr, ``error: <problem>. Fix: <fix>``, exit code 2,
no traceback. That holds for library errors (:class:`~robustbench_dyn.errors.RobustDynError`) and for
command-line usage errors (an unknown option, ``--n abc``, a missing required option), which click
would otherwise print as a multi-line usage panel."""

from __future__ import annotations

import sys

from . import list_cmd  # noqa: F401,E402  (registers `list`)
from ._app import app, console, err_console  # noqa: F401

_OPTIONAL = ("evaluate", "report", "bench", "threats", "audit", "store_cmd")
PROG = "robustdyn"


def _register_optional() -> None:
    import importlib

    for mod in _OPTIONAL:
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise


def _click_exceptions():
    """click's exception module: vendored by typer >= 0.20 (typer._click), the click package before."""
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - older typer depends on click
        from click import exceptions
    return exceptions


def _error(message: str) -> None:
    err_console.print(f"error: {' '.join(message.split())}", markup=False, highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; always ends with SystemExit (0 on success, 2 on any bad input)."""
    import typer

    from ..errors import RobustDynError

    _register_optional()
    ce = _click_exceptions()
    no_args_help = getattr(ce, "NoArgsIsHelpError", None)
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=sys.argv[1:] if argv is None else list(argv), prog_name=PROG, standalone_mode=False)
    except RobustDynError as e:
        _error(str(e))
        sys.exit(2)
    except ce.ClickException as e:
        if no_args_help is not None and isinstance(e, no_args_help):  # bare `robustdyn`: the help, as --help
            text = e.format_message()
            if text.strip():  # typer's rich help printed itself already; plain click returns it
                console.print(text, markup=False, highlight=False)
            sys.exit(0)
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else PROG
        _error(f"{e.format_message().strip().rstrip('.')}. Fix: see `{where} --help`")
        sys.exit(2)
    except typer.Abort:
        _error("aborted. Fix: rerun the command")
        sys.exit(130)
    except typer.Exit as e:  # raised outside the command (click returns the code of those inside)
        sys.exit(e.exit_code)
    sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)
