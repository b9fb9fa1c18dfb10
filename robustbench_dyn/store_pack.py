"""A results store as a folder git keeps well (a *pack*), and back.

An SQLite file changes as a whole on every write, so each commit of a growing store adds another copy of it
to git's history. A pack splits the store into gzipped JSON-lines files: the example rows of each run in
their own file (a finished run's file never changes again), the small tables one file each. Writing a pack
again rewrites only the files whose content changed (gzip without a timestamp: same rows, same bytes).

Layout::

    PACK.json                    format, tables, row counts, the sha256 of every file
    schema.sql                   the store's CREATE statements
    TABLE.jsonl.gz               one per table; line 1: the column names, then one JSON array per row
    examples/run-<run_id>.jsonl.gz   the ``examples`` rows of one run

Only JSON is read back (no pickles, no code), each file checked against its sha256 in ``PACK.json``, and
``schema.sql`` may hold nothing but ``CREATE TABLE`` / ``CREATE INDEX`` statements.

>>> pack_store("results/robustdyn.sqlite", "reports/results")     # write (or refresh) the pack
>>> unpack_store("reports/results", "results/robustdyn.sqlite")   # a store to resume runs in, or report from
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import sqlite3
import tempfile
from pathlib import Path

from .errors import StoreError

PACK_FORMAT = 1
MANIFEST = "PACK.json"
SPLIT_TABLES = ("examples",)  # tables stored one file per run_id
_CREATE = re.compile(r"^\s*CREATE\s+(TABLE|INDEX|UNIQUE\s+INDEX)\s", re.IGNORECASE)


def is_pack(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _gz(lines: list[str]) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as f:
        f.write(("\n".join(lines) + "\n").encode())
    return buf.getvalue()


def _encode(rows, columns: list[str]) -> bytes:
    lines = [json.dumps(columns)]
    for row in rows:
        for v in row:
            if isinstance(v, bytes):
                raise StoreError("the store holds a binary (BLOB) value, which a pack does not carry",
                                 "report this: the store schema has no BLOB columns")
        lines.append(json.dumps(list(row), ensure_ascii=False, allow_nan=False, separators=(",", ":")))
    return _gz(lines)


def _order(con: sqlite3.Connection, table: str) -> tuple[list[str], str]:
    info = con.execute(f'PRAGMA table_info("{table}")').fetchall()
    columns = [r[1] for r in info]
    pk = [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5] > 0]
    keys = pk or columns
    return columns, ", ".join(f'"{k}"' for k in keys)


def _write_if_changed(path: Path, data: bytes) -> bool:
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def pack_store(store: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write the store at ``store`` as a pack into the folder ``out`` (created; files of runs no longer in the
    store are removed). Returns the manifest, with ``changed``: the files written this time."""
    src, out = Path(store), Path(out)
    if not src.is_file():
        raise StoreError(f"no results store at {src}", "pass the .sqlite file that `robustdyn evaluate` wrote")
    if out.exists() and not out.is_dir():
        raise StoreError(f"{out} is a file, not a folder", "pass a folder path for the pack, e.g. reports/results")
    if out.is_dir() and any(out.iterdir()) and not is_pack(out):
        raise StoreError(f"{out} is a folder that holds other files, not a pack",
                         "pass an empty or new folder, or an existing pack folder")
    con = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    try:
        con.execute("BEGIN")  # one snapshot of a store that may be written meanwhile (WAL)
        objs = con.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
                           "AND name NOT LIKE 'sqlite_%' ORDER BY rowid").fetchall()
        if not any(name == "runs" for t, name, _ in objs if t == "table"):
            raise StoreError(f"{src} is not a robustdyn results store (no runs table)", "pass a results store")
        files: dict[str, bytes] = {"schema.sql": ("".join(sql.strip() + ";\n" for _, _, sql in objs)).encode()}
        counts: dict[str, int] = {}
        for kind, table, _ in objs:
            if kind != "table":
                continue
            columns, order = _order(con, table)
            rows = con.execute(f'SELECT * FROM "{table}" ORDER BY {order}').fetchall()
            counts[table] = len(rows)
            if table in SPLIT_TABLES and "run_id" in columns:
                i = columns.index("run_id")
                by_run: dict[int, list] = {}
                for row in rows:
                    by_run.setdefault(int(row[i]), []).append(row)
                for run_id, part in by_run.items():
                    files[f"{table}/run-{run_id}.jsonl.gz"] = _encode(part, columns)
            else:
                files[f"{table}.jsonl.gz"] = _encode(rows, columns)
    finally:
        con.close()
    out.mkdir(parents=True, exist_ok=True)
    changed = [name for name, data in sorted(files.items()) if _write_if_changed(out / name, data)]
    for old in sorted(out.rglob("*.jsonl.gz")):
        rel = old.relative_to(out).as_posix()
        if rel not in files:
            old.unlink()
            changed.append(rel)
    manifest = {"format": PACK_FORMAT, "what": "robustbench_dyn results store pack (robustdyn store unpack)",
                "rows": counts,
                "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}}
    _write_if_changed(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    return {**manifest, "changed": changed}


def _read_manifest(pack: Path) -> dict:
    if not is_pack(pack):
        raise StoreError(f"{pack} is not a results-store pack (no {MANIFEST})",
                         "pass a folder written by `robustdyn store pack`")
    try:
        m = json.loads((pack / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise StoreError(f"{pack / MANIFEST} is unreadable ({e})", "restore the pack from git") from None
    if m.get("format") != PACK_FORMAT:
        raise StoreError(f"{pack} is a pack of format {m.get('format')!r}; this version reads format {PACK_FORMAT}",
                         "upgrade robustbench_dyn, or repack the store with this version")
    return m


def _verified(pack: Path, name: str, digest: str) -> bytes:
    p = pack / name
    if not p.is_file():
        raise StoreError(f"pack {pack} lacks {name}", "restore the pack from git (`git checkout -- PACK`)")
    data = p.read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise StoreError(f"{p} does not match the sha256 in {MANIFEST} (corrupt or edited)",
                         "restore the pack from git, or repack it from its store")
    return data


def unpack_store(pack: str | os.PathLike, store: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Rebuild the SQLite store ``store`` from the pack folder ``pack`` (row ids kept, so runs resume in it).
    An existing ``store`` is refused unless ``overwrite``."""
    pack, dst = Path(pack), Path(store)
    m = _read_manifest(pack)
    if dst.exists() and not overwrite:
        raise StoreError(f"{dst} exists", "pass another path, or --overwrite to replace it with the pack's content")
    schema = _verified(pack, "schema.sql", m["files"].get("schema.sql", "")).decode()
    statements = [s.strip() for s in schema.split(";\n") if s.strip()]
    bad = [s.split("\n")[0] for s in statements if not _CREATE.match(s)]
    if bad:
        raise StoreError(f"{pack}/schema.sql holds a statement other than CREATE TABLE/INDEX: {bad[0][:80]}",
                         "restore the pack from git")
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dst.name + ".", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    con = sqlite3.connect(tmp, isolation_level=None)
    try:
        con.execute("BEGIN")
        for s in statements:
            con.execute(s)
        for name, digest in m["files"].items():
            if not name.endswith(".jsonl.gz"):
                continue
            table = name.split("/")[0].removesuffix(".jsonl.gz")
            lines = gzip.decompress(_verified(pack, name, digest)).decode().splitlines()
            columns = json.loads(lines[0])
            cols = ", ".join(f'"{c}"' for c in columns)
            marks = ", ".join("?" * len(columns))
            con.executemany(f'INSERT INTO "{table}" ({cols}) VALUES ({marks})', (json.loads(x) for x in lines[1:]))
        con.execute("COMMIT")
    except (sqlite3.DatabaseError, ValueError, OSError, KeyError) as e:
        con.close()
        os.unlink(tmp)
        raise StoreError(f"cannot rebuild a store from {pack} ({e})", "restore the pack from git") from None
    con.close()
    os.replace(tmp, dst)
    return dst


def materialize(path: str | os.PathLike) -> tuple[Path, str | None]:
    """A store file to read from ``path``: the path itself, or for a pack folder a store unpacked into the
    user cache (reused while the pack is unchanged). Returns (file, the pack path or None)."""
    p = Path(path)
    if not (p.is_dir() and is_pack(p)):
        return p, None
    digest = hashlib.sha256((p / MANIFEST).read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "robustdyn" / "packs"
    target = cache / f"{digest}.sqlite"
    if not target.exists():
        unpack_store(p, target)
    return target, str(p)


__all__ = ["PACK_FORMAT", "is_pack", "materialize", "pack_store", "unpack_store"]
