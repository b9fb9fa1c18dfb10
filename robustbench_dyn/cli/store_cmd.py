"""`robustdyn store pack|unpack`: the results store as a folder git keeps well, and back."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import app, console

store_app = typer.Typer(
    name="store", no_args_is_help=True,
    help="Carry a results store in git: `pack` writes it as a folder of gzipped JSON-lines files (one file per "
         "run's examples, so a commit adds only what changed), `unpack` rebuilds the SQLite store from it, to "
         "resume long runs on another machine. `robustdyn report --store PACK_FOLDER` reads a pack directly.")
app.add_typer(store_app)


@store_app.command("pack")
def pack_cmd(
    store: Path = typer.Argument(..., help="The SQLite results store, e.g. results/robustdyn.sqlite."),
    out: Path = typer.Argument(..., help="The pack folder (created or refreshed), e.g. reports/results."),
) -> None:
    """Write STORE as a pack into OUT; only files whose content changed are rewritten.

    Example: robustdyn store pack results/robustdyn.sqlite reports/results && git add reports/results"""
    from ..store_pack import pack_store

    m = pack_store(store, out)
    rows = ", ".join(f"{t} {n}" for t, n in m["rows"].items())
    removed = sum(1 for c in m["changed"] if c not in m["files"])
    console.print(f"packed {store} -> {out}: {rows}; {len(m['changed']) - removed} of {len(m['files'])} files "
                  f"written, {removed} removed", highlight=False)


@store_app.command("unpack")
def unpack_cmd(
    pack: Path = typer.Argument(..., help="A pack folder written by `robustdyn store pack`."),
    store: Path = typer.Argument(..., help="The SQLite store to create, e.g. results/robustdyn.sqlite."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace STORE if it exists."),
) -> None:
    """Rebuild a SQLite results store from a pack (each file checked against its sha256), to report from it or
    to resume runs in it (`robustdyn evaluate --store STORE` skips the examples already there).

    Example: robustdyn store unpack reports/results results/robustdyn.sqlite"""
    from ..store_pack import unpack_store

    dst = unpack_store(pack, store, overwrite=overwrite)
    console.print(f"unpacked {pack} -> {dst} ({dst.stat().st_size / 1e6:.1f} MB)", highlight=False)
