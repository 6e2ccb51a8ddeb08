"""Progress of long runs (durable/cli_progress.py): a rich bar with counts and an ETA on a terminal, a
periodic plain line elsewhere; and ``durable sim`` piped says what it is doing (issue 19, item 8)."""

from __future__ import annotations

import io
import os
import subprocess

import pytest
from rich.console import Console

from durable.cli_progress import Ticker, duration

from .test_cli_ops import DURABLE, ROOT


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def plain_ticker(clock: Clock, **options: object) -> tuple[Ticker, io.StringIO]:
    out = io.StringIO()
    ticker = Ticker(
        "sim",
        20,
        "seeds",
        console=Console(file=io.StringIO()),
        tty=False,
        interval=10,
        plain=Console(file=out, width=200),
        clock=clock,
        start_thread=False,
        **options,  # type: ignore[arg-type]
    )
    return ticker, out


def test_piped_a_line_every_interval_with_counts_and_eta() -> None:
    clock = Clock()
    ticker, out = plain_ticker(clock, announce=True)
    with ticker:
        assert out.getvalue() == "sim: 0/20 seeds, 0s elapsed\n"
        clock.now += 9
        ticker.update(advance=4, note="4 passed, 0 failed")
        assert not ticker.tick()  # not due yet
        clock.now += 1
        assert ticker.tick()
        assert out.getvalue().splitlines()[-1] == "sim: 4/20 seeds, 4 passed, 0 failed, 10s elapsed, ~40s left"
        assert not ticker.tick()
        clock.now += 40
        ticker.update(20, note="19 passed, 1 failed")
    assert out.getvalue().splitlines()[-1] == "sim: 20/20 seeds, 19 passed, 1 failed, done in 50s"


def test_a_short_piped_run_prints_nothing() -> None:
    clock = Clock()
    ticker, out = plain_ticker(clock)
    with ticker:
        clock.now += 3
        ticker.update(20)
        assert not ticker.tick()
    assert out.getvalue() == ""


def test_on_a_terminal_a_bar_with_counts_tallies_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")  # CI runs with TERM=dumb, where no bar is drawn
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=150)
    with Ticker("sim", 20, "seeds", console=console, plain=Console(file=io.StringIO())) as ticker:
        ticker.update(advance=5, note="5 passed, 0 failed", label="seed 6")
        ticker._bar.refresh()
        drawn = screen.getvalue()
    for part in ("seed 6", "5/20", "5 passed, 0 failed", "eta"):
        assert part in drawn, (part, drawn)


def test_duration() -> None:
    assert [duration(s) for s in (0.4, 59, 61, 3600 + 120)] == ["0s", "59s", "1m01s", "1h02m"]


def test_sim_piped_says_it_started_and_how_it_ended(pg_dsn: str) -> None:
    env = {**os.environ, "DURABLE_DSN": pg_dsn, "DURABLE_SCHEMA": ""}
    proc = subprocess.run(
        [DURABLE, "sim", "--seed", "3", "--seeds", "2", "--instances", "2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == "sim: 0/2 seeds, 0s elapsed"
    assert lines[-1].startswith("sim: 2/2 seeds, 2 passed, 0 failed, done in ")
    assert "3..4: 2 passed, 0 failed" in proc.stdout


def test_a_dumb_terminal_gets_the_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """TERM=dumb (an editor's shell, a CI log) cannot redraw a bar: the periodic plain lines are printed."""
    monkeypatch.setenv("TERM", "dumb")
    plain = io.StringIO()
    ticker = Ticker(
        "sim", 20, "seeds", console=Console(file=io.StringIO(), force_terminal=True), plain=Console(file=plain)
    )
    assert not ticker.tty
