from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ._app import app, console
from ._options import models_dir_option


@app.command("list")
def list_cmd(
    pattern: str = typer.Argument("*", help="Shell pattern(s), comma-separated: 'dyconv_*', 'resnet50_*', '*_at'."),
    models_dir: Path = models_dir_option(),
    csv: bool = typer.Option(False, "--csv", help="Print CSV instead of a table."),
) -> None:
    """List the model zoo: family, depth, K, params, MACs, checkpoint present, clean accuracy."""
    from ..zoo import zoo_table

    df = zoo_table(pattern, models_dir)
    if df.empty:
        from ..errors import ConfigError

        raise ConfigError(f"no registered model matches {pattern!r}", "run `robustdyn list` for the whole zoo")
    if csv:
        console.print(df.to_csv(index=False), end="", markup=False, highlight=False)
        return
    table = Table(title="robustbench_dyn zoo (MACs per 32x32 image, ts_*: per series; gated: at full density, "
                        "executed mean in brackets)")
    for col in df.columns:
        table.add_column(col, justify="right" if col not in ("name", "family", "checkpoint", "data") else "left")
    for row in df.itertuples(index=False):
        table.add_row(*["" if v is None else str(v) for v in row])
    console.print(table)
