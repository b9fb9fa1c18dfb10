"""`robustdyn evaluate`, `robustdyn sweep` and `robustdyn check`: thin shells over
:mod:`robustbench_dyn.evaluation`, :mod:`robustbench_dyn.suites` and :mod:`robustbench_dyn.checks`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
from rich.table import Table

from ._app import app, check_counts, console, err_console
from ._options import data_dir_option, models_dir_option, no_store_option, open_store, store_option
from ._progress import LogProgress, progress_bar

_MODEL_HELP = ("A registry name (`robustdyn list`), or path/to/file.py:factory to evaluate your own nn.Module "
               "(imports the file and calls factory(): runs your code).")


def _parse_settings(items: list[str] | None) -> dict:
    from ..errors import ConfigError
    from ..suites import tomllib

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE", "pass e.g. --set steps=50")
        try:
            out[key] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = value.strip()
    return out


def _settings_text(settings: dict) -> str:
    shown = {k: v for k, v in settings.items() if not (k in ("amp", "bpda") and v is False) and v is not None}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "defaults"


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _load(model: str, untrained: bool, models_dir, dev, attack=None):
    import warnings

    from ..evaluation import is_user_model_spec, resolve_model

    if is_user_model_spec(model):
        console.print(f"[yellow]importing and running user code: {model}[/]")
    from ..contract import ModelContractWarning

    with warnings.catch_warnings(record=True) as caught:  # the model contract's warnings: one line each
        warnings.simplefilter("always", ModelContractWarning)
        out = resolve_model(model, untrained=untrained, models_dir=models_dir, device=dev, attack=attack)
    for w in caught:
        err_console.print(f"warning: {w.message}", markup=False, highlight=False, soft_wrap=True)
    return out


def _data(data_dir, model: str | None = None):
    from ..evaluation import load_data

    data, msgs = load_data(data_dir, model)
    for m in msgs:
        err_console.print(f"warning: {m}", markup=False, highlight=False, soft_wrap=True)
    return data


def _model_line(info) -> str:
    if info.untrained:
        return (f"{info.name}  [bold red]UNTRAINED (random weights, smoke test only)[/]  "
                f"weights {info.checkpoint_sha256[:12]}")
    return f"{info.name}  checkpoint {info.checkpoint_sha256[:12]}"


def _progress() -> LogProgress:
    return progress_bar(console)


_DIST_HELP = ("Shard the examples across the processes torchrun starts (torch.distributed; NCCL on GPUs, gloo on "
              "CPUs); rank 0 writes the store. Implied when torchrun starts more than one process: "
              "`torchrun --nproc-per-node 4 -m robustbench_dyn sweep ...` (there write -n / --n-examples, not "
              "--n, which torchrun's own parser takes for one of its options).")


def _distributed(flag: bool, device: str):
    """The rank context when sharding (the flag, or torchrun with >1 process), else None. Ranks > 0
    print nothing but errors."""
    from .. import distributed as D

    if not flag and not D.launched_by_torchrun():
        return None
    ctx = D.init(device)
    if not ctx.is_main:
        console.quiet = True
    console.print(f"distributed: {ctx.world} ranks, device of rank 0: {ctx.device}; rank 0 writes the store")
    return ctx


def _dist_done(ctx) -> None:
    if ctx is not None:
        from .. import distributed as D

        D.shutdown()


@app.command("evaluate")
def evaluate_cmd(
    model: str = typer.Option(..., "--model", "-m", help=_MODEL_HELP),
    attack: str = typer.Option("pgd", "--attack", "-a", help="Attack name: fgsm, pgd, pgd-l2, pgd-ce, pgd-dlr, "
                               "autoattack, square; or `corruptions` (the 15 CIFAR-10-C corruptions x 5 severities) "
                               "or `corruption:NAME[,NAME]`."),
    eps: str = typer.Option(None, "--eps", help="One eps, e.g. 8/255 (default: 8/255 Linf, 0.5 L2)."),
    eps_grid: str = typer.Option(None, "--eps-grid", help="Comma-separated eps grid, e.g. 0,2/255,4/255,8/255."),
    n: int = typer.Option(
        None, "--n", "-n", "--n-examples",
        help="Examples (seeded subset). Default: all on a GPU, a ~1 minute subset on a CPU."),
    seed: int = typer.Option(0, "--seed", help="Subset seed (also seeds the attacks' random starts)."),
    setting: list[str] = typer.Option(None, "--set", help="Attack setting KEY=VALUE, repeatable: --set steps=50."),
    data_dir: Path = data_dir_option(),
    store: Path = store_option(),
    no_store: bool = no_store_option(),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    batch_size: int = typer.Option(None, "--batch-size", help="Examples per batch (and per committed chunk)."),
    models_dir: Path = models_dir_option(),
    untrained: bool = typer.Option(False, "--untrained", help="Evaluate a randomly initialised registry model "
                                   "(smoke tests; labelled untrained in output and store)."),
    distributed: bool = typer.Option(False, "--distributed", help=_DIST_HELP),
    severity: str = typer.Option(None, "--severity", help="Corruptions only: severity 1-5, or a list '1,3,5' "
                                 "(default: all five)."),
) -> None:
    """Robust accuracy of one model under one attack at one eps or over an eps grid."""
    from ..corruptions.evaluate import is_corruption_attack

    if is_corruption_attack(attack):  # common corruptions: robustbench_dyn.corruptions
        from ..corruptions.cli import evaluate_corruptions_cmd

        return evaluate_corruptions_cmd(model=model, attack=attack, severity=severity, eps=eps, eps_grid=eps_grid,
                                        setting=setting, n=n, seed=seed, data_dir=data_dir, store=store,
                                        no_store=no_store, device=device, batch_size=batch_size,
                                        models_dir=models_dir, untrained=untrained, distributed=distributed)
    if severity is not None:
        from ..errors import ConfigError

        raise ConfigError("--severity applies to corruptions only", "pass --attack corruptions or corruption:NAME")
    from ..attacks import get_attack
    from ..errors import ConfigError
    from ..evaluation import (
        default_batch_size,
        default_n,
        eps_label,
        parse_eps,
        parse_eps_grid,
        resolve_device,
        run_sweep,
    )

    check_counts(n=n, seed=seed, batch_size=batch_size)  # before anything is loaded or the store opened
    ctx = _distributed(distributed, device)
    dev = ctx.device if ctx is not None else resolve_device(device)
    entry = get_attack(attack)
    settings = entry.settings(**_parse_settings(setting))
    norm = entry.cls.norm_of(settings)
    if eps is not None and eps_grid is not None:
        raise ConfigError("--eps and --eps-grid were both given", "pass one of them")
    grid = parse_eps_grid(eps_grid) if eps_grid is not None else [parse_eps(eps if eps is not None else
                                                                            ("8/255" if norm == "Linf" else 0.5))]
    net, info = _load(model, untrained, models_dir, dev, attack=attack)
    data = _data(data_dir, info.name if info.source in ("registry", "untrained") else None)
    if n is None:
        n = default_n(dev, len(data))
        if dev.type == "cpu" and n < len(data):
            console.print(f"[dim]CPU: evaluating a default subset of n={n} (about a minute of PGD-20 on dyconv_k4); "
                          "pass --n for more[/]")
    data.subset(n, seed)  # validates n and seed before anything runs
    bs = batch_size or default_batch_size(dev)
    st = open_store(store, no_store or (ctx is not None and not ctx.is_main))
    console.print(f"model   {_model_line(info)}")
    console.print(f"data    {data.label} ({data.source}), n={n}, seed={seed}")
    if getattr(data, "eps_note", None):  # time series: what eps means in the series' own units
        console.print(f"[dim]{data.eps_note}[/]")
    eps_text = ", ".join(eps_label(e, norm) for e in grid)
    console.print(f"attack  {attack} ({norm}): {_settings_text(settings)}; eps {eps_text}; device {dev}")
    try:
        with _progress() as prog:
            task = prog.add_task(f"{info.name} · {attack}", total=n)
            res = run_sweep(net, info, data, attack, grid, settings=settings, n=n, seed=seed, batch_size=bs,
                            device=dev, store=st, progress=lambda d, t: prog.update(task, completed=d, total=t))
    except KeyboardInterrupt:
        _interrupted(st)
    finally:
        if st is not None:
            st.close()
        _dist_done(ctx)
    title = f"{info.label} under {attack} ({norm})"
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("model", f"{info.label}  (sha {info.checkpoint_sha256[:12]})")
    table.add_row("data", f"{res.dataset['label']}, n={res.n}, seed {res.seed}")
    table.add_row("attack", f"{attack}: {_settings_text(res.settings)}")
    table.add_row("device", res.device)
    table.add_row("clean accuracy", _pct(res.clean_acc))
    for e, acc in res.robust_acc.items():
        table.add_row(f"robust accuracy @ {eps_label(e, norm)}", _pct(acc))
    reused = res.n - res.n_computed
    table.add_row("seconds", f"{res.seconds:.1f}" + (f"  ({reused} of {res.n} examples resumed from the store)"
                                                     if reused else ""))
    table.add_row("store", str(st.path) if st is not None else "not written (--no-store)")
    console.print(table)


def _interrupted(st) -> None:
    where = f" in {st.path}" if st is not None else ""
    err_console.print(f"interrupted: every committed batch is kept{where}; rerun the same command to resume",
                      markup=False, highlight=False)
    sys.exit(130)


@app.command("sweep")
def sweep_cmd(
    suite: str = typer.Option(..., "--suite", "-s", help="Suite TOML (attacks/quick.toml, standard.toml, full.toml) "
                              "or a shipped suite's name."),
    models: str = typer.Option(..., "--models", help="Registry pattern(s), comma-separated: 'dyconv_*,static'; "
                               "or path/file.py:factory."),
    n: int = typer.Option(
        None, "--n", "-n", "--n-examples", help="Examples per model (default: the suite's n, else all on a GPU and a "
                          "CPU-sized subset on a CPU)."),
    seed: int = typer.Option(None, "--seed", help="Subset seed (default: the suite's)."),
    data_dir: Path = data_dir_option("CIFAR-10 folder."),
    store: Path = store_option(),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    batch_size: int = typer.Option(None, "--batch-size", help="Examples per batch (and per committed chunk)."),
    models_dir: Path = models_dir_option("Checkpoint folder."),
    untrained: bool = typer.Option(False, "--untrained", help="Randomly initialised models (smoke tests)."),
    no_checks: bool = typer.Option(False, "--no-checks", help="Skip the suite's sanity checks."),
    skip_missing: bool = typer.Option(False, "--skip-missing", help="Skip models without a checkpoint instead of "
                                      "failing."),
    distributed: bool = typer.Option(False, "--distributed", help=_DIST_HELP),
) -> None:
    """Models x attacks x eps from a suite, into the results store; rerun to resume."""
    from ..checkpoints import checkpoint_present
    from ..checks import DEFAULT_CHECK_N, check_model
    from ..errors import CheckpointError, ConfigError
    from ..evaluation import default_batch_size, default_n, eps_label, is_user_model_spec, resolve_device, run_sweep
    from ..registry import list_models, resolve_name
    from ..store import ResultsStore
    from ..suites import load_suite

    check_counts(n=n, seed=seed, batch_size=batch_size)
    s = load_suite(suite)
    ctx = _distributed(distributed, device)
    dev = ctx.device if ctx is not None else resolve_device(device)
    main_rank = ctx is None or ctx.is_main
    if is_user_model_spec(models):
        names = [models]
    else:
        names = []
        for pat in (p.strip() for p in models.split(",") if p.strip()):
            found = list_models(pat) if any(c in pat for c in "*?[") else [resolve_name(pat)]
            names += [m for m in found if m not in names]
        if not names:
            raise ConfigError(f"no registered model matches {models!r}", "run `robustdyn list` for the zoo")
        if not untrained:
            missing = [m for m in names if not checkpoint_present(m, models_dir)]
            if missing and not skip_missing:
                raise CheckpointError(f"no checkpoint for {', '.join(missing)}",
                                      f"train them (`python scripts/train.py --model {missing[0]}`), pass "
                                      "--skip-missing, or --untrained for a smoke test")
            for m in missing:
                err_console.print(f"warning: skipping {m}: no checkpoint", markup=False, highlight=False,
                                  soft_wrap=True)
            names = [m for m in names if m not in missing]
            if not names:
                raise CheckpointError("no checkpoint for any selected model", "train them first")
            from ..registry import load_model

            for m in names:  # verify every checkpoint (sha256, format, shapes) before the store is opened
                load_model(m, models_dir=models_dir)
    data = _data(data_dir)
    seed = s.seed if seed is None else seed
    n_eff = n or s.n or default_n(dev, len(data))
    data.subset(n_eff, seed)
    bs = batch_size or s.batch_size or default_batch_size(dev)
    checks = () if no_checks else s.checks
    st = ResultsStore(store) if main_rank else None
    console.print(f"suite   {s.name}: {s.description}")
    console.print(f"data    {data.label} ({data.source}), n={n_eff}, seed={seed}; device {dev}; "
                  f"store {st.path if st is not None else '(rank 0)'}")
    console.print(f"models  {', '.join(names)}" + ("  [bold red](UNTRAINED: random weights)[/]" if untrained else ""))
    summary: list[tuple] = []
    try:
        with _progress() as prog:
            overall = prog.add_task("sweep", total=len(names) * len(s.attacks) * n_eff)
            for m in names:
                net, info = _load(m, untrained, models_dir, dev)
                for a in s.attacks:
                    desc = f"{info.name} · {a.label or a.name} · {', '.join(a.eps_text)}"
                    task = prog.add_task(desc, total=n_eff)
                    base = prog.tasks[overall].completed

                    def report(done, total, task=task, base=base):
                        prog.update(task, completed=done)
                        prog.update(overall, completed=base + done)

                    t0 = time.perf_counter()
                    res = run_sweep(net, info, data, a.name, a.eps, settings=a.settings, n=n_eff, seed=seed,
                                    batch_size=bs, device=dev, store=st, progress=report)
                    prog.remove_task(task)
                    norm = res.norm
                    accs = "  ".join(f"{eps_label(e, norm)}: {_pct(v)}" for e, v in res.robust_acc.items())
                    resumed = res.n - res.n_computed
                    extra = f", {resumed} resumed" if resumed else ""
                    prog.console.print(f"{info.label:<24} {a.label or a.name:<12} clean {_pct(res.clean_acc)}  {accs}  "
                                       f"({time.perf_counter() - t0:.1f} s{extra})")
                    summary.append((info.label, a.label or a.name, norm, res))
                if checks and main_rank:  # rank 0 alone; the others wait at the next model's first collective
                    n_check = min(n_eff, DEFAULT_CHECK_N.get(dev.type, 64))
                    done = st.stored_checks(model=info.name, checkpoint_sha256=info.checkpoint_sha256,
                                            dataset_digest=data.digest, n=n_check, seed=seed)
                    todo = [c for c in checks if c not in done]
                    prog.console.print(f"{info.label}: sanity checks on n={n_check}" +
                                       (f" ({len(done & set(checks))} already stored)" if done else ""))
                    if todo:
                        check_model(net, info, data, n=n_check, seed=seed, device=dev, store=st, names=todo,
                                    batch_size=bs, on_result=lambda r: prog.console.print("  " + r.line(),
                                                                                          markup=False,
                                                                                          highlight=False))
    except KeyboardInterrupt:
        if st is not None:
            st.close()
        _interrupted(st)
    finally:
        _dist_done(ctx)
    if st is not None:
        st.close()
    table = Table(title=f"suite {s.name}: robust accuracy (%), n={n_eff}, {data.label}", title_justify="left")
    table.add_column("model")
    table.add_column("attack")
    table.add_column("clean", justify="right")
    table.add_column("robust @ eps", justify="left")
    for label, aname, norm, res in summary:
        table.add_row(label, f"{aname} ({norm})", f"{100 * res.clean_acc:.2f}",
                      "  ".join(f"{eps_label(e, norm)}: {100 * v:.2f}" for e, v in res.robust_acc.items()))
    console.print(table)


@app.command("check")
def check_cmd(
    model: str = typer.Option(..., "--model", "-m", help=_MODEL_HELP),
    n: int = typer.Option(
        None, "--n", "-n", "--n-examples", help="Examples (default: 64 on a CPU, 1000 on a GPU)."),
    seed: int = typer.Option(0, "--seed", help="Subset seed."),
    eps: str = typer.Option("8/255", "--eps", help="Linf eps of the PGD-10/50 and Square checks."),
    checks: str = typer.Option(None, "--checks", help="Comma-separated subset of: eval_mode, deterministic, logits, "
                               "zero_gradient, large_eps, more_steps, black_box."),
    square_queries: int = typer.Option(None, "--square-queries", help="Square queries (default: 300 CPU, 5000 GPU)."),
    data_dir: Path = data_dir_option("CIFAR-10 folder."),
    store: Path = store_option("Results store."),
    no_store: bool = no_store_option(),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    batch_size: int = typer.Option(None, "--batch-size", help="Examples per batch."),
    models_dir: Path = models_dir_option("Checkpoint folder."),
    untrained: bool = typer.Option(False, "--untrained", help="Randomly initialised registry model (smoke tests)."),
    strict: bool = typer.Option(False, "--strict", help="Exit with code 1 when a check fails."),
) -> None:
    """Gradient-masking sanity checks: PASS/FAIL per check, with the figure behind it."""
    from ..checks import check_model
    from ..errors import ConfigError
    from ..evaluation import default_batch_size, parse_eps, resolve_device

    check_counts(n=n, seed=seed, batch_size=batch_size)
    dev = resolve_device(device)
    e = parse_eps(eps)
    names = [c.strip() for c in checks.split(",") if c.strip()] if checks else None
    if square_queries is not None and square_queries < 1:
        raise ConfigError(f"--square-queries must be positive, got {square_queries}", "pass e.g. --square-queries 1000")
    from ..checks import CHECKS

    for c in names or []:
        if c not in CHECKS:
            import difflib

            close = difflib.get_close_matches(c, list(CHECKS), n=2, cutoff=0.4)
            raise ConfigError(f"unknown check {c!r}", f"did you mean {', '.join(close)}?" if close else
                              f"known checks: {', '.join(CHECKS)}")
    net, info = _load(model, untrained, models_dir, dev)
    data = _data(data_dir)
    if n is not None:
        data.subset(n, seed)
    st = open_store(store, no_store)
    console.print(f"model   {_model_line(info)}")
    console.print(f"data    {data.label}, device {dev}")
    try:
        results = check_model(net, info, data, n=n, seed=seed, device=dev, store=st, names=names, eps=e,
                              batch_size=batch_size or default_batch_size(dev), square_queries=square_queries,
                              on_result=lambda r: console.print(r.line(), markup=False, highlight=False))
    except KeyboardInterrupt:
        _interrupted(st)
    finally:
        if st is not None:
            st.close()
    failed = [r for r in results if not r.passed]
    console.print(f"{len(results) - len(failed)}/{len(results)} checks passed" +
                  (f"; results in {st.path}" if st is not None else ""))
    if failed and strict:
        raise typer.Exit(1)

