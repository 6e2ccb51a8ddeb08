"""The console against a real database filled by the real trio runtime, driven with Textual's pilot.

The data is written before the asyncio part runs (``trio.run`` in a module fixture); the checks compare
what is on screen with what SQL says at the same moment.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
import trio
from durable.console.app import ConsoleApp
from durable.console.screens.dialogs import ConfirmDialog, HelpScreen, SignalDialog
from durable.console.screens.instance import InstanceScreen
from durable.console.screens.instances import InstancesScreen
from durable.console.screens.queues import QueuesScreen
from durable.console.source import Source
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from .helpers import native_asyncio
from .test_console_support import Live, drop, fill_live, run_trio, wake_runtime

pytestmark = pytest.mark.asyncio

SIZE = (160, 50)


@pytest.fixture(scope="module", autouse=True)
def plain_asyncio() -> None:
    """The console runs on a plain asyncio loop; this process also imports trio-asyncio (other tests)."""
    native_asyncio()


@pytest.fixture(scope="module")
def live(pg_dsn: str) -> Iterator[tuple[str, Live]]:
    schema = f"t_console_{uuid.uuid4().hex[:8]}"
    data = trio.run(fill_live, pg_dsn, schema)
    yield schema, data
    trio.run(drop, pg_dsn, schema)


@pytest_asyncio.fixture
async def sql(pg_dsn: str, live: tuple[str, Live]) -> AsyncIterator[asyncpg.Connection]:
    """An independent connection to check the screen against (the test's oracle)."""
    conn = await asyncpg.connect(pg_dsn, server_settings={"search_path": live[0]})
    yield conn
    await conn.close()


def make_app(pg_dsn: str, schema: str, refresh: float | None = 0.2) -> ConsoleApp:
    return ConsoleApp(Source(pg_dsn, schema, timeout=5), refresh_every=refresh)


async def until(pilot: Pilot[Any], condition: Callable[[], bool], what: str, limit: float = 15) -> None:
    """Let the app run until ``condition`` holds (``limit`` is a failure guard, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def cells(table: DataTable[Any], key: str) -> list[str]:
    return [c.plain if isinstance(c, Text) else str(c) for c in table.get_row(key)]


def plain(widget: Static) -> str:
    """The text a Static shows (strings, rich Text and rich renderables alike)."""
    import io

    from rich.console import Console

    content = widget.content
    if isinstance(content, str):
        return Text.from_markup(content).plain
    console = Console(width=200, file=io.StringIO(), record=True)
    console.print(content)
    return console.export_text()


async def test_queue_counts_and_saturation_equal_sql(
    pg_dsn: str, live: tuple[str, Live], sql: asyncpg.Connection
) -> None:
    schema, _ = live
    app = make_app(pg_dsn, schema)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, QueuesScreen)
        queues = screen.query_one("#queues", DataTable)
        await until(pilot, lambda: queues.row_count >= 4, "the queues table")
        rows = await sql.fetch(
            "select queue, case when status = 'runnable' and eligible_at > now() then 'scheduled' "
            "when status = 'runnable' then 'due' else status::text end as s, count(*)::int as n "
            "from instances group by 1, 2"
        )
        expected: dict[str, dict[str, int]] = {}
        for r in rows:
            expected.setdefault(r["queue"], {})[r["s"]] = r["n"]
        assert sorted(expected) == sorted(k.value for k in queues.rows if k.value in expected)
        labels = {
            "due": "due",
            "scheduled": "scheduled",
            "executing": "executing",
            "awaiting_signal": "awaiting_signal",
            "awaiting_children": "awaiting_children",
            "done": "done",
            "failed": "failed",
            "cancelled": "cancelled",
        }
        for queue, counts in expected.items():
            shown = dict(zip([k.value for k in queues.columns], cells(queues, queue), strict=True))
            for status, col in labels.items():
                assert shown[col] == str(counts.get(status, 0)), (queue, status, shown)
        # every queue with data shows something: the fill made each status somewhere
        assert expected["mail"]["failed"] >= 1 and expected["mail"]["done"] >= 1
        assert expected["orders"]["awaiting_signal"] == 3 and expected["orders"]["awaiting_children"] == 2

        # the line under the table describes the queue under the cursor
        keys = [k.value for k in queues.rows]
        detail = screen.query_one("#queue-detail", Static)
        queues.move_cursor(row=keys.index("shipping"))
        await until(pilot, lambda: plain(detail).startswith("shipping · oldest due row waiting"), "due lag")
        queues.move_cursor(row=keys.index("slow"))
        await until(pilot, lambda: plain(detail).startswith("slow · nothing due"), "no lag")
        assert "in flight 1/3" in plain(detail)

        # throughput: the sparkline buckets add up to the outcome events of the last five minutes
        events = {
            r["queue"]: r["n"]
            for r in await sql.fetch(
                "select i.queue, count(*)::int as n from history h join instances i on i.id = h.instance_id "
                "where h.at > now() - interval '290 seconds' "
                "and h.event in ('next','retry','await','spawn','done','stop','cancel') group by 1"
            )
        }
        trend = {q.queue: sum(q.trend) for q in screen.overview.queues} if screen.overview else {}
        assert events and {q: trend.get(q, 0) for q in events} == events

        # saturation: the killed worker still holds its claim; the stopped one is shown stopped
        workers = screen.query_one("#workers", DataTable)
        await until(pilot, lambda: "runtime-killed\x00slow" in [k.value for k in workers.rows], "workers")
        wcols = [k.value for k in workers.columns]
        killed = dict(zip(wcols, cells(workers, "runtime-killed\x00slow"), strict=True))
        assert killed["in_flight"] == "1/3" and killed["state"] == "live"
        main = dict(zip(wcols, cells(workers, "runtime-main\x00mail"), strict=True))
        assert main["state"] == "stopped"
        slow = dict(zip([k.value for k in queues.columns], cells(queues, "slow"), strict=True))
        assert slow["in_flight"] == "1/3" and slow["executing"] == "1" and slow["workers"] == "1"


async def test_silent_workers_are_gone_and_leave_the_saturation(
    pg_dsn: str, live: tuple[str, Live], sql: asyncpg.Connection
) -> None:
    schema, _ = live
    # the killed worker has been silent for an hour (far more than three of its 20 s heartbeats)
    seen = await sql.fetchval("select seen_at from workers where id = 'runtime-killed'")
    await sql.execute("update workers set seen_at = now() - interval '1 hour' where id = 'runtime-killed'")
    app = ConsoleApp(Source(pg_dsn, schema, timeout=5), refresh_every=0.2, gone_after=0.5)
    try:
        await _shown_gone(app)
    finally:
        await sql.execute("update workers set seen_at = $1 where id = 'runtime-killed'", seen)


async def _shown_gone(app: ConsoleApp) -> None:
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, QueuesScreen)
        workers = screen.query_one("#workers", DataTable)
        queues = screen.query_one("#queues", DataTable)
        key = "runtime-killed\x00slow"
        await until(
            pilot,
            lambda: key in [k.value for k in workers.rows] and "slow" in [k.value for k in queues.rows],
            "the killed worker",
        )
        wcols = [k.value for k in workers.columns]
        await until(
            pilot,
            lambda: dict(zip(wcols, cells(workers, key), strict=True))["state"] == "gone",
            "the killed worker shown gone",
        )
        slow = dict(zip([k.value for k in queues.columns], cells(queues, "slow"), strict=True))
        assert slow["in_flight"] == "0/0" and slow["workers"] == "0" and slow["executing"] == "1"
        assert "gone" in plain(screen.query_one("#summary", Static))


async def test_filter_sort_page_and_drill_down(pg_dsn: str, live: tuple[str, Live], sql: asyncpg.Connection) -> None:
    schema, data = live
    app = make_app(pg_dsn, schema)
    async with app.run_test(size=SIZE) as pilot:
        queues = app.screen.query_one("#queues", DataTable)
        await until(pilot, lambda: queues.row_count >= 4, "the queues table")
        await pilot.press("i")
        await until(pilot, lambda: isinstance(app.screen, InstancesScreen), "the instances screen")
        screen = app.screen
        assert isinstance(screen, InstancesScreen)
        table = screen.query_one("#instances", DataTable)
        total = await sql.fetchval("select count(*) from instances")
        await until(pilot, lambda: table.row_count == total, "all instances on one page")

        filt = screen.query_one("#filter", Input)

        async def set_filter(text: str) -> None:
            if not filt.has_focus:
                await pilot.press("slash")
            assert filt.has_focus
            filt.value = text
            await pilot.press("enter")

        # filter: failed mail
        await set_filter("queue:mail status:failed")
        failed = [
            r["id"]
            for r in await sql.fetch(
                "select id from instances where queue = 'mail' and status = 'failed' order by id desc"
            )
        ]
        await until(pilot, lambda: [int(k.value or 0) for k in table.rows] == failed, "the filtered rows")
        assert failed == sorted(data.failed, reverse=True)

        # a bad filter says why, and keeps the rows
        await set_filter("status:sleeping")
        await pilot.pause(0.2)
        assert [int(k.value or 0) for k in table.rows] == failed
        assert filt.has_focus  # still editing the bad filter

        # paging: 3 rows a page over every instance, ascending id
        screen.page_size = 3
        await set_filter("")
        await pilot.press("r")
        all_ids = [r["id"] for r in await sql.fetch("select id from instances order by id")]
        await until(pilot, lambda: [int(k.value or 0) for k in table.rows] == all_ids[:3], "page 1")
        await pilot.press("n")
        await until(pilot, lambda: [int(k.value or 0) for k in table.rows] == all_ids[3:6], "page 2")
        await pilot.press("p")
        await until(pilot, lambda: [int(k.value or 0) for k in table.rows] == all_ids[:3], "page 1 again")
        # the mouse: a click on the "updated" header sorts by it (ascending, as the current order)
        x = sum(c.get_render_width(table) for c in list(table.columns.values())[:10]) + 2
        assert list(table.columns)[10].value == "updated_at"
        await pilot.click("#instances", offset=(x, 0))
        by_updated_asc = [r["id"] for r in await sql.fetch("select id from instances order by updated_at, id limit 3")]
        await until(pilot, lambda: [int(k.value or 0) for k in table.rows] == by_updated_asc, "a header click")
        assert screen.sort == "updated"
        # newest first with the keyboard
        await pilot.press("r")
        by_updated = [
            r["id"] for r in await sql.fetch("select id from instances order by updated_at desc, id desc limit 3")
        ]
        await until(pilot, lambda: [int(k.value or 0) for k in table.rows] == by_updated, "updated order")

        # drill down: a parent awaiting its children
        parent = data.parents[0]
        await set_filter(f"id:{parent}")
        await until(pilot, lambda: [k.value for k in table.rows] == [str(parent)], "the parent row")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, InstanceScreen), "the instance screen")
        inst = app.screen
        assert isinstance(inst, InstanceScreen)
        children = inst.query_one("#children", DataTable)
        history = inst.query_one("#history", DataTable)
        await until(pilot, lambda: inst.detail is not None and history.row_count > 0, "the instance")
        kids = await sql.fetch(
            "select id, status::text as status from instances where parent_id = $1 order by id", parent
        )
        assert [int(k.value or 0) for k in children.rows] == [k["id"] for k in kids]
        for k in kids:
            assert cells(children, str(k["id"]))[3] == k["status"]
        events = await sql.fetch("select event, step from history where instance_id = $1 order by id", parent)
        assert [cells(history, k.value or "")[1] for k in history.rows] == [e["event"] for e in events]
        facts = plain(inst.query_one("#facts", Static))
        assert "awaiting_children" in facts and f"#{parent}" in facts

        # into a child and back up to its parent with u
        children.focus()
        await pilot.press("enter")
        await until(
            pilot, lambda: isinstance(app.screen, InstanceScreen) and app.screen is not inst, "the child screen"
        )
        child = app.screen
        assert isinstance(child, InstanceScreen) and child.instance_id == kids[0]["id"]
        await until(pilot, lambda: child.detail is not None, "the child")
        assert f"#{parent}" in plain(child.query_one("#facts", Static))
        await pilot.press("u")
        await until(
            pilot,
            lambda: (
                isinstance(app.screen, InstanceScreen) and app.screen.instance_id == parent and app.screen is not inst
            ),
            "the parent via u",
        )
        # escape walks back
        await pilot.press("escape", "escape", "escape")
        await until(pilot, lambda: isinstance(app.screen, InstancesScreen), "back to the instances")


async def test_signal_from_console_wakes_the_instance(
    pg_dsn: str, live: tuple[str, Live], sql: asyncpg.Connection
) -> None:
    schema, data = live
    target = data.awaiting[0]
    app = make_app(pg_dsn, schema)
    async with app.run_test(size=SIZE) as pilot:
        await app.push_screen(InstanceScreen(target))
        screen = app.screen
        assert isinstance(screen, InstanceScreen)
        await until(pilot, lambda: screen.detail is not None, "the instance")
        assert "paid" in plain(screen.query_one("#facts", Static))

        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, SignalDialog), "the signal dialog")
        dialog = app.screen
        assert dialog.query_one("#name", Input).value == "paid"  # prefilled with the awaited name
        dialog.query_one("#payload", Input).value = "{not json"
        await pilot.press("enter")
        assert "not JSON" in plain(dialog.query_one("#error", Static))
        dialog.query_one("#payload", Input).value = '{"amount": 5, "tags": ["[/b]", "[red]"]}'  # not markup
        dialog.query_one("#dedup", Input).value = "[b]pay-1"
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the confirmation")
        assert (
            await sql.fetchval("select status::text from instances where id = $1", target) == "awaiting_signal"
        )  # nothing happens before the confirmation
        await pilot.press("y")

        async def status() -> str:
            return str(await sql.fetchval("select status::text from instances where id = $1", target))

        for _ in range(200):
            if await status() != "awaiting_signal":
                break
            await pilot.pause(0.05)
        assert await status() == "runnable"
        payload = await sql.fetchval("select payload::text from signals where target_id = $1 and name = 'paid'", target)
        assert json.loads(payload) == {"amount": 5, "tags": ["[/b]", "[red]"]}
        inbox = screen.query_one("#inbox", DataTable)
        await until(pilot, lambda: inbox.row_count == 1, "the signal in the inbox")

        # a runtime picks the woken instance up; the screen follows it live
        await asyncio.to_thread(run_trio, wake_runtime, pg_dsn, schema, target, "awaiting_children")
        children = screen.query_one("#children", DataTable)
        await until(pilot, lambda: children.row_count == 2, "the spawned children")
        assert "awaiting_children" in plain(screen.query_one("#facts", Static))
        history = screen.query_one("#history", DataTable)
        await until(
            pilot, lambda: "spawn" in [cells(history, k.value or "")[1] for k in history.rows], "the spawn event"
        )
        assert inbox.row_count == 0  # the woken step consumed the signal


async def test_retry_and_cancel_ask_first(pg_dsn: str, live: tuple[str, Live], sql: asyncpg.Connection) -> None:
    schema, data = live
    failed, awaiting = data.failed[0], data.awaiting[1]
    app = make_app(pg_dsn, schema)

    async def status(iid: int) -> str:
        return str(await sql.fetchval("select status::text from instances where id = $1", iid))

    async with app.run_test(size=SIZE) as pilot:
        await app.push_screen(InstanceScreen(failed))
        screen = app.screen
        assert isinstance(screen, InstanceScreen)
        await until(pilot, lambda: screen.detail is not None, "the failed instance")
        assert "smtp: connection refused" in plain(screen.query_one("#facts", Static))
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the retry confirmation")
        await pilot.press("n")  # declined: nothing changes
        await pilot.pause(0.3)
        assert await status(failed) == "failed"
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the retry confirmation")
        await pilot.press("y")
        for _ in range(100):
            if await status(failed) != "failed":
                break
            await pilot.pause(0.05)
        assert await status(failed) == "runnable"
        history = screen.query_one("#history", DataTable)
        await until(
            pilot, lambda: "retried" in [cells(history, k.value or "")[1] for k in history.rows], "the retried event"
        )

        await pilot.press("x")  # runnable now: cancelling asks first (declined here)
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the cancel confirmation")
        await pilot.press("n")
        await pilot.press("R")  # not failed any more: no dialog, a warning
        await pilot.pause(0.3)
        assert isinstance(app.screen, InstanceScreen)
        assert await status(failed) == "runnable"

        await pilot.press("escape")
        await app.push_screen(InstanceScreen(awaiting))
        other = app.screen
        assert isinstance(other, InstanceScreen)
        await until(pilot, lambda: other.detail is not None, "the awaiting instance")
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the cancel confirmation")
        await pilot.click("#yes")  # the mouse works too
        for _ in range(100):
            if await status(awaiting) != "awaiting_signal":
                break
            await pilot.pause(0.05)
        assert await status(awaiting) == "cancelled"


async def test_cancel_from_the_console_reaches_the_children(
    pg_dsn: str, live: tuple[str, Live], sql: asyncpg.Connection
) -> None:
    """Issue 17 item 5 from the console: cancelling a parent awaiting its children cancels them too (the
    engine's cancel_instance: each child joined once, the parent's barrier at 0), and says so."""
    schema, data = live
    parent = data.parents[1]
    kids = [r["id"] for r in await sql.fetch("select id from instances where parent_id = $1", parent)]
    assert len(kids) == 2
    assert {await sql.fetchval("select status::text from instances where id = $1", k) for k in kids} <= {"runnable"}
    app = make_app(pg_dsn, schema)
    async with app.run_test(size=SIZE) as pilot:
        await app.push_screen(InstanceScreen(parent))
        screen = app.screen
        assert isinstance(screen, InstanceScreen)
        await until(pilot, lambda: screen.detail is not None, "the parent")
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the cancel confirmation")
        await pilot.press("y")
        await until(
            pilot,
            lambda: screen.detail is not None and screen.detail.instance["status"] == "cancelled",
            "the parent shown cancelled",
        )
        rows = await sql.fetch(
            "select id, status::text as status, children_pending, joined from instances where id = any($1::bigint[])",
            [parent, *kids],
        )
        by_id = {r["id"]: r for r in rows}
        assert by_id[parent]["status"] == "cancelled" and by_id[parent]["children_pending"] == 0
        assert all(by_id[k]["status"] == "cancelled" and by_id[k]["joined"] for k in kids)
        by = await sql.fetch(
            "select instance_id, detail->>'by' as by from history "
            "where event = 'cancelled' and instance_id = any($1::bigint[])",
            [parent, *kids],
        )
        assert {r["instance_id"]: r["by"] for r in by} == {parent: "console", **{k: str(parent) for k in kids}}


async def test_a_timer_and_an_await_timeout_are_shown(
    pg_dsn: str, live: tuple[str, Live], sql: asyncpg.Connection
) -> None:
    """Issue 17 item 8: the instance screen shows a durable timer's wake time (Next(delay=)) and an await's
    names, deadline and timeout step, as the row holds them."""
    from durable.console import render

    schema, data = live
    app = make_app(pg_dsn, schema)
    async with app.run_test(size=SIZE) as pilot:
        await app.push_screen(InstanceScreen(data.sleeping))
        screen = app.screen
        assert isinstance(screen, InstanceScreen)
        await until(pilot, lambda: screen.detail is not None, "the sleeping instance")
        text = plain(screen.query_one("#facts", Static))
        wake = await sql.fetchval(
            "select eligible_at from instances where id = $1 and status = 'runnable'", data.sleeping
        )
        assert wake is not None
        assert f"wakes          {render.clock(wake)} (in " in text, text
        history = screen.query_one("#history", DataTable)  # the history's next event says when it wakes
        await until(pilot, lambda: history.row_count >= 2, "the sleeper's history")
        notes = {cells(history, k.value or "")[1]: cells(history, k.value or "")[7] for k in history.rows}
        assert notes["next"] == f"wakes {render.short_clock(wake)}", notes
        await pilot.press("escape")

        await app.push_screen(InstanceScreen(data.timing_out))
        other = app.screen
        assert isinstance(other, InstanceScreen)
        await until(pilot, lambda: other.detail is not None, "the awaiting instance")
        text = plain(other.query_one("#facts", Static))
        deadline = await sql.fetchval("select timeout_at from instances where id = $1", data.timing_out)
        assert deadline is not None
        assert "awaits         ok, no" in text, text
        assert f"timeout        {render.clock(deadline)} (in " in text and "→ step later" in text, text
        history = other.query_one("#history", DataTable)
        await until(pilot, lambda: history.row_count >= 2, "the waiter's history")
        notes = {cells(history, k.value or "")[1]: cells(history, k.value or "")[7] for k in history.rows}
        assert notes["await"] == f"timeout {render.short_clock(deadline)}", notes


async def test_schedules_show_their_last_and_next_run(
    pg_dsn: str, live: tuple[str, Live], sql: asyncpg.Connection
) -> None:
    """Issue 17 item 8: the queues screen lists each schedule with its last run, that run's instance and
    status, and its next run, as the schedules table holds them."""
    from durable.console import render

    schema, data = live
    app = make_app(pg_dsn, schema, refresh=None)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, QueuesScreen)
        table = screen.query_one("#schedules", DataTable)
        await until(pilot, lambda: table.row_count == 3, "the schedules table")
        assert table.display and screen.query_one("#schedules-title", Static).display
        assert screen.overview is not None
        rows = {
            r["name"]: r
            for r in await sql.fetch(
                "select s.*, i.status::text as last_status from schedules s "
                "left join instances i on i.id = s.last_instance_id where s.name <> $1",
                data.edited,
            )
        }
        ran = cells(table, data.schedule)
        row = rows[data.schedule]
        assert ran[:4] == [data.schedule, "* * * * * *", "UTC", "report"]
        assert ran[4] == render.relative(row["last_run"], screen.overview.now)
        assert ran[5:7] == [f"#{row['last_instance_id']}", "done"]
        assert ran[7].startswith(render.short_clock(row["next_tick"]) + " (")
        yearly = cells(table, data.yearly)
        assert yearly[1:3] == ["0 0 1 1 *", "Europe/Paris"] and yearly[4:7] == ["-", "-", "-"]
        nxt = rows[data.yearly]["next_tick"]
        assert yearly[7] == f"{render.short_clock(nxt)} ({render.relative(nxt, screen.overview.now)})"
        edited = cells(table, data.edited)  # 'infinity' and '-infinity' written by hand read as the bounds
        assert edited[4].endswith(" ago") and edited[7].startswith("12-31 23:59:59 (in "), edited


async def test_no_schedules_no_section() -> None:
    """A schema without schedules shows no empty Schedules section (the queues screen stays as it was)."""
    from datetime import UTC, datetime

    from durable.console.data import Overview
    from durable.console.screens.queues import schedule_rows

    assert schedule_rows(Overview(now=datetime.now(UTC), queues=[], workers=[])) == []


async def test_unreachable_database_shows_a_banner_and_stays_responsive() -> None:
    source = Source("postgresql://nobody@127.0.0.1:9/none", "durable", timeout=0.5)
    app = ConsoleApp(source, refresh_every=0.2)
    async with app.run_test(size=SIZE) as pilot:
        banner = app.screen.query_one("#banner", Static)
        await until(pilot, lambda: app.db_error is not None and banner.display, "the banner")
        assert plain(banner).startswith("database unreachable, retrying")
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "help while the database is down")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, QueuesScreen), "back from help")
        await pilot.press("i")
        await until(pilot, lambda: isinstance(app.screen, InstancesScreen), "the instances screen")
        assert app.screen.query_one("#banner", Static).display


async def test_missing_schema_says_how_to_fix_it(pg_dsn: str) -> None:
    app = ConsoleApp(Source(pg_dsn, "no_such_schema_here", timeout=5), refresh_every=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.db_error is not None, "the banner")
        assert "durable migrate --schema no_such_schema_here" in (app.db_error or "")


class Proxy:
    """A TCP proxy in front of the test database that can drop every connection (down) or stop
    forwarding bytes (stalled), to play an unreachable or a hung server."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.target = _target(dsn)
        self.mode = "up"
        self.links: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        from urllib.parse import urlparse

        url = urlparse(self.dsn)  # same credentials and database, through the proxy
        userinfo = url.netloc.rpartition("@")[0] or "postgres"
        return f"postgresql://{userinfo}@127.0.0.1:{self.port}{url.path or '/postgres'}"

    def set(self, mode: str) -> None:
        self.mode = mode
        if mode == "down":
            for w in list(self.links):
                w.transport.abort()
            self.links.clear()

    async def close(self) -> None:
        self.set("down")
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "down":
            writer.transport.abort()
            return
        kind, where = self.target
        if kind == "unix":
            up_reader, up_writer = await asyncio.open_unix_connection(where)
        else:
            host, port = where.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        self.links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    while self.mode == "stalled":
                        await asyncio.sleep(0.05)
                    if self.mode == "down":
                        break
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def _target(dsn: str) -> tuple[str, str]:
    """Where the test database listens: ("unix", socket path) or ("tcp", "host:port")."""
    import glob
    from urllib.parse import parse_qs, urlparse

    url = urlparse(dsn)
    host = parse_qs(url.query).get("host", [url.hostname or ""])[0]
    if host.startswith("/"):
        port = url.port or 5432
        sockets = glob.glob(f"{host}/.s.PGSQL.{port}") or glob.glob(f"{host}/.s.PGSQL.*")
        assert sockets, f"no PostgreSQL socket in {host}"
        return "unix", sockets[0]
    return "tcp", f"{host}:{url.port or 5432}"


async def test_database_down_then_back_and_a_hung_server(
    pg_dsn: str, live: tuple[str, Live], sql: asyncpg.Connection
) -> None:
    schema, _ = live
    proxy = Proxy(pg_dsn)
    dsn = await proxy.start()
    app = ConsoleApp(Source(dsn, schema, timeout=1.0), refresh_every=0.2)
    try:
        async with app.run_test(size=SIZE) as pilot:
            screen = app.screen
            assert isinstance(screen, QueuesScreen)
            queues = screen.query_one("#queues", DataTable)
            banner = screen.query_one("#banner", Static)
            await until(pilot, lambda: queues.row_count >= 4, "the queues table")
            assert not banner.display

            proxy.set("down")
            await until(pilot, lambda: banner.display, "the banner")
            assert plain(banner).startswith("database unreachable, retrying")
            before = cells(queues, "mail")  # the last numbers stay on screen
            await pilot.press("i")  # still responsive
            await until(pilot, lambda: isinstance(app.screen, InstancesScreen), "the instances screen")
            assert app.screen.query_one("#banner", Static).display
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is screen, "back to the queues")
            assert cells(queues, "mail") == before

            proxy.set("up")
            await until(pilot, lambda: not banner.display and app.db_error is None, "the banner to go")

            proxy.set("stalled")  # the server hangs: every call times out after 1 s
            await until(pilot, lambda: banner.display, "the banner on a hung server")
            assert "no answer within 1s" in plain(banner)
            await pilot.press("question_mark")
            await until(pilot, lambda: isinstance(app.screen, HelpScreen), "help while hung")
            await pilot.press("escape")
            proxy.set("up")
            await until(pilot, lambda: not banner.display, "recovery after the hang")
            done = await sql.fetchval("select count(*)::int from instances where queue = 'mail' and status = 'done'")
            cols = [k.value for k in queues.columns]
            await until(
                pilot, lambda: dict(zip(cols, cells(queues, "mail"), strict=True))["done"] == str(done), "fresh numbers"
            )
    finally:
        await proxy.close()
