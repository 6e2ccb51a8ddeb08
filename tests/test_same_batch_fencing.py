"""Fencing is per claim, not per instance: when a worker's lease is lost while its step still runs and the
same worker re-picks the instance, the stale outcome and the live one can reach the database in one group
commit. Only the live claim's outcome may change the row, consume signals, spawn or keep a run-ahead
claim; the stale one is reported fenced and logged as `fenced`, in either order in the batch, through both
forms of the commit (issue 14, item 0)."""

from __future__ import annotations

import datetime

import pytest
import trio

import durable
from durable import Await, Child, Done, Machine, Next, Spawn, step
from durable.runtime.claim import Claim, Encoded
from durable.runtime.executor import run_claim
from durable.runtime.flusher import Flusher, _one_per_instance, _Pending
from durable.sql import Q

from .helpers import pick, row

pytestmark = pytest.mark.trio


class Parcel(Machine, queue="ship-fence"):
    @step
    async def go(self, ctx: durable.Context) -> Done:
        return Done({"shipped": ctx.state["n"]})


class Checkout(Machine, queue="pay-fence"):
    @step
    async def pay(self, ctx: durable.Context) -> Await | Spawn:
        paid = ctx.signal("payment")
        if paid is None:
            return Await("payment", ctx.state)
        return Spawn("close", [Child(Parcel, {"n": 1})], {"paid": [paid.payload["amount"]]})

    @step
    async def close(self, ctx: durable.Context) -> Done:
        return Done(ctx.state["paid"])


class Chain(Machine, queue="chain-fence"):
    @step
    async def a(self, ctx: durable.Context) -> Next:
        return Next("b", {"by": ctx.lease_token})

    @step
    async def b(self, ctx: durable.Context) -> Done:
        return Done(ctx.state["by"])


async def lose_lease(db: durable.Database, iid: int) -> None:
    """Run the reaper as if the claim's lease had passed (a starved heartbeat): its `now` is past it."""
    later = (await row(db, iid))["lease_expires_at"] + datetime.timedelta(seconds=1)
    reaped = await db.pool.fetch(Q.reap, later, 100)
    assert [r["id"] for r in reaped] == [iid]


async def stale_and_live(
    db: durable.Database, machine: type[Machine], queue: str, state: dict[str, object], *, signal: bool
) -> tuple[int, Claim, Claim]:
    db.registry.add(machine)
    db.registry.add(Parcel)
    iid = await db.insert(machine, state)
    assert iid is not None
    (stale,) = await pick(db, queue, 1)
    if signal:
        await db.signal(iid, "payment", {"amount": 100})
    await lose_lease(db, iid)
    (live,) = await pick(db, queue, 1)  # the same worker picks it again, under a new token
    assert live.id == stale.id == iid and live.lease_token != stale.lease_token
    return iid, stale, live


def events(history: list[durable.Event]) -> list[str]:
    return [e.event for e in history]


@pytest.mark.parametrize("live_first", [False, True], ids=["stale first", "live first"])
async def test_stale_await_and_live_spawn_in_one_complete(db: durable.Database, live_first: bool) -> None:
    iid, stale, live = await stale_and_live(db, Checkout, "pay-fence", {}, signal=True)
    stale_out, _ = await run_claim(stale, db, "w1")
    live_out, _ = await run_claim(live, db, "w1")
    assert (stale_out.kind, live_out.kind) == ("await", "spawn")
    pairs = [(stale, stale_out), (live, live_out)]
    if live_first:
        pairs.reverse()
    results = await Flusher(db.pool, "w1", db.clock).commit_now(pairs)
    by_token = {c.lease_token: r for (c, _), r in zip(pairs, results, strict=True)}
    assert by_token[stale.lease_token].fenced is True
    assert by_token[live.lease_token].fenced is False
    assert by_token[live.lease_token].status == "awaiting_children"

    after = await row(db, iid)
    assert (after["status"], after["step"], after["children_pending"]) == ("awaiting_children", "close", 1)
    assert durable.codec.decode(after["state"]) == {"paid": [100]}
    assert await db.pool.fetch(Q.get_inbox, iid) == []  # the live spawn consumed the payment it read
    history = await db.history(iid)
    assert events(history)[:3] == ["inserted", "signal", "reaped"]
    assert sorted(events(history)[3:]) == ["fenced", "spawn"]
    fenced = next(e for e in history if e.event == "fenced")
    assert fenced.lease_token == stale.lease_token
    kids = await db.pool.fetch(Q.get_children, iid)
    assert len(kids) == 1


@pytest.mark.parametrize("live_first", [False, True], ids=["stale first", "live first"])
async def test_two_done_outcomes_through_complete_simple(db: durable.Database, live_first: bool) -> None:
    iid, stale, live = await stale_and_live(db, Parcel, "ship-fence", {"n": 1}, signal=False)
    pairs = [(stale, Encoded("done", result='"stale"')), (live, Encoded("done", result='"live"'))]
    if live_first:
        pairs.reverse()
    flusher = Flusher(db.pool, "w1", db.clock)
    db.pool.statement_counts.clear()
    results = await flusher.commit_now(pairs)
    assert db.pool.statement_counts.get("complete_simple") == 1  # the lean form took this batch
    by_token = {c.lease_token: r for (c, _), r in zip(pairs, results, strict=True)}
    assert (by_token[stale.lease_token].fenced, by_token[live.lease_token].fenced) == (True, False)
    after = await row(db, iid)
    assert (after["status"], after["result"]) == ("done", '"live"')
    history = await db.history(iid)
    assert sorted(events(history)[2:]) == ["done", "fenced"]
    assert next(e for e in history if e.event == "fenced").lease_token == stale.lease_token


@pytest.mark.parametrize("live_first", [False, True], ids=["stale first", "live first"])
async def test_a_zombies_run_ahead_next_is_not_handed_the_new_claim(db: durable.Database, live_first: bool) -> None:
    iid, stale, live = await stale_and_live(db, Chain, "chain-fence", {}, signal=False)
    stale_out = Encoded("next", step="b", state='{"by": "stale"}', hold=True)
    live_out = Encoded("next", step="b", state='{"by": "live"}', hold=True)
    pairs = [(stale, stale_out), (live, live_out)]
    if live_first:
        pairs.reverse()
    results = await Flusher(db.pool, "w1", db.clock).commit_now(pairs)
    by_token = {c.lease_token: r for (c, _), r in zip(pairs, results, strict=True)}
    zombie, rightful = by_token[stale.lease_token], by_token[live.lease_token]
    assert zombie.fenced and zombie.held is None  # no new token for the zombie: it must stop here
    assert not rightful.fenced and rightful.held is not None
    after = await row(db, iid)
    assert after["status"] == "executing" and after["lease_token"] == rightful.held["lease_token"]
    assert durable.codec.decode(after["state"]) == {"by": "live"}


async def test_one_claim_twice_in_a_batch_counts_once(db: durable.Database) -> None:
    db.registry.add(Parcel)
    iid = await db.insert(Parcel, {"n": 1})
    (claim,) = await pick(db, "ship-fence", 1)
    pairs = [(claim, Encoded("done", result='"first"')), (claim, Encoded("done", result='"second"'))]
    for simple in (True, False):
        if not simple:  # the full form: a fresh claim of a fresh instance
            iid = await db.insert(Parcel, {"n": 2})
            (claim,) = await pick(db, "ship-fence", 1)
            pairs = [(claim, Encoded("await", awaits="x")), (claim, Encoded("done", result='"second"'))]
        flusher = Flusher(db.pool, "w1", db.clock)
        run = flusher._execute_simple if simple else flusher._execute_full
        rows = await run([_Pending(c, o) for c, o in pairs])
        outcomes = [r for r in rows if r["kind"] == "outcome"]
        assert [r["fenced"] for r in outcomes] == [False, True]
        after = await row(db, iid)
        assert after["status"] == ("done" if simple else "awaiting_signal")
        assert after["result"] == ('"first"' if simple else None)


async def test_the_flusher_never_batches_two_outcomes_of_one_instance() -> None:
    def pending(iid: int, token: int) -> _Pending:
        claim = Claim(
            id=iid,
            machine="m",
            version=1,
            step="s",
            state_json="{}",
            attempt=0,
            queue="q",
            priority=0,
            partition_key=None,
            lease_token=token,
            signal_seq=0,
            awaits=None,
            parent_id=None,
            cancel_requested=False,
            traceparent=None,
            tracestate=None,
            signals=(),
            children=(),
        )
        return _Pending(claim, Encoded("done"))

    queue = [pending(1, 10), pending(2, 20), pending(1, 11), pending(3, 30), pending(4, 40)]
    batch, rest = _one_per_instance(queue, 3)
    assert [(p.claim.id, p.claim.lease_token) for p in batch] == [(1, 10), (2, 20), (3, 30)]
    assert [(p.claim.id, p.claim.lease_token) for p in rest] == [(1, 11), (4, 40)]
    batch, rest = _one_per_instance(rest, 3)
    assert [p.claim.id for p in batch] == [1, 4] and rest == []


async def test_a_row_picked_again_under_a_new_token_drops_the_old_claim(db: durable.Database) -> None:
    """The scheduler still holds the stale claim (its step running, or its outcome queued) when its own
    pick returns the row under a new token: the old claim is lost at once and its step cancelled."""
    iid, stale, live = await stale_and_live(db, Parcel, "ship-fence", {"n": 1}, signal=False)
    rt = durable.Runtime(db, queues={"ship-fence": 2})
    scheduler = rt.schedulers["ship-fence"]
    stale.scope = trio.CancelScope()
    scheduler.in_flight.add(stale)
    bystander = Claim(
        id=iid + 1000,
        machine="m",
        version=1,
        step="s",
        state_json="{}",
        attempt=0,
        queue="q",
        priority=0,
        partition_key=None,
        lease_token=7,
        signal_seq=0,
        awaits=None,
        parent_id=None,
        cancel_requested=False,
        traceparent=None,
        tracestate=None,
        signals=(),
        children=(),
    )
    scheduler.committing.add(bystander)
    scheduler.superseded([live])
    assert stale.lost is not None and stale.scope.cancel_called
    assert bystander.lost is None and live.lost is None
