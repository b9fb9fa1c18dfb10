"""`robustdyn threats`: the dynamic-aware threat studies (energy, attention, adaptive, transfer), a thin
shell over :func:`robustbench_dyn.threats.run_threats`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.table import Table

from ._app import app, check_counts, console, err_console
from ._options import STORE_DEFAULT, data_dir_option, models_dir_option, no_store_option, store_option
from ._progress import progress_bar


def _model_names(models: str) -> list[str]:
    """Comma-separated names or patterns, expanded in the order given (the transfer matrix's order)."""
    from ..registry import list_models, resolve_name

    out: list[str] = []
    for item in (s.strip() for s in models.split(",")):
        if not item:
            continue
        names = list_models(item) if any(c in item for c in "*?[") else [resolve_name(item)]
        if not names:
            from ..errors import ConfigError

            raise ConfigError(f"no registered model matches {item!r}", "run `robustdyn list` for the zoo")
        out += [n for n in names if n not in out]
    return out


def _pct(v) -> str:
    return "n/a" if v is None or v != v else f"{100 * v:.1f}"


@app.command("threats")
def threats_cmd(
    models: str = typer.Option("static,dyconv_k4,odconv_k4,gated", "--models", help="Comma-separated registry "
                               "names or patterns, in the order of the transfer matrix."),
    n: int = typer.Option(
        None, "--n", "-n", "--n-examples", help="Examples (seeded subset). Default: 32 on a CPU (a few minutes on 2 "
                          "cores for the default models), the whole test set on a GPU."),
    eps_grid: str = typer.Option("2/255,4/255,8/255", "--eps-grid", help="Linf eps grid of the energy, attention "
                                 "and adaptive studies."),
    transfer_eps: str = typer.Option("8/255", "--transfer-eps", help="Linf eps of the transfer study."),
    studies: str = typer.Option("energy,attention,adaptive,transfer", "--studies", help="Which studies to run."),
    target: int = typer.Option(0, "--target", help="Kernel index the targeted attention attack pushes onto."),
    steps: int = typer.Option(20, "--steps", help="PGD steps of every attack."),
    seed: int = typer.Option(0, "--seed", help="Subset seed (also seeds the random starts)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    store: Path = store_option(f"{STORE_DEFAULT}; rows already there are reused."),
    no_store: bool = no_store_option("Do not read or write the results store."),
    data_dir: Path = data_dir_option(),
    models_dir: Path = models_dir_option(),
    batch_size: int = typer.Option(None, "--batch-size", help="Examples per attacked batch."),
    untrained: bool = typer.Option(False, "--untrained", help="Randomly initialised models (smoke tests only)."),
) -> None:
    """Dynamic-aware threats: energy attack on gates, attention attacks, BPDA/EOT with a masking verdict,
    and a transfer matrix."""
    from ..evaluation import eps_label, load_data, parse_eps, parse_eps_grid, resolve_device
    from ..store import default_store_path
    from ..threats import STUDIES, run_threats
    from ..threats.run import DEFAULT_CPU_N

    check_counts(n=n, seed=seed, batch_size=batch_size)  # before anything is loaded or the store opened
    names = _model_names(models)
    grid = parse_eps_grid(eps_grid)
    teps = parse_eps(transfer_eps)
    chosen = [s.strip() for s in studies.split(",") if s.strip()]
    dev = resolve_device(device)
    data, msgs = load_data(data_dir)
    for m in msgs:
        err_console.print(f"warning: {m}", markup=False, highlight=False, soft_wrap=True)
    if n is None and dev.type == "cpu" and len(data) > DEFAULT_CPU_N:
        console.print(f"[dim]CPU: default subset of n={DEFAULT_CPU_N}; pass --n for more[/]")
    if dev.type == "cpu" and hasattr(os, "getloadavg"):
        import torch

        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        if load > cores and torch.get_num_threads() > 1:
            console.print(f"[yellow]the CPU is busy (load {load:.1f} on {cores} cores): with "
                          f"{torch.get_num_threads()} torch threads per process, OMP_NUM_THREADS=1 is often several "
                          "times faster here[/]")
    store_path = None if no_store else (store or default_store_path())
    console.print(f"models  {', '.join(names)}" + ("  [bold red](UNTRAINED: random weights)[/]" if untrained else ""))
    console.print(f"studies {', '.join(s for s in STUDIES if s in chosen)}; eps {', '.join(eps_label(e) for e in grid)}"
                  f" (transfer {eps_label(teps)}); PGD-{steps}; device {dev}")
    prog = progress_bar(console, label="threats")
    try:
        with prog:
            task = prog.add_task("threats", total=None)
            res = run_threats(names, data=data, n=n, seed=seed, eps_grid=grid, transfer_eps=teps, studies=chosen,
                              target=target, steps=steps, device=dev, batch_size=batch_size, store=store_path,
                              models_dir=models_dir, untrained=untrained,
                              log=lambda s: prog.console.print(s, markup=False, highlight=False),
                              progress=lambda k: prog.advance(task, k),
                              on_plan=lambda total: prog.update(task, total=total))
    except KeyboardInterrupt:
        where = f" in {store_path}" if store_path else ""
        err_console.print(f"interrupted: every finished row is kept{where}; rerun the same command to resume",
                          markup=False, highlight=False)
        sys.exit(130)
    print_tables(res)


def print_tables(res) -> None:
    """The four studies as rich tables, with the masking verdicts spelled out."""
    from ..evaluation import eps_label

    head = (f"{res.dataset['label']}, n={res.n}, seed {res.seed}, device {res.device}")
    if not res.energy.empty:
        t = Table(title=f"Energy attack on gates: executed MACs as % of the static ResNet-20 ({head})",
                  title_justify="left")
        for c in ("model", "eps", "MACs clean (M)", "MACs attacked (M)", "% static clean", "% static attacked",
                  "x increase", "gate density clean", "gate density attacked", "examples with more MACs (%)",
                  "label changed (%)", "acc clean", "acc attacked"):
            t.add_column(c, justify="left" if c == "model" else "right")
        for r in res.energy.itertuples():
            t.add_row(r.model, eps_label(r.eps), f"{r.macs_clean / 1e6:.2f}", f"{r.macs_adv / 1e6:.2f}",
                      _pct(r.frac_clean), _pct(r.frac_adv), f"{r.increase:.3f}", f"{r.density_clean:.3f}",
                      f"{r.density_adv:.3f}", _pct(r.frac_examples_up), _pct(r.label_changed), _pct(r.acc_clean),
                      _pct(r.acc_adv))
        console.print(t)
    if not res.attention.empty:
        t = Table(title=f"Attention attacks vs label PGD (accuracy %, attention shift) ({head})", title_justify="left")
        for c in ("model", "attack", "eps", "acc clean", "acc attacked", "drop (pt)", "KL (mean/layer)",
                  "KL (sum)", "TV", "dominant changed (%)", "attn on target k clean", "attn on target k attacked"):
            t.add_column(c, justify="left" if c in ("model", "attack") else "right")
        for r in res.attention.itertuples():
            label = r.attack + (f" (k={int(r.target)})" if r.attack == "attn-target" else "")
            t.add_row(r.model, label, eps_label(r.eps), _pct(r.acc_clean), _pct(r.acc_adv),
                      f"{100 * r.acc_drop:.1f}", f"{r.kl:.4f}", f"{r.kl_sum:.4f}", f"{r.tv:.4f}",
                      _pct(r.dominant_changed), f"{getattr(r, 'target_attn_clean', float('nan')):.3f}",
                      f"{getattr(r, 'target_attn_adv', float('nan')):.3f}")
        console.print(t)
    if not res.adaptive.empty:
        t = Table(title=f"Adaptive attacks (PGD CE robust accuracy %): direct vs BPDA / EOT ({head})",
                  title_justify="left")
        for c in ("model", "eps", "clean", "direct", "BPDA", "EOT", "worst case", "verdict"):
            t.add_column(c, justify="left" if c in ("model", "verdict") else "right")
        for r in res.adaptive.itertuples():
            style = "bold red" if r.verdict == "masked" else ("yellow" if r.verdict == "possibly masked" else "")
            t.add_row(r.model, eps_label(r.eps), _pct(r.acc_clean), _pct(r.acc_direct), _pct(r.acc_bpda),
                      _pct(r.acc_eot), _pct(r.acc_worst), f"[{style}]{r.verdict}[/]" if style else r.verdict)
        console.print(t)
        masked = res.masked()
        for r in masked.itertuples():
            console.print(f"[bold red]{r.model} @ {eps_label(r.eps)}: {r.verdict_text}[/]" if r.verdict == "masked"
                          else f"[yellow]{r.model} @ {eps_label(r.eps)}: {r.verdict_text}[/]")
        if masked.empty:
            console.print("No gradient masking detected: no adaptive attack (BPDA through hard gates, EOT) is "
                          f"stronger than the direct attack by more than 0.5 pt at n={res.n}.")
        notes = sorted({r.note for r in res.adaptive.itertuples() if r.note})
        for note in notes:
            console.print(f"[dim]note: {note}[/]")
    if res.transfer is not None:
        tr = res.transfer
        t = Table(title=f"Transfer: robust accuracy % of the target (column) on PGD-20 examples crafted on the source "
                        f"(row) at {eps_label(tr.eps)}; diagonal = white-box ({head})", title_justify="left")
        t.add_column("source \\ target")
        for name in tr.names:
            t.add_column(name, justify="right")
        for i, s in enumerate(tr.names):
            t.add_row(s, *[f"[bold]{_pct(v)}[/]" if i == j else _pct(v) for j, v in enumerate(tr.acc[i])])
        t.add_row("[dim]clean[/]", *[f"[dim]{_pct(v)}[/]" for v in tr.clean])
        console.print(t)
        for h in tr.masking_hints():
            console.print(f"[yellow]{h}[/]")
    where = f"; stored in {res.store}" if res.store else " (not stored)"
    console.print(f"{res.computed} rows computed, {res.reused} reused from the store, {res.seconds:.0f} s{where}")
