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


def check_counts(*, n: int | None = None, seed: int | None = None, batch_size: int | None = None) -> None:
    """Validate --n, --seed and --batch-size before anything is loaded or the results store is opened
    (a ConfigError naming the option and the fix; None means 'not given')."""
    from ..errors import ConfigError

    if n is not None and n < 1:
        raise ConfigError(f"--n must be a positive number of examples, got {n}",
                          "pass e.g. --n 1000, or leave it out for the default")
    if seed is not None and seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {seed}", "pass e.g. --seed 0")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch_size}",
                          "pass e.g. --batch-size 100, or leave it out for the default")
