"""At-least-once: a crashed step re-runs after the reaper (handle not called); a zombie's late outcome
is fenced by the lease token and changes nothing."""

from __future__ import annotations

import pytest
import trio

import durable
from durable import Done, Machine, Next, step
from durable.sql import Q

from .helpers import pick, row, wait_for, wait_status
from .helpers import step as run_step

pytestmark = pytest.mark.trio

RUNS: list[tuple[int, int]] = []
HANDLED: list[int] = []
GATE = trio.Event()


class Slow(Machine, queue="slow"):
    @step
    async def work(self, ctx):
        RUNS.append((ctx.id, ctx.attempt))
        if ctx.attempt == 0:
            await trio.sleep_forever()  # the first attempt hangs until cancelled: a crash mid-step
        return Done({"attempt": ctx.attempt})

    async def handle(self, error, ctx):
        HANDLED.append(ctx.id)
        return await super().handle(error, ctx)


class Writer(Machine, queue="zombie"):
    @step
    async def write(self, ctx):
        return Next("finish", {"by": ctx.worker_id})

    @step
    async def finish(self, ctx):
        return Done(ctx.state)


@pytest.fixture(autouse=True)
def _reset() -> None:
    RUNS.clear()
    HANDLED.clear()


async def test_crash_mid_step_is_reaped_and_rerun_without_handle(db: durable.Database) -> None:
    db.registry.add(Slow)
    iid = await db.insert(Slow, {})
    async with trio.open_nursery() as n:
        rt = durable.Runtime(db, queues={"slow": 1}, lease=1.0, heartbeat=0.25, reap_every=0.2)
        await n.start(rt.run)
        await wait_status(db, iid, "executing")
        with trio.fail_after(5):
            while not RUNS:
                await trio.sleep(0.01)
        rt.kill()  # the worker dies mid-step: no outcome, no release
    assert (await row(db, iid))["status"] == "executing"
    async with trio.open_nursery() as n:
        await n.start(durable.Runtime(db, queues={"slow": 1}, lease=1.0, heartbeat=0.25, reap_every=0.2).run)
        r = await wait_status(db, iid, "done")
        n.cancel_scope.cancel()
    assert r["attempt"] == 1 and durable.codec.decode(r["result"]) == {"attempt": 1}
    assert RUNS == [(iid, 0), (iid, 1)]
    assert HANDLED == []  # the crash path never calls handle
    events = [e.event for e in await db.history(iid)]
    assert events == ["inserted", "reaped", "done"]


async def test_zombie_outcome_is_fenced(db: durable.Database) -> None:
    db.registry.add(Writer)
    iid = await db.insert(Writer, {})
    zombie = (await pick(db, "zombie", worker="zombie", lease=0.2))[0]
    await trio.sleep(0.3)  # zombie's heartbeat is paused past its lease
    assert [r["id"] for r in await db.pool.fetch(Q.reap, None, 100)] == [iid]
    # the zombie's heartbeat can no longer extend the lease
    beat = await db.pool.fetchrow(Q.heartbeat, [zombie.id], [zombie.lease_token], 60.0, None, "zombie", "{}")
    assert list(beat["extended"]) == []
    second = (await pick(db, "zombie", worker="second"))[0]
    assert second.lease_token > zombie.lease_token and second.attempt == 1
    _, ok = await run_step(db, second, worker="second")
    assert ok.status == "runnable" and not ok.fenced
    _, late = await run_step(db, zombie, worker="zombie")
    assert late.fenced and late.status is None
    r = await row(db, iid)
    assert r["step"] == "finish" and durable.codec.decode(r["state"]) == {"by": "second"}
    assert r["status"] == "runnable" and r["attempt"] == 0
    events = [(e.event, e.worker_id) for e in await db.history(iid)]
    assert events == [("inserted", None), ("reaped", "zombie"), ("next", "second"), ("fenced", "zombie")]


async def test_zombie_cannot_commit_over_a_live_claim(db: durable.Database) -> None:
    """The zombie commits while the second worker still holds the claim: fenced, the claim intact."""
    db.registry.add(Writer)
    iid = await db.insert(Writer, {})
    zombie = (await pick(db, "zombie", worker="zombie", lease=0.1))[0]
    await trio.sleep(0.2)
    await db.pool.fetch(Q.reap, None, 100)
    second = (await pick(db, "zombie", worker="second"))[0]
    _, late = await run_step(db, zombie, worker="zombie")
    assert late.fenced
    r = await row(db, iid)
    assert r["status"] == "executing" and r["lease_token"] == second.lease_token and r["worker_id"] == "second"


async def test_heartbeat_keeps_a_long_step_alive(db: durable.Database) -> None:
    gate = trio.Event()

    class Long(Machine, queue="long"):
        @step
        async def work(self, ctx):
            await gate.wait()
            return Done(ctx.attempt)

    db.registry.add(Long)
    iid = await db.insert(Long, {})
    async with trio.open_nursery() as n:
        rt = durable.Runtime(db, queues={"long": 1}, lease=2.0, heartbeat=0.1, reap_every=0.1)
        await n.start(rt.run)
        await wait_status(db, iid, "executing")
        # well past the lease (25 beats take 2.5 s at the least, more on a loaded machine, where a lease of
        # 0.6 s was lost to a late beat): only the heartbeat keeps it
        beats = rt.heartbeats

        async def past_the_lease() -> bool:
            return rt.heartbeats >= beats + 25

        await wait_for(past_the_lease, timeout=120)
        gate.set()
        r = await wait_status(db, iid, "done")
        n.cancel_scope.cancel()
    assert durable.codec.decode(r["result"]) == 0  # never reaped, first attempt finished
    assert "reaped" not in [e.event for e in await db.history(iid)]
