"""Spawn and join: all-done join, a failed child still releases, zero children, nested barriers, exactly
one decrement per child under re-execution, cancelled child releases its parent."""

from __future__ import annotations

import pytest
import trio

import durable
from durable import Child, Done, Machine, Spawn, Stop, step
from durable.sql import Q

from .helpers import pick, row, wait_status
from .helpers import step as run_step

pytestmark = pytest.mark.trio


class Worker(Machine, queue="kids"):
    @step
    async def go(self, ctx):
        if ctx.state.get("fail"):
            return Stop(f"child {ctx.state['i']} failed")
        return Done(ctx.state["i"] * 10)


class Parent(Machine, queue="kids"):
    @step
    async def fan(self, ctx):
        kids = [Child(Worker, {"i": i, "fail": i in ctx.state.get("failing", [])}) for i in range(ctx.state["n"])]
        return Spawn("join", kids, ctx.state)

    @step
    async def join(self, ctx):
        return Done(
            {
                "results": sorted(c.result for c in ctx.children if c.status == "done"),
                "failed": sorted(c.last_error for c in ctx.children if c.status == "failed"),
            }
        )


class Grand(Machine, queue="kids"):
    @step
    async def fan(self, ctx):
        return Spawn("join", [Child(Parent, {"n": 2}), Child(Parent, {"n": 3})], ctx.state)

    @step
    async def join(self, ctx):
        return Done(sorted(sum(c.result["results"]) for c in ctx.children))


@pytest.fixture
def kdb(db: durable.Database) -> durable.Database:
    for m in (Worker, Parent, Grand):
        db.registry.add(m)
    return db


async def run_all(db: durable.Database, *ids: int) -> None:
    async with trio.open_nursery() as n:
        await n.start(durable.Runtime(db, queues={"kids": 4}).run)
        for iid in ids:
            await wait_status(db, iid, "done", "failed")
        n.cancel_scope.cancel()


async def test_join_waits_for_all_children(kdb: durable.Database) -> None:
    iid = await kdb.insert(Parent, {"n": 5})
    await run_all(kdb, iid)
    r = await row(kdb, iid)
    assert durable.codec.decode(r["result"]) == {"results": [0, 10, 20, 30, 40], "failed": []}
    assert r["children_pending"] == 0


async def test_failed_child_still_releases_the_barrier(kdb: durable.Database) -> None:
    iid = await kdb.insert(Parent, {"n": 3, "failing": [1]})
    await run_all(kdb, iid)
    result = durable.codec.decode((await row(kdb, iid))["result"])
    assert result == {"results": [0, 20], "failed": ["child 1 failed"]}


async def test_zero_children_go_straight_on(kdb: durable.Database) -> None:
    iid = await kdb.insert(Parent, {"n": 0})
    await run_all(kdb, iid)
    assert durable.codec.decode((await row(kdb, iid))["result"]) == {"results": [], "failed": []}


async def test_nested_barriers(kdb: durable.Database) -> None:
    iid = await kdb.insert(Grand, {})
    await run_all(kdb, iid)
    assert durable.codec.decode((await row(kdb, iid))["result"]) == [10, 30]


async def test_exactly_one_decrement_per_child_under_reexecution(kdb: durable.Database) -> None:
    db = kdb
    pid = await db.insert(Parent, {"n": 2})
    await run_step(db, (await pick(db, "kids"))[0])
    assert (await row(db, pid))["children_pending"] == 2
    first = (await pick(db, "kids", 1, worker="a", lease=0.1))[0]
    await trio.sleep(0.2)
    await db.pool.fetch(Q.reap, None, 10)  # worker a is presumed dead: its child re-runs
    again = next(c for c in await pick(db, "kids", 5, worker="b") if c.id == first.id)
    await run_step(db, again, worker="b")  # terminal: decrements once
    assert (await row(db, pid))["children_pending"] == 1
    _, late = await run_step(db, first, worker="a")  # the zombie's terminal outcome: fenced, no decrement
    assert late.fenced
    assert (await row(db, pid))["children_pending"] == 1
    assert (await row(db, pid))["status"] == "awaiting_children"


async def test_cancelled_child_releases_its_parent(kdb: durable.Database) -> None:
    db = kdb
    pid = await db.insert(Parent, {"n": 1})
    await run_step(db, (await pick(db, "kids"))[0])
    child = (await db.get(pid)).children[0]["id"]
    assert await db.cancel(child) == "cancelled"
    r = await row(db, pid)
    assert r["status"] == "runnable" and r["children_pending"] == 0 and r["step"] == "join"


async def test_cancel_of_executing_instance_ends_when_step_ends(kdb: durable.Database) -> None:
    db = kdb
    iid = await db.insert(Worker, {"i": 1})
    claim = (await pick(db, "kids"))[0]
    assert await db.cancel(iid) == "executing"
    _, committed = await run_step(db, claim)
    assert committed.status == "cancelled"
    assert (await row(db, iid))["result"] is None


async def test_retry_puts_a_failed_instance_back(kdb: durable.Database) -> None:
    db = kdb
    iid = await db.insert(Worker, {"i": 2, "fail": True})
    await run_step(db, (await pick(db, "kids"))[0])
    assert (await row(db, iid))["status"] == "failed"
    assert await db.retry(iid) == "runnable"
    r = await row(db, iid)
    assert r["status"] == "runnable" and r["attempt"] == 0 and r["step"] == "go"
    assert [e.event for e in await db.history(iid)][-1] == "retried"
