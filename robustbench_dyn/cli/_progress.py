"""Progress bars that also work in a log file.

A rich progress bar draws nothing when its console is not a terminal, so a long background job
(``nohup robustdyn sweep ... > log 2>&1``: AutoAttack on 1000 images runs for an hour on a CPU) would log no
progress at all. :class:`LogProgress` is the same bar on a terminal; elsewhere it writes a plain line per task to
stderr when the task starts, at most every ``interval`` seconds while it runs, and when it completes::

    static_at · AutoAttack · 8/255: 400/1000 (40%), 24m10s elapsed, ETA 36m15s

The ETA counts only the work done in this process (a resumed run starts from its stored examples).
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ._app import err_console


def _duration(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class LogProgress(Progress):
    """rich Progress; on a console that is not a terminal, plain progress lines on ``log_console`` instead."""

    def __init__(self, *columns, console: Console, interval: float = 60.0, log_console: Console | None = None,
                 clock=time.monotonic, **kwargs) -> None:
        super().__init__(*columns, console=console, **kwargs)
        self.plain = not console.is_terminal
        self.interval = interval
        self.log_console = log_console or err_console
        self._clock = clock
        self._seen: dict[TaskID, tuple[float, float, float, float]] = {}  # id -> (t0, done0, last print, last done)
        self._added: dict[TaskID, float] = {}

    def add_task(self, description: str, *args, **kwargs) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        self._added[task_id] = self._clock()
        return task_id

    def update(self, task_id: TaskID, **kwargs) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        self._log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id, advanced=advance)

    def _log(self, task_id: TaskID, advanced: float = 0) -> None:
        if not self.plain:
            return
        task = next((t for t in self.tasks if t.id == task_id), None)
        if task is None:
            return
        now, done, total = self._clock(), float(task.completed), task.total
        if task_id not in self._seen:
            # the first report: a count set by update() is where this process starts (a resumed run's stored
            # examples); one reached by advance() is work done since the task was added
            t0, done0 = (self._added.get(task_id, now), done - advanced) if advanced else (now, done)
            self._seen[task_id] = (t0, done0, now, done)
            self._line(task.description, done, total, t0, now, done0, start=not advanced)
            return
        t0, done0, last, last_done = self._seen[task_id]
        finished = total is not None and done >= total
        if done == last_done or (now - last < self.interval and not finished):
            return
        self._seen[task_id] = (t0, done0, now, done)
        self._line(task.description, done, total, t0, now, done0)

    def _line(self, desc: str, done: float, total: float | None, t0: float, now: float, done0: float,
              start: bool = False) -> None:
        parts = [f"{int(done)}/{int(total)} ({100 * done / total:.0f}%)" if total else f"{int(done)} done"]
        if start:
            if done:
                parts.append("resumed")
        else:
            parts.append(f"{_duration(now - t0)} elapsed")
            if total and done0 < done < total:
                parts.append(f"ETA {_duration((total - done) * (now - t0) / (done - done0))}")
        self.log_console.print(f"{desc}: {', '.join(parts)}", markup=False, highlight=False, soft_wrap=True)


def progress_bar(console: Console, *, label: str = "{task.description}", eta: bool = True,
                 interval: float = 60.0) -> LogProgress:
    """The CLI's progress bar: description, bar, done/total, elapsed[, remaining]; transient on a terminal."""
    cols = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if eta:
        cols.append(TimeRemainingColumn())
    return LogProgress(*cols, console=console, interval=interval, transient=True)
