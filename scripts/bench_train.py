#!/usr/bin/env python3
"""Training throughput on the CPU: the engine's step (bf16 autocast where the CPU has native bf16, the
fixed recipe's losses) vs a plain fp32 PyTorch loop, measured side by side in one run.

    python scripts/bench_train.py --models static,dyconv_k4,odconv_k4,gated --steps 8 --repeats 3
    python scripts/bench_train.py --models static --compile      # also torch.compile (compile time apart)

The two configurations alternate (A B A B ...) over ``--repeats`` rounds of ``--steps`` steps each, and the
medians are compared, so background load affects both alike; the load average is printed. Batch 128 of
random 32x32 images, one thread unless --threads. Prints img/s per configuration and the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from robustbench_dyn.costs import gated_cost  # noqa: E402
from robustbench_dyn.layers import ChannelGate, GateRecorder, batch_shaping_loss, set_temperature  # noqa: E402
from robustbench_dyn.registry import create_model  # noqa: E402
from robustbench_dyn.training import Recipe, cpu_bf16_supported, mac_ratio, param_groups  # noqa: E402


def make_step(name: str, engine: bool, compiled: bool = False):
    torch.manual_seed(0)
    model = create_model(name)
    set_temperature(model, 1.0)
    model.train()
    r = Recipe(epochs=1)
    gated = any(isinstance(m, ChannelGate) for m in model.modules())
    cost = gated_cost(model) if gated and engine else None
    groups = param_groups(model, r.weight_decay) if engine else model.parameters()
    opt = torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=engine, weight_decay=0 if engine else 5e-4)
    fwd = torch.compile(model) if compiled else model
    use_bf16 = engine and cpu_bf16_supported()

    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            if cost is not None:
                with GateRecorder(model) as rec:
                    out = fwd(x)
                probs = rec.probabilities()
                loss = F.cross_entropy(out.float(), y)
                loss = loss + r.bs_weight * sum(batch_shaping_loss(p) for p in probs) / len(probs)
                loss = loss + r.budget_weight * (mac_ratio(probs, cost) - r.mac_budget).clamp(min=0)
            else:
                loss = F.cross_entropy(fwd(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if engine and r.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
        opt.step()

    return step, use_bf16


def timed(step, x, y, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    return steps * len(y) / (time.perf_counter() - t)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="static,dyconv_k4,odconv_k4,gated")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="also measure the engine step under torch.compile")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    x = torch.rand(a.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (a.batch_size,))
    print(f"torch {torch.__version__}, {a.threads} thread(s), batch {a.batch_size}, cpu bf16 native: "
          f"{cpu_bf16_supported()}, load average at start {os.getloadavg()[0]:.2f}")
    print(f"{'model':12s} {'plain fp32 img/s':>17s} {'engine img/s':>13s} {'ratio':>6s}"
          + (f" {'compiled img/s':>15s} {'compile s':>9s}" if a.compile else ""))
    for name in [n.strip() for n in a.models.split(",") if n.strip()]:
        plain, _ = make_step(name, engine=False)
        ours, _ = make_step(name, engine=True)
        comp = None
        compile_s = float("nan")
        if a.compile:
            comp, _ = make_step(name, engine=True, compiled=True)
            t = time.perf_counter()
            comp(x, y)  # compiles
            compile_s = time.perf_counter() - t
        for s in (plain, ours):
            s(x, y)  # warm-up
        rp, ro, rc = [], [], []
        for _ in range(a.repeats):
            rp.append(timed(plain, x, y, a.steps))
            ro.append(timed(ours, x, y, a.steps))
            if comp is not None:
                rc.append(timed(comp, x, y, a.steps))
        mp, mo = statistics.median(rp), statistics.median(ro)
        line = f"{name:12s} {mp:17.0f} {mo:13.0f} {mo / mp:6.2f}"
        if comp is not None:
            line += f" {statistics.median(rc):15.0f} {compile_s:9.1f}"
        print(line, flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
