"""Results store: schema and version checks, resume after an interruption (no duplicate, no lost
row, identical results), exports, checks and model tables, the detail JSON."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from _tiny import sample, trained_model

from robustbench_dyn import create_model
from robustbench_dyn import store as store_mod
from robustbench_dyn.attacks import TorchattacksPGD
from robustbench_dyn.data import processing_order, subset_indices
from robustbench_dyn.errors import StoreError
from robustbench_dyn.evaluation import ModelInfo, run_sweep
from robustbench_dyn.store import (
    ROUNDED_COLUMNS,
    SCHEMA_VERSION,
    ResultsStore,
    compact_detail,
    decode_bits,
    decode_detail,
    default_store_path,
    encode_bits,
    encode_detail,
)

INFO = ModelInfo("tiny", "a" * 64)
GRID = [0.0, 2 / 255, 8 / 255]
COLS = ["eps", "idx", "label", "clean_pred", "adv_pred", "broken_at", "perturbation"]


@pytest.fixture(scope="module")
def model():
    return trained_model()


def test_create_and_reopen(tmp_path):
    p = tmp_path / "sub" / "r.sqlite"
    with ResultsStore(p) as st:
        assert st.runs_df().empty
    con = sqlite3.connect(p)
    meta = dict(con.execute("SELECT key, value FROM meta"))
    assert meta["schema"] == "robustdyn-results" and meta["version"] == str(SCHEMA_VERSION)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    ResultsStore(p).close()


def test_default_path(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTDYN_STORE", str(tmp_path / "x.sqlite"))
    assert default_store_path() == tmp_path / "x.sqlite"
    monkeypatch.delenv("ROBUSTDYN_STORE")
    monkeypatch.chdir(tmp_path)
    assert default_store_path() == tmp_path / "results" / "robustdyn.sqlite"


def test_foreign_corrupt_and_incompatible_files(tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_text("hello, not a database")
    with pytest.raises(StoreError, match="notes.sqlite.*not a robustdyn results store.*Fix:"):
        ResultsStore(text)
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (a)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="other.sqlite.*not a robustdyn results store"):
        ResultsStore(other)
    old = tmp_path / "old.sqlite"
    ResultsStore(old).close()
    con = sqlite3.connect(old)
    con.execute("UPDATE meta SET value = '999' WHERE key = 'version'")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="old.sqlite.*schema version 999.*Fix:"):
        ResultsStore(old)
    broken = tmp_path / "broken.sqlite"
    ResultsStore(broken).close()
    raw = bytearray(broken.read_bytes())
    raw[100:4096] = b"\xff" * (4096 - 100)
    broken.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="broken.sqlite"):
        ResultsStore(broken)
    with pytest.raises(StoreError, match="folder"):
        ResultsStore(tmp_path)


class _Boom(RuntimeError):
    pass


def test_resume_after_interruption_is_identical_and_has_no_duplicates(model, tmp_path, monkeypatch):
    data = sample()
    kw = dict(settings={"steps": 3}, n=40, seed=0, batch_size=8)
    with ResultsStore(tmp_path / "ref.sqlite") as ref_store:
        ref = run_sweep(model, INFO, data, "pgd", GRID, store=ref_store, **kw)
        ref_rows = ref_store.examples_df()

    orig = TorchattacksPGD.perturb
    calls = {"n": 0}

    def flaky(self, m, x, y):
        calls["n"] += 1
        if calls["n"] == 3:  # at most two calls (eps) per chunk: dies in the second chunk or later
            raise _Boom("injected")
        return orig(self, m, x, y)

    path = tmp_path / "resumed.sqlite"
    monkeypatch.setattr(TorchattacksPGD, "perturb", flaky)
    with ResultsStore(path) as st, pytest.raises(_Boom):
        run_sweep(model, INFO, data, "pgd", GRID, store=st, **kw)
    monkeypatch.setattr(TorchattacksPGD, "perturb", orig)
    with ResultsStore(path) as st:
        runs = st.runs_df()
        done = int(runs.n_done.iloc[0])  # whole chunks only, the same in every run of the grid
        assert len(runs) == 3 and (runs.n_done == done).all() and done % 8 == 0 and 0 < done < 40
        assert (runs.status == "running").all()
        res = run_sweep(model, INFO, data, "pgd", GRID, store=st, **kw)
        assert res.n_computed == 40 - done and res.robust_acc == ref.robust_acc and res.clean_acc == ref.clean_acc
        rows = st.examples_df()
        runs = st.runs_df()
        assert (runs.status == "complete").all() and (runs.n_done == 40).all() and runs.finished_at.notna().all()
        assert not rows.duplicated(["run_id", "idx"]).any() and len(rows) == 3 * 40
        assert rows[COLS].reset_index(drop=True).equals(ref_rows[COLS].reset_index(drop=True))
        again = run_sweep(model, INFO, data, "pgd", GRID, store=st, **kw)  # complete: nothing recomputed
        assert again.n_computed == 0 and again.robust_acc == ref.robust_acc
        assert len(st.examples_df()) == 120


def test_runs_are_keyed_by_settings_grid_and_subset(model, tmp_path):
    data = sample()
    with ResultsStore(tmp_path / "k.sqlite") as st:
        run_sweep(model, INFO, data, "fgsm", [8 / 255], n=8, store=st)
        run_sweep(model, INFO, data, "fgsm", [8 / 255], n=8, store=st)  # same key: reused
        run_sweep(model, INFO, data, "fgsm", [8 / 255], n=8, seed=1, store=st)
        run_sweep(model, INFO, data, "fgsm", [2 / 255, 8 / 255], n=8, store=st)
        run_sweep(model, INFO, data, "pgd", [8 / 255], settings={"steps": 2}, n=8, store=st)
        runs = st.runs_df()
        assert len(runs) == 5
        r = runs.iloc[0]
        assert r.dataset_label == "CIFAR-10 sample (JPEG copy)" and r.torch_version and r.robustdyn_version
        assert r.eps_label == "8/255" and r.norm == "Linf" and r.grid == f"[{8 / 255}]" and r.device == "cpu"


def test_exports_models_and_checks(tmp_path):
    data = sample()
    m = create_model("gated").eval()
    info = ModelInfo("gated", "b" * 64, untrained=True, family="gated")
    with ResultsStore(tmp_path / "e.sqlite") as st:
        run_sweep(m, info, data, "fgsm", [0.0, 8 / 255], n=6, store=st)
        st.add_check(model="gated", checkpoint_sha256="b" * 64, check_name="logits", dataset_digest=data.digest, n=6,
                     seed=0, value=2.5, passed=True, threshold="x", meaning="y", untrained=True)
        st.upsert_model(model="gated", checkpoint_sha256="b" * 64, latency_ms=1.5, latency_device="cpu")
        models = st.models_df()
        assert len(models) == 1 and models.params[0] > 0 and models.macs[0] > 0 and models.latency_ms[0] == 1.5
        assert models.mean_executed_macs[0] > 0 and "gates" in models.layout[0]
        assert st.checks_df().passed.tolist() == [1]
        ex = st.examples_df(model="gated", eps=8 / 255, detail=True)
        assert len(ex) == 6 and ex.gate_density_clean.between(0, 1).all()
        assert len(ex.gates_clean[0]) == 9 and len(ex.density_blocks_adv[0]) == 9
        ex0 = st.examples_df(model="gated", eps=0.0, detail=True)  # gate bits only at the standard eps
        assert ex0.density_blocks_clean.notna().all() and ("gates_clean" not in ex0 or ex0.gates_clean.isna().all())
        paths = st.to_csv(tmp_path / "csv")
        assert sorted(p.name for p in paths) == ["checks.csv", "examples.csv", "models.csv", "runs.csv"]


def test_detail_roundtrip():
    rng = np.random.default_rng(0)
    attn = rng.dirichlet(np.ones(4), size=3).ravel()
    gates = [rng.integers(0, 2, 16).astype(np.uint8), rng.integers(0, 2, 32).astype(np.uint8)]
    text = encode_detail(entropy=([0.5, 1.0, 1.2], [0.4, 1.1, 1.3]), kl=[0.1, 0.0, 0.2], tv=[0.1, 0.0, 0.3],
                         dominant=([0, 1, 2], [0, 1, 3]), attn=(attn, attn), density=([0.5, 0.25], [0.5, 0.5]),
                         gates=(gates, gates))
    d = decode_detail(text)
    assert np.allclose(d["attn_clean"], attn, atol=1e-3)
    assert d["dominant_layers_adv"].tolist() == [0, 1, 3]
    assert np.array_equal(d["gates_clean"][1][:32], gates[1])
    assert np.array_equal(decode_bits(encode_bits(gates[0]), 16), gates[0])
    assert decode_detail(None) == {} and encode_detail() is None


def test_interrupted_run_has_done_an_unbiased_sample(model, tmp_path):
    """Examples are processed in the seeded order: a run cut short holds the seed's smaller subset, not the
    lowest indices (the test split is sorted by class over most of its range)."""
    data = sample()
    with ResultsStore(tmp_path / "p.sqlite") as st:
        progress = []

        def stop_after_two(done, total):
            progress.append(done)
            if done >= 16:
                raise _Boom("stop")

        with pytest.raises(_Boom):
            run_sweep(model, INFO, data, "fgsm", [8 / 255], n=40, seed=3, batch_size=8, store=st,
                      progress=stop_after_two)
        done = st.done_indices(int(st.runs_df().run_id.iloc[0]))
        assert len(done) == 16 and done.tolist() == subset_indices(len(data), 16, seed=3).tolist()
        assert done.tolist() != subset_indices(len(data), 40, seed=3)[:16].tolist()


def _legacy(text):
    """The detail JSON as versions before the compact form wrote it: every pair in full, KL/TV always."""
    if text is None:
        return None
    import json

    d = json.loads(text)
    for k in ("H", "dom", "attn", "dens", "gates"):
        if k in d and len(d[k]) == 1:
            d[k] = [d[k][0], d[k][0]]
    if "H" in d and "kl" not in d:
        d["kl"] = d["tv"] = [0.0] * len(d["H"][0])
    return json.dumps(d, separators=(",", ":"))


def test_detail_compact_form():
    attn = np.full(8, 0.25)
    full = encode_detail(entropy=([0.5, 1.0], [0.4, 1.1]), kl=[0.1, 0.0], tv=[0.1, 0.0], dominant=([0, 1], [0, 2]),
                         attn=(attn, attn * 0 + 0.5))
    same = encode_detail(entropy=([0.5, 1.0], [0.5, 1.0]), kl=[0.0, 0.0], tv=[0.0, 0.0], dominant=([0, 1], [0, 1]),
                         attn=(attn, attn), density=([0.5], [0.5]), gates=([np.ones(8)], [np.ones(8)]))
    import json

    stored = json.loads(same)
    assert "kl" not in stored and all(len(stored[k]) == 1 for k in ("H", "dom", "attn", "dens", "gates"))
    assert all(len(v) == 2 for k, v in json.loads(full).items() if k in ("H", "dom", "attn"))
    for text in (full, same):
        legacy, compact = decode_detail(_legacy(text)), decode_detail(text)
        assert compact_detail(_legacy(text)) == text and compact_detail(text) == text  # idempotent
        assert sorted(legacy) == sorted(compact)
        for k, v in legacy.items():
            if k.startswith("gates"):
                assert all(np.array_equal(a, b) for a, b in zip(v, compact[k], strict=True))
            else:
                assert np.array_equal(v, compact[k]), k
    d = decode_detail(same)
    assert d["kl_layers"].tolist() == [0.0, 0.0] and d["entropy_layers_adv"].tolist() == [0.5, 1.0]
    assert "attn_clean" not in decode_detail(compact_detail(full, vectors=False))
    assert "attn_clean" not in decode_detail(encode_detail(entropy=([1.0], [1.0]), kl=[0.0], tv=[0.0],
                                                           dominant=([0], [0]), attn=None))


def test_vectors_are_kept_for_the_first_examples_at_the_standard_eps_and_compact_rewrites_old_rows(
        tmp_path, monkeypatch):
    net = _seeded_dyconv()
    data = _self_labelled(net, 24)
    info = ModelInfo("dyconv_k4", "c" * 64, untrained=True, family="dyconv")
    grid = [0.0, 4 / 255, 8 / 255]
    monkeypatch.setattr(store_mod, "VECTOR_EXAMPLES", 3)
    with ResultsStore(tmp_path / "new.sqlite") as st:
        run_sweep(net, info, data, "fgsm", grid, n=24, seed=2, batch_size=4, store=st)
        new = st.examples_df(detail=True)
        raw = st.examples_df()
    first3 = set(processing_order(subset_indices(len(data), 24, seed=2), 2)[:3].tolist())
    with_vec = new[new.attn_clean.notna()]
    assert (with_vec.eps == 8 / 255).all() and set(with_vec.idx.tolist()) == first3
    assert new.entropy_layers_clean.notna().all() and new.kl_layers.notna().all()
    clean = new[new.eps == 0]
    assert all(np.array_equal(a, b) for a, b in zip(clean.entropy_layers_clean, clean.entropy_layers_adv,
                                                    strict=True))
    for c in ROUNDED_COLUMNS:
        assert all(float(f"{v:.6g}") == v for v in raw[c])

    # a store as older versions wrote it: vectors everywhere, full pairs, full-precision means
    import robustbench_dyn.evaluation as ev

    monkeypatch.setattr(ev, "vector_indices", lambda indices, *a: {int(i) for i in indices})
    path = tmp_path / "old.sqlite"
    with ResultsStore(path) as st:
        run_sweep(net, info, data, "fgsm", grid, n=24, seed=2, batch_size=4, store=st)
    con = sqlite3.connect(path)
    rows = con.execute(f"SELECT run_id, idx, detail, {', '.join(ROUNDED_COLUMNS)} FROM examples").fetchall()
    con.executemany(f"UPDATE examples SET detail = ?, {', '.join(c + ' = ?' for c in ROUNDED_COLUMNS)} "
                    "WHERE run_id = ? AND idx = ?",
                    [(_legacy(d), *[v * (1 + 1e-12) for v in vals], rid, idx) for rid, idx, d, *vals in rows])
    con.commit()
    con.close()
    with ResultsStore(path) as st:
        assert st.examples_df(detail=True).attn_clean.notna().sum() == 72
        counts = st.compact()
        assert counts == {"runs": 3, "rows": 72}
        assert st.compact() == {"runs": 0, "rows": 0}  # idempotent
        assert st.examples_df().drop(columns="run_id").equals(raw.drop(columns="run_id"))
    assert (raw.detail == store_mod.SAME_AS_BROKEN_AT).any()  # the legacy copies became references


def _seeded_dyconv():
    """An untrained DyConv ResNet-20 whose weights do not depend on the tests that ran before."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return create_model("dyconv_k4").eval()


def _self_labelled(net, n: int):
    """The first n sample images labelled with ``net``'s own predictions: all clean-correct, so attacks break some."""
    import dataclasses

    import torch

    base = sample()
    with torch.no_grad():
        pred = net(base.tensors(np.arange(n))[0]).argmax(1).numpy()
    return dataclasses.replace(base, x=base.x[:n], y=pred, digest="")


def test_examples_broken_earlier_refer_to_their_detail_and_resolve_to_it(tmp_path):
    """An example broken at a smaller eps of the sweep keeps that adversarial example: its detail is stored once
    (the larger eps refer to it) and examples_df(detail=True) gives back the same arrays at every eps."""
    from robustbench_dyn.store import SAME_AS_BROKEN_AT

    net = _seeded_dyconv()
    data = _self_labelled(net, 24)
    info = ModelInfo("dyconv_k4", "d" * 64, untrained=True, family="dyconv")
    grid = [1 / 255, 4 / 255, 16 / 255]
    with ResultsStore(tmp_path / "s.sqlite") as st:
        res = run_sweep(net, info, data, "fgsm", grid, n=24, seed=0, batch_size=12, store=st)
        raw = st.examples_df()
        ex = st.examples_df(detail=True)
    assert res.robust_acc[16 / 255] < res.robust_acc[1 / 255]
    refs = raw[raw.detail == SAME_AS_BROKEN_AT]
    assert len(refs) > 0 and (refs.broken_at < refs.eps).all() and (refs.broken_at > 0).all()
    assert raw[(raw.broken_at > 0) & (raw.broken_at < raw.eps)].detail.eq(SAME_AS_BROKEN_AT).all()
    assert ex.entropy_layers_adv.notna().all()
    by = {(round(r.eps, 9), r.idx): r for r in ex.itertuples()}
    for r in refs.itertuples():
        a, b = by[(round(r.eps, 9), r.idx)], by[(round(r.broken_at, 9), r.idx)]
        assert np.array_equal(a.entropy_layers_adv, b.entropy_layers_adv)
        assert np.array_equal(a.kl_layers, b.kl_layers) and a.attn_entropy_adv == b.attn_entropy_adv
