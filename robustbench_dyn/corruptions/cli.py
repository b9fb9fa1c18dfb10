"""`robustdyn evaluate --attack corruptions | corruption:NAME [--severity S]`: the shell over
:func:`robustbench_dyn.corruptions.evaluate.run_corruptions` (called from ``cli/evaluate.py``)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table


def evaluate_corruptions_cmd(*, model: str, attack: str, severity: str | None, eps: str | None, eps_grid: str | None,
                             setting: list[str] | None, n: int | None, seed: int, data_dir: Path | None,
                             store: Path | None, no_store: bool, device: str, batch_size: int | None,
                             models_dir: Path | None, untrained: bool, distributed: bool) -> None:
    from ..cli._app import check_counts, console
    from ..cli._options import open_store
    from ..cli.evaluate import _data, _interrupted, _load, _model_line, _pct, _progress
    from ..errors import ConfigError
    from ..evaluation import default_batch_size, default_n, resolve_device
    from .evaluate import parse_selection, run_corruptions

    check_counts(n=n, seed=seed, batch_size=batch_size)
    for flag, value in (("--eps", eps), ("--eps-grid", eps_grid), ("--set", setting or None)):
        if value is not None:
            raise ConfigError(f"{flag} does not apply to corruptions", "pass --severity 1-5 (default: all five)")
    if distributed:
        raise ConfigError("--distributed is not supported for corruptions", "run it in one process")
    names, sevs = parse_selection(attack, severity)
    dev = resolve_device(device)
    net, info = _load(model, untrained, models_dir, dev)
    data = _data(data_dir)
    if n is None:
        n = default_n(dev, len(data))
    data.subset(n, seed)
    bs = batch_size or default_batch_size(dev)
    st = open_store(store, no_store)
    console.print(f"model   {_model_line(info)}")
    console.print(f"data    {data.label} ({data.source}), n={n}, seed={seed}")
    console.print(f"corrupt {len(names)} corruption(s) x severities {','.join(map(str, sevs))} "
                  f"(CIFAR-10-C parameters, generated); device {dev}")
    try:
        with _progress() as prog:
            task = prog.add_task(f"{info.name} · corruptions", total=n * len(names) * len(sevs))
            res = run_corruptions(net, info, data, names, sevs, n=n, seed=seed, batch_size=bs, device=dev, store=st,
                                  progress=lambda d, t: prog.update(task, completed=d, total=t))
    except KeyboardInterrupt:
        _interrupted(st)
    finally:
        if st is not None:
            st.close()
    table = Table(title=f"{info.label}: accuracy under common corruptions (%), n={res.n}, {res.dataset['label']}",
                  title_justify="left")
    table.add_column("corruption")
    for s in sevs:
        table.add_column(f"s{s}", justify="right")
    table.add_column("mean", justify="right")
    for c in names:
        accs = [res.acc[(c, s)] for s in sevs]
        table.add_row(c, *[f"{100 * a:.1f}" for a in accs], f"{100 * sum(accs) / len(accs):.1f}")
    console.print(table)
    mean = sum(res.acc.values()) / len(res.acc)
    reused = res.n * len(names) * len(sevs) - res.n_computed
    console.print(f"clean accuracy {_pct(res.clean_acc)}; mean corruption accuracy {_pct(mean)}; "
                  f"{res.seconds:.1f} s" + (f" ({reused} evaluations resumed from the store)" if reused else "") +
                  f"; store {st.path if st is not None else 'not written (--no-store)'}")
