"""Durable timers and await timeouts (issue 17, items 2 and 3): ``Next(step, state, delay=...)`` and
``Next(..., at=...)`` sleep without counting an attempt; ``Await(name, timeout=..., timeout_step=...)``
moves on when no signal comes in time (the timer sweep, ``fire_timeouts``); ``Await([a, b])`` wakes on
either name and ``ctx.signals()`` shows which came. A signal racing the timeout either wakes the await or
stays in the inbox of the timed-out step, never lost. Times are the database's: the tests read them from
the rows and pass ``now`` to the statements instead of sleeping.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

import durable
from durable import Await, Done, Machine, Next, Retry, Stop, step
from durable.runtime.claim import Encoded, claims_from_rows
from durable.runtime.executor import timer
from durable.sql import Q, Query

from .helpers import commit, pick, row, wait_status
from .helpers import step as run_step

pytestmark = pytest.mark.trio

TIMERS = Query(
    "t_timers",
    "select timeout_at, timeout_step, timed_out, awaits, awaits_any, eligible_at, updated_at, "
    "attempt, step, status::text as status from instances where id = $1",
    "",
)


class Sleeper(Machine, queue="tm_sleep"):
    """``start`` sleeps as its state says (``delay`` seconds or until ``at``), then ``wake`` ends."""

    @step
    async def start(self, ctx: durable.Context) -> Next | Retry:
        if ctx.state.get("fail_first", 0) > ctx.attempt:
            return Retry(ctx.state)  # counted: attempt + 1
        if "at" in ctx.state:
            return Next("wake", ctx.state, at=datetime.fromisoformat(ctx.state["at"]))
        return Next("wake", ctx.state, delay=ctx.state["delay"])

    @step
    async def wake(self, ctx: durable.Context) -> Done:
        return Done({"attempt": ctx.attempt})


class Order(Machine, queue="tm_order"):
    """``wait`` awaits 'paid' (or the names in the state) with the state's timeout and timeout_step."""

    @step
    async def wait(self, ctx: durable.Context) -> Await | Done:
        names = ctx.state.get("names", "paid")
        for name in [names] if isinstance(names, str) else names:
            if ctx.signal(name) is not None:
                return Done({"woken_by": name, "timed_out": ctx.timed_out, "shown": [s.name for s in ctx.signals()]})
        if ctx.timed_out:
            return Done({"timed_out": True, "step": "wait", "shown": [s.name for s in ctx.signals()]})
        return Await(names, ctx.state, timeout=ctx.state.get("timeout"), timeout_step=ctx.state.get("timeout_step"))

    @step
    async def expire(self, ctx: durable.Context) -> Next | Done:
        # reads nothing by name: a signal that came after the timeout stays for a later await
        if ctx.state.get("await_again"):
            return Next("wait", {**ctx.state, "await_again": False, "timeout": None, "timeout_step": None})
        return Done(
            {
                "timed_out": ctx.timed_out,
                "step": "expire",
                "attempt": ctx.attempt,
                "shown": [s.name for s in ctx.signals()],
            }
        )


class Hostile(Machine, queue="tm_hostile"):
    """Returns the outcome in ``OUTCOMES[state['case']]``; handle() stops with the error's text."""

    @step
    async def start(self, ctx: durable.Context) -> Any:
        return OUTCOMES[ctx.state["case"]]

    @step
    async def other(self, ctx: durable.Context) -> Done:
        return Done(None)

    async def handle(self, error: BaseException, ctx: durable.Context) -> Stop:
        return Stop(f"{type(error).__name__}: {error}")


OUTCOMES: dict[str, Any] = {
    "next_negative_delay": Next("other", delay=-1),
    "next_nan_delay": Next("other", delay=float("nan")),
    "next_huge_delay": Next("other", delay=1e12),
    "next_bool_delay": Next("other", delay=True),
    "next_str_delay": Next("other", delay="5"),
    "next_both": Next("other", delay=5, at=datetime.now(UTC)),
    "next_naive_at": Next("other", at=datetime(2030, 1, 1)),  # the hostile value: no time zone
    "next_far_at": Next("other", at=datetime.now(UTC) + timedelta(days=365 * 11)),
    "next_at_not_datetime": Next("other", at="2030-01-01T00:00:00+00:00"),
    "await_negative_timeout": Await("paid", timeout=-1),
    "await_nan_timeout": Await("paid", timeout=float("nan")),
    "await_inf_timeout": Await("paid", timeout=float("inf")),
    "await_huge_timeout": Await("paid", timeout=1e12),
    "await_empty_names": Await([]),
    "await_non_str_name": Await(["paid", 7]),
    "await_empty_name": Await(["paid", ""]),
    "await_duplicate_names": Await(["paid", "paid"]),
    "await_names_not_a_list": Await({"paid"}),
    "await_too_many_names": Await([f"n{i}" for i in range(101)]),
    "await_nul_name": Await(["paid", "a\x00b"]),
    "await_unknown_timeout_step": Await("paid", timeout=5, timeout_step="nowhere"),
    "await_timeout_step_without_timeout": Await("paid", timeout_step="other"),
}

EXPECTED = {
    "next_negative_delay": "finite, non-negative",
    "next_nan_delay": "finite, non-negative",
    "next_huge_delay": "MAX_DELAY",
    "next_bool_delay": "number of seconds",
    "next_str_delay": "number of seconds",
    "next_both": "both delay and at",
    "next_naive_at": "no time zone",
    "next_far_at": "MAX_DELAY",
    "next_at_not_datetime": "must be a datetime",
    "await_negative_timeout": "finite, non-negative",
    "await_nan_timeout": "finite, non-negative",
    "await_inf_timeout": "finite, non-negative",
    "await_huge_timeout": "MAX_DELAY",
    "await_empty_names": "empty list",
    "await_non_str_name": "non-empty str",
    "await_empty_name": "non-empty str",
    "await_duplicate_names": "name twice",
    "await_names_not_a_list": "a list of names",
    "await_too_many_names": "the limit is 100",
    "await_nul_name": "NUL",
    "await_unknown_timeout_step": "unknown step 'nowhere'",
    "await_timeout_step_without_timeout": "no timeout",
}


@pytest.fixture
def tdb(db: durable.Database) -> durable.Database:
    for m in (Sleeper, Order, Hostile):
        db.registry.add(m)
    return db


async def timers(db: durable.Database, iid: int) -> dict[str, Any]:
    r = await db.pool.fetchrow(TIMERS, iid)
    assert r is not None
    return dict(r)


async def fire(db: durable.Database, now: datetime | None = None) -> list[int]:
    """One timer sweep at ``now`` (None: the database's now); the ids it moved on."""
    rows = await db.pool.fetch(Q.fire_timeouts, now, 100)
    return [r["id"] for r in rows if r["id"] is not None]


async def inbox(db: durable.Database, iid: int) -> list[str]:
    return [s["name"] for s in await db.pool.fetch(Q.get_inbox, iid)]


async def events(db: durable.Database, iid: int) -> list[durable.Event]:
    return await db.history(iid)


async def pick_at(db: durable.Database, queue: str, now: datetime | None, n: int = 10) -> list[Any]:
    """The pick at ``now`` (a timed-out row is due at the sweep's now)."""
    return claims_from_rows(await db.pool.fetch(Q.pick, queue, n, "w1", 60.0, now, None, None))


async def run_one(db: durable.Database, queue: str, now: datetime | None = None) -> tuple[Encoded, Any]:
    claims = await pick_at(db, queue, now)
    assert len(claims) == 1, claims
    return await run_step(db, claims[0])


# -- durable timers: Next(delay=...), Next(at=...) ---------------------------------------------------


@pytest.mark.parametrize("path", ["complete_simple", "complete"])
async def test_next_with_a_delay_sleeps_and_counts_no_attempt(tdb: durable.Database, path: str) -> None:
    """Two counted retries, then Next(delay=3600): runnable at updated_at + 1 h at step wake, attempt 0;
    not picked before, picked after; history 'next' shows wake_at. The plain outcome commits through
    complete_simple, one whose step was shown a signal through complete."""
    db = tdb
    iid = await db.insert(Sleeper, {"delay": 3600, "fail_first": 2})
    if path == "complete":
        await db.signal(iid, "noise", {})  # a shown signal makes the batch a full `complete`
    for _ in range(2):
        _, committed = await run_one(db, "tm_sleep")
        assert committed.status == "runnable"
    assert (await row(db, iid))["attempt"] == 2
    db.pool.statement_counts.clear()
    encoded, committed = await run_one(db, "tm_sleep")
    assert db.pool.statement_counts.get(path) == 1, dict(db.pool.statement_counts)
    assert encoded.kind == "next" and encoded.delay == 3600 and committed.status == "runnable"
    t = await timers(db, iid)
    assert t["step"] == "wake" and t["attempt"] == 0 and t["status"] == "runnable"
    assert t["eligible_at"] - t["updated_at"] == timedelta(hours=1)
    assert await pick(db, "tm_sleep") == []  # asleep
    later = await db.pool.fetch(Q.pick, "tm_sleep", 10, "w1", 60.0, t["eligible_at"], None, None)
    assert [r["id"] for r in later] == [iid]
    last = (await events(db, iid))[-1]
    assert last.event == "next" and last.detail["delay"] == 3600
    assert datetime.fromisoformat(last.detail["wake_at"]) == t["eligible_at"]


@pytest.mark.parametrize("path", ["complete_simple", "complete"])
async def test_next_at_a_time_sleeps_until_then_and_never_earlier_than_now(tdb: durable.Database, path: str) -> None:
    db = tdb
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    past = datetime(2001, 1, 1, tzinfo=UTC)
    ids = [await db.insert(Sleeper, {"at": at.isoformat()}), await db.insert(Sleeper, {"at": past.isoformat()})]
    if path == "complete":
        for iid in ids:
            await db.signal(iid, "noise", {})
    db.pool.statement_counts.clear()
    for _ in ids:
        await run_one_of(db, "tm_sleep")
    assert db.pool.statement_counts.get(path) == 2, dict(db.pool.statement_counts)
    future, overdue = [await timers(db, i) for i in ids]
    assert future["eligible_at"] == at and future["step"] == "wake" and future["attempt"] == 0
    # a time in the past is due now, not ahead of the queue at its old time
    assert overdue["eligible_at"] == overdue["updated_at"]
    last = (await events(db, ids[0]))[-1]
    assert last.event == "next" and datetime.fromisoformat(last.detail["wake_at"]) == at
    assert datetime.fromisoformat(last.detail["at"]) == at


async def run_one_of(db: durable.Database, queue: str) -> None:
    claims = await pick(db, queue, 1)
    assert len(claims) == 1
    await run_step(db, claims[0])


async def test_the_step_span_shows_the_wake_time(tdb: durable.Database) -> None:
    class Span:
        def __init__(self) -> None:
            self.attributes: dict[str, Any] = {}

        def set_attribute(self, key: str, value: Any) -> None:
            self.attributes[key] = value

    at = datetime(2031, 5, 1, tzinfo=UTC)
    s = Span()
    timer(s, Encoded("next", step="wake", wake_at=at), tdb)
    assert s.attributes == {"durable.wake_at": at.isoformat()}
    s = Span()
    timer(s, Encoded("next", step="wake", delay=60.0), tdb)
    assert datetime.fromisoformat(s.attributes["durable.wake_at"]) > datetime.now(UTC)
    s = Span()
    timer(s, Encoded("await", awaits="paid", timeout=300.0, timeout_step="expire"), tdb)
    assert s.attributes["durable.timeout"] == 300.0 and s.attributes["durable.timeout_step"] == "expire"
    assert "durable.timeout_at" in s.attributes
    s = Span()
    timer(s, Encoded("next", step="wake"), tdb)  # a plain next: nothing
    assert s.attributes == {}


async def test_a_delayed_next_is_not_run_ahead(tdb: durable.Database) -> None:
    """With run-ahead on, a plain next keeps its claim; a delayed next must sleep instead."""
    db = tdb
    iid = await db.insert(Sleeper, {"delay": 3600})
    async with trio.open_nursery() as n:
        await n.start(durable.Runtime(db, queues={"tm_sleep": 2}, chain=5, listen=False).run)
        await wait_for_step(db, iid, "wake")
        n.cancel_scope.cancel()
    t = await timers(db, iid)
    assert t["status"] == "runnable" and t["eligible_at"] - t["updated_at"] == timedelta(hours=1)


async def wait_for_step(db: durable.Database, iid: int, name: str) -> None:
    with trio.fail_after(20):
        while (await row(db, iid))["step"] != name:
            await trio.sleep(0.02)


# -- await with a timeout ---------------------------------------------------------------------------


async def test_an_await_times_out_to_its_timeout_step(tdb: durable.Database) -> None:
    db = tdb
    iid = await db.insert(Order, {"timeout": 300, "timeout_step": "expire"})
    _, committed = await run_one(db, "tm_order")
    assert committed.status == "awaiting_signal"
    t = await timers(db, iid)
    assert t["timeout_at"] - t["updated_at"] == timedelta(seconds=300) and t["timeout_step"] == "expire"
    park = (await events(db, iid))[-1]
    assert park.event == "await" and park.detail["timeout"] == 300 and park.detail["timeout_step"] == "expire"
    assert datetime.fromisoformat(park.detail["timeout_at"]) == t["timeout_at"]
    assert await fire(db, t["timeout_at"] - timedelta(seconds=1)) == []  # not yet
    assert await fire(db, t["timeout_at"]) == [iid]
    assert await fire(db, t["timeout_at"] + timedelta(hours=1)) == []  # once
    after = await timers(db, iid)
    assert (after["status"], after["step"], after["attempt"], after["timed_out"]) == ("runnable", "expire", 0, True)
    assert after["timeout_at"] is None and after["awaits"] is None
    ev = (await events(db, iid))[-1]
    assert ev.event == "timed_out" and ev.step == "wait" and ev.detail["next"] == "expire"
    assert ev.detail["signal"] == "paid" and datetime.fromisoformat(ev.detail["timeout_at"]) == t["timeout_at"]
    _, committed = await run_one(db, "tm_order", t["timeout_at"] + timedelta(hours=2))
    assert committed.status == "done"
    assert durable.codec.decode((await row(db, iid))["result"]) == {
        "timed_out": True,
        "step": "expire",
        "attempt": 0,
        "shown": [],
    }
    assert (await timers(db, iid))["timed_out"] is False  # the outcome cleared it


async def test_an_await_times_out_to_the_same_step_with_ctx_timed_out(tdb: durable.Database) -> None:
    db = tdb
    iid = await db.insert(Order, {"timeout": 0.5})
    await run_one(db, "tm_order")
    t = await timers(db, iid)
    assert t["timeout_step"] is None
    assert await fire(db, t["timeout_at"]) == [iid]
    assert (await timers(db, iid))["step"] == "wait"
    await run_one(db, "tm_order", t["timeout_at"])
    assert durable.codec.decode((await row(db, iid))["result"]) == {"timed_out": True, "step": "wait", "shown": []}


async def test_a_signal_in_time_wins_and_the_timeout_is_gone(tdb: durable.Database) -> None:
    db = tdb
    iid = await db.insert(Order, {"timeout": 300, "timeout_step": "expire"})
    await run_one(db, "tm_order")
    deadline = (await timers(db, iid))["timeout_at"]
    await db.signal(iid, "paid", {})
    t = await timers(db, iid)
    assert t["status"] == "runnable" and t["timeout_at"] is None
    assert await fire(db, deadline + timedelta(hours=1)) == []
    await run_one(db, "tm_order")
    assert durable.codec.decode((await row(db, iid))["result"]) == {
        "woken_by": "paid",
        "timed_out": False,
        "shown": ["paid"],
    }
    assert await inbox(db, iid) == []


async def test_a_retry_after_a_timeout_still_sees_ctx_timed_out(tdb: durable.Database) -> None:
    """retry keeps timed_out (like awaits): the retried step sees the same situation."""
    db = tdb
    iid = await db.insert(Order, {"timeout": 1})
    await run_one(db, "tm_order")
    deadline = (await timers(db, iid))["timeout_at"]
    await fire(db, deadline)
    claim = (await pick_at(db, "tm_order", deadline))[0]
    assert claim.timed_out
    await commit(db, claim, Encoded("retry", delay=0.0, detail={}))
    t = await timers(db, iid)
    assert t["timed_out"] is True and t["attempt"] == 1 and t["status"] == "runnable"
    claim = (await pick(db, "tm_order"))[0]
    assert claim.timed_out


# -- several names ------------------------------------------------------------------------------------


async def test_an_await_of_several_names_wakes_on_either(tdb: durable.Database) -> None:
    db = tdb
    ids = [await db.insert(Order, {"names": ["paid", "cancelled_by_user"]}) for _ in range(2)]
    for _ in ids:
        await run_one_of(db, "tm_order")
    for iid in ids:
        t = await timers(db, iid)
        assert t["status"] == "awaiting_signal" and t["awaits"] == "paid"
        assert t["awaits_any"] == ["paid", "cancelled_by_user"]
    await db.signal(ids[0], "shipped", {})  # not awaited: no wake
    assert (await timers(db, ids[0]))["status"] == "awaiting_signal"
    await db.signal(ids[0], "cancelled_by_user", {})
    await db.signal(ids[1], "paid", {})
    for iid in ids:
        assert (await timers(db, iid))["status"] == "runnable"
    for _ in ids:
        await run_one_of(db, "tm_order")
    first, second = [durable.codec.decode((await row(db, i))["result"]) for i in ids]
    assert first == {"woken_by": "cancelled_by_user", "timed_out": False, "shown": ["shipped", "cancelled_by_user"]}
    assert second == {"woken_by": "paid", "timed_out": False, "shown": ["paid"]}
    # both awaited names are consumed; the name nobody awaited stays
    assert await inbox(db, ids[0]) == ["shipped"]


async def test_a_second_name_arriving_during_the_step_is_not_lost(tdb: durable.Database) -> None:
    """The park's re-check covers every awaited name, not only the first."""
    db = tdb
    iid = await db.insert(Order, {"names": ["paid", "cancelled_by_user"], "timeout": 300})
    claim = (await pick(db, "tm_order"))[0]
    await db.signal(iid, "cancelled_by_user", {})  # after the pick: the step does not see it
    _, committed = await run_step(db, claim)
    assert committed.status == "runnable"
    assert (await timers(db, iid))["timeout_at"] is None  # parked runnable: no timeout pending
    await run_one(db, "tm_order")
    assert durable.codec.decode((await row(db, iid))["result"])["woken_by"] == "cancelled_by_user"


async def test_consumption_covers_every_awaited_name_only(tdb: durable.Database) -> None:
    """Woken by one name while the other came too: both awaited names' shown signals are consumed."""
    db = tdb
    iid = await db.insert(Order, {"names": ["a", "b"]})
    await run_one(db, "tm_order")
    await db.signal(iid, "b", {})
    await db.signal(iid, "a", {})
    await db.signal(iid, "c", {})
    await run_one(db, "tm_order")
    assert await inbox(db, iid) == ["c"]


# -- a signal racing the timeout ------------------------------------------------------------------------


async def test_timeout_first_then_signal_stays_in_the_inbox_for_the_next_await(tdb: durable.Database) -> None:
    db = tdb
    iid = await db.insert(Order, {"timeout": 60, "timeout_step": "expire", "await_again": True})
    await run_one(db, "tm_order")
    deadline = (await timers(db, iid))["timeout_at"]
    assert await fire(db, deadline) == [iid]
    await db.signal(iid, "paid", {"late": True})  # after the timeout fired: stored, no wake needed
    t = await timers(db, iid)
    assert t["status"] == "runnable" and t["timed_out"]
    claim = (await pick_at(db, "tm_order", deadline))[0]
    assert [s.name for s in claim.signals] == ["paid"] and claim.timed_out and claim.awaits is None
    await run_step(db, claim)  # expire: reads nothing, goes back to wait
    assert await inbox(db, iid) == ["paid"]  # not consumed by the timed-out step
    await run_one(db, "tm_order")  # wait: finds it at once
    assert durable.codec.decode((await row(db, iid))["result"])["woken_by"] == "paid"


PID = Query("t_pid", "select pg_backend_pid()", "")
BLOCKED_BY = Query(
    "t_blocked_by", "select count(*) from pg_stat_activity where $1::int = any (pg_blocking_pids(pid))", ""
)


async def blocked_by(db: durable.Database, pid: int) -> None:
    """Until some backend waits on a lock that backend ``pid`` holds."""
    with trio.fail_after(20):
        while not await db.pool.fetchval(BLOCKED_BY, pid):
            await trio.sleep(0.02)


async def parked(db: durable.Database, n: int, timeout: float = 1) -> tuple[list[int], datetime]:
    """``n`` Orders parked on 'paid' with a timeout to 'expire'; their ids and the latest deadline."""
    ids = await db.insert_many(
        [durable.Insert(Order, {"timeout": timeout, "timeout_step": "expire"}) for _ in range(n)]
    )
    claims = await pick(db, "tm_order", n)
    assert len(claims) == n
    async with trio.open_nursery() as nursery:
        for claim in claims:
            nursery.start_soon(run_step, db, claim)
    deadlines = [(await timers(db, i))["timeout_at"] for i in ids]
    assert all(d is not None for d in deadlines)
    return ids, max(deadlines)


async def test_a_delivery_waiting_on_the_sweeps_lock_finds_the_row_timed_out(tdb: durable.Database) -> None:
    """The sweep has moved the row on but not committed; the delivery waits on the row lock, then stores
    the signal without a wake (the row is runnable already): the timed-out step is shown it."""
    db = tdb
    (iid,), deadline = await parked(db, 1)
    async with trio.open_nursery() as n:
        async with db.pool.transaction() as conn:
            assert [r["id"] for r in await conn.fetch(Q.fire_timeouts, deadline, 100)] == [iid]
            n.start_soon(db.signal, iid, "paid", {})
            await blocked_by(db, await conn.fetchval(PID))
        # committed: the delivery goes on
    t = await timers(db, iid)
    assert (t["status"], t["step"], t["timed_out"]) == ("runnable", "expire", True)
    assert await inbox(db, iid) == ["paid"]
    assert [e.event for e in await events(db, iid)][-2:] == ["timed_out", "signal"]
    await run_one(db, "tm_order", deadline)
    assert durable.codec.decode((await row(db, iid))["result"])["shown"] == ["paid"]


async def test_a_sweep_during_a_delivery_skips_the_row_and_the_signal_wakes_it(tdb: durable.Database) -> None:
    db = tdb
    (iid,), deadline = await parked(db, 1)
    async with db.pool.transaction() as conn:
        await conn.fetch(Q.deliver_signal, iid, "paid", "{}", None, None, None)
        assert await fire(db, deadline) == []  # the row is locked: skipped, not waited for
    assert await fire(db, deadline + timedelta(hours=1)) == []  # woken: no longer awaiting
    t = await timers(db, iid)
    assert (t["status"], t["step"], t["timed_out"], t["timeout_at"]) == ("runnable", "wait", False, None)
    await run_one(db, "tm_order")
    assert durable.codec.decode((await row(db, iid))["result"]) == {
        "woken_by": "paid",
        "timed_out": False,
        "shown": ["paid"],
    }


async def test_signals_racing_timeouts_are_never_lost(tdb: durable.Database) -> None:
    """40 parked awaits whose timeouts passed; sweeps and deliveries on separate connections at once. Each
    ends runnable exactly one way: woken by its signal (not timed out, at 'wait') or timed out (at
    'expire') with the signal in its inbox; then each run ends done, every signal seen."""
    db = tdb
    ids, deadline = await parked(db, 40, timeout=0)

    async def sweep() -> None:
        for _ in range(8):
            await db.pool.fetch(Q.fire_timeouts, deadline, 5)

    async with trio.open_nursery() as n:
        n.start_soon(sweep)
        n.start_soon(sweep)
        for iid in ids:
            n.start_soon(db.signal, iid, "paid", {})
    await fire(db, deadline)  # whatever no sweep reached
    woken = timed_out = 0
    for iid in ids:
        t = await timers(db, iid)
        assert t["status"] == "runnable", t
        kinds = [e.event for e in await events(db, iid)]
        if t["timed_out"]:
            timed_out += 1
            assert t["step"] == "expire" and "timed_out" in kinds
        else:
            woken += 1
            assert t["step"] == "wait" and "timed_out" not in kinds
        assert await inbox(db, iid) == ["paid"]
    assert woken + timed_out == 40
    claims = await pick_at(db, "tm_order", deadline + timedelta(seconds=1), 40)
    async with trio.open_nursery() as n:
        for claim in claims:
            n.start_soon(run_step, db, claim)
    for iid in ids:
        result = durable.codec.decode((await row(db, iid))["result"])
        assert result["shown"] == ["paid"], result


# -- hostile values -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(OUTCOMES))
async def test_a_bad_timer_value_reaches_handle(tdb: durable.Database, case: str) -> None:
    db = tdb
    iid = await db.insert(Hostile, {"case": case})
    _, committed = await run_one(db, "tm_hostile")
    r = await row(db, iid)
    assert committed.status == "failed" and r["step"] == "start"
    assert r["last_error"].startswith("OutcomeError: ") and EXPECTED[case] in r["last_error"], r["last_error"]


# -- the runtime's timer sweep ----------------------------------------------------------------------------


async def test_a_runtime_fires_a_timeout_it_parked_long_before_its_reap_period(tdb: durable.Database) -> None:
    """reap_every is 10 minutes: only the runtime's own deadline (timer_set) explains the sweep."""
    db = tdb
    rt = durable.Runtime(db, queues={"tm_order": 2}, reap_every=600, listen=False)
    async with trio.open_nursery() as n:
        await n.start(rt.run)
        iid = await db.insert(Order, {"timeout": 0.3, "timeout_step": "expire"})
        r = await wait_status(db, iid, "done", timeout=20)
        n.cancel_scope.cancel()
    assert durable.codec.decode(r["result"])["timed_out"] is True and rt.timeouts_fired == 1


async def test_a_timeout_fires_from_another_runtime_after_the_parking_one_was_killed(tdb: durable.Database) -> None:
    db = tdb
    first = durable.Runtime(db, queues={"tm_order": 2}, listen=False, worker_id="tm-first")
    async with trio.open_nursery() as n:
        await n.start(first.run)
        # the kill must come before the deadline, or the first runtime fires it itself: 3 s, not the 1 s a
        # loaded box could spend between the park's commit and the kill
        iid = await db.insert(Order, {"timeout": 3.0, "timeout_step": "expire"})
        await wait_status(db, iid, "awaiting_signal")
        first.kill()
        await first.wait_stopped()
    assert (await row(db, iid))["status"] == "awaiting_signal" and first.timeouts_fired == 0
    second = durable.Runtime(db, queues={"tm_order": 2}, listen=False, worker_id="tm-second", reap_every=600)
    async with trio.open_nursery() as n:
        await n.start(second.run)
        r = await wait_status(db, iid, "done", timeout=20)
        n.cancel_scope.cancel()
    assert durable.codec.decode(r["result"]) == {"timed_out": True, "step": "expire", "attempt": 0, "shown": []}
    assert second.timeouts_fired == 1


async def test_awaited_names_with_array_syntax_round_trip(tdb: durable.Database) -> None:
    """Names are sent to complete as a text[] literal: quotes, backslashes, commas, braces and spaces survive,
    and a signal of such a name wakes the await."""
    db = tdb
    odd = ['a"b\\c,{x} y', "NULL", "  "]
    iid = await db.insert(Order, {"names": odd})
    await run_one(db, "tm_order")
    assert (await timers(db, iid))["awaits_any"] == odd
    await db.signal(iid, "NULL", {})
    await run_one(db, "tm_order")
    assert durable.codec.decode((await row(db, iid))["result"])["woken_by"] == "NULL"
