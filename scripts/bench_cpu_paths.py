"""CPU computation paths of DyConv2d / ODConv2d, side by side (issue #19, CPU side).

    nice -n 19 python scripts/bench_cpu_paths.py                      # model steps (default)
    nice -n 19 python scripts/bench_cpu_paths.py --part layers        # per-layer alternatives
    nice -n 19 python scripts/bench_cpu_paths.py --part layers --compile   # + torch.compile (slow to build)
    python scripts/bench_cpu_paths.py --device cuda --part layers --compile --settings train,attack,attack-bf16

Every path is exact (the script checks max |diff| against the old path in fp32) and the paths are timed
interleaved (A B C A B C ...) over ``--repeats`` rounds, median kept, so that background load hits them
alike: read the **ratios**, not the seconds. One thread (``--threads``), as the zoo is trained.

* ``model``: a ResNet-20 training step (bf16 autocast, batch 128, forward + cross-entropy + backward of
  every parameter) and an attack step (fp32, eval mode, batch 100, gradient w.r.t. the input only) for
  static, dyconv_k4 and odconv_k4 in each mode; ratios vs the old path (grouped) and vs static.
* ``layers``: single layers at ResNet-20 shapes (16/32/64 channels at 32/16/8 pixels), the same two
  steps, for grouped, dense, unfold + bmm, channels_last and (``--compile``) torch.compile of the layer.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from robustbench_dyn import create_model  # noqa: E402
from robustbench_dyn.layers import DyConv2d, ODConv2d, set_temperature  # noqa: E402

SETTINGS = {"train": dict(batch=128, bf16=True), "attack": dict(batch=100, bf16=False),
            "attack-bf16": dict(batch=100, bf16=True)}
MODEL_PATHS = {  # model -> [(label, {layer class: mode})]; the first path is the old default
    "dyconv_k4": [("grouped (old)", {DyConv2d: "grouped"}), ("dense", {DyConv2d: "dense"}),
                  ("auto (new)", {DyConv2d: "auto"})],
    "odconv_k4": [("grouped (old)", {ODConv2d: "grouped"}), ("folded", {ODConv2d: "folded"}),
                  ("auto (new)", {ODConv2d: "auto"})],
}
LAYER_SHAPES = [(16, 16, 32, 1), (32, 32, 16, 1), (64, 64, 8, 1)]


def load() -> str:
    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())


def set_mode(model: torch.nn.Module, modes: dict) -> None:
    for m in model.modules():
        for cls, mode in modes.items():
            if isinstance(m, cls):
                m.mode = mode


def _randomize_attention(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Far-from-uniform attentions (an untrained model's are nearly uniform) at temperature 1."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (DyConv2d, ODConv2d)):
                for p in m.attention.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    set_temperature(model, 1.0)


def _cast(bf16: bool):
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def step_fn(model, x, y, setting: str):
    """One training step (bf16, all parameter gradients) or one attack step (input gradient, eval mode)."""
    bf16 = SETTINGS[setting]["bf16"]
    if setting == "train":
        def run():
            model.train()
            with _cast(True):
                loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            model.zero_grad(set_to_none=True)
        return run

    def run():
        model.eval()
        xa = x.detach().requires_grad_(True)
        with _cast(bf16):
            loss = F.cross_entropy(model(xa).float(), y)
        return torch.autograd.grad(loss, xa)[0]
    return run


DEVICE = torch.device("cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict:
    for f in fns.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            sync()
            t = time.perf_counter()
            f()
            sync()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_models(args) -> list[str]:
    gen = torch.Generator().manual_seed(0)
    rows = ["| model | step | path | max abs diff vs old (fp32 logits) | time vs old path | vs static |",
            "|---|---|---|---|---|---|"]
    for setting in args.settings.split(","):
        cfg = dict(SETTINGS[setting], batch=args.batch or SETTINGS[setting]["batch"])
        x = torch.rand(cfg["batch"], 3, 32, 32, generator=gen).to(DEVICE)
        y = torch.randint(0, 10, (cfg["batch"],), generator=gen).to(DEVICE)
        for name in args.models.split(","):
            static = create_model("static").to(DEVICE)
            model = create_model(name).to(DEVICE)
            _randomize_attention(model, gen)
            model.eval()
            paths = MODEL_PATHS[name]
            if DEVICE.type == "cuda":
                cls = DyConv2d if name.startswith("dyconv") else ODConv2d
                paths = paths + [("bmm", {cls: "bmm"})]
            outs = {}
            with torch.no_grad():
                for label, modes in paths:
                    set_mode(model, modes)
                    outs[label] = model(x[:16])
            diffs = {label: (o - outs[paths[0][0]]).abs().max().item() for label, o in outs.items()}

            def with_mode(modes, fn, model=model):
                def run():
                    set_mode(model, modes)
                    return fn()
                return run
            base = step_fn(model, x, y, setting)
            fns = {"static": step_fn(static, x, y, setting)}
            fns.update({label: with_mode(modes, base) for label, modes in paths})
            state = {k: v.clone() for k, v in model.state_dict().items()}
            print(f"[{setting} {name}] timing {len(fns)} paths x {args.repeats} rounds ({load()})", flush=True)
            t = interleaved(fns, args.repeats)
            model.load_state_dict(state)
            old = t[paths[0][0]]
            for label, _ in paths:
                rows.append(f"| {name} | {setting} ({'bf16' if cfg['bf16'] else 'fp32'}, b{cfg['batch']}) | "
                            f"{label} | {diffs[label]:.1e} | {old / t[label]:.2f}x | {t['static'] / t[label]:.2f}x |")
            print("\n".join(rows[-len(paths):]), flush=True)
    return rows


# ------------------------------------------------------------------------------------------- layers

def layer_paths(kind: str, compile_: bool) -> list[tuple[str, str, bool]]:
    """(label, mode, channels_last)."""
    modes = ["grouped", "dense", "bmm"] if kind == "dyconv" else ["grouped", "folded", "bmm"]
    paths = [(m, m, False) for m in modes]
    paths.append((f"{'dense' if kind == 'dyconv' else 'grouped'} + channels_last",
                  "dense" if kind == "dyconv" else "grouped", True))
    paths.append(("auto (new)", "auto", False))
    if compile_:
        paths.append(("compile(grouped)", "grouped", False))
    return paths


def bench_layers(args) -> list[str]:
    gen = torch.Generator().manual_seed(0)
    rows = ["| layer | shape | step | path | max abs diff vs grouped | time vs grouped | vs static conv |",
            "|---|---|---|---|---|---|---|"]
    for setting in args.settings.split(","):
        cfg = dict(SETTINGS[setting], batch=args.batch or SETTINGS[setting]["batch"])
        cast = (lambda: torch.autocast(DEVICE.type, dtype=torch.bfloat16)) if cfg["bf16"] else contextlib.nullcontext
        for kind in args.kinds.split(","):
            for cin, cout, hw, s in LAYER_SHAPES:
                cls = DyConv2d if kind == "dyconv" else ODConv2d
                layer = cls(cin, cout, 3, s, 1, K=4).to(DEVICE)
                static = torch.nn.Conv2d(cin, cout, 3, s, 1, bias=False).to(DEVICE)
                with torch.no_grad():
                    for p in layer.attention.parameters():
                        p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
                set_temperature(layer, 1.0)
                x = torch.randn(cfg["batch"], cin, hw, hw, generator=gen).to(DEVICE)
                xcl = x.contiguous(memory_format=torch.channels_last)
                paths = layer_paths(kind, args.compile)
                compiled = None
                fns, diffs = {}, {}
                layer.eval()

                def make(mod, xin, mode, train, layer=layer, cast=cast):
                    def run():
                        layer.mode = mode
                        mod.train(train)
                        xa = xin.detach().requires_grad_(True)
                        with cast():
                            out = mod(xa).float().square().mean()
                        if train:
                            out.backward()
                        else:
                            torch.autograd.grad(out, xa)
                    return run
                train = setting == "train"
                with torch.no_grad():
                    layer.mode = "grouped"
                    ref = layer(x)
                for label, mode, cl in paths:
                    mod = layer
                    if label.startswith("compile"):
                        layer.mode = mode
                        t0 = time.perf_counter()
                        compiled = torch.compile(layer)
                        make(compiled, x, mode, train)()
                        print(f"  compile {kind} {cin}x{hw} {setting}: {time.perf_counter() - t0:.1f} s "
                              f"({load()})", flush=True)
                        mod = compiled
                    layer.mode = mode
                    layer.eval()
                    with torch.no_grad():
                        diffs[label] = (mod(xcl if cl else x) - ref).abs().max().item()
                    fns[label] = make(mod, xcl if cl else x, mode, train)
                fns["static"] = make(static, x, "grouped", train)
                if DEVICE.type == "cuda":  # the static baseline as cuDNN runs it best
                    fns["static"] = make(static.to(memory_format=torch.channels_last), xcl, "grouped", train)
                t = interleaved(fns, args.repeats)
                for label, *_ in paths:
                    rows.append(f"| {kind}_k4 | {cin}->{cout} @{hw}x{hw} | {setting} "
                                f"({'bf16' if cfg['bf16'] else 'fp32'}, b{cfg['batch']}) | {label} | "
                                f"{diffs[label]:.1e} | {t['grouped'] / t[label]:.2f}x | "
                                f"{t['static'] / t[label]:.2f}x |")
                print("\n".join(rows[-len(paths):]), f"\n  ({load()})", flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("model", "layers"), default="model")
    p.add_argument("--settings", default="train,attack", help="train (bf16, b128) and/or attack (fp32, b100)")
    p.add_argument("--models", default="dyconv_k4,odconv_k4")
    p.add_argument("--kinds", default="dyconv,odconv", help="layers part: dyconv and/or odconv")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds; the median is kept")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="layers part: add torch.compile of the layer")
    p.add_argument("--device", default="cpu", help="cpu | cuda (ratios there: static with channels_last)")
    p.add_argument("--batch", type=int, default=None, help="override every setting's batch size")
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if DEVICE.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"torch {torch.__version__}, {args.device}, {args.threads} thread(s), {load()}", flush=True)
    t0 = time.perf_counter()
    rows = bench_models(args) if args.part == "model" else bench_layers(args)
    print(f"\n## {args.part} ({load()} at the end, {time.perf_counter() - t0:.0f} s)\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
