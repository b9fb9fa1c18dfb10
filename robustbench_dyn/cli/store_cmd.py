"""`robustdyn store pack|unpack|compact`: the results store as a folder git keeps well, and back."""

from __future__ import annotations

from pathlib import Path

import typer

from ._app import app, console

store_app = typer.Typer(
    name="store", no_args_is_help=True,
    help="Carry a results store in git: `pack` writes it as a folder of xz-compressed JSON files (one file per "
         "run's examples, so a commit adds only what changed), `unpack` rebuilds the SQLite store from it, to "
         "resume long runs on another machine, `compact` brings a store written by an older version to today's "
         "smaller form. `robustdyn report --store PACK_FOLDER` reads a pack directly.")
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


@store_app.command("compact")
def compact_cmd(
    store: Path = typer.Argument(..., help="The SQLite results store, e.g. results/robustdyn.sqlite."),
) -> None:
    """Rewrite the rows of STORE that an older version wrote in today's compact form, in place.

    Per-layer detail: an equal clean/adversarial pair is stored once, and an example broken at a smaller eps of the
    same sweep refers to the detail stored there. Attention vectors and gate bits are kept for 500 examples of each
    run at the standard eps (the first in its processing order, an unbiased sample): the t-SNE and channel-usage
    figures read those. The four mean-attention columns keep 6 significant digits. Every other figure reads the
    same values. An attention model's pack shrinks about 3x. Idempotent.

    Example: robustdyn store compact results/robustdyn.sqlite
    && robustdyn store pack results/robustdyn.sqlite reports/results"""
    import sqlite3

    from ..errors import StoreError
    from ..store import ResultsStore

    if not store.is_file():
        raise StoreError(f"no results store at {store}", "pass the .sqlite file that `robustdyn evaluate` wrote")
    before = store.stat().st_size
    with ResultsStore(store) as st:
        counts = st.compact()
    con = sqlite3.connect(store)
    try:
        con.execute("VACUUM")
    finally:
        con.close()
    console.print(f"compacted {store}: {counts['rows']} rows of {counts['runs']} runs rewritten; "
                  f"{before / 1e6:.1f} MB -> {store.stat().st_size / 1e6:.1f} MB", highlight=False)
