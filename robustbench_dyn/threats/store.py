"""The ``threats`` table in the results store (the same SQLite file as runs/examples/checks/models).

One row per (model, checkpoint_sha256, threat, settings, eps, dataset_digest, seed, n), the key;
``result`` holds the study's numbers as JSON. Threats:

* ``energy``: a gated model under the energy attack (executed MACs clean vs attacked);
* ``pgd``, ``attn-shift``, ``attn-target``: the attention study rows of a DyConv/ODConv model;
* ``adaptive``: direct vs BPDA/EOT with the masking verdict;
* ``transfer``: examples crafted on ``model`` (the source), evaluated on the target named in
  ``settings`` (``target``, ``target_sha256``); ``result`` holds ``acc`` (robust accuracy of the
  target) and ``clean_acc``.

The file is opened through :class:`~robustbench_dyn.store.ResultsStore` first, so a new file gets the
main schema and a file that is not a robustdyn store is refused; the table is then created with
``CREATE TABLE IF NOT EXISTS`` on a connection of our own (WAL, busy timeout), so the other tables
and their schema version are untouched.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import pandas as pd

from ..errors import StoreError
from ..store import SideTable, insert_sql, read_table

THREATS_SCHEMA = """
CREATE TABLE IF NOT EXISTS threats (
    model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, threat TEXT NOT NULL, settings TEXT NOT NULL,
    eps REAL NOT NULL, dataset_digest TEXT NOT NULL, seed INTEGER NOT NULL, n INTEGER NOT NULL,
    eps_label TEXT, dataset_id TEXT, dataset_label TEXT, device TEXT, untrained INTEGER NOT NULL DEFAULT 0,
    result TEXT NOT NULL, duration_s REAL, robustdyn_version TEXT, created_at TEXT,
    PRIMARY KEY (model, checkpoint_sha256, threat, settings, eps, dataset_digest, seed, n)
)
"""


@dataclass(frozen=True)
class ThreatKey:
    model: str
    checkpoint_sha256: str
    threat: str
    settings: str  # canonical JSON (sorted keys, no spaces)
    eps: float
    dataset_digest: str
    seed: int
    n: int


def settings_json(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _finite(v):
    """JSON-safe copy: NaN/inf floats become None (JSON has no NaN), numpy scalars/arrays plain values."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    try:
        import numpy as np

        if isinstance(v, np.ndarray):
            return _finite(v.tolist())
        if isinstance(v, np.generic):
            v = v.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None
    return v


def _json_default(v):
    try:
        import numpy as np

        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


class ThreatStore(SideTable):
    """The ``threats`` table of the results store at ``path`` (default: the results store's default)."""

    TABLE, SCHEMA = "threats", THREATS_SCHEMA

    def get(self, key: ThreatKey) -> dict | None:
        """The stored result for ``key``, or None."""
        k = asdict(key)
        where = " AND ".join(f"{c} = ?" for c in k if c != "eps") + " AND ABS(eps - ?) < 1e-12"
        params = [v for c, v in k.items() if c != "eps"] + [float(key.eps)]
        row = self._con.execute(f"SELECT result FROM threats WHERE {where}", params).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: ThreatKey, result: dict, *, eps_label: str | None = None, dataset_id: str | None = None,
            dataset_label: str | None = None, device: str | None = None, untrained: bool = False,
            duration_s: float | None = None) -> None:
        """Insert or replace one row (a single short transaction, retried while another writer holds the lock)."""
        from .. import __version__

        cols = {**asdict(key), "eps_label": eps_label, "dataset_id": dataset_id, "dataset_label": dataset_label,
                "device": device, "untrained": int(untrained),
                "result": json.dumps(_finite(result), sort_keys=True, default=_json_default, allow_nan=False),
                "duration_s": duration_s, "robustdyn_version": __version__, "created_at": _now()}
        sql = insert_sql("threats", cols)
        for attempt in range(5):
            try:
                self._con.execute(sql, tuple(cols.values()))
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt == 4:
                    raise StoreError(f"results store {self.path} is locked or unwritable ({e})",
                                     "wait for the other writer or use another --store path") from None
                time.sleep(1.0 + attempt)

    def frame(self, threat: str | None = None, *, decode: bool = True) -> pd.DataFrame:
        """All rows (of one threat), with ``settings`` and ``result`` decoded into dict columns and the
        result's scalar fields spread into columns when ``decode``."""
        sql, params = _select(threat)
        df = pd.read_sql_query(sql, self._con, params=params)
        return decode_frame(df) if decode else df


def _select(threat: str | None) -> tuple[str, tuple]:
    """The query for all rows (of one threat) and its parameters."""
    if threat:
        return "SELECT * FROM threats WHERE threat = ? ORDER BY model, threat, eps", (threat,)
    return "SELECT * FROM threats ORDER BY model, threat, eps", ()


def decode_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Decode the JSON columns of a raw ``threats`` frame: ``settings`` -> dict, ``result`` -> dict, the
    result's scalar fields as columns, and ``target_model`` (the target of transfer rows, else None)."""
    if df.empty:
        return df
    df = df.copy()
    df["settings"] = [json.loads(s) for s in df["settings"]]
    df["result"] = [json.loads(r) for r in df["result"]]
    keys: list[str] = []
    for r in df["result"]:
        for k, v in r.items():
            if k not in keys and not isinstance(v, (list, dict)):
                keys.append(k)
    for k in keys:
        if k not in df.columns:
            df[k] = [r.get(k) for r in df["result"]]
    df["target_model"] = [s.get("target") if isinstance(s.get("target"), str) else None for s in df["settings"]]
    return df


def read_threats(path: str | os.PathLike | None = None, threat: str | None = None) -> pd.DataFrame:
    """The decoded ``threats`` table of the store at ``path`` (empty frame when it has none). Read-only:
    never creates the file or the table."""
    return decode_frame(read_table(path, "threats", *_select(threat)))
