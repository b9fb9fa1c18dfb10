"""Progress in a log file: a rich bar draws nothing off a terminal, so long background runs print plain lines."""

from __future__ import annotations

import io

from rich.console import Console

from robustbench_dyn.cli._progress import LogProgress, progress_bar


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _progress(clock: Clock) -> tuple[LogProgress, io.StringIO]:
    log = io.StringIO()
    quiet = Console(file=io.StringIO(), force_terminal=False)
    return LogProgress(console=quiet, interval=60, log_console=Console(file=log, width=200), clock=clock), log


def test_plain_lines_at_start_every_interval_and_at_the_end_with_an_eta():
    clock = Clock()
    prog, log = _progress(clock)
    with prog:
        task = prog.add_task("static_at · AutoAttack · 8/255", total=1000)
        prog.update(task, completed=300)  # a resumed run: 300 examples already stored
        clock.t = 30
        prog.update(task, completed=400)  # inside the interval: nothing printed
        clock.t = 600
        prog.update(task, completed=500)  # 200 examples in 600 s here -> 500 left take 1500 s
        clock.t = 610
        prog.update(task, completed=500)  # no new work: nothing printed
        clock.t = 2100
        prog.update(task, completed=1000)  # done: always printed
    lines = log.getvalue().splitlines()
    assert lines == ["static_at · AutoAttack · 8/255: 300/1000 (30%), resumed",
                     "static_at · AutoAttack · 8/255: 500/1000 (50%), 10m00s elapsed, ETA 25m00s",
                     "static_at · AutoAttack · 8/255: 1000/1000 (100%), 35m00s elapsed"]


def test_advance_and_unknown_totals():
    clock = Clock()
    prog, log = _progress(clock)
    with prog:
        task = prog.add_task("threats", total=None)
        clock.t = 10
        prog.advance(task, 5)  # work done since the task was added, not a resumed count
        clock.t = 3700
        prog.advance(task, 5)
    assert log.getvalue().splitlines() == ["threats: 5 done, 10s elapsed", "threats: 10 done, 1h01m elapsed"]


def test_a_terminal_gets_the_bar_and_no_lines():
    log = io.StringIO()
    tty = Console(file=io.StringIO(), force_terminal=True)
    prog = LogProgress(console=tty, log_console=Console(file=log), clock=Clock())
    with prog:
        task = prog.add_task("x", total=10)
        prog.update(task, completed=10)
    assert prog.plain is False and log.getvalue() == ""
    assert isinstance(progress_bar(tty), LogProgress)
