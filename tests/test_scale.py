"""Scale and reliability: torchrun sharding equals one process, SIGKILL at random moments then resume
equals an uninterrupted run, concurrent writers do not corrupt a store, and the same command gives
bit-identical rows on the CPU.

Every comparison is on :func:`store_rows`: each example row with its run's key (not the run id, which
depends on the order runs were created), compared with ``==``: floats bit for bit.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from robustbench_dyn.cli import main

REPO = Path(__file__).resolve().parents[1]
RUN_KEY = ("model", "checkpoint_sha256", "attack", "settings", "norm", "eps", "grid", "dataset_id", "dataset_digest",
           "seed", "n")
# trained checkpoints shipped in models/: a DyConv model (attention columns) and a gated one (gate columns)
MODELS = "dyconv_k4,gated"


def store_rows(path: Path) -> list[tuple]:
    """Every example row (without run_id), prefixed by its run's key, in a canonical order."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cols = [r[1] for r in con.execute("PRAGMA table_info(examples)") if r[1] != "run_id"]
        key = ", ".join(f"r.{c}" for c in RUN_KEY)
        sql = (f"SELECT {key}, {', '.join('e.' + c for c in cols)} FROM examples e JOIN runs r "
               f"ON r.run_id = e.run_id ORDER BY {key}, e.idx")
        return con.execute(sql).fetchall()
    finally:
        con.close()


def run_statuses(path: Path) -> list[tuple]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute("SELECT model, attack, eps, n, status, (SELECT COUNT(*) FROM examples e WHERE "
                           "e.run_id = r.run_id) FROM runs r ORDER BY model, attack, eps").fetchall()
    finally:
        con.close()


def integrity(path: Path) -> str:
    con = sqlite3.connect(path)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def run_inprocess(*args) -> None:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    assert (e.value.code or 0) == 0


@pytest.fixture
def env(monkeypatch, tmp_path) -> dict:
    """The environment of the subprocesses: offline, private cache, the bundled sample as data."""
    monkeypatch.delenv("ROBUSTDYN_DATA", raising=False)  # the same data (the sample) in and out of process
    e = {**os.environ, "PYTHONUNBUFFERED": "1"}
    e.pop("ROBUSTDYN_DATA", None)
    return e


@pytest.fixture
def suite(tmp_path) -> Path:
    p = tmp_path / "tiny.toml"
    p.write_text('name = "tiny"\nseed = 3\nchecks = false\n'
                 '[[attacks]]\nname = "fgsm"\neps = ["2/255", "8/255"]\n'
                 '[[attacks]]\nname = "pgd"\neps = ["1/255", "4/255"]\nsteps = 3\n')
    return p


# ------------------------------------------------------------------------------------------ torchrun

def test_torchrun_two_ranks_equal_one_process(tmp_path, env, suite):
    """2 gloo ranks, 10 examples in chunks of 4 (rounds: 2 chunks, then 1 with rank 1 idle)."""
    args = ["sweep", "--suite", suite, "--models", MODELS, "--n-examples", "10", "--batch-size", "4",
            "--device", "cpu"]
    dist_store, single_store = tmp_path / "dist.sqlite", tmp_path / "single.sqlite"
    try:  # the ranks meet over loopback TCP
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
    except OSError as e:
        pytest.skip(f"no loopback TCP on this machine ({e}): torch.distributed cannot start")
    if Path("/sys/class/net/lo").exists():
        env = {**env, "GLOO_SOCKET_IFNAME": "lo"}  # whatever the host name resolves to
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "robustbench_dyn", *map(str, args), "--store", str(dist_store), "--distributed"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "distributed: 2 ranks" in p.stdout
    assert p.stdout.count("suite   tiny") == 1  # rank 1 prints nothing
    run_inprocess(*args, "--store", single_store)
    a, b = store_rows(dist_store), store_rows(single_store)
    assert len(a) == 2 * 2 * 2 * 10  # models x attacks x eps x n
    assert a == b
    assert all(s[4] == "complete" and s[5] == 10 for s in run_statuses(dist_store))

    # resume under torchrun: drop the rows of the last two chunks (as a run killed before committing
    # its last round leaves them), rerun, and get the same store back
    from robustbench_dyn.data import load_cifar10, processing_order

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'using the bundled sample', as in the runs above
        order = processing_order(load_cifar10("test").subset(10, 3), 3)  # the suite's seed, in processing order
    lost = [int(i) for i in order[4:]]
    con = sqlite3.connect(dist_store)
    with con:
        con.execute(f"DELETE FROM examples WHERE idx IN ({','.join('?' * len(lost))})", lost)
        con.execute("UPDATE runs SET status = 'running', finished_at = NULL")
    con.close()
    assert len(store_rows(dist_store)) == 2 * 2 * 2 * 4
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "4 resumed" in p.stdout
    assert store_rows(dist_store) == b
    assert all(s[4] == "complete" and s[5] == 10 for s in run_statuses(dist_store))


def test_distributed_flag_without_torchrun_is_a_one_line_error(capsys, monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--model", "static", "--untrained", "--distributed", "--device", "cpu", "--no-store"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "torchrun --nproc-per-node" in err


# ------------------------------------------------------------------------------ kill-safe resume

def _count_rows(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM examples").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError:  # not created yet
        return 0


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path, env):
    """Kill the sweep with SIGKILL (no cleanup, no handler runs) at 4 random moments, resume with the
    same command each time; the final store must equal an uninterrupted run's."""
    n, grid = 24, ["0", "2/255", "8/255"]
    args = ["evaluate", "--model", "dyconv_k4", "--attack", "pgd", "--set", "steps=10", "--eps-grid", ",".join(grid),
            "--n", str(n), "--batch-size", "2", "--seed", "5", "--device", "cpu"]
    store = tmp_path / "killed.sqlite"
    cmd = [sys.executable, "-m", "robustbench_dyn", *args, "--store", str(store)]
    total = n * len(grid)
    seed = int.from_bytes(os.urandom(4), "little")
    rnd = random.Random(seed)
    kills: list[tuple[str, int]] = []
    for attempt in range(4):
        before = _count_rows(store)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
        if attempt == 0:  # a kill during start-up (importing torch, loading the checkpoint)
            time.sleep(rnd.uniform(0.2, 1.0))
        else:  # a random moment after this process has committed 1 or 2 more chunks (of 12): the first two
            # of these kills land mid-run even on a fast machine
            target = before + len(grid) * 2 * rnd.randint(1, 2)
            deadline = time.monotonic() + 120
            while _count_rows(store) < target and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rnd.uniform(0.0, 0.1))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        kills.append((f"rc={proc.returncode}", _count_rows(store)))
    mid_run = [k for k in kills if k[0] == f"rc={-signal.SIGKILL}" and 0 < k[1] < total]
    print(f"kill seed {seed}: (exit, rows committed of {total}) per kill: {kills}")
    assert len(mid_run) >= 2, (seed, kills)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)  # resume to the end
    assert p.returncode == 0, (seed, p.stderr[-2000:])
    assert "resumed from the store" in p.stdout or kills[-1][1] == total

    reference = tmp_path / "uninterrupted.sqlite"
    run_inprocess(*args, "--store", reference)
    a, b = store_rows(store), store_rows(reference)
    assert integrity(store) == "ok"
    assert len(a) == total and len({(r[:len(RUN_KEY)], r[len(RUN_KEY)]) for r in a}) == total  # no duplicate rows
    assert a == b, (seed, kills)
    assert [s[4:] for s in run_statuses(store)] == [("complete", n)] * len(grid)


def test_two_processes_writing_one_store(tmp_path, env):
    """Three writers at once on one store: two run the same sweep (same runs, same rows), one another
    model. The store stays intact, nothing is duplicated, and the rows equal separate runs'."""
    store = tmp_path / "shared.sqlite"
    base = ["evaluate", "--attack", "pgd", "--set", "steps=3", "--eps-grid", "2/255,8/255", "--n", "8",
            "--batch-size", "2", "--device", "cpu"]
    jobs = [[*base, "--model", "dyconv_k4"], [*base, "--model", "dyconv_k4"], [*base, "--model", "gated"]]
    procs = [subprocess.Popen([sys.executable, "-m", "robustbench_dyn", *j, "--store", str(store)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
             for j in jobs]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errs
    assert integrity(store) == "ok"
    ref = tmp_path / "ref.sqlite"
    run_inprocess(*jobs[0], "--store", ref)
    run_inprocess(*jobs[2], "--store", ref)
    a = store_rows(store)
    assert len(a) == 2 * 2 * 8 and a == store_rows(ref)
    assert [s[4:] for s in run_statuses(store)] == [("complete", 8)] * 4


# ---------------------------------------------------------------------------------- determinism

def test_same_command_three_times_is_bit_identical(tmp_path, env):
    """Attacks with randomness (PGD's random start, Square's random search) on a DyConv and a gated
    model, three times, into three stores: identical rows; seeds and versions recorded."""
    stores = [tmp_path / f"run{i}.sqlite" for i in range(3)]
    for st in stores:
        for attack, extra in (("pgd", ["--set", "steps=3"]), ("square", ["--set", "n_queries=20"])):
            for model in ("dyconv_k4", "gated"):
                run_inprocess("evaluate", "--model", model, "--attack", attack, *extra, "--eps", "8/255", "--n", "6",
                              "--seed", "11", "--device", "cpu", "--store", st)
    rows = [store_rows(s) for s in stores]
    assert len(rows[0]) == 4 * 6 and rows[0] == rows[1] == rows[2]
    con = sqlite3.connect(stores[0])
    recorded = con.execute("SELECT seed, torch_version, torchattacks_version, pyautoattack_version, "
                           "robustdyn_version, device FROM runs").fetchall()
    con.close()
    assert all(r[0] == 11 and all(r[1:]) for r in recorded), recorded
