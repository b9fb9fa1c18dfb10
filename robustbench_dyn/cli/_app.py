from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="robustdyn",
    help=(
        "Benchmark the adversarial robustness of dynamic CNNs (DyConv, ODConv, channel gating) against "
        "static ResNets on CIFAR-10.\n\n"
        "Typical use: `robustdyn list`, then `robustdyn evaluate --model dyconv_k4 --attack pgd`, "
        "`robustdyn sweep --suite attacks/standard.toml --models 'dyconv_*'`, and `robustdyn report`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)
if not console.is_terminal:
    console = Console(width=200)


def _print_version(value: bool) -> None:
    # an eager option callback: runs while parsing, so `robustdyn --version` needs no subcommand
    if value:
        from .. import __version__

        console.print(f"robustdyn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
    """Benchmark the adversarial robustness of dynamic CNNs against static ResNets on CIFAR-10."""
