"""Retention against real PostgreSQL: old terminal instances go with their signals and history in
bounded batches; live work, recent rows and terminal children of live parents stay; the runtime's
retention service does the same on its own and is off unless configured."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import trio

import durable
from durable import Child, Done, Machine, Spawn, Stop, step
from durable.errors import NoSuchInstance
from durable.ops import InvalidArgument

pytestmark = pytest.mark.trio


class Parent(Machine, name="gc.parent", queue="work"):
    @step
    async def start(self, ctx: durable.Context) -> Any:
        children = [Child(Finisher, {"n": i}) for i in range(2)]
        if ctx.state.get("keep_one_live"):
            children.append(Child("gc.never", {}, step="s", queue="idle"))
        return Spawn("joined", children)

    @step
    async def joined(self, ctx: durable.Context) -> Any:
        return Done([c.status for c in ctx.children])


class Finisher(Machine, name="gc.finish", queue="work"):
    @step
    async def start(self, ctx: durable.Context) -> Any:
        return Done({"ok": True})


class Failer(Machine, name="gc.fail", queue="work"):
    @step
    async def start(self, ctx: durable.Context) -> Any:
        return Stop("no")


class FixedClock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime | None:
        return self.at


async def wait_until(check: Callable[[], Any], seconds: float = 10.0) -> None:
    """Poll the database until ``check()`` holds (a real runtime commits asynchronously)."""
    with trio.fail_after(seconds):
        while not await check():
            await trio.sleep(0.02)


async def one(db: durable.Database, machine: Any, state: Any, **kw: Any) -> int:
    iid = await db.insert(machine, state, **kw)
    assert iid is not None
    return iid


async def statuses(db: durable.Database, ids: list[int]) -> list[str | None]:
    out: list[str | None] = []
    for i in ids:
        try:
            out.append((await db.get(i)).status)
        except NoSuchInstance:
            out.append(None)
    return out


async def history_count(db: durable.Database, ids: list[int]) -> int:
    return sum([len(await db.history(i)) for i in ids])


async def test_gc_deletes_old_terminal_work_and_leaves_live_work(db: durable.Database) -> None:
    done = [i for i in await db.insert_many([durable.Insert(Finisher, {})] * 3) if i]
    failed = [await one(db, Failer, {})]
    cancelled = await one(db, "gc.idle", {}, step="s", queue="idle")
    await db.signal(cancelled, "hello", {"x": 1})
    await db.cancel(cancelled)
    finished_parent = await one(db, Parent, {})
    live_parent = await one(db, Parent, {"keep_one_live": True})
    waiting = await one(db, "gc.idle", {}, step="s", queue="idle")
    await db.signal(waiting, "pending", {"y": 2})
    assert len(done) == 3

    async with trio.open_nursery() as nursery:
        await nursery.start(
            durable.Runtime(db, machines=[Parent, Finisher, Failer], queues={"work": 4}, drain_timeout=5).run
        )

        async def settled() -> bool:
            fp, lp = await db.get(finished_parent), await db.get(live_parent)
            return (
                fp.status == "done"
                and lp.status == "awaiting_children"
                and lp.children_pending == 1
                and await statuses(db, done + failed) == ["done"] * 3 + ["failed"]
            )

        await wait_until(settled)
        nursery.cancel_scope.cancel()

    finished_kids = [c["id"] for c in (await db.get(finished_parent)).children]
    live_kids = (await db.get(live_parent)).children
    done_live_kids = [c["id"] for c in live_kids if c["status"] == "done"]
    runnable_kid = next(c["id"] for c in live_kids if c["status"] == "runnable")
    assert len(finished_kids) == 2 and len(done_live_kids) == 2

    old = done + failed + [cancelled, finished_parent] + finished_kids
    stamp = max([(await db.get(i)).updated_at for i in old])
    # recent terminal work: updated after every `old` row
    await trio.sleep(0.02)
    recent = await one(db, "gc.idle", {}, step="s", queue="idle")
    await db.cancel(recent)
    assert (await db.get(recent)).updated_at > stamp + timedelta(milliseconds=5)

    live = [live_parent, runnable_kid, waiting, recent]
    kept = live + done_live_kids
    history_before = {i: len(await db.history(i)) for i in kept}
    inbox_before = len((await db.get(waiting)).inbox)
    assert history_before[live_parent] >= 3 and inbox_before == 1 and await history_count(db, old) >= 14

    # "now" one hour after the last old row, "older than" 5 ms under an hour: exactly `old` qualifies
    aged = durable.Database(db.pool, clock=FixedClock(stamp + timedelta(hours=1)), registry=db.registry)
    totals: list[int] = []
    deleted = await aged.gc(older_than=3599.995, batch=3, progress=totals.append)
    assert deleted == len(old) == 8
    assert totals == [3, 6, 8]  # bounded batches; a short batch means nothing is left
    assert await statuses(db, old) == [None] * len(old)
    assert await history_count(db, old) == 0
    assert await statuses(db, kept) == ["awaiting_children", "runnable", "runnable", "cancelled", "done", "done"]
    assert {i: len(await db.history(i)) for i in kept} == history_before
    assert len((await db.get(waiting)).inbox) == inbox_before
    # nothing left to do: idempotent
    assert await aged.gc(older_than=3599.995) == 0
    # with a larger "now", the recent cancelled row goes too; live work still stays
    later = durable.Database(db.pool, clock=FixedClock(stamp + timedelta(days=2)), registry=db.registry)
    assert await later.gc(older_than=3600) == 1
    assert await statuses(db, kept) == ["awaiting_children", "runnable", "runnable", None, "done", "done"]


async def test_gc_rejects_bad_arguments(db: durable.Database) -> None:
    with pytest.raises(InvalidArgument, match="older_than"):
        await db.gc(older_than=-1)
    with pytest.raises(InvalidArgument, match="batch"):
        await db.gc(older_than=10, batch=0)


async def test_runtime_retention_service_deletes_finished_work_and_is_off_by_default(
    db: durable.Database,
) -> None:
    idle = await one(db, "gc.idle", {}, step="s", queue="idle")
    first = [i for i in await db.insert_many([durable.Insert(Finisher, {})] * 4) if i]
    async with trio.open_nursery() as nursery:
        # no retention configured: finished work stays
        await nursery.start(durable.Runtime(db, machines=[Finisher], queues={"work": 4}).run)
        await wait_until(lambda: _all(db, first, "done"))
        nursery.cancel_scope.cancel()
    assert await statuses(db, first) == ["done"] * 4

    second = [i for i in await db.insert_many([durable.Insert(Finisher, {})] * 4) if i]
    async with trio.open_nursery() as nursery:
        await nursery.start(
            durable.Runtime(db, machines=[Finisher], queues={"work": 4}, retention=0.0, retention_every=0.05).run
        )

        async def gone() -> bool:
            return await statuses(db, first + second) == [None] * 8

        await wait_until(gone)
        nursery.cancel_scope.cancel()
    assert await statuses(db, [idle]) == ["runnable"]
    assert len(await db.history(idle)) == 1


async def _all(db: durable.Database, ids: list[int], status: str) -> bool:
    return await statuses(db, ids) == [status] * len(ids)
