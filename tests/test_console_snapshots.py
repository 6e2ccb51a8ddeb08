"""Snapshots of every console screen over a deterministic data set (fixed ids, tokens, timestamps and
durations; the console's clock frozen; no live refresh). Update with ``--snapshot-update`` after checking
the SVGs by eye."""

from __future__ import annotations

import asyncio
import difflib
import html
import re
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from durable.console.app import ConsoleApp
from durable.console.screens.dialogs import HelpScreen, SignalDialog
from durable.console.screens.instance import InstanceScreen
from durable.console.source import Source
from pytest_textual_snapshot import normalize_svg
from textual.pilot import Pilot
from textual.widgets import DataTable, Input
from textual.worker import WorkerState

from .helpers import native_asyncio
from .test_console_support import FROZEN_NOW, SNAP_SCHEMA, drop, fill_frozen

SIZE = (120, 40)


@pytest.fixture(scope="module")
def frozen(pg_dsn: str) -> Iterator[str]:
    trio.run(fill_frozen, pg_dsn)
    native_asyncio()  # snap_compare runs the app with asyncio.run
    yield pg_dsn
    trio.run(drop, pg_dsn, SNAP_SCHEMA)


def app(dsn: str) -> ConsoleApp:
    return ConsoleApp(Source(dsn, SNAP_SCHEMA, timeout=10), now=FROZEN_NOW, refresh_every=None)


async def settle(pilot: Pilot[Any], *tables: str) -> None:
    """Wait until the current screen's tables are filled and every load is done."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    screen = pilot.app.screen
    while not all(screen.query_one(t, DataTable).row_count for t in tables):
        assert loop.time() < deadline, f"{tables} never filled"
        await pilot.pause(0.05)
    await loads_done(pilot)
    await steady(pilot)


async def loads_done(pilot: Pilot[Any]) -> None:
    """Wait until no worker is pending or running. Not workers.wait_for_complete(): a load that a newer one
    replaced (the screens' loads are exclusive) ends cancelled, and wait_for_complete raises WorkerCancelled
    for it (a loaded run of test_instance_awaiting_signal_with_inbox caught _load(2) superseded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while any(w.state in (WorkerState.PENDING, WorkerState.RUNNING) for w in pilot.app.workers):
        assert loop.time() < deadline, "the console's loads never finished"
        await pilot.pause(0.05)


async def steady(pilot: Pilot[Any]) -> None:
    """Wait until two screenshots a frame apart are the same. A fixed pause raced a loaded machine: a fresh
    clone's snapshot caught a frame whose table header still had the columns' widths from before the rows
    arrived (the body rows were already wide), a transient state the next refresh repaints."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    await pilot.pause(0.05)
    shot = pilot.app.export_screenshot()
    same_since = loop.time()
    # the same screen for 0.3 s, not one frame: a fresh clone at load 5 still caught the queues table's
    # header with its widths from before the rows arrived (test_help), two frames 50 ms apart being equal
    while loop.time() - same_since < 0.3:
        await pilot.pause(0.05)
        again = pilot.app.export_screenshot()
        if again != shot:
            same_since = loop.time()
            shot = again
        assert loop.time() < deadline, "the screen never stopped changing"


async def until(pilot: Pilot[Any], check: Callable[[], bool], what: str) -> None:
    """Wait for a condition of the app (a screen pushed, a field focused), then for a frame: a fixed pause
    raced a loaded machine (the dialog's focus had not landed when the snapshot was taken)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while not check():
        assert loop.time() < deadline, f"{what} never happened"
        await pilot.pause(0.05)
    await loads_done(pilot)
    for field in pilot.app.screen.query(Input):  # a blinking cursor never holds still for steady()
        field.cursor_blink = False
    await steady(pilot)


def screen_text(svg: str) -> list[str]:
    """The characters of an SVG screenshot, one string per terminal line (rich writes one <text> per run)."""
    lines: dict[int, list[tuple[float, str]]] = {}
    for m in re.finditer(r'<text [^>]*x="([\d.]+)"[^>]*clip-path="url\(#terminal-line-(\d+)\)">([^<]*)</text>', svg):
        lines.setdefault(int(m[2]), []).append((float(m[1]), html.unescape(m[3]).replace("\xa0", " ")))
    return ["".join(t for _, t in sorted(runs)).rstrip() for _, runs in sorted(lines.items())]


def difference(stored: str, shown: str) -> str:
    """What a mismatch is, readable in a CI log without the HTML report: the lines whose text differs, or,
    when every character is the same, the SVG lines whose styles differ."""
    text = list(difflib.unified_diff(screen_text(stored), screen_text(shown), "stored", "shown", lineterm="", n=1))
    if text:
        return "\n".join(text)
    svg = difflib.unified_diff(stored.splitlines(), shown.splitlines(), "stored", "shown", lineterm="", n=0)
    return "same characters, different styles:\n" + "\n".join(list(svg)[:40])


def photo(pilot: Pilot[Any]) -> str:
    """The screen as snap_compare stores it (simplified runs, no unique id)."""
    return normalize_svg(pilot.app.export_screenshot(simplify=True)).strip()


@pytest.fixture
def snap(snap_compare: Any, request: pytest.FixtureRequest) -> Callable[..., bool]:
    """snap_compare, after waiting until the screen equals the stored snapshot (15 s at most). Settling on a
    steady screen alone let a loaded CI box photograph a transient frame (test_help failed there, passing 40
    of 40 runs here beside three CPU burners), and its diff lived only in an HTML report. A screen that
    never reaches the snapshot fails here, with the differing lines in the message; snap_compare's own
    comparison still follows. With --snapshot-update there is nothing to wait for."""
    stored = Path(request.path).parent / "__snapshots__" / Path(request.path).stem / f"{request.node.name}.svg"
    updating = request.config.getoption("--snapshot-update")
    expected = None if updating or not stored.exists() else normalize_svg(stored.read_text()).strip()

    def compare(app: ConsoleApp, run_before: Callable[[Pilot[Any]], Awaitable[None]]) -> bool:
        async def then_match(pilot: Pilot[Any]) -> None:
            await run_before(pilot)
            if expected is None:
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while (shown := photo(pilot)) != expected:
                assert loop.time() < deadline, f"the screen never matched the snapshot:\n{difference(expected, shown)}"
                await pilot.pause(0.05)

        return bool(snap_compare(app, terminal_size=SIZE, run_before=then_match))

    return compare


def open_instance(iid: int, *tables: str) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot, "#queues")
        await pilot.app.push_screen(InstanceScreen(iid))
        await settle(pilot, "#history", *tables)

    return run_before


def test_queues_screen(frozen: str, snap: Any) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot, "#queues", "#workers", "#schedules")  # the frozen data has two schedules

    assert snap(app(frozen), run_before)


def test_instances_screen(frozen: str, snap: Any) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot, "#queues")
        await pilot.press("i")
        await settle(pilot, "#instances")

    assert snap(app(frozen), run_before)


def test_instance_awaiting_signal_with_inbox(frozen: str, snap: Any) -> None:
    assert snap(app(frozen), open_instance(1, "#inbox"))


def test_instance_awaiting_children(frozen: str, snap: Any) -> None:
    assert snap(app(frozen), open_instance(3, "#children"))


def test_instance_waking_later(frozen: str, snap: Any) -> None:
    """A runnable row whose time is ahead (a timer, a delay, schedule_in) shows when it wakes."""
    assert snap(app(frozen), open_instance(6))


def test_instance_failed(frozen: str, snap: Any) -> None:
    assert snap(app(frozen), open_instance(5))


def test_signal_dialog(frozen: str, snap: Any) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await open_instance(1, "#inbox")(pilot)
        await pilot.press("s")
        await until(
            pilot,
            lambda: isinstance(pilot.app.screen, SignalDialog) and getattr(pilot.app.focused, "id", None) == "payload",
            "the signal dialog's payload focus",
        )

    assert snap(app(frozen), run_before)


def test_help(frozen: str, snap: Any) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        # every table, as in test_queues_screen: the help overlay leaves the workers table visible, and a
        # fresh clone once caught it before its rows (and its column widths) had arrived
        await settle(pilot, "#queues", "#workers", "#schedules")
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen), "the help screen")

    assert snap(app(frozen), run_before)
