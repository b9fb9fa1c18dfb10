"""A results store as a folder git keeps well (a *pack*), and back.

An SQLite file changes as a whole on every write, so each commit of a growing store adds another copy of it
to git's history. A pack splits the store into xz-compressed JSON files: the example rows of each run in
their own file (a finished run's file never changes again), the small tables one file each. Writing a pack
again rewrites only the files whose content changed (same rows, same bytes), and re-encodes only those: a file
whose rows hash to the digest recorded for it last time, and whose bytes still match their sha256, is reused as
it is (encoding and xz are what a pack of hundreds of runs spends its time on).

Layout (format 2)::

    PACK.json                    format, tables, row counts, the sha256 of every file, and of the rows each
                                 file was encoded from ("sources": lets a repack skip unchanged runs)
    schema.sql                   the store's CREATE statements
    TABLE.json.xz                one per table: a header line {"columns": [...], "float32": [...], "rows": N},
                                 then one JSON array per column (column-major)
    examples/run-<run_id>.json.xz    the ``examples`` rows of one run

Column-major text compresses far better than rows (a column's values look alike), and a column whose floats
are all exactly float32 values (perturbation norms, MACs: computed in float32) is written with the shortest
decimal that round-trips *through float32* and read back through float32, so the store it rebuilds holds the
same doubles bit for bit, in about half the digits. Together about 0.55x the bytes of format 1 (gzipped
JSON lines, one array per row), which is still read.

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
import lzma
import math
import os
import re
import sqlite3
import tempfile
from pathlib import Path

import numpy as np

from .errors import StoreError

PACK_FORMAT = 2
READS_FORMATS = (1, 2)
SUFFIXES = {1: ".jsonl.gz", 2: ".json.xz"}
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


def _encode_v1(rows, columns: list[str]) -> bytes:
    """Format 1 (read, no longer written): gzipped JSON lines, the column names then one array per row."""
    lines = [json.dumps(columns)]
    for row in rows:
        lines.append(json.dumps(list(row), ensure_ascii=False, allow_nan=False, separators=(",", ":")))
    return _gz(lines)


def _is_f32(v) -> bool:
    return isinstance(v, float) and math.isfinite(v) and float(np.float32(v)) == v


def _f32_text(v: float) -> str:
    """The shortest decimal that parses back to the same float32 (numpy's Dragon4), as a JSON number."""
    x = np.float32(v)
    if v == 0 or 1e-4 <= abs(v) < 1e16:
        return np.format_float_positional(x, unique=True, trim="0")
    return np.format_float_scientific(x, unique=True, trim="0")


def _encode(rows, columns: list[str]) -> bytes:
    """Format 2: xz-compressed; a header line, then one JSON array per column (see the module docstring)."""
    for row in rows:
        for v in row:
            if isinstance(v, bytes):
                raise StoreError("the store holds a binary (BLOB) value, which a pack does not carry",
                                 "report this: the store schema has no BLOB columns")
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in columns]
    f32 = [c for c, vals in zip(columns, cols, strict=True)
           if any(isinstance(v, float) for v in vals) and all(_is_f32(v) for v in vals if isinstance(v, float))]
    lines = [json.dumps({"columns": columns, "float32": f32, "rows": len(rows)}, separators=(",", ":"))]
    for c, vals in zip(columns, cols, strict=True):
        if c in f32:
            lines.append("[" + ",".join(_f32_text(v) if isinstance(v, float) else json.dumps(v) for v in vals) + "]")
        else:
            lines.append(json.dumps(list(vals), ensure_ascii=False, allow_nan=False, separators=(",", ":")))
    return lzma.compress(("\n".join(lines) + "\n").encode(), format=lzma.FORMAT_XZ, preset=6)


def _decode(name: str, data: bytes) -> tuple[list[str], list]:
    """(columns, rows) of one pack file, by its suffix (format 1 or 2)."""
    if name.endswith(SUFFIXES[1]):
        lines = gzip.decompress(data).decode().splitlines()
        return json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=1 << 28)
    lines = dec.decompress(data).decode().splitlines()
    head = json.loads(lines[0])
    columns, f32, n = head["columns"], set(head.get("float32", ())), int(head["rows"])
    cols = [json.loads(x) for x in lines[1:1 + len(columns)]]
    if len(cols) != len(columns) or any(len(v) != n for v in cols):
        raise ValueError(f"{name}: column arrays do not match the header ({len(columns)} columns, {n} rows)")
    for i, c in enumerate(columns):
        if c in f32:
            cols[i] = [float(np.float32(v)) if isinstance(v, float) else v for v in cols[i]]
    return columns, [list(r) for r in zip(*cols, strict=True)] if n else []


def _table_of(name: str) -> str | None:
    for suffix in SUFFIXES.values():
        if name.endswith(suffix):
            return name.split("/")[0].removesuffix(suffix)
    return None


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


#: part of every source digest: a change to the encoder's output must change it, so that no stale file is reused
_ENCODER = f"robustdyn-pack-{PACK_FORMAT}.1"


def _source_digest(columns: list[str], rows) -> str:
    """sha256 of the rows a file is encoded from (Python's repr of floats is exact and shortest)."""
    h = hashlib.sha256(_ENCODER.encode())
    h.update(repr(columns).encode())
    h.update(repr(rows).encode())
    return h.hexdigest()


def _previous(out: Path) -> tuple[dict, dict]:
    """(files, sources) of the pack already in ``out`` when it is of this format, else empty."""
    try:
        m = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}, {}
    if m.get("format") != PACK_FORMAT or not isinstance(m.get("sources"), dict):
        return {}, {}
    return m.get("files", {}), m["sources"]


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
        sources: dict[str, str] = {}
        old_files, old_sources = _previous(out)
        reused: set[str] = set()  # files found intact in ``out``: nothing to write

        def encoded(name: str, part, columns: list[str]) -> bytes:
            digest = sources[name] = _source_digest(columns, part)
            if old_sources.get(name) == digest and name in old_files:
                try:
                    data = (out / name).read_bytes()
                except OSError:
                    data = None
                if data is not None and hashlib.sha256(data).hexdigest() == old_files[name]:
                    reused.add(name)
                    return data  # the same rows as last time, and the file is intact: no re-encoding
            return _encode(part, columns)

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
                    name = f"{table}/run-{run_id}{SUFFIXES[PACK_FORMAT]}"
                    files[name] = encoded(name, part, columns)
            else:
                name = f"{table}{SUFFIXES[PACK_FORMAT]}"
                files[name] = encoded(name, rows, columns)
    finally:
        con.close()
    out.mkdir(parents=True, exist_ok=True)
    changed = [name for name, data in sorted(files.items())
               if name not in reused and _write_if_changed(out / name, data)]
    for old in sorted(p for suffix in SUFFIXES.values() for p in out.rglob("*" + suffix)):
        rel = old.relative_to(out).as_posix()
        if rel not in files:
            old.unlink()
            changed.append(rel)
    manifest = {"format": PACK_FORMAT, "what": "robustbench_dyn results store pack (robustdyn store unpack)",
                "rows": counts,
                "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
                "sources": dict(sorted(sources.items()))}
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
    if m.get("format") not in READS_FORMATS:
        raise StoreError(f"{pack} is a pack of format {m.get('format')!r}; this version reads formats "
                         f"{', '.join(map(str, READS_FORMATS))}",
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
            table = _table_of(name)
            if table is None:
                continue
            columns, rows = _decode(name, _verified(pack, name, digest))
            cols = ", ".join(f'"{c}"' for c in columns)
            marks = ", ".join("?" * len(columns))
            con.executemany(f'INSERT INTO "{table}" ({cols}) VALUES ({marks})', rows)
        con.execute("COMMIT")
    except (sqlite3.DatabaseError, ValueError, OSError, KeyError, TypeError, lzma.LZMAError) as e:
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
