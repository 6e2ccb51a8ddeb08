"""Nudging instances with a real runtime: retry of a failed instance, cancel of idle and executing
instances, and a cancelled child releasing its parent's barrier."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import pytest
import trio

import durable
from durable import Await, Child, Done, Machine, Next, Spawn, Stop, step
from durable.errors import NoSuchInstance, NotDeliverable

pytestmark = pytest.mark.trio


class Flaky(Machine, name="nudge.flaky", queue="work"):
    broken: ClassVar[bool] = True

    @step
    async def start(self, ctx: durable.Context) -> Any:
        return Next("charge", {"charged": False})

    @step
    async def charge(self, ctx: durable.Context) -> Any:
        if Flaky.broken:
            return Stop("card service down")
        return Done({"charged": True, "attempt": ctx.attempt})


class Slow(Machine, name="nudge.slow", queue="work"):
    entered: ClassVar[trio.Event]
    release: ClassVar[trio.Event]

    @step
    async def start(self, ctx: durable.Context) -> Any:
        Slow.entered.set()
        await Slow.release.wait()
        return Next("after")

    @step
    async def after(self, ctx: durable.Context) -> Any:
        return Done("should not run")


class Waiter(Machine, name="nudge.waiter", queue="work"):
    @step
    async def start(self, ctx: durable.Context) -> Any:
        if ctx.signal("go") is None:
            return Await("go")
        return Done("went")


class Parent(Machine, name="nudge.parent", queue="work"):
    @step
    async def start(self, ctx: durable.Context) -> Any:
        return Spawn("joined", [Child(Waiter, {}), Child(Waiter, {})])

    @step
    async def joined(self, ctx: durable.Context) -> Any:
        return Done(sorted(c.status for c in ctx.children))


MACHINES = [Flaky, Slow, Waiter, Parent]


async def wait_status(db: durable.Database, iid: int, *wanted: str, seconds: float = 10.0) -> durable.Instance:
    with trio.fail_after(seconds):
        while True:
            inst = await db.get(iid)
            if inst.status in wanted:
                return inst
            await trio.sleep(0.02)


@asynccontextmanager
async def running(db: durable.Database) -> AsyncIterator[durable.Runtime]:
    async with trio.open_nursery() as nursery:
        rt = await nursery.start(durable.Runtime(db, machines=MACHINES, queues={"work": 4}, drain_timeout=5).run)
        yield rt
        nursery.cancel_scope.cancel()


def events(history: list[durable.Event], keep: Callable[[durable.Event], bool] = lambda e: True) -> list[str]:
    return [e.event for e in history if keep(e)]


async def test_retry_puts_a_failed_instance_back_at_its_failed_step(db: durable.Database) -> None:
    Flaky.broken = True
    async with running(db):
        iid = await db.insert(Flaky, {})
        assert iid is not None
        failed = await wait_status(db, iid, "failed")
        assert failed.step == "charge" and failed.last_error == "card service down"
        Flaky.broken = False
        assert await db.retry(iid) == "runnable"
        done = await wait_status(db, iid, "done")
    assert done.result == {"charged": True, "attempt": 0}
    assert events(await db.history(iid)) == ["inserted", "next", "stop", "retried", "done"]
    retried = next(e for e in await db.history(iid) if e.event == "retried")
    assert retried.step == "charge" and retried.status == "runnable" and retried.detail == {"from": "failed"}
    # retry of an instance that did not fail changes nothing
    assert await db.retry(iid) == "done"
    assert events(await db.history(iid)).count("retried") == 1
    with pytest.raises(NoSuchInstance):
        await db.retry(10**9)


async def test_cancel_idle_now_and_executing_when_its_step_ends(db: durable.Database) -> None:
    Slow.entered, Slow.release = trio.Event(), trio.Event()
    idle = await db.insert("nudge.unserved", {}, step="s", queue="nobody")
    assert idle is not None
    assert await db.cancel(idle, "operator said so") == "cancelled"
    inst = await db.get(idle)
    assert inst.status == "cancelled" and inst.last_error == "operator said so"
    with pytest.raises(NotDeliverable):
        await db.signal(idle, "anything")
    async with running(db):
        iid = await db.insert(Slow, {})
        assert iid is not None
        with trio.fail_after(10):
            await Slow.entered.wait()
        assert await db.cancel(iid) == "executing"  # requested: the step is running
        assert (await db.get(iid)).cancel_requested
        Slow.release.set()
        ended = await wait_status(db, iid, "cancelled")
    # the step's Next("after") is recorded (a retry would resume there), but the pending cancel won:
    # "after" never ran
    assert ended.step == "after" and ended.result is None
    history = await db.history(iid)
    assert events(history) == ["inserted", "cancelled", "next"]
    assert history[-1].status == "cancelled"
    assert history[1].detail == {"reason": "cancelled", "requested": True, "by": "operator"}
    with pytest.raises(NoSuchInstance):
        await db.cancel(10**9)


async def test_a_cancelled_child_releases_its_parent_like_a_failed_one(db: durable.Database) -> None:
    async with running(db):
        parent = await db.insert(Parent, {})
        assert parent is not None
        waiting = await wait_status(db, parent, "awaiting_children")
        kids = [c["id"] for c in waiting.children]
        assert waiting.children_pending == 2
        for k in kids:
            await wait_status(db, k, "awaiting_signal")
        await db.signal(kids[0], "go")
        await wait_status(db, kids[0], "done")
        assert (await db.get(parent)).children_pending == 1
        assert await db.cancel(kids[1]) == "cancelled"
        done = await wait_status(db, parent, "done")
    assert done.result == ["cancelled", "done"]
    assert "joined" in events(await db.history(parent))
    # a cancelled instance can be retried: it runs again from where it was cancelled
    assert await db.retry(kids[1]) == "runnable"
    assert (await db.get(kids[1])).status == "runnable"
