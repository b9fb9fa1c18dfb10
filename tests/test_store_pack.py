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
