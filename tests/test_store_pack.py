"""Results-store packs (`robustdyn store pack|unpack`): exact round trip, stable bytes, integrity checks, and
the report reading a pack folder directly."""

from __future__ import annotations

import gzip
import hashlib
import json
import sqlite3

import pytest
from _cli import run_cli as run

from robustbench_dyn.errors import StoreError
from robustbench_dyn.store import ResultsStore
from robustbench_dyn.store_pack import pack_store, unpack_store


def _evaluate(capsys, store, n=6):
    code, _, err = run(capsys, "evaluate", "--model", "gated", "--untrained", "--attack", "fgsm", "--eps-grid",
                       "0,8/255", "--n", n, "--store", store, "--device", "cpu")
    assert code == 0, err


def _dump(path) -> dict:
    con = sqlite3.connect(path)
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    out = {t: sorted(con.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}
    con.close()
    return out


@pytest.fixture
def store(capsys, tmp_path):
    p = tmp_path / "s.sqlite"
    _evaluate(capsys, p)
    return p


def test_round_trip_is_exact_and_repacking_changes_nothing(store, tmp_path):
    pack = tmp_path / "pack"
    m = pack_store(store, pack)
    assert m["rows"]["runs"] == 2 and m["rows"]["examples"] == 12
    run_files = sorted(p.name for p in (pack / "examples").iterdir())
    assert len(run_files) == 2 and all(f.startswith("run-") for f in run_files)
    back = unpack_store(pack, tmp_path / "back.sqlite")
    assert _dump(back) == _dump(store)  # every table, every value (row ids included)
    before = {p: p.read_bytes() for p in pack.rglob("*") if p.is_file()}
    assert pack_store(back, pack)["changed"] == []  # same rows, same bytes: git sees no change
    assert {p: p.read_bytes() for p in pack.rglob("*") if p.is_file()} == before


def test_a_new_run_adds_files_and_leaves_finished_runs_untouched(capsys, store, tmp_path):
    pack = tmp_path / "pack"
    pack_store(store, pack)
    old = {p.name: p.read_bytes() for p in (pack / "examples").iterdir()}
    code, _, err = run(capsys, "evaluate", "--model", "gated", "--untrained", "--attack", "pgd", "--eps-grid",
                       "8/255", "--n", 6, "--set", "steps=2", "--store", store, "--device", "cpu")
    assert code == 0, err
    changed = pack_store(store, pack)["changed"]
    assert len([c for c in changed if c.startswith("examples/")]) == 1
    assert all((pack / "examples" / name).read_bytes() == data for name, data in old.items())


def test_resume_in_an_unpacked_store(capsys, store, tmp_path):
    pack = tmp_path / "pack"
    pack_store(store, pack)
    back = tmp_path / "elsewhere" / "r.sqlite"
    code, out, err = run(capsys, "store", "unpack", pack, back)
    assert code == 0 and "unpacked" in out, err
    code, out, err = run(capsys, "evaluate", "--model", "gated", "--untrained", "--attack", "fgsm", "--eps-grid",
                         "0,8/255", "--n", 6, "--store", back, "--device", "cpu")
    assert code == 0 and "6 of 6 examples resumed" in out, err


def test_tampered_or_hostile_packs_are_refused(store, tmp_path):
    pack = tmp_path / "pack"
    pack_store(store, pack)
    victim = next((pack / "examples").iterdir())
    victim.write_bytes(gzip.compress(b'["idx"]\n[1]\n'))
    with pytest.raises(StoreError, match="sha256"):
        unpack_store(pack, tmp_path / "x.sqlite")
    pack_store(store, pack)  # repaired
    # a statement other than CREATE in schema.sql is refused even with a matching digest
    schema = pack / "schema.sql"
    schema.write_text(schema.read_text() + "ATTACH DATABASE '/tmp/evil.db' AS evil;\n")
    man = json.loads((pack / "PACK.json").read_text())
    man["files"]["schema.sql"] = hashlib.sha256(schema.read_bytes()).hexdigest()
    (pack / "PACK.json").write_text(json.dumps(man))
    with pytest.raises(StoreError, match="other than CREATE"):
        unpack_store(pack, tmp_path / "y.sqlite")
    assert not (tmp_path / "y.sqlite").exists()


def test_bad_paths_name_the_fix(store, tmp_path):
    pack = tmp_path / "pack"
    pack_store(store, pack)
    with pytest.raises(StoreError, match="exists") as e:
        unpack_store(pack, store)
    assert "--overwrite" in e.value.fix
    with pytest.raises(StoreError, match="not a results-store pack"):
        unpack_store(tmp_path, tmp_path / "z.sqlite")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match="holds other files"):
        pack_store(store, other)
    with pytest.raises(StoreError, match="pack") as e:  # commands that write need the SQLite file
        ResultsStore(pack)
    assert "robustdyn store unpack" in e.value.fix


def test_report_reads_a_pack_folder(capsys, store, tmp_path):
    pack = tmp_path / "pack"
    pack_store(store, pack)
    code, out, err = run(capsys, "report", "--store", pack, "--out", tmp_path / "rep", "--sections", "main_table")
    assert code == 0, err
    md = (tmp_path / "rep" / "index.md").read_text()
    assert f"`{pack}`" in md  # the report names the pack, not the unpacked copy


def _bits(path) -> dict:
    """Every table's rows with floats as their exact bit patterns (``==`` would let -0.0 pass for 0.0)."""
    import struct
    return {t: sorted(repr([(type(v).__name__, struct.pack("<d", v).hex() if isinstance(v, float) else v)
                             for v in r]) for r in rows) for t, rows in _dump(path).items()}


def test_float32_columns_are_short_and_exact(store, tmp_path):
    import lzma

    import numpy as np
    con = sqlite3.connect(store)
    # perturbation: float32 values (as the attacks compute them), -0.0 and a tiny subnormal-range one included;
    # macs_clean: a float64 value that is not a float32, so that column must keep full precision
    rows = con.execute("SELECT run_id, idx FROM examples ORDER BY run_id, idx").fetchall()
    vals = [float(np.float32(v)) for v in (0.031372549, -0.0, 1.4e-42, 3.3e38, 1e-7, 2.5)]
    for (run_id, idx), v in zip(rows, vals * 2, strict=False):
        con.execute("UPDATE examples SET perturbation=?, macs_clean=? WHERE run_id=? AND idx=?",
                    (v, 1 / 3 + idx, run_id, idx))
    con.commit()
    con.close()
    pack = tmp_path / "pack"
    pack_store(store, pack)
    f = sorted((pack / "examples").iterdir())[0]
    assert f.name.endswith(".json.xz")
    lines = lzma.decompress(f.read_bytes()).decode().splitlines()
    head = json.loads(lines[0])
    assert "perturbation" in head["float32"] and "macs_clean" not in head["float32"]
    assert "0.031372547" in lines[1 + head["columns"].index("perturbation")]  # float32's shortest decimal
    back = unpack_store(pack, tmp_path / "back.sqlite")
    assert _bits(back) == _bits(store)


def test_format_1_packs_still_read(store, tmp_path):
    from robustbench_dyn import store_pack as sp
    pack = tmp_path / "pack"
    pack_store(store, pack)
    man = json.loads((pack / "PACK.json").read_text())
    con = sqlite3.connect(store)
    files = {}
    for name in man["files"]:
        table = sp._table_of(name)
        if table is None:
            continue
        columns, order = sp._order(con, table)
        where = f" WHERE run_id={int(name.split('run-')[1].split('.')[0])}" if "/" in name else ""
        rows = con.execute(f'SELECT * FROM "{table}"{where} ORDER BY {order}').fetchall()
        (pack / name).unlink()
        new = name.replace(".json.xz", ".jsonl.gz")
        (pack / new).write_bytes(sp._encode_v1(rows, columns))
        files[new] = hashlib.sha256((pack / new).read_bytes()).hexdigest()
    con.close()
    files["schema.sql"] = man["files"]["schema.sql"]
    (pack / "PACK.json").write_text(json.dumps({**man, "format": 1, "files": files}))
    assert _bits(unpack_store(pack, tmp_path / "v1.sqlite")) == _bits(store)
    # packing again converts it: the format-1 files are replaced by format-2 ones
    changed = pack_store(store, pack)["changed"]
    assert any(c.endswith(".jsonl.gz") for c in changed) and not list(pack.rglob("*.jsonl.gz"))
    man["format"] = 99
    (pack / "PACK.json").write_text(json.dumps(man))
    with pytest.raises(StoreError, match="format 99"):
        unpack_store(pack, tmp_path / "v99.sqlite")


def test_a_malformed_file_with_a_matching_digest_is_refused(store, tmp_path):
    import lzma
    pack = tmp_path / "pack"
    pack_store(store, pack)
    victim = sorted((pack / "examples").iterdir())[0]
    for payload in (b"not xz at all",
                    lzma.compress(b'{"columns":["run_id","idx"],"float32":[],"rows":3}\n[1,1,1]\n[1,2]\n')):
        victim.write_bytes(payload)
        man = json.loads((pack / "PACK.json").read_text())
        man["files"][f"examples/{victim.name}"] = hashlib.sha256(payload).hexdigest()
        (pack / "PACK.json").write_text(json.dumps(man))
        with pytest.raises(StoreError, match="cannot rebuild"):
            unpack_store(pack, tmp_path / "bad.sqlite")
        assert not (tmp_path / "bad.sqlite").exists()


def test_a_repack_encodes_only_what_changed_and_never_reuses_an_edited_file(capsys, store, tmp_path, monkeypatch):
    import robustbench_dyn.store_pack as sp
    pack = tmp_path / "pack"
    pack_store(store, pack)
    encoded: list[int] = []
    real = sp._encode
    monkeypatch.setattr(sp, "_encode", lambda rows, columns: encoded.append(len(rows)) or real(rows, columns))
    before = {p: p.read_bytes() for p in pack.rglob("*") if p.is_file()}
    assert pack_store(store, pack)["changed"] == [] and encoded == []  # nothing re-encoded, nothing rewritten
    assert {p: p.read_bytes() for p in pack.rglob("*") if p.is_file()} == before
    # a new run: its examples file and the small tables that gained rows are encoded, the old runs' files are not
    code, _, err = run(capsys, "evaluate", "--model", "gated", "--untrained", "--attack", "pgd", "--eps-grid",
                       "8/255", "--n", 6, "--set", "steps=2", "--store", store, "--device", "cpu")
    assert code == 0, err
    m = pack_store(store, pack)
    n_examples = len([f for f in m["files"] if f.startswith("examples/")])
    assert n_examples == 3 and 0 < len(encoded) < len(m["files"]) - 1
    assert len([c for c in m["changed"] if c.startswith("examples/")]) == 1
    # a file edited on disk (its sha256 no longer matches) is encoded again from the store, not reused
    victim = sorted((pack / "examples").iterdir())[0]
    good = victim.read_bytes()
    victim.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    encoded.clear()
    m = pack_store(store, pack)
    assert encoded and victim.read_bytes() == good and f"examples/{victim.name}" in m["changed"]
    assert _dump(unpack_store(pack, tmp_path / "back.sqlite")) == _dump(store)
