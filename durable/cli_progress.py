"""Progress of a long CLI run (``durable sim --seeds N``, ``durable demo``, ``durable gc``), one convention:

- on a terminal, a rich bar with the counts, the running tallies (``3 passed, 0 failed``), the elapsed time
  and an ETA; it is erased when the run ends;
- anywhere else (a pipe, a CI log), a plain line on stderr every ``interval`` seconds while it runs
  (``$DURABLE_PROGRESS_INTERVAL``, default 10) and one when it ends, if any was printed: a short run prints
  nothing. ``announce=True`` (``durable sim``) also prints one when it starts, so a long run says so at once.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

DEFAULT_INTERVAL = 10.0


def interval_from_env() -> float:
    """Seconds between progress lines: $DURABLE_PROGRESS_INTERVAL when it is a positive number."""
    try:
        value = float(os.environ.get("DURABLE_PROGRESS_INTERVAL", DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value > 0 else DEFAULT_INTERVAL


def duration(seconds: float) -> str:
    """``seconds`` as ``42s``, ``3m05s`` or ``1h02m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Ticker:
    """``with Ticker("sim", 20, "seeds") as t: ... t.update(done, note="3 passed, 0 failed")``.

    ``total=None``: an open-ended count (no bar, no ETA). ``console``: the command's rich Console (default:
    stderr), which shows the bar when it is a terminal (``tty`` overrides); the plain lines go to ``plain``
    (default: stderr). ``clock`` and ``start_thread`` exist for tests."""

    def __init__(
        self,
        what: str,
        total: int | None,
        unit: str = "",
        *,
        console: Any = None,
        tty: bool | None = None,
        interval: float | None = None,
        plain: Any = None,
        clock: Callable[[], float] = time.monotonic,
        start_thread: bool = True,
        quiet: bool = False,
        announce: bool = False,
    ) -> None:
        from rich.console import Console

        self.what = what
        self.total = total
        self.unit = unit
        self.console = console if console is not None else Console(stderr=True)
        self.plain = plain if plain is not None else Console(stderr=True)
        # a dumb terminal (TERM=dumb: an editor shell, CI) cannot redraw a bar: it gets the plain lines
        self.tty = (self.console.is_terminal and not self.console.is_dumb_terminal) if tty is None else tty
        self.interval = interval if interval is not None else interval_from_env()
        self.clock = clock
        self.start_thread = start_thread
        self.quiet = quiet  # shows nothing (e.g. under --json)
        self.announce = announce
        self.lines = 0  # plain lines printed
        self.completed = 0
        self.note = ""
        self.label = what
        self.started = clock()
        self.last_line = self.started
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None
        self._task: Any = None

    # -- plain lines ---------------------------------------------------------------------------------
    def line(self, final: bool = False) -> str:
        """The progress as one plain line (counts, note, elapsed time; the final line when ``final``)."""
        elapsed = self.clock() - self.started
        count = f"{self.completed}/{self.total}" if self.total is not None else str(self.completed)
        parts = [f"{self.what}: {count}{' ' + self.unit if self.unit else ''}"]
        if self.note:
            parts.append(self.note)
        parts.append(f"{duration(elapsed)} elapsed")
        if final:
            parts[-1] = f"done in {duration(elapsed)}"
        elif self.total and self.completed:
            left = elapsed / self.completed * (self.total - self.completed)
            parts.append(f"~{duration(left)} left")
        return ", ".join(parts)

    def _emit(self, final: bool = False) -> None:
        with self._lock:
            text = self.line(final)
            self.last_line = self.clock()
            self.lines += 1
        self.plain.print(text, markup=False, highlight=False, soft_wrap=True)

    def tick(self) -> bool:
        """Print the periodic plain line if one is due (not on a terminal); whether it printed."""
        if self.tty or self.quiet or self.clock() - self.last_line < self.interval:
            return False
        self._emit()
        return True

    def _run(self) -> None:
        while not self._stop.wait(min(self.interval, 1.0)):
            self.tick()

    # -- the run -------------------------------------------------------------------------------------
    def __enter__(self) -> Ticker:
        if self.quiet:
            return self
        if self.tty:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            columns: list[Any] = [TextColumn("{task.description}")]
            if self.total is not None:
                columns += [BarColumn(), MofNCompleteColumn()]
            else:
                columns += [SpinnerColumn(), TextColumn("{task.completed}")]
            columns += [TextColumn("{task.fields[note]}"), TimeElapsedColumn()]
            if self.total is not None:
                columns += [TextColumn("eta"), TimeRemainingColumn()]
            self._bar = Progress(*columns, console=self.console, transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.what, total=self.total, note="")
        else:
            if self.announce:
                self._emit()
            if self.start_thread:
                self._thread = threading.Thread(target=self._run, name="durable-progress", daemon=True)
                self._thread.start()
        return self

    def update(
        self, completed: int | None = None, *, advance: int = 0, note: str | None = None, label: str | None = None
    ) -> None:
        """Set the count (``completed``) or add ``advance`` to it; ``note`` and ``label`` replace theirs."""
        with self._lock:
            if completed is not None:
                self.completed = completed
            self.completed += advance
            if note is not None:
                self.note = note
            if label is not None:
                self.label = label
        if self._bar is not None:
            self._bar.update(
                self._task,
                completed=self.completed,
                note=self.note,
                description=self.label if label is not None else self._bar.tasks[0].description,
            )

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print above the bar (or plainly)."""
        (self._bar.console if self._bar is not None else self.console).print(*args, **kwargs)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, exc, tb)
            return
        if self.quiet:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if kind is None and self.lines:
            self._emit(final=True)
