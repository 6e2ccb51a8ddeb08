"""The explicit pipeline from Python (issue 18, item 1): ``db.claim`` returns ``durable.Claim`` records whose
calls (transition, complete, retry, fail, release, extend) are fenced by the claim's lease token, and
``db.run_once`` drains one batch through a handler on the runtime's own pick and group commit. On real
PostgreSQL: a zombie's late call raises ``Fenced``, changes nothing, and an outcome's history says
``fenced``."""

from __future__ import annotations

import datetime
import math
from typing import Any

import pytest
import trio
import trio.lowlevel

import durable
from durable import Done, Fenced, InvalidArgument, Machine, Next, Retry, Stop, step
from durable.claims import MAX_CLAIMS
from durable.sql import Q, Query

from .helpers import row

pytestmark = pytest.mark.trio

QUEUE = "explicit"


async def order(
    db: durable.Database,
    n: int = 1,
    *,
    step: str = "pay",
    key: str | None = None,
    queue: str = QUEUE,
    machine: str = "order",
) -> int:
    iid = await db.insert(machine, {"n": n}, queue=queue, step=step, unique_key=key)
    assert iid is not None
    return iid


async def one(db: durable.Database, **kwargs: Any) -> durable.Claim:
    claims = await db.claim(QUEUE, **kwargs)
    assert len(claims) == 1, claims
    return claims[0]


async def reap_now(db: durable.Database, iid: int) -> None:
    """The reaper, as if the claim's lease had passed: a zombie claim's row goes back to runnable. "Now" is an
    hour past the lease read here: a heartbeat of the claim (run_once's, every third of its lease) may extend
    it meanwhile, and a second past it was then too early when the reap came late (a loaded box)."""
    later = (await row(db, iid))["lease_expires_at"] + datetime.timedelta(hours=1)
    assert [r["id"] for r in await db.pool.fetch(Q.reap, later, 100)] == [iid]


async def events(db: durable.Database, iid: int) -> list[str]:
    return [e.event for e in await db.history(iid)]


async def test_a_checkout_through_claims(db: durable.Database) -> None:
    iid = await order(db, 7, key="order-7")
    c = await one(db)
    assert (c.id, c.machine, c.step, c.state, c.attempt, c.inbox) == (iid, "order", "pay", {"n": 7}, 0, ())
    assert c.lease_token > 0 and c.lease_expires > trio.current_time()
    assert (await row(db, iid))["status"] == "executing"
    assert await c.transition("ship", {"n": 7, "paid": True}) == "runnable"
    assert await db.claim(QUEUE, machine="other") == []  # filtered out: still runnable
    c2 = await one(db, machine="order", step="ship")
    assert (c2.step, c2.state, c2.attempt) == ("ship", {"n": 7, "paid": True}, 0)
    assert c2.lease_token != c.lease_token
    assert await c2.complete({"shipped": 7}) == "done"
    assert await db.result(iid, timeout=0) == {"shipped": 7}
    assert await events(db, iid) == ["inserted", "next", "done"]


async def test_retry_fail_release_extend(db: durable.Database) -> None:
    iid = await order(db)
    c = await one(db)
    assert await c.retry(delay=3600, error="card declined") == "runnable"
    r = await row(db, iid)
    assert (r["attempt"], r["last_error"]) == (1, "card declined")
    assert await db.claim(QUEUE) == []  # not due for an hour
    iid2 = await order(db, 2)
    c = await one(db)
    assert c.id == iid2
    before = (await row(db, iid2))["lease_expires_at"]
    await c.extend(lease=600)
    assert (await row(db, iid2))["lease_expires_at"] > before
    assert c.lease_expires > trio.current_time() + 500
    await c.release()
    r = await row(db, iid2)
    assert (r["status"], r["attempt"], r["lease_token"]) == ("runnable", 0, None)
    c = await one(db)
    assert await c.fail("out of stock") == "failed"
    with pytest.raises(durable.InstanceFailed, match="out of stock"):
        await db.result(iid2, timeout=0)


CALLS: dict[str, Any] = {
    "transition": lambda c: c.transition("ship", {"late": True}),
    "complete": lambda c: c.complete("late"),
    "retry": lambda c: c.retry(error="late"),
    "fail": lambda c: c.fail("late"),
    "release": lambda c: c.release(),
    "extend": lambda c: c.extend(),
}


@pytest.mark.parametrize("call", list(CALLS))
async def test_a_zombies_late_call_is_fenced(db: durable.Database, call: str) -> None:
    iid = await order(db)
    zombie = await one(db)
    await reap_now(db, iid)  # its lease passed: the row is runnable again
    live = await one(db)
    assert live.id == iid and live.attempt == 1
    before = await row(db, iid)
    with pytest.raises(Fenced) as caught:
        await CALLS[call](zombie)
    assert (caught.value.instance_id, caught.value.lease_token, caught.value.call) == (iid, zombie.lease_token, call)
    after = await row(db, iid)
    assert after == before  # nothing changed: the live claim still holds the row
    history = await db.history(iid)
    if call in ("release", "extend"):
        assert history[-1].event == "reaped"  # nothing to record: no row was touched
    else:
        assert (history[-1].event, history[-1].lease_token) == ("fenced", zombie.lease_token)
    assert zombie.status is None
    assert await live.complete("live") == "done"
    assert await db.result(iid, timeout=0) == "live"


async def test_a_second_call_after_the_claim_ended_is_fenced(db: durable.Database) -> None:
    iid = await order(db)
    c = await one(db)
    assert await c.complete(1) == "done"
    for call in CALLS.values():
        with pytest.raises(Fenced):
            await call(c)
    assert await db.result(iid, timeout=0) == 1
    assert (await events(db, iid)).count("fenced") == 4


async def test_the_awaited_signal_is_consumed_and_others_stay(db: durable.Database) -> None:
    iid = await order(db)
    c = await one(db)
    # park it awaiting "paid" the runtime's way (an explicit claim has no await call; run_once's Await does)
    assert await c._outcome(durable.Await("paid"), "await", None) == "awaiting_signal"
    await db.signal(iid, "note", {"x": 1})
    await db.signal(iid, "paid", {"amount": 5})
    c = await one(db)
    assert [s.name for s in c.inbox] == ["note", "paid"] and c.awaits == "paid"
    await c.transition("ship")
    assert [s["name"] for s in (await db.get(iid)).inbox] == ["note"]
    c = await one(db)
    with pytest.raises(InvalidArgument, match="not the id of a signal"):
        await c.complete(None, consume=[10**12])
    await c.complete(None, consume=[c.inbox[0].id])
    assert (await db.get(iid)).inbox == []


async def test_hostile_arguments(db: durable.Database) -> None:
    for limit in (0, -1, MAX_CLAIMS + 1, 10**30):
        with pytest.raises(InvalidArgument, match="limit"):
            await db.claim(QUEUE, limit=limit)
    for lease in (0, -5, math.nan, math.inf, 10**12):
        with pytest.raises(InvalidArgument, match="lease"):
            await db.claim(QUEUE, lease=lease)
    for bad in (True, "60", None):
        with pytest.raises(TypeError):
            await db.claim(QUEUE, lease=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await db.claim(QUEUE, limit=2.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="NUL"):
        await db.claim("a\x00b")
    with pytest.raises(InvalidArgument, match="NUL"):
        await db.claim(QUEUE, machine="m\x00")
    with pytest.raises(InvalidArgument, match="bytes long"):
        await db.claim("q" * 5000)
    iid = await order(db)
    c = await one(db)
    with pytest.raises(durable.OutcomeError, match="NUL"):
        await c.transition("a\x00b")
    with pytest.raises(durable.OutcomeError, match="empty"):
        await c.transition("")
    with pytest.raises(durable.StateError, match="NUL"):
        await c.complete({"x": "a\x00"})
    with pytest.raises(durable.OutcomeError, match="NUL"):
        await c.fail("bad\x00reason")
    with pytest.raises(durable.OutcomeError):
        await c.retry(delay=-1)
    with pytest.raises(durable.ValueTooLarge):
        await c.transition("ship", {"blob": "x" * (db.max_value_bytes + 1)})
    with pytest.raises(InvalidArgument, match="lease"):
        await c.extend(lease=-1)
    assert (await row(db, iid))["status"] == "executing"  # nothing reached the database
    assert await c.complete("ok") == "done"


class Known(Machine, queue="explicit-known"):
    @step
    async def a(self, ctx: durable.Context) -> Done:
        return Done(None)


async def test_a_known_machines_steps_are_checked(db: durable.Database) -> None:
    db.registry.add(Known)
    iid = await db.insert(Known, {})
    (c,) = await db.claim("explicit-known")
    with pytest.raises(durable.OutcomeError, match="unknown step 'nope'"):
        await c.transition("nope")
    assert await c.transition("a") == "runnable"
    assert (await row(db, iid))["step"] == "a"


# -- run_once -------------------------------------------------------------------------------------------
async def test_run_once_commits_what_the_handler_returns(db: durable.Database) -> None:
    ids = [await order(db, n) for n in range(7)]

    async def handler(c: durable.Claim) -> Any:
        n = c.state["n"]
        if n == 0:
            return {"plain": n}  # a result: done
        if n == 1:
            return Next("ship", {"n": n})
        if n == 2:
            return Retry(delay=3600, error="later")
        if n == 3:
            return Stop("no")
        if n == 4:
            raise RuntimeError("boom")
        if n == 5:
            await c.complete("by itself")
            return None
        return Next("")  # a bad outcome: as if the handler had raised

    db.pool.statement_counts.clear()
    report = await db.run_once(QUEUE, handler, limit=10)
    counts = db.pool.statement_counts
    assert (report.claimed, report.committed, report.errors, report.fenced, report.lost) == (7, 7, 2, 0, 0)
    statuses = {i: (await row(db, i))["status"] for i in ids}
    assert [statuses[i] for i in ids] == ["done", "runnable", "runnable", "failed", "runnable", "done", "runnable"]
    bad = await row(db, ids[6])
    assert bad["attempt"] == 1 and "OutcomeError" in bad["last_error"] and "empty" in bad["last_error"]
    assert await db.result(ids[0], timeout=0) == {"plain": 0}
    assert await db.result(ids[5], timeout=0) == "by itself"
    boom = await row(db, ids[4])
    assert boom["attempt"] == 1 and "RuntimeError: boom" in boom["last_error"]
    # the runtime's flusher group-commits the batch: while one flush is in flight the rest queue for the
    # next, so seven outcomes cost at most three statements (one a claim, never one each)
    assert counts["pick"] == 1 and counts["complete_simple"] + counts["complete"] <= 3, counts


async def test_run_once_cancels_a_handler_whose_lease_is_lost(db: durable.Database) -> None:
    iid = await order(db)
    started = trio.Event()
    cancelled = []

    async def handler(c: durable.Claim) -> Any:
        started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(c.id)
            raise

    async def reaper() -> None:
        await started.wait()
        await reap_now(db, iid)

    async with trio.open_nursery() as n:
        n.start_soon(reaper)
        report = await db.run_once(QUEUE, handler, lease=0.6)
    assert cancelled == [iid] and report.lost == 1 and report.committed == 0
    r = await row(db, iid)
    assert r["status"] == "runnable"  # reaped, and nobody committed the lost claim's outcome


LEFT = Query("t_left", "select count(*) from instances where status <> 'done' and queue = 'explicit-shared'", "")


class Counted(Machine, queue="explicit-shared"):
    """A job both a Runtime and run_once execute: each execution is counted."""

    runs: dict[int, int] = {}

    @step
    async def go(self, ctx: durable.Context) -> Done:
        Counted.runs[ctx.id] = Counted.runs.get(ctx.id, 0) + 1
        await trio.sleep(0.001)
        return Done("runtime")


async def test_run_once_beside_a_runtime_runs_nothing_twice(db: durable.Database) -> None:
    Counted.runs = {}
    ids = [i for i in await db.insert_many([durable.Insert(Counted, {}) for _ in range(300)]) if i is not None]
    by_handler: list[int] = []

    async def handler(c: durable.Claim) -> Any:
        Counted.runs[c.id] = Counted.runs.get(c.id, 0) + 1
        by_handler.append(c.id)
        await trio.lowlevel.checkpoint()
        return "run_once"

    async with trio.open_nursery() as n:
        rt = durable.Runtime(db, machines=[Counted], concurrency=4, lease=30)
        await n.start(rt.run)
        while True:
            report = await db.run_once("explicit-shared", handler, limit=7)
            if not report.claimed:
                if await db.pool.fetchval(LEFT) == 0:
                    break
                await trio.sleep(0.01)
        rt.stop()
    assert sorted(Counted.runs) == sorted(ids)
    assert set(Counted.runs.values()) == {1}, {k: v for k, v in Counted.runs.items() if v != 1}
    results = [await db.result(i, timeout=0) for i in ids]
    assert results.count("run_once") == len(by_handler) > 0 and results.count("runtime") > 0


async def test_a_cancel_reaches_a_held_claim_through_extend(db: durable.Database) -> None:
    iid = await order(db)
    c = await one(db)
    assert await db.cancel(iid, "operator") == "executing"  # pending: the claim is held
    assert c.cancel_requested is False
    await c.extend()
    assert c.cancel_requested is True
    assert await c.transition("ship") == "cancelled"  # whatever the call says, the instance ends cancelled
    with pytest.raises(durable.InstanceCancelled):
        await db.result(iid, timeout=0)
