"""SQLite results store: runs, per-example outcomes, sanity checks, model metadata. Resumable.

One file (default ``results/robustdyn.sqlite`` under the working directory, or ``$ROBUSTDYN_STORE``),
stdlib ``sqlite3`` in WAL mode with a busy timeout, so a reader (the report) and writers (sweeps)
can share it. Everything the report needs is here; nothing else is read to build it.

Schema (version :data:`SCHEMA_VERSION`)
---------------------------------------
``meta(key PRIMARY KEY, value)``
    ``schema`` = 'robustdyn-results', ``version``, ``created_at``, ``created_by``.

``runs`` — one attack at one eps on one model and one data subset
    run_id INTEGER PRIMARY KEY;
    key (UNIQUE): model, checkpoint_sha256, attack, settings (canonical JSON of the attack settings,
    eps-independent), norm ('Linf' | 'L2'), eps (REAL; 0 = clean), grid (JSON list of the ascending
    eps grid the run belongs to: examples broken at a smaller eps of the grid carry their adversarial
    example over, so results depend on it; a single-eps evaluate has grid [eps]), dataset_id,
    dataset_digest, seed (subset seed), n;
    untrained (1 for randomly initialised models, smoke tests only), eps_label ('8/255'),
    dataset_label ('CIFAR-10 (JPEG copy)'), device, torch_version, torchattacks_version,
    pyautoattack_version, robustdyn_version, started_at, finished_at (ISO UTC; NULL until complete),
    duration_s (attack + probe seconds, summed over resumed sessions), status ('running' | 'complete':
    all n examples present).

``examples`` — one row per (run_id, idx), PRIMARY KEY (run_id, idx)
    idx (index in the dataset split), label, clean_pred, adv_pred (prediction on the verified
    adversarial example; = clean_pred at eps 0 and for clean-misclassified examples), broken_at
    (smallest eps of the grid <= this run's eps at which the example was misclassified; 0 when
    misclassified clean; NULL when it survived: robust accuracy = mean(broken_at IS NULL)),
    perturbation (norm of x_adv - x in the run's norm);
    dynamics, NULL where the model has none: attn_entropy_clean / attn_entropy_adv (kernel-attention
    entropy in nats, mean over layers), attn_kl (KL(clean || adv), mean over layers), attn_tv (total
    variation, mean over layers) (these four to 6 significant digits: :data:`ROUNDED_COLUMNS`),
    dominant_kernel_clean / dominant_kernel_adv (argmax of the kernel
    attention averaged over layers), dominant_changed (fraction of layers whose argmax kernel changed),
    gate_density_clean / gate_density_adv (open gated channels / all gated channels; 1 without gates),
    macs_clean / macs_adv (MACs executed per example);
    detail: JSON (NULL for static models) with per-layer and per-block values, clean first, adv second:
    ``{"H": [[...], [...]], "kl": [...], "tv": [...], "dom": [[...], [...]], "attn": [b64, b64],
    "dens": [[...], [...]], "gates": [[hex per block], [hex per block]]}``: entropy per layer,
    KL/TV per layer, dominant kernel per layer, the concatenated attention vectors (little-endian
    float16, base64; kernel attention per layer, for ODConv followed by its spatial attention; the
    layout is ``models.layout``), gate density per block, and the gate vector of each block as a hex
    bit string (numpy packbits, big-endian bit order). A pair whose two sides are equal (eps 0, an
    example left unattacked) is stored as one element, and all-zero KL/TV are left out. The attention
    and gate vectors are stored only where :func:`vector_indices` says (500 examples of each run at the
    standard eps): they are most of the bytes. :func:`decode_detail` turns it into arrays;
    ``examples_df(detail=True)`` does it for a whole table; :meth:`ResultsStore.compact` brings rows
    written before this form to it.

``checks`` — sanity checks, PRIMARY KEY (model, checkpoint_sha256, check_name, dataset_digest, n, seed)
    value, passed (0/1), threshold (text), meaning (what a FAIL means), detail, settings (JSON),
    dataset_label, device, untrained, created_at.

``models`` — PRIMARY KEY (model, checkpoint_sha256)
    untrained, family, params, macs (full density), mean_executed_macs (clean, over evaluated
    examples), latency_ms, latency_device (NULL unless measured), layout (JSON: attention layers
    with K and spatial size, gated blocks with channel counts), source, updated_at.

Resuming: each batch of examples is written in one transaction with INSERT OR IGNORE, so a sweep
killed at any moment leaves whole batches; re-running it attacks only the missing indices and never
duplicates a row. A run is complete when its n rows are there.
"""

from __future__ import annotations

import base64
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from .errors import StoreError

SCHEMA_NAME = "robustdyn-results"
SCHEMA_VERSION = 1
DEFAULT_STORE = Path("results") / "robustdyn.sqlite"
_SQLITE_HEADER = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run_id INTEGER PRIMARY KEY,
    model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, untrained INTEGER NOT NULL DEFAULT 0,
    attack TEXT NOT NULL, settings TEXT NOT NULL, norm TEXT NOT NULL, eps REAL NOT NULL, eps_label TEXT,
    grid TEXT NOT NULL,
    dataset_id TEXT NOT NULL, dataset_label TEXT, dataset_digest TEXT NOT NULL, seed INTEGER NOT NULL,
    n INTEGER NOT NULL,
    device TEXT, torch_version TEXT, torchattacks_version TEXT, pyautoattack_version TEXT, robustdyn_version TEXT,
    started_at TEXT, finished_at TEXT, duration_s REAL NOT NULL DEFAULT 0, status TEXT NOT NULL DEFAULT 'running',
    UNIQUE (model, checkpoint_sha256, attack, settings, norm, eps, grid, dataset_id, dataset_digest, seed, n)
);
CREATE TABLE examples (
    run_id INTEGER NOT NULL REFERENCES runs(run_id), idx INTEGER NOT NULL,
    label INTEGER NOT NULL, clean_pred INTEGER NOT NULL, adv_pred INTEGER NOT NULL,
    broken_at REAL, perturbation REAL,
    attn_entropy_clean REAL, attn_entropy_adv REAL, attn_kl REAL, attn_tv REAL,
    dominant_kernel_clean INTEGER, dominant_kernel_adv INTEGER, dominant_changed REAL,
    gate_density_clean REAL, gate_density_adv REAL, macs_clean REAL, macs_adv REAL,
    detail TEXT,
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE checks (
    model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, check_name TEXT NOT NULL,
    dataset_digest TEXT NOT NULL, n INTEGER NOT NULL, seed INTEGER NOT NULL,
    value REAL, passed INTEGER NOT NULL, threshold TEXT, meaning TEXT, detail TEXT, settings TEXT,
    dataset_label TEXT, device TEXT, untrained INTEGER NOT NULL DEFAULT 0, created_at TEXT,
    PRIMARY KEY (model, checkpoint_sha256, check_name, dataset_digest, n, seed)
);
CREATE TABLE models (
    model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, untrained INTEGER NOT NULL DEFAULT 0,
    family TEXT, params INTEGER, macs REAL, mean_executed_macs REAL, latency_ms REAL, latency_device TEXT,
    layout TEXT, source TEXT, updated_at TEXT,
    PRIMARY KEY (model, checkpoint_sha256)
);
"""

EXAMPLE_COLUMNS = (
    "idx", "label", "clean_pred", "adv_pred", "broken_at", "perturbation",
    "attn_entropy_clean", "attn_entropy_adv", "attn_kl", "attn_tv",
    "dominant_kernel_clean", "dominant_kernel_adv", "dominant_changed",
    "gate_density_clean", "gate_density_adv", "macs_clean", "macs_adv", "detail",
)


def default_store_path() -> Path:
    """``$ROBUSTDYN_STORE``, else ``results/robustdyn.sqlite`` under the working directory."""
    env = os.environ.get("ROBUSTDYN_STORE")
    return Path(env) if env else Path.cwd() / DEFAULT_STORE


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for col, dist in (("torch_version", "torch"), ("torchattacks_version", "torchattacks"),
                      ("pyautoattack_version", "pyautoattack"), ("robustdyn_version", "robustbench_dyn")):
        try:
            out[col] = version(dist)
        except PackageNotFoundError:
            out[col] = None
    if out["robustdyn_version"] is None:
        from . import __version__

        out["robustdyn_version"] = __version__
    return out


@dataclass(frozen=True)
class RunKey:
    """What identifies a run (the UNIQUE key of ``runs``)."""

    model: str
    checkpoint_sha256: str
    attack: str
    settings: str  # canonical JSON
    norm: str
    eps: float
    grid: str  # JSON list of the eps grid
    dataset_id: str
    dataset_digest: str
    seed: int
    n: int


def _fix_for(path: Path) -> str:
    return f"pass another --store path (or set ROBUSTDYN_STORE), or move {path} away"


_S = TypeVar("_S", bound="_StoreFile")


class _StoreFile:
    """What the store classes share: ``path``, an open connection ``_con`` (autocommit, WAL, busy timeout),
    ``close`` and use as a context manager, and ``_tx`` (one BEGIN IMMEDIATE ... COMMIT transaction)."""

    path: Path
    _con: sqlite3.Connection

    def close(self) -> None:
        self._con.close()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self._con, self.path)


class ResultsStore(_StoreFile):
    """The results store at ``path`` (created with its parent folder if absent).

    Opening a file that is not a robustdyn store, is corrupt, or was written by another schema
    version raises :class:`StoreError` naming the file and the fix.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self._con = self._open()
        self._versions: dict[str, str] | None = None

    # ------------------------------------------------------------------ opening and schema
    def _open(self) -> sqlite3.Connection:
        p = self.path
        if p.is_dir():
            from .store_pack import is_pack

            if is_pack(p):
                raise StoreError(f"{p} is a results-store pack (a folder for git), which only `robustdyn report` "
                                 "reads directly", f"unpack it to write into it: `robustdyn store unpack {p} "
                                 f"results/robustdyn.sqlite`, then `robustdyn store pack results/robustdyn.sqlite {p}`")
            raise StoreError(f"results store {p} is a folder, not a file", "pass a file path such as results/x.sqlite")
        if p.exists() and p.stat().st_size > 0:
            with open(p, "rb") as f:
                head = f.read(16)
            if head != _SQLITE_HEADER:
                raise StoreError(f"{p} is not a robustdyn results store (not an SQLite file)", _fix_for(p))
        else:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create the folder of results store {p} ({e})", _fix_for(p)) from None
        try:
            con = sqlite3.connect(str(p), timeout=30.0, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA busy_timeout = 30000")
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                con.execute("PRAGMA journal_mode = WAL")
                self._create(con)
            elif "meta" not in tables:
                con.close()
                raise StoreError(f"{p} is an SQLite file but not a robustdyn results store", _fix_for(p))
            else:
                meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
                if meta.get("schema") != SCHEMA_NAME:
                    con.close()
                    raise StoreError(f"{p} is an SQLite file but not a robustdyn results store", _fix_for(p))
                if meta.get("version") != str(SCHEMA_VERSION):
                    con.close()
                    raise StoreError(
                        f"results store {p} has schema version {meta.get('version')} (written by robustbench_dyn "
                        f"{meta.get('created_by', '?')}); this version reads schema {SCHEMA_VERSION}",
                        _fix_for(p) + " (or use the robustbench_dyn version that wrote it)")
                con.execute("PRAGMA journal_mode = WAL")
        except sqlite3.DatabaseError as e:
            raise StoreError(f"results store {p} is corrupt or unreadable ({e})", _fix_for(p)) from None
        return con

    @staticmethod
    def _create(con: sqlite3.Connection) -> None:
        from . import __version__

        con.execute("BEGIN IMMEDIATE")
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:  # another process may have created it between our check and the lock
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    con.execute(stmt)
                con.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("schema", SCHEMA_NAME), ("version", str(SCHEMA_VERSION)), ("created_at", _now()),
                    ("created_by", __version__)])
                con.execute("CREATE INDEX examples_idx ON examples(idx)")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        try:
            return self._con.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"results store {self.path} could not be read ({e})", _fix_for(self.path)) from None

    # ---------------------------------------------------------------------------- runs
    def run_id(self, key: RunKey, *, untrained: bool = False, eps_label: str | None = None,
               dataset_label: str | None = None, device: str | None = None) -> int:
        """The id of the run with this key, created if absent (device and versions updated if present)."""
        if self._versions is None:
            self._versions = library_versions()
        k = asdict(key)
        where = " AND ".join(f"{c} = ?" for c in k)
        with self._tx() as con:
            row = con.execute(f"SELECT run_id FROM runs WHERE {where}", tuple(k.values())).fetchone()
            if row is not None:
                con.execute("UPDATE runs SET device = ? WHERE run_id = ?", (device, row[0]))
                return int(row[0])
            cols = {**k, "untrained": int(untrained), "eps_label": eps_label, "dataset_label": dataset_label,
                    "device": device, **self._versions, "started_at": _now()}
            cur = con.execute(insert_sql("runs", cols, "INSERT"), tuple(cols.values()))
            return int(cur.lastrowid)

    def done_indices(self, run_id: int) -> np.ndarray:
        rows = self._query("SELECT idx FROM examples WHERE run_id = ? ORDER BY idx", (run_id,))
        return np.asarray([r[0] for r in rows], dtype=np.int64)

    def add_examples(self, batches: dict[int, Iterable[dict]], durations: dict[int, float] | None = None) -> None:
        """Insert example rows for several runs in one transaction (INSERT OR IGNORE), add the seconds
        spent to each run's duration and mark runs complete when all n rows are there."""
        durations = durations or {}
        sql = insert_sql("examples", ("run_id", *EXAMPLE_COLUMNS), "INSERT OR IGNORE")
        with self._tx() as con:
            for run_id, rows in batches.items():
                con.executemany(sql, [(run_id, *[_sql_value(r.get(c)) for c in EXAMPLE_COLUMNS]) for r in rows])
                con.execute("UPDATE runs SET duration_s = duration_s + ? WHERE run_id = ?",
                            (float(durations.get(run_id, 0.0)), run_id))
                con.execute("UPDATE runs SET status = 'complete', finished_at = ? WHERE run_id = ? AND "
                            "status != 'complete' AND (SELECT COUNT(*) FROM examples WHERE run_id = ?) >= n",
                            (_now(), run_id, run_id))

    def run_summary(self, run_id: int) -> dict:
        """n_done, clean_acc, robust_acc, duration_s and status of one run."""
        row = self._query(
            "SELECT r.n, r.status, r.duration_s, COUNT(e.idx), AVG(e.clean_pred = e.label), "
            "AVG(e.broken_at IS NULL) FROM runs r LEFT JOIN examples e ON e.run_id = r.run_id "
            "WHERE r.run_id = ? GROUP BY r.run_id", (run_id,))
        if not row:
            raise StoreError(f"results store {self.path} has no run {run_id}", "re-run the evaluation")
        n, status, dur, done, clean, robust = row[0]
        return {"run_id": run_id, "n": n, "n_done": done, "status": status, "duration_s": dur,
                "clean_acc": clean, "robust_acc": robust}

    def compact(self) -> dict:
        """Rewrite rows stored by older versions in today's compact form, in place: ``detail`` as
        :func:`compact_detail` writes it, or :data:`SAME_AS_BROKEN_AT` where it equals the detail stored at the
        example's broken_at in the same sweep; attention and gate vectors only where :func:`vector_indices` keeps
        them (for a run not yet complete: among its stored examples); the :data:`ROUNDED_COLUMNS` to 6 significant
        digits. Idempotent. Returns {"runs": runs touched, "rows": rows rewritten}; ``VACUUM`` shrinks the file."""
        runs = self._query("SELECT run_id, norm, eps, seed FROM runs ORDER BY run_id")
        cols = ", ".join(ROUNDED_COLUMNS)
        touched = rows_changed = 0
        with self._tx() as con:
            for run_id, norm, eps, seed in runs:
                rows = con.execute(f"SELECT idx, detail, broken_at, {cols} FROM examples WHERE run_id = ?",
                                   (run_id,)).fetchall()
                keep = vector_indices([r[0] for r in rows], int(seed), norm, eps)
                earlier = dict(con.execute(
                    "SELECT s.idx, s.detail FROM examples e JOIN runs r ON r.run_id = e.run_id " + _AT_BROKEN +
                    "WHERE e.run_id = ? AND e.broken_at > 0 AND e.broken_at < r.eps AND e.detail IS NOT NULL",
                    (run_id,)).fetchall())
                updates = []
                for idx, detail, _broken_at, *vals in rows:
                    new_detail = compact_detail(detail, vectors=idx in keep) if detail != SAME_AS_BROKEN_AT \
                        else detail
                    if (idx not in keep and new_detail not in (None, SAME_AS_BROKEN_AT) and idx in earlier
                            and compact_detail(earlier[idx], vectors=False) == new_detail):
                        new_detail = SAME_AS_BROKEN_AT
                    new_vals = [round_sig(v) for v in vals]
                    if new_detail != detail or new_vals != list(vals):
                        updates.append((new_detail, *new_vals, run_id, idx))
                if updates:
                    sets = ", ".join(f"{c} = ?" for c in ("detail", *ROUNDED_COLUMNS))
                    con.executemany(f"UPDATE examples SET {sets} WHERE run_id = ? AND idx = ?", updates)
                    touched += 1
                    rows_changed += len(updates)
        return {"runs": touched, "rows": rows_changed}

    # ---------------------------------------------------------------------- checks, models
    def add_check(self, *, model: str, checkpoint_sha256: str, check_name: str, dataset_digest: str, n: int,
                  seed: int, value: float | None, passed: bool, threshold: str = "", meaning: str = "",
                  detail: str = "", settings: dict | None = None, dataset_label: str | None = None,
                  device: str | None = None, untrained: bool = False) -> None:
        """Insert or replace one sanity-check result."""
        with self._tx() as con:
            con.execute(
                "INSERT OR REPLACE INTO checks (model, checkpoint_sha256, check_name, dataset_digest, n, seed, value, "
                "passed, threshold, meaning, detail, settings, dataset_label, device, untrained, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (model, checkpoint_sha256, check_name, dataset_digest, int(n), int(seed), _sql_value(value),
                 int(bool(passed)), threshold, meaning, detail, json.dumps(settings or {}, sort_keys=True),
                 dataset_label, device, int(untrained), _now()))

    def stored_checks(self, *, model: str, checkpoint_sha256: str, dataset_digest: str, n: int, seed: int) -> set[str]:
        """Names of the checks already stored for this model and data subset (a resumed sweep skips them)."""
        rows = self._query("SELECT check_name FROM checks WHERE model = ? AND checkpoint_sha256 = ? AND "
                           "dataset_digest = ? AND n = ? AND seed = ?",
                           (model, checkpoint_sha256, dataset_digest, int(n), int(seed)))
        return {r[0] for r in rows}

    def upsert_model(self, *, model: str, checkpoint_sha256: str, untrained: bool = False, **fields) -> None:
        """Insert or update a model's metadata; fields given as None keep their stored value."""
        allowed = {"family", "params", "macs", "mean_executed_macs", "latency_ms", "latency_device", "layout",
                   "source"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown model fields {sorted(bad)}; known: {sorted(allowed)}")
        if isinstance(fields.get("layout"), (dict, list)):
            fields["layout"] = json.dumps(fields["layout"])
        with self._tx() as con:
            con.execute("INSERT OR IGNORE INTO models (model, checkpoint_sha256, untrained, updated_at) "
                        "VALUES (?, ?, ?, ?)", (model, checkpoint_sha256, int(untrained), _now()))
            sets = {k: _sql_value(v) for k, v in fields.items() if v is not None}
            if sets:
                con.execute(f"UPDATE models SET {', '.join(f'{k} = ?' for k in sets)}, updated_at = ? "
                            "WHERE model = ? AND checkpoint_sha256 = ?",
                            (*sets.values(), _now(), model, checkpoint_sha256))

    # -------------------------------------------------------------------------- exports
    def _df(self, sql: str, params: Sequence = ()) -> pd.DataFrame:
        try:
            return pd.read_sql_query(sql, self._con, params=tuple(params))
        except (sqlite3.DatabaseError, pd.errors.DatabaseError) as e:
            raise StoreError(f"results store {self.path} could not be read ({e})", _fix_for(self.path)) from None

    def runs_df(self) -> pd.DataFrame:
        """All runs with n_done, clean_acc and robust_acc (from their example rows)."""
        return self._df(
            "SELECT r.*, COUNT(e.idx) AS n_done, AVG(e.clean_pred = e.label) AS clean_acc, "
            "AVG(e.broken_at IS NULL) AS robust_acc FROM runs r LEFT JOIN examples e ON e.run_id = r.run_id "
            "GROUP BY r.run_id ORDER BY r.run_id")

    def examples_df(self, run_ids: Iterable[int] | None = None, *, model: str | None = None,
                    attack: str | None = None, eps: float | None = None, norm: str | None = None,
                    detail: bool = False) -> pd.DataFrame:
        """Per-example rows joined with their run's model, attack, norm, eps (filters optional).
        With ``detail=True`` the JSON column is decoded into array columns (see :func:`decode_detail`)."""
        where, params = [], []
        if run_ids is not None:
            ids = [int(i) for i in run_ids]
            where.append(f"e.run_id IN ({', '.join('?' * len(ids)) or 'NULL'})")
            params += ids
        for col, val in (("model", model), ("attack", attack), ("norm", norm)):
            if val is not None:
                where.append(f"r.{col} = ?")
                params.append(val)
        if eps is not None:
            where.append("ABS(r.eps - ?) < 1e-9")
            params.append(float(eps))
        sql = ("SELECT r.model, r.checkpoint_sha256, r.attack, r.norm, r.eps, r.eps_label, r.untrained, e.* "
               "FROM examples e JOIN runs r ON r.run_id = e.run_id")
        if where:
            sql += " WHERE " + " AND ".join(where)
        df = self._df(sql + " ORDER BY e.run_id, e.idx", params)
        if detail and len(df):
            if (df["detail"] == SAME_AS_BROKEN_AT).any():
                df["detail"] = self._resolve_same(df)
            decoded = [decode_detail(d) for d in df["detail"]]
            keys = sorted({k for d in decoded for k in d})
            for k in keys:
                df[k] = [d.get(k) for d in decoded]
        return df

    def _resolve_same(self, df: pd.DataFrame) -> list:
        """``df.detail`` with each :data:`SAME_AS_BROKEN_AT` replaced by the detail its sweep stored at broken_at."""
        runs = sorted({int(r) for r in df.run_id[df["detail"] == SAME_AS_BROKEN_AT]})
        rows = self._query(
            "SELECT e.run_id, e.idx, s.detail FROM examples e JOIN runs r ON r.run_id = e.run_id " + _AT_BROKEN +
            f"WHERE e.detail = ? AND e.run_id IN ({', '.join('?' * len(runs))})", (SAME_AS_BROKEN_AT, *runs))
        found = {(int(r), int(i)): d for r, i, d in rows}
        return [found.get((int(r), int(i))) if d == SAME_AS_BROKEN_AT else d
                for r, i, d in zip(df.run_id, df.idx, df["detail"], strict=True)]

    def checks_df(self) -> pd.DataFrame:
        return self._df("SELECT * FROM checks ORDER BY model, check_name")

    def models_df(self) -> pd.DataFrame:
        return self._df("SELECT * FROM models ORDER BY model")

    def to_csv(self, folder: str | os.PathLike) -> list[Path]:
        """Write runs.csv, examples.csv, checks.csv and models.csv into ``folder``; return the paths."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, df in (("runs", self.runs_df()), ("examples", self.examples_df()), ("checks", self.checks_df()),
                         ("models", self.models_df())):
            p = out / f"{name}.csv"
            df.to_csv(p, index=False)
            paths.append(p)
        return paths


class SideTable(_StoreFile):
    """One table of its own in the results store file (``bench``, ``threats``): subclasses set ``TABLE`` and
    ``SCHEMA`` (a ``CREATE TABLE IF NOT EXISTS`` statement).

    The file is opened through :class:`ResultsStore` first, so a new file gets the main schema and a file that
    is not a robustdyn store is refused; the table is then created on a connection of our own (WAL, busy
    timeout), so the other tables and their schema version are untouched."""

    TABLE: str
    SCHEMA: str

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        rs = ResultsStore(path)  # creates the main schema, or refuses a foreign/corrupt file
        self.path = rs.path
        rs.close()
        try:
            self._con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self._con.execute("PRAGMA busy_timeout = 30000")
            self._con.execute("PRAGMA journal_mode = WAL")
            self._con.execute(self.SCHEMA)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"results store {self.path}: cannot create the {self.TABLE} table ({e})",
                             "pass another --store path") from None


def insert_sql(table: str, columns: Iterable[str], verb: str = "INSERT OR REPLACE") -> str:
    """``{verb} INTO table (columns...) VALUES (?, ...)``."""
    cols = list(columns)
    return f"{verb} INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


def read_table(path: str | os.PathLike | None, table: str, sql: str, params: Sequence = ()) -> pd.DataFrame:
    """``sql`` on the store at ``path`` (default: :func:`default_store_path`), opened read-only; an empty frame
    when the file or its ``table`` is absent. Never creates the file or the table."""
    p = Path(path) if path is not None else default_store_path()
    if not p.is_file():
        return pd.DataFrame()
    con = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=30.0)
    try:
        has = con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
        if not has:
            return pd.DataFrame()
        return pd.read_sql_query(sql, con, params=tuple(params))
    except sqlite3.DatabaseError as e:
        raise StoreError(f"results store {p} could not be read ({e})", "pass another --store path") from None
    finally:
        con.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any exception, KeyboardInterrupt included)."""

    def __init__(self, con: sqlite3.Connection, path: Path) -> None:
        self.con, self.path = con, path

    def __enter__(self) -> sqlite3.Connection:
        for attempt in range(5):
            try:
                self.con.execute("BEGIN IMMEDIATE")
                return self.con
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt == 4:
                    raise StoreError(f"results store {self.path} is locked or unwritable ({e})",
                                     "wait for the other writer or use another --store path") from None
                time.sleep(1.0 + attempt)
        raise AssertionError("unreachable")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.con.execute("COMMIT")
            except sqlite3.DatabaseError as e:
                raise StoreError(f"results store {self.path}: commit failed ({e})", _fix_for(self.path)) from None
        else:
            self.con.execute("ROLLBACK")


def _sql_value(v):
    if v is None:
        return None
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return None if np.isnan(f) else f
    if isinstance(v, (np.integer, np.bool_)):
        return int(v)
    return v


# ---------------------------------------------------------------------------------- detail JSON

#: example columns stored to 6 significant digits: the per-example attention means. Their float64 digits
#: beyond that are noise (means of float32 values), and at full precision these columns were half of a pack.
ROUNDED_COLUMNS = ("attn_entropy_clean", "attn_entropy_adv", "attn_kl", "attn_tv")


def round_sig(v, digits: int = 6):
    """A float rounded to ``digits`` significant digits (as a Python float); None and NaN pass through."""
    if v is None or not isinstance(v, float) or math.isnan(v):
        return v
    return float(f"{v:.{digits}g}")


def _round(a, digits: int = 4) -> list:
    return [round(float(v), digits) for v in np.asarray(a).ravel()]


def encode_vector(v: np.ndarray) -> str:
    """float16 little-endian bytes, base64."""
    return base64.b64encode(np.asarray(v, dtype="<f2").tobytes()).decode("ascii")


def decode_vector(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<f2").astype(np.float32)


def encode_bits(g: np.ndarray) -> str:
    """A 0/1 vector as a hex string of its packed bits (length is in models.layout)."""
    return np.packbits(np.asarray(g, dtype=np.uint8)).tobytes().hex()


def decode_bits(s: str, length: int | None = None) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(s), dtype=np.uint8))
    return bits[:length] if length is not None else bits


#: The standard eps of each norm (RobustBench's CIFAR-10 threat models).
STANDARD_EPS = {"Linf": 8 / 255, "L2": 0.5}
#: The vectors of ``detail`` (attention vectors ``attn``, gate bits ``gates``) are stored for this many examples of
#: a run, and only in runs at the standard eps of their norm: the first ones of its processing order
#: (:func:`vector_indices`). Nearly incompressible, they were ~60 % of the bytes of a dynamic model's examples,
#: and only the attention t-SNE and the channel-usage-per-class figure read them, at the standard eps.
VECTOR_EXAMPLES = 500


def keeps_vectors(norm: str, eps: float) -> bool:
    std = STANDARD_EPS.get(norm)
    return std is not None and abs(float(eps) - std) < 1e-9


def vector_indices(indices, seed: int, norm: str, eps: float) -> set[int]:
    """The examples of a run (its subset ``indices``, its ``seed``) whose attention and gate vectors are stored."""
    if not keeps_vectors(norm, eps):
        return set()
    from .data import processing_order

    return {int(i) for i in processing_order(np.asarray(indices), seed)[:VECTOR_EXAMPLES]}


#: ``detail`` of an example already broken at a smaller eps of the same sweep: its adversarial example, and so
#: its detail, is the one stored in the sweep's run at eps = ``broken_at`` (:meth:`ResultsStore.examples_df`
#: resolves it). A curve's larger eps are mostly such rows.
SAME_AS_BROKEN_AT = '{"at":"broken_at"}'


#: SQL joining each example row ``e`` of run ``r`` to ``s``, its row in the run of the same sweep at eps = broken_at
_AT_BROKEN = (
    "JOIN runs rs ON rs.model = r.model AND rs.checkpoint_sha256 = r.checkpoint_sha256 AND rs.attack = r.attack "
    "AND rs.settings = r.settings AND rs.norm = r.norm AND rs.grid = r.grid AND rs.dataset_id = r.dataset_id AND "
    "rs.dataset_digest = r.dataset_digest AND rs.seed = r.seed AND rs.n = r.n AND ABS(rs.eps - e.broken_at) < 1e-12 "
    "JOIN examples s ON s.run_id = rs.run_id AND s.idx = e.idx ")


def _pair(clean: list, adv: list) -> list:
    """(clean, adv) as stored: one element when they are equal (eps 0, an unattacked example)."""
    return [clean] if clean == adv else [clean, adv]


def encode_detail(*, entropy: tuple | None = None, kl=None, tv=None, dominant: tuple | None = None,
                  attn: tuple | None = None, density: tuple | None = None, gates: tuple | None = None) -> str | None:
    """The ``detail`` JSON of one example (pairs are (clean, adv)); None when there is nothing to store.

    Each pair is stored as one element when the adversarial side equals the clean one, and KL/TV are left out
    when all zero: :func:`decode_detail` restores both. ``attn`` and ``gates`` may be None (vectors not kept for
    this example).
    """
    d: dict = {}
    if entropy is not None and len(entropy[0]):
        d["H"] = _pair(_round(entropy[0]), _round(entropy[1]))
        kl_r, tv_r = _round(kl, 6), _round(tv)
        if any(kl_r) or any(tv_r):
            d["kl"], d["tv"] = kl_r, tv_r
        d["dom"] = _pair([int(v) for v in dominant[0]], [int(v) for v in dominant[1]])
        if attn is not None:
            d["attn"] = _pair(encode_vector(attn[0]), encode_vector(attn[1]))
    if density is not None and len(density[0]):
        d["dens"] = _pair(_round(density[0]), _round(density[1]))
        if gates is not None:
            d["gates"] = _pair([encode_bits(g) for g in gates[0]], [encode_bits(g) for g in gates[1]])
    return json.dumps(d, separators=(",", ":")) if d else None


def compact_detail(text: str | None, *, vectors: bool = True) -> str | None:
    """``detail`` JSON rewritten in the compact form of :func:`encode_detail` (equal pairs as one element,
    all-zero KL/TV left out), without the attention and gate vectors unless ``vectors``. Idempotent; the values
    :func:`decode_detail` returns are unchanged (apart from the vectors dropped)."""
    if text is None:
        return None
    d = json.loads(text)
    for k in ("H", "dom", "attn", "dens", "gates"):
        if k in d and len(d[k]) == 2:
            d[k] = _pair(d[k][0], d[k][1])
    if "kl" in d and not any(d["kl"]) and not any(d.get("tv", [])):
        del d["kl"], d["tv"]
    if not vectors:
        d.pop("attn", None)
        d.pop("gates", None)
    return json.dumps(d, separators=(",", ":")) if d else None


def decode_detail(text: str | None) -> dict:
    """``detail`` JSON -> arrays: entropy_layers_clean/adv, kl_layers, tv_layers, dominant_layers_clean/adv,
    attn_clean/adv (float32 vectors), density_blocks_clean/adv, gates_clean/adv (list of uint8 arrays per block,
    padded to a multiple of 8 bits; trim with the channel counts in models.layout). The attention and gate vectors
    only where stored (see :data:`VECTOR_EXAMPLES`). Reads the compact form (a pair of one element: adv = clean;
    no kl/tv: zeros) and the
    older full form."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return {}
    d = json.loads(text)
    out: dict = {}
    if "H" in d:
        out["entropy_layers_clean"], out["entropy_layers_adv"] = np.asarray(d["H"][0]), np.asarray(d["H"][-1])
        zeros = [0.0] * len(d["H"][0])
        out["kl_layers"], out["tv_layers"] = np.asarray(d.get("kl", zeros)), np.asarray(d.get("tv", zeros))
        out["dominant_layers_clean"], out["dominant_layers_adv"] = (np.asarray(d["dom"][0]),
                                                                    np.asarray(d["dom"][-1]))
        if "attn" in d:
            out["attn_clean"], out["attn_adv"] = decode_vector(d["attn"][0]), decode_vector(d["attn"][-1])
    if "dens" in d:
        out["density_blocks_clean"], out["density_blocks_adv"] = (np.asarray(d["dens"][0]),
                                                                  np.asarray(d["dens"][-1]))
    if "gates" in d:
        out["gates_clean"], out["gates_adv"] = ([decode_bits(g) for g in side] for side in (d["gates"][0],
                                                                                          d["gates"][-1]))
    return out
