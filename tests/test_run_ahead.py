"""Run-ahead (Runtime(chain=N)): a `next` outcome keeps the claim and the next step runs without a pick."""

from __future__ import annotations

import pytest
import trio

import durable
from durable import Await, Done, Machine, Next, step

from .helpers import pick, row, wait_status
from .helpers import step as run_step

pytestmark = pytest.mark.trio


class Five(Machine, queue="five"):
    @step
    async def s1(self, ctx):
        return Next("s2", {"seen": [ctx.lease_token]})

    @step
    async def s2(self, ctx):
        return Next("s3", {"seen": [*ctx.state["seen"], ctx.lease_token]})

    @step
    async def s3(self, ctx):
        return Next("s4", {"seen": [*ctx.state["seen"], ctx.lease_token]})

    @step
    async def s4(self, ctx):
        if ctx.signal("go") is None:
            return Await("go", ctx.state)
        return Next("s5", {"seen": [*ctx.state["seen"], ctx.lease_token]})

    @step
    async def s5(self, ctx):
        return Done(ctx.state)


async def test_chained_steps_need_one_pick(db: durable.Database) -> None:
    db.registry.add(Five)
    iid = await db.insert(Five, {})
    await db.signal(iid, "go", {})
    db.pool.statement_counts.clear()
    async with trio.open_nursery() as n:
        await n.start(durable.Runtime(db, queues={"five": 1}, chain=10).run)
        r = await wait_status(db, iid, "done")
        n.cancel_scope.cancel()
    seen = durable.codec.decode(r["result"])["seen"]
    assert len(seen) == 4 and seen == sorted(set(seen))  # a fresh, growing lease token per step
    # s1 was shown the signal and s2-s4 keep their claim: `complete`; s5's plain done: `complete_simple`
    assert (db.pool.statement_counts["complete"], db.pool.statement_counts["complete_simple"]) == (4, 1)
    events = [(e.event, e.step, e.status) for e in await db.history(iid)]
    assert events[1:] == [
        ("signal", "s1", "runnable"),
        ("next", "s1", "executing"),
        ("next", "s2", "executing"),
        ("next", "s3", "executing"),
        ("next", "s4", "executing"),
        ("done", "s5", "done"),
    ]
    assert (await db.get(iid)).inbox == []  # the signal read in s4 was consumed


async def test_without_a_signal_the_chain_parks(db: durable.Database) -> None:
    db.registry.add(Five)
    iid = await db.insert(Five, {})
    async with trio.open_nursery() as n:
        await n.start(durable.Runtime(db, queues={"five": 1}, chain=10).run)
        r = await wait_status(db, iid, "awaiting_signal")
        assert r["step"] == "s4" and r["lease_token"] is None
        await db.signal(iid, "go", {})
        await wait_status(db, iid, "done")
        n.cancel_scope.cancel()


async def test_held_claim_is_fenced_like_any_other(db: durable.Database) -> None:
    """A kept claim has a new token: the old token is dead, the new one is the live lease."""
    db.registry.add(Five)
    iid = await db.insert(Five, {})
    claim = (await pick(db, "five"))[0]
    old_token = claim.lease_token
    encoded, _ = await durable.runtime.executor.run_claim(claim, db, "w1")
    encoded.hold = True
    from .helpers import commit

    committed = await commit(db, claim, encoded)
    assert committed.status == "executing" and committed.held is not None
    new_token = committed.held["lease_token"]
    assert new_token > old_token
    r = await row(db, iid)
    assert r["status"] == "executing" and r["step"] == "s2" and r["lease_token"] == new_token
    claim.lease_token = old_token  # a stale copy of the claim tries to commit
    _, late = await run_step(db, claim)
    assert late.fenced
