#!/usr/bin/env python3
"""Train the whole ResNet-20 zoo in one command (all runs concurrently on one GPU by default).

    python scripts/train_zoo.py --device cuda --time-budget 420 --data-dir DATA
    python scripts/train_zoo.py --device cpu --epochs 30          # CPU: one single-thread run per core
    python scripts/train_zoo.py --device cpu --epochs 1 --train-subset 2048 --jobs 1   # short CPU recipe

Standard models share one recipe and one epoch count, adversarially trained (`_at`) models another:
with --time-budget, every run measures its first epoch and the group trains
floor(budget / slowest first epoch) epochs, so the comparison between kinds is at equal epochs.
Logs go to runs/NAME.log; checkpoints and the manifest to models/. Interrupted runs resume.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STANDARD = ["static", "dyconv_k2", "dyconv_k3", "dyconv_k4", "dyconv_k5", "odconv_k1", "odconv_k4", "gated"]
ADVERSARIAL = ["static_at", "dyconv_k4_at", "odconv_k4_at", "gated_at"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(STANDARD + ADVERSARIAL), help="comma-separated zoo names")
    p.add_argument("--jobs", type=int, default=None,
                   help="concurrent runs (default: all on cuda; one single-thread run per core on cpu, which "
                        "measured 1.26x the throughput of one two-thread run on the 2-core CPU)")
    p.add_argument("--time-budget", type=float, default=None, help="training seconds per standard model")
    p.add_argument("--at-time-budget", type=float, default=None, help="training seconds per _at model "
                                                                       "(default: --time-budget)")
    p.add_argument("--epochs", type=int, default=None, help="fixed epochs instead of a time budget")
    p.add_argument("--at-epochs", type=int, default=None, help="fixed epochs for _at models (default --epochs)")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="stop every run's training this many seconds after the start (best state kept)")
    p.add_argument("--at-from-standard", action="store_true",
                   help="adversarial fine-tuning: each _at model starts from its standard twin's checkpoint "
                        "(--init-from, Jeddi et al. 2020); the _at runs start once every standard run has finished")
    p.add_argument("--at-lr", type=float, default=None, help="peak learning rate of the _at runs (default: --lr)")
    p.add_argument("--device", default=None)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--no-resume", action="store_true")
    a, passthrough = p.parse_known_args(argv)
    import torch

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    names = [n.strip() for n in a.models.split(",") if n.strip()]
    jobs = a.jobs or (len(names) if device == "cuda" else max(1, os.cpu_count() or 1))
    runs = Path(a.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    groups = {"standard": [n for n in names if not n.endswith("_at")], "at": [n for n in names if n.endswith("_at")]}
    sync_dirs = {g: runs / f"_sync_{g}" for g in groups}
    for d in sync_dirs.values():
        if d.exists():
            for f in d.iterdir():
                f.unlink()
    budgets = {"standard": a.time_budget, "at": a.at_time_budget or a.time_budget}

    def command(name: str) -> list[str]:
        g = "at" if name.endswith("_at") else "standard"
        cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--model", name, "--device", device,
               "--run-dir", str(runs / name)]
        epochs = (a.at_epochs or a.epochs) if g == "at" else a.epochs
        if epochs is not None:
            cmd += ["--epochs", str(epochs)]
        else:
            cmd += ["--time-budget", str(budgets[g]), "--epoch-sync", str(sync_dirs[g])]
        if g == "at" and a.at_from_standard:
            cmd += ["--init-from", name[: -len("_at")]]
        if g == "at" and a.at_lr is not None:
            cmd += ["--lr", str(a.at_lr)]
        if a.no_resume:
            cmd.append("--no-resume")
        if device == "cpu" and "--threads" not in passthrough:
            cmd += ["--threads", str(max(1, (os.cpu_count() or 1) // jobs))]
        if a.deadline_s:
            cmd += ["--deadline", str(t_start + a.deadline_s)]
        return cmd + passthrough

    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1" if jobs > 1 else "2"),
           "PYTHONUNBUFFERED": "1"}
    t_start = time.time()
    pending, running, done = sorted(names, key=lambda n: n.endswith("_at")), {}, {}
    t0 = time.time()
    decided: set[str] = set()
    while pending or running:
        while pending and len(running) < jobs:
            if a.at_from_standard and pending[0].endswith("_at") and any(
                    not n.endswith("_at") for n in list(running) + pending):
                break  # the _at runs need their standard twins' checkpoints
            name = pending.pop(0)
            log = open(runs / f"{name}.log", "w")
            running[name] = (subprocess.Popen(command(name), stdout=log, stderr=subprocess.STDOUT, env=env), log)
            print(f"[{time.time() - t0:6.0f}s] started {name}", flush=True)
        # epoch agreement: once every member of a group has reported its first epoch, decide
        if a.epochs is None:
            for g, members in groups.items():
                d = sync_dirs[g]
                live = [m for m in members if m not in done or done[m] == 0]
                if g in decided or not members:
                    continue
                times = {m: float((d / f"{m}.t").read_text()) for m in live if (d / f"{m}.t").exists()}
                if len(times) == len(live) and live:
                    slowest = max(times.values())
                    epochs = int(max(2, budgets[g] // slowest))
                    (d / ".decision").write_text(str(epochs))
                    os.replace(d / ".decision", d / "decision")
                    decided.add(g)
                    print(f"[{time.time() - t0:6.0f}s] group {g}: slowest first epoch {slowest:.1f}s "
                          f"({max(times, key=times.get)}) -> {epochs} epochs for {', '.join(live)}", flush=True)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                done[name] = proc.returncode
                del running[name]
                tail = (runs / f"{name}.log").read_text().strip().splitlines()[-1:] or [""]
                print(f"[{time.time() - t0:6.0f}s] {name} exited {proc.returncode}: {tail[0]}", flush=True)
        time.sleep(0.5)
    failed = [n for n, rc in done.items() if rc != 0]
    from robustbench_dyn.checkpoints import read_manifest

    mdir = passthrough[passthrough.index("--models-dir") + 1] if "--models-dir" in passthrough else None
    manifest = read_manifest(mdir)
    print(f"\n{'model':14s} {'clean':>7s} {'pgd20':>7s} {'gate dens':>9s} {'epochs':>6s} {'wall s':>7s} {'audit':>8s}  "
          "device")
    for n in names:
        e = manifest.get(n)
        if not e:
            print(f"{n:14s} (no checkpoint)")
            continue
        m = e["metrics"]
        pgd = f"{m['pgd20_acc']:.4f}" if "pgd20_acc" in m else ""
        dens = f"{m['mean_gate_density']:.3f}" if "mean_gate_density" in m else ""
        verdict = (e.get("audit") or {}).get("verdict", "")
        print(f"{n:14s} {m['clean_acc']:7.4f} {pgd:>7s} {dens:>9s} {e['epochs']:6d} {e['wall_time_s']:7.0f} "
              f"{verdict:>8s}  {e['device']}")
    print(json.dumps({"failed": failed, "total_wall_s": round(time.time() - t0, 1)}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
