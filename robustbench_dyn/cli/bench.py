"""`robustdyn bench`: measured latency and throughput per model next to its MACs (a thin shell over
:mod:`robustbench_dyn.bench`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ._app import app, console, err_console
from ._options import data_dir_option, models_dir_option, no_store_option, open_store, store_option
from ._progress import LogProgress, progress_bar

_HELP = """Measure inference cost as a user feels it: latency and throughput, next to the MACs the FLOP counter
reports.

Per model: [bold]latency at batch 1[/] (median and p90 of timed calls after a warm-up, each call on another real
test image) and [bold]throughput at the larger batch sizes[/] (images/s), for a [bold]clean forward[/] (no grad)
and for [bold]one attack step[/] (forward + cross-entropy + gradient w.r.t. the input, one PGD iteration).

MACs are nominal. DyConv/ODConv can spend time on per-example kernels beyond their MACs; compare their latency
ratio to static with their MACs ratio. A gated model's [bold]executed MACs[/] are what its open gates need, but
its own forward computes every channel and zeroes the closed ones ([italic]masked[/]); bench also times the
[italic]skip[/] path (only the open channels' weights, per example) at batch 1, interleaved with the masked
one, and reports the speed-up. The skip path's latency depends on which gates open: time trained checkpoints.

Results: the `bench` table of the results store (the report's Cost section reads it; a rerun replaces the
rows of the same model, device, threads), the batch-1 latency in the `models` table, and a CSV (--csv).
Each row records device, device name, threads, torch version, the 1-minute load average and the date:
latency on a loaded machine is slower and noisier; rerun on an idle one for numbers to publish.

Examples:

  robustdyn bench                                      # the ResNet-20 zoo (models with a checkpoint), CPU
  robustdyn bench --models 'static,gated' --batch-sizes 1
  robustdyn bench --models 'resnet50_*' --untrained --batch-sizes 1,32
  robustdyn bench --device cuda --batch-sizes 1,1024
"""


def _progress() -> LogProgress:
    return progress_bar(err_console, eta=False)


def _ms(v) -> str:
    return "" if v is None or v != v else f"{v:.2f}"


def _x(v) -> str:
    return "" if v is None or v != v else f"{v:.2f}x"


@app.command("bench", help=_HELP)
def bench_cmd(
    models: str = typer.Option("*", "--models", "-m", help="Shell pattern(s), comma-separated: '*', 'dyconv_*', "
                               "'static,gated'. Models without a checkpoint are skipped (see --untrained)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    batch_sizes: str = typer.Option("1,256", "--batch-sizes", help="Comma-separated batch sizes: 1 gives latency "
                                    "(and the gated skip path), larger ones throughput."),
    untrained: bool = typer.Option(False, "--untrained", help="Also time models without a checkpoint, with random "
                                   "weights (latency does not depend on weights, except the gated skip path's)."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: torch's, usually the cores)."),
    repeats: int = typer.Option(None, "--repeats", help="Timed calls per measurement (default 50; larger batches "
                                "stop after --max-seconds)."),
    max_seconds: float = typer.Option(None, "--max-seconds", help="Time cap per measurement after the warm-up "
                                      "(default 3; at least 5 calls at batch 1, 2 at larger batches)."),
    n_images: int = typer.Option(None, "--images", help="Distinct test images the batch-1 calls cycle through "
                                 "(default 32)."),
    no_skip: bool = typer.Option(False, "--no-skip", help="Do not time the gated skip path."),
    csv: Path = typer.Option(Path("results") / "bench.csv", "--csv", help="CSV of this run's rows."),
    store: Path = store_option(),
    no_store: bool = no_store_option(),
    models_dir: Path = models_dir_option(),
    data_dir: Path = data_dir_option(),
) -> None:
    import torch

    from .. import bench as B
    from ..errors import ConfigError
    from ..evaluation import resolve_model

    sizes = B.parse_batch_sizes(batch_sizes)
    for opt, v in (("--threads", threads), ("--repeats", repeats), ("--images", n_images)):
        if v is not None and v < 1:
            raise ConfigError(f"{opt} must be a positive integer, got {v}", f"pass e.g. {opt} 4, or leave it out")
    if max_seconds is not None and not max_seconds > 0:
        raise ConfigError(f"--max-seconds must be positive, got {max_seconds}", "pass e.g. --max-seconds 3")
    from ..evaluation import resolve_device

    dev = resolve_device(None if device == "auto" else device)
    pl = B.plan(models, untrained=untrained, models_dir=models_dir)
    if threads is not None:
        torch.set_num_threads(threads)
    n1 = n_images or B.DEFAULT_IMAGES
    x, y, inputs, msgs = B.bench_inputs(max(max(sizes), n1), data_dir)
    for m in msgs:
        err_console.print(f"warning: {m}", markup=False, highlight=False, soft_wrap=True)
    st = open_store(store, no_store, B.BenchStore)
    load = B.load_1min()
    console.print(f"device  {dev} ({B.device_name(dev)}), {torch.get_num_threads()} threads, torch {torch.__version__}"
                  + (f", load average {load:.2f}" if load is not None else ""))
    console.print(f"inputs  {inputs}; batch sizes {', '.join(map(str, sizes))}")
    if load is not None and dev.type == "cpu" and load > 0.5:
        console.print(f"[yellow]the machine is busy (1-minute load {load:.2f}): latencies will be slower and noisier "
                      "than on an idle machine[/]")
    by_reason: dict[str, list[str]] = {}
    for name, why in pl.skipped:
        by_reason.setdefault(why, []).append(name)
    for why, names in by_reason.items():
        console.print(f"skip    {', '.join(names)}: {why}", markup=False, highlight=False, soft_wrap=True)
    rows = []
    kw = {k: v for k, v in (("repeats", repeats), ("max_seconds", max_seconds), ("n_images", n_images)) if v}
    try:
        with _progress() as prog:
            task = prog.add_task("bench", total=len(pl.models))
            for name, untr in pl.models:
                prog.update(task, description=f"{name}: loading")
                net, info = resolve_model(name, untrained=untr, models_dir=models_dir, device=dev)
                r = B.bench_model(net, name=info.name, checkpoint_sha256=info.checkpoint_sha256, untrained=untr,
                                  family=info.family or "", device=dev, x=x, y=y, inputs=inputs, batch_sizes=sizes,
                                  skip=not no_skip, progress=lambda d: prog.update(task, description=d), **kw)
                rows += r
                if st is not None:
                    st.add(r)
                prog.advance(task)
    except KeyboardInterrupt:
        err_console.print("interrupted: the models finished so far are in the store", markup=False)
        raise typer.Exit(130) from None
    finally:
        if st is not None:
            st.close()
    path = B.write_csv(rows, csv)
    _print_summary(B.summary(rows), sizes)
    console.print(f"rows    {len(rows)} -> {path}" + ("" if st is None else f" and the bench table of {st.path}"))


def _print_summary(s, sizes) -> None:
    big = max(sizes)
    t = Table(title="Inference cost: measured time next to MACs (per 32x32 image)", title_justify="left")
    cols = ["model", "MACs (M)", "executed MACs (M)", "b1 latency ms (p90)", "b1 attack step ms", "latency / static",
            "MACs / static"]
    if big > 1:
        cols += [f"clean img/s @{big}", f"attack-step img/s @{big}"]
    if s.skip_latency_ms.notna().any():
        cols += ["skip path b1 ms (p90)", "skip speed-up"]
    for c in cols:
        t.add_column(c, justify="left" if c == "model" else "right", no_wrap=c == "model")
    for r in s.itertuples():
        cells = [r.model + (" (untrained)" if r.untrained else ""), f"{r.macs / 1e6:.2f}",
                 f"{r.executed_macs / 1e6:.2f}" + (" *" if r.family == "gated" else ""),
                 f"{_ms(r.latency_ms)} ({_ms(r.latency_p90_ms)})", _ms(r.attack_step_ms), _x(r.latency_vs_static),
                 _x(r.macs_vs_static)]
        if big > 1:
            cells += ["" if r.clean_images_per_s is None else f"{r.clean_images_per_s:.0f}",
                      "" if r.attack_images_per_s is None else f"{r.attack_images_per_s:.0f}"]
        if "skip speed-up" in cols:
            cells += ["" if r.skip_latency_ms != r.skip_latency_ms or r.skip_latency_ms is None
                      else f"{_ms(r.skip_latency_ms)} ({_ms(r.skip_p90_ms)})", _x(r.skip_speedup)]
        t.add_row(*cells)
    console.print(t)
    if (s.family == "gated").any():
        console.print("* gated: the MACs the open gates need (mean over the timed images). The model's own forward "
                      "(masked) computes all of them and zeroes the closed channels: its latency is the b1 latency "
                      "column; only the skip path executes the smaller figure.")
