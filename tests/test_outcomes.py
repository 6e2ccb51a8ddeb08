"""Each outcome writes exactly the row spec §10 describes (plus our fencing/history columns)."""

from __future__ import annotations

from datetime import timedelta

import pytest

import durable
from durable import Await, Cancel, Child, Done, Machine, Next, Retry, Spawn, Stop, step

from .helpers import pick, row
from .helpers import step as run_step

pytestmark = pytest.mark.trio


class Leaf(Machine, queue="leaf"):
    @step
    async def go(self, ctx):
        return Done(ctx.state)


class Flow(Machine, queue="flow"):
    """Each step returns the outcome its name says; the state records which step ran."""

    @step
    async def start(self, ctx):
        return Next("second", {**ctx.state, "ran": "start"})

    @step
    async def second(self, ctx):
        return Retry({**ctx.state, "tries": ctx.attempt + 1}, delay=30)

    @step
    async def parks(self, ctx):
        return Await("go", {**ctx.state, "parked": True})

    @step
    async def fans(self, ctx):
        return Spawn("joined", [Child(Leaf, {"i": i}) for i in range(3)], {**ctx.state, "fanned": True})

    @step
    async def fans_none(self, ctx):
        return Spawn("joined", [], ctx.state)

    @step
    async def joined(self, ctx):
        return Done({"children": sorted(c.result["i"] for c in ctx.children)})

    @step
    async def stops(self, ctx):
        return Stop("no stock")

    @step
    async def cancels(self, ctx):
        return Cancel("customer changed their mind")


@pytest.fixture
def machines(db: durable.Database) -> durable.Database:
    db.registry.add(Flow)
    db.registry.add(Leaf)
    return db


async def only(db: durable.Database, queue: str = "flow"):
    claims = await pick(db, queue)
    assert len(claims) == 1
    return claims[0]


async def test_pick_claims_with_a_fresh_lease_token(machines: durable.Database) -> None:
    db = machines
    iid = await db.insert(Flow, {"n": 1})
    claim = await only(db)
    r = await row(db, iid)
    assert r["status"] == "executing" and r["worker_id"] == "w1"
    assert r["lease_token"] == claim.lease_token and r["lease_expires_at"] > r["updated_at"]
    assert await pick(db, "flow") == []  # claimed rows are not picked twice


async def test_next_moves_to_the_step_and_resets_attempt(machines: durable.Database) -> None:
    db = machines
    iid = await db.insert(Flow, {"n": 1})
    await db.pool.execute(durable.sql.Query("t", "update instances set attempt = 3", ""))
    encoded, committed = await run_step(db, await only(db))
    assert (encoded.kind, committed.status, committed.fenced) == ("next", "runnable", False)
    r = await row(db, iid)
    assert r["step"] == "second" and r["attempt"] == 0 and r["status"] == "runnable"
    assert durable.codec.decode(r["state"]) == {"n": 1, "ran": "start"}
    assert r["worker_id"] is None and r["lease_token"] is None and r["lease_expires_at"] is None
    assert r["awaits"] is None and r["eligible_at"] <= r["updated_at"]


async def test_retry_same_step_attempt_plus_one_after_delay(machines: durable.Database) -> None:
    db = machines
    iid = await db.insert(Flow, {}, step="second")
    _, committed = await run_step(db, await only(db))
    r = await row(db, iid)
    assert committed.status == "runnable" and r["step"] == "second" and r["attempt"] == 1
    assert r["eligible_at"] - r["updated_at"] == timedelta(seconds=30)
    assert durable.codec.decode(r["state"]) == {"tries": 1}
    assert await pick(db, "flow") == []  # not eligible for 30 s


async def test_await_parks_and_keeps_the_name(machines: durable.Database) -> None:
    db = machines
    iid = await db.insert(Flow, {}, step="parks")
    _, committed = await run_step(db, await only(db))
    r = await row(db, iid)
    assert committed.status == "awaiting_signal"
    assert r["status"] == "awaiting_signal" and r["awaits"] == "go" and r["step"] == "parks"
    assert r["lease_token"] is None and durable.codec.decode(r["state"]) == {"parked": True}


async def test_spawn_inserts_children_and_parks_on_the_barrier(machines: durable.Database) -> None:
    db = machines
    iid = await db.insert(Flow, {}, step="fans")
    _, committed = await run_step(db, await only(db))
    r = await row(db, iid)
    assert committed.status == "awaiting_children"
    assert r["step"] == "joined" and r["children_pending"] == 3 and r["attempt"] == 0
    children = await db.pool.fetch(durable.sql.Q.get_children, iid)
    assert [c["status"] for c in children] == ["runnable"] * 3
    assert {c["machine"] for c in children} == {"Leaf"}


async def test_spawn_with_zero_children_goes_straight_on(machines: durable.Database) -> None:
    db = machines
    iid = await db.insert(Flow, {}, step="fans_none")
    _, committed = await run_step(db, await only(db))
    r = await row(db, iid)
    assert committed.status == "runnable" and r["step"] == "joined" and r["children_pending"] == 0


async def test_done_records_the_result_and_keeps_state(machines: durable.Database) -> None:
    db = machines
    iid = await db.insert(Leaf, {"i": 7})
    _, committed = await run_step(db, (await pick(db, "leaf"))[0])
    r = await row(db, iid)
    assert committed.status == "done" and durable.codec.decode(r["result"]) == {"i": 7}
    assert durable.codec.decode(r["state"]) == {"i": 7} and r["lease_token"] is None


async def test_stop_fails_with_the_reason(machines: durable.Database) -> None:
    db = machines
    iid = await db.insert(Flow, {}, step="stops")
    _, committed = await run_step(db, await only(db))
    r = await row(db, iid)
    assert committed.status == "failed" and r["last_error"] == "no stock" and r["result"] is None


async def test_cancel_outcome_is_terminal_cancelled(machines: durable.Database) -> None:
    db = machines
    iid = await db.insert(Flow, {}, step="cancels")
    _, committed = await run_step(db, await only(db))
    r = await row(db, iid)
    assert committed.status == "cancelled" and r["last_error"] == "customer changed their mind"


async def test_every_outcome_is_in_history(machines: durable.Database) -> None:
    db = machines
    iid = await db.insert(Flow, {})
    await run_step(db, await only(db))
    events = await db.history(iid)
    assert [e.event for e in events] == ["inserted", "next"]
    assert events[1].step == "start" and events[1].detail["next"] == "second"
    assert events[1].lease_token is not None and events[1].worker_id == "w1"
