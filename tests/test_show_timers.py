"""`durable show` and ``db.get`` show what a row waits for (issue 17 items 2, 3, 8): a durable timer's wake
time, an await's names, deadline and timeout step, and a step that runs because its await timed out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import durable
from durable import Await, Done, Machine, Next, step

ROOT = Path(__file__).resolve().parent.parent
DURABLE = str(Path(sys.executable).parent / "durable")

pytestmark = pytest.mark.trio


class Waits(Machine, queue="waits"):
    @step
    async def start(self, ctx: Any) -> Any:
        if ctx.state["how"] == "sleep":
            return Next("later", ctx.state, delay=3600)
        timeout = ctx.state["timeout"]
        return Await(["ok", "no"], ctx.state, timeout=timeout, timeout_step="later")

    @step
    async def later(self, ctx: Any) -> Any:
        return Done()


def show(dsn: str, schema: str, iid: int) -> str:
    env = {**os.environ, "COLUMNS": "200", "DURABLE_DSN": "", "DURABLE_SCHEMA": ""}
    proc = subprocess.run(
        [DURABLE, "show", str(iid), "--dsn", dsn, "--schema", schema, "--no-history"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, (proc.stdout, proc.stderr)
    return proc.stdout


async def until(db: durable.Database, iid: int, check: Any) -> durable.Instance:
    with trio.fail_after(30):
        while not check(inst := await db.get(iid)):
            await trio.sleep(0.02)
    return inst


async def test_show_and_get_tell_when_a_row_wakes_and_when_its_await_times_out(
    db: durable.Database, pg_dsn: str
) -> None:
    sleeper = await db.insert(Waits, {"how": "sleep"})
    waiter = await db.insert(Waits, {"how": "await", "timeout": 3600})
    assert sleeper is not None and waiter is not None
    async with trio.open_nursery() as nursery:
        runtime = await nursery.start(durable.Runtime(db, machines=[Waits], queues={"waits": 2}).run)
        slept = await until(db, sleeper, lambda i: i.step == "later")
        parked = await until(db, waiter, lambda i: i.status == "awaiting_signal")
        runtime.stop()

    assert slept.status == "runnable" and not slept.timed_out
    text = await trio.to_thread.run_sync(show, pg_dsn, db.schema, sleeper)
    assert f"wakes     {slept.eligible_at.isoformat()} (in " in text, text

    assert parked.awaits_any == ["ok", "no"] and parked.timeout_step == "later"
    assert parked.timeout_at is not None
    text = await trio.to_thread.run_sync(show, pg_dsn, db.schema, waiter)
    assert "awaits    ok, no" in text, text
    assert f"timeout   {parked.timeout_at.isoformat()} (in " in text and "then step later" in text, text


async def test_show_says_a_runnable_row_follows_a_timeout(db: durable.Database, pg_dsn: str) -> None:
    waiter = await db.insert(Waits, {"how": "await", "timeout": 0.2})
    assert waiter is not None
    async with trio.open_nursery() as nursery:
        runtime = await nursery.start(durable.Runtime(db, machines=[Waits], queues={"waits": 1}).run)
        await until(db, waiter, lambda i: i.status == "awaiting_signal")
        runtime.stop()
    # another runtime, on another queue: its timer sweep fires the timeout, nobody runs the woken step
    async with trio.open_nursery() as nursery:
        runtime = await nursery.start(durable.Runtime(db, machines=[Waits], queues={"elsewhere": 1}).run)
        woken = await until(db, waiter, lambda i: i.status == "runnable")
        runtime.stop()
    assert woken.timed_out and woken.step == "later" and woken.timeout_at is None
    text = await trio.to_thread.run_sync(show, pg_dsn, db.schema, waiter)
    assert "its await timed out" in text and "timeout   " not in text, text


@pytest.mark.parametrize("stamp", ["infinity", "20000-01-01 00:00:00+00"])
async def test_a_timeout_past_year_9999_written_by_hand_reads_clamped(
    db: durable.Database, pg_dsn: str, stamp: str
) -> None:
    """durable writes no such deadline (a timeout is at most durable.MAX_DELAY), but a row edited by hand
    must stay readable: db.get, durable show and the console read 9999-12-31 23:59:59.999999 UTC."""
    from datetime import UTC, datetime

    from durable.sql import Query

    waiter = await db.insert(Waits, {"how": "await", "timeout": 3600})
    assert waiter is not None
    async with trio.open_nursery() as nursery:
        runtime = await nursery.start(durable.Runtime(db, machines=[Waits], queues={"waits": 1}).run)
        await until(db, waiter, lambda i: i.status == "awaiting_signal")
        runtime.stop()
    await db.pool.execute(
        Query("t", "update instances set timeout_at = $2::text::timestamptz where id = $1", ""), waiter, stamp
    )
    end = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert (await db.get(waiter)).timeout_at == end
    text = await trio.to_thread.run_sync(show, pg_dsn, db.schema, waiter)
    assert f"timeout   {end.isoformat()} (in " in text, text
