"""What a ``unique_scope`` means, for every set of statuses it may name (issue 14, item 3), on a Runtime.

A key is occupied while its row is in a status of its scope. The rules under test:

- insert: a row born into an occupied scope is not inserted (``insert`` returns None);
- the pick (into ``executing``): a row whose scope names executing but not runnable waits while its key
  is occupied; the queue's other rows go on, and the row is picked once the key is free;
- an outcome that would move a row into an occupied scope goes to ``handle()`` as ``UniqueKeyOccupied``
  (key, status); the default handle retries with backoff, then fails: bounded;
- the engine's own moves (a lost lease or drain to runnable, a signal, the last child, the last-resort
  failure, a cancel) cannot be refused, so a scope naming runnable, failed or cancelled must name the
  statuses those moves start from; any other scope (or an unknown status) is a ValueError at insert.

Every scope the rules allow runs two instances of one key on a Runtime next to bystander jobs of the same
queue, and the second instance's fate is the one the rules give: refused, run, parked (waiting for the
key) or refused an outcome (handle() sees UniqueKeyOccupied, the instance fails after max_attempts).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio

import durable
from durable import Await, Cancel, Child, Done, Insert, Machine, Spawn, Stop, step
from durable.errors import UniqueKeyOccupied
from durable.outcomes import NON_TERMINAL, STATUSES

from .helpers import pick, row, wait_for
from .helpers import step as run_step

pytestmark = pytest.mark.trio

QUEUE = "uscope"
ATTEMPTS = 3


@durable.job(queue=QUEUE, name="uscope_leaf")
async def leaf(args: Any, ctx: durable.Context) -> None:
    return None


RUNS: list[tuple[int, str, float, float]] = []  # (instance, step, start, end) of every step run
HANDLED: list[tuple[int, BaseException]] = []  # what handle() was called with


class Recording(Machine):
    max_attempts = ATTEMPTS
    backoff_base = 0.01

    async def handle(self, error: BaseException, ctx: durable.Context) -> Any:
        HANDLED.append((ctx.id, error))
        return await super().handle(error, ctx)


class Once(Recording, queue=QUEUE, name="uscope_once"):
    @step
    async def go(self, ctx: durable.Context) -> Any:
        start = trio.current_time()
        await trio.sleep(0.02)  # long enough for a second holder to overlap, if the pick let one in
        RUNS.append((ctx.id, "go", start, trio.current_time()))
        return Done()


class Walk(Recording, queue=QUEUE, name="uscope_walk"):
    """Passes through every status: runnable, executing, awaiting_children, awaiting_signal, then ends
    the way its state says (done, failed or cancelled)."""

    @step
    async def start(self, ctx: durable.Context) -> Any:
        RUNS.append((ctx.id, "start", trio.current_time(), trio.current_time()))
        return Spawn("wait", [Child(leaf, {})])

    @step
    async def wait(self, ctx: durable.Context) -> Any:
        RUNS.append((ctx.id, "wait", trio.current_time(), trio.current_time()))
        return Await("go", step="finish")

    @step
    async def finish(self, ctx: durable.Context) -> Any:
        RUNS.append((ctx.id, "finish", trio.current_time(), trio.current_time()))
        end = ctx.state["end"]
        return Done() if end == "done" else Stop("the end") if end == "failed" else Cancel("the end")


class Fails(Recording, queue=QUEUE, name="uscope_fails"):
    @step
    async def go(self, ctx: durable.Context) -> Any:
        return Stop("no") if ctx.state.get("fail") else Done()


# -- the rules, restated ---------------------------------------------------------------------------------
LIVE = set(NON_TERMINAL)
SCOPES = [c for n in range(1, len(STATUSES) + 1) for c in itertools.combinations(STATUSES, n)]


def allowed(scope: Sequence[str]) -> bool:
    s = set(scope)
    if s & {"runnable", "cancelled"}:  # entered by the engine from every live status
        return LIVE <= s
    if "failed" in s:  # the engine's last resort, from executing
        return "executing" in s
    return True


VALID = [s for s in SCOPES if allowed(s)]


@dataclass(frozen=True)
class Fate:
    """What happens to the second instance of a key: ``refused`` (not inserted), ``ran`` (ended like the
    first), ``parked`` (runnable, never picked while the key is held) or ``occupied`` (an outcome into
    ``status`` was refused: handle() saw UniqueKeyOccupied, the instance failed after ATTEMPTS)."""

    kind: str
    status: str | None = None


def pair_fate(scope: Sequence[str]) -> Fate:
    """Two one-step instances inserted together (both runnable at once)."""
    s = set(scope)
    if "runnable" in s:
        return Fate("refused")
    if "executing" in s:  # one at a time; a done holder keeps the key
        return Fate("parked") if "done" in s else Fate("ran")
    return Fate("occupied", "done") if "done" in s else Fate("ran")


def walk_fate(scope: Sequence[str], end: str) -> tuple[Fate, Fate | None]:
    """A first instance (ahead in the pick order) walks to awaiting_signal; then a second is inserted.
    Returns the second's fate while the first awaits, and after the first ended (None: already final)."""
    s = set(scope)
    if "runnable" in s:
        return Fate("refused"), None
    if "executing" in s:  # the second never executes while the first holds the key
        meanwhile = Fate("parked") if "awaiting_signal" in s else Fate("ran")
        return meanwhile, Fate("parked") if end in s else Fate("ran")
    if "awaiting_signal" in s:  # the first holds the key while it awaits: the second's spawn or await is refused
        return Fate("occupied", "awaiting_children" if "awaiting_children" in s else "awaiting_signal"), None
    return Fate("ran"), Fate("occupied", end) if end in s else Fate("ran")


def scope_params() -> list[Any]:
    return [pytest.param(None, id="default")] + [pytest.param(s, id="+".join(s)) for s in VALID]


# -- driving a Runtime -----------------------------------------------------------------------------------
@asynccontextmanager
async def running(db: durable.Database) -> AsyncIterator[tuple[durable.Runtime, list[str]]]:
    RUNS.clear()
    HANDLED.clear()
    errors: list[str] = []
    for m in (leaf, Once, Walk):
        if m not in db.registry:
            db.registry.add(m)
    async with trio.open_nursery() as n:
        rt = durable.Runtime(db, queues={QUEUE: 8}, poll_min=0.01, poll_max=0.1, on_error=errors.append)
        await n.start(rt.run)
        yield rt, errors
        n.cancel_scope.cancel()
    assert not [e for e in errors if "pick on queue" in e], errors  # the pick never trips an index


async def settle(db: durable.Database, iid: int, *statuses: str, timeout: float = 30.0) -> dict[str, Any]:
    """Wait for one of ``statuses``; fails at once when the instance re-runs past its max_attempts."""

    async def there() -> bool:
        r = await row(db, iid)
        assert r["attempt"] < ATTEMPTS, f"instance {iid} keeps re-running: attempt {r['attempt']} {r['last_error']}"
        return r["status"] in statuses

    await wait_for(there, timeout)
    return await row(db, iid)


async def bystanders_finish(db: durable.Database, n: int = 10) -> None:
    """The queue goes on: jobs inserted now all end done."""
    ids = await db.insert_many([Insert(leaf, {"n": i}) for i in range(n)])
    for iid in ids:
        assert iid is not None
        await settle(db, iid, "done")


def runs(iid: int) -> list[str]:
    return [s for i, s, _, _ in RUNS if i == iid]


async def check_parked(db: durable.Database, iid: int) -> None:
    """The row stays runnable and unpicked while bystanders inserted after it all finish."""
    before = runs(iid)
    await bystanders_finish(db)
    r = await row(db, iid)
    assert (r["status"], r["attempt"], runs(iid)) == ("runnable", 0, before)


async def check_occupied(db: durable.Database, iid: int, key: str, status: str) -> None:
    """handle() saw UniqueKeyOccupied for (key, status) on each attempt, and the instance failed."""
    r = await settle(db, iid, "failed")
    seen = [e for i, e in HANDLED if i == iid]
    assert 1 <= len(seen) <= ATTEMPTS, seen
    assert all(isinstance(e, UniqueKeyOccupied) and (e.key, e.status) == (key, status) for e in seen), seen
    assert key in r["last_error"], r["last_error"]


def scope_of(scope: Sequence[str] | None) -> Sequence[str]:
    return NON_TERMINAL if scope is None else scope


# -- tests -----------------------------------------------------------------------------------------------
async def test_every_scope_is_checked_at_insert(db: durable.Database) -> None:
    db.registry.add(leaf)
    for n, scope in enumerate(SCOPES):
        if allowed(scope):
            assert await db.insert(leaf, {}, unique_key=f"k{n}", unique_scope=scope) is not None, scope
        else:
            with pytest.raises(ValueError, match="unique_scope names"):
                await db.insert(leaf, {}, unique_key=f"k{n}", unique_scope=scope)
    assert len(VALID) == 31  # 8 with every live status (+ any terminals), 23 without runnable or cancelled
    with pytest.raises(ValueError, match="unknown status 'finished' in unique_scope"):
        await db.insert(leaf, {}, unique_key="x", unique_scope=["done", "finished"])
    with pytest.raises(ValueError, match="unique_scope is empty"):
        await db.insert(leaf, {}, unique_key="x", unique_scope=[])
    with pytest.raises(ValueError, match="unique_scope without a unique_key"):
        await db.insert(leaf, {}, unique_scope=["done"])
    with pytest.raises(TypeError, match="unique_scope must be a list of status names, not str 'done'"):
        await db.insert(leaf, {}, unique_key="x", unique_scope="done")
    with pytest.raises(ValueError, match="unknown status 3 in unique_scope"):
        await db.insert(leaf, {}, unique_key="x", unique_scope=["done", 3])  # type: ignore[list-item]
    count = durable.sql.Query("t_count", "select count(*) from instances", "")
    assert await db.pool.fetchval(count) == len(VALID)


@pytest.mark.parametrize("scope", scope_params())
async def test_two_at_once(db: durable.Database, scope: Sequence[str] | None) -> None:
    """Two one-step instances of one key, both runnable at once, among bystanders of their queue."""
    fate = pair_fate(scope_of(scope))
    async with running(db):
        first, second = await db.insert_many(
            [Insert(Once, {}, unique_key="k", unique_scope=scope), Insert(Once, {}, unique_key="k", unique_scope=scope)]
        )
        assert first is not None
        await bystanders_finish(db)
        if fate.kind == "refused":
            assert second is None
            assert (await settle(db, first, "done"))["attempt"] == 0
        elif fate.kind == "parked":
            assert second is not None
            await settle(db, first, "done")
            await check_parked(db, second)
        elif fate.kind == "ran":
            assert second is not None
            for iid in (first, second):
                assert (await settle(db, iid, "done"))["attempt"] == 0
            if "executing" in scope_of(scope):  # at most one holder at a time
                (_, _, _, e1), (_, _, s2, _) = sorted((r for r in RUNS if r[0] in (first, second)), key=lambda r: r[2])
                assert s2 >= e1, "two holders of one executing scope overlapped"
        else:  # both ran at once; the second Done was refused
            assert second is not None
            ends = {iid: (await settle(db, iid, "done", "failed"))["status"] for iid in (first, second)}
            assert sorted(ends.values()) == ["done", "failed"], ends
            loser = next(i for i, s in ends.items() if s == "failed")
            await check_occupied(db, loser, "k", "done")


@pytest.mark.parametrize("scope", scope_params())
async def test_a_second_instance_while_the_first_awaits(db: durable.Database, scope: Sequence[str] | None) -> None:
    """For each ending (done, failed, cancelled), its own key: a first instance walks through spawn and
    await; a second of its key is inserted while the first awaits its signal; the first is signalled and
    ends, then the second (if it awaits)."""

    async def pair(end: str) -> None:
        meanwhile, after = walk_fate(scope_of(scope), end)
        key = f"key-{end}"
        first = await db.insert(Walk, {"end": end}, unique_key=key, unique_scope=scope, priority=-1)
        assert first is not None
        await settle(db, first, "awaiting_signal")
        second = await db.insert(Walk, {"end": end}, unique_key=key, unique_scope=scope)
        if meanwhile.kind == "refused":
            assert second is None
        else:
            assert second is not None
            if meanwhile.kind == "ran":
                await settle(db, second, "awaiting_signal")
            elif meanwhile.kind == "parked":
                await check_parked(db, second)
            else:
                assert meanwhile.status is not None
                await check_occupied(db, second, key, meanwhile.status)
        await db.signal(first, "go")
        r = await settle(db, first, end)
        assert (r["attempt"], runs(first)) == (0, ["start", "wait", "finish"])
        assert not [e for i, e in HANDLED if i == first]
        if second is None or after is None:
            return
        if after.kind == "ran":  # it walks (on from where it waited, or from its start once the key is free)
            if (await settle(db, second, "awaiting_signal", end))["status"] == "awaiting_signal":
                await db.signal(second, "go")
            await settle(db, second, end)
            assert runs(second) == ["start", "wait", "finish"]
            return
        if (await row(db, second))["status"] == "awaiting_signal":
            await db.signal(second, "go")
        if after.kind == "parked":
            await settle(db, second, "runnable")
            await check_parked(db, second)
        else:
            assert after.status is not None
            await check_occupied(db, second, key, after.status)

    async with running(db):
        async with trio.open_nursery() as n:
            for end in ("done", "failed", "cancelled"):
                n.start_soon(pair, end)
        await bystanders_finish(db)


async def test_the_pick_skips_an_occupied_key_and_takes_it_once_free(db: durable.Database) -> None:
    """Statement level: two runnable rows of one key whose scope is ["executing"] and bystanders. The
    pick takes the first and the bystanders, not the second; the second is taken once the first is done.
    (Before: the pick claimed both and failed on instances_unique every time, stalling the queue.)"""
    db.registry.add(Once)
    db.registry.add(leaf)
    first, second = await db.insert_many(
        [
            Insert(Once, {}, unique_key="k", unique_scope=["executing"]),
            Insert(Once, {}, unique_key="k", unique_scope=["executing"]),
        ]
    )
    others = await db.insert_many([Insert(leaf, {}) for _ in range(3)])
    claims = await pick(db, QUEUE, 10)
    assert [c.id for c in claims] == [first, *others]
    assert await pick(db, QUEUE, 10, worker="w2") == []  # the key is held: the second waits
    await run_step(db, claims[0])
    assert (await row(db, first))["status"] == "done"
    assert [c.id for c in await pick(db, QUEUE, 10, worker="w2")] == [second]


async def test_a_pick_that_keeps_tripping_an_index_is_logged_once(db: durable.Database) -> None:
    """Any unique violation the pick cannot skip (here: an index of the operator's that allows one claim
    per worker) is logged once, not once per try or per pick, and once more when the pick claims again;
    it never silently returns nothing forever. (Before: three tries, then nothing claimed and nothing said.)"""
    index = durable.sql.Query(
        "t_index", "create unique index t_one_claim_per_worker on instances (worker_id) where status = 'executing'", ""
    )
    await db.pool.execute(index)
    db.registry.add(leaf)
    ids = await db.insert_many([Insert(leaf, {"n": i}) for i in range(2)])  # one pick claims both: refused
    async with running(db) as (rt, errors):
        scheduler = rt.schedulers[QUEUE]

        async def three_picks_failed() -> bool:
            return scheduler.errors >= 3

        await wait_for(three_picks_failed)
        lines = [e for e in errors if "pick on queue" in e]
        assert len(lines) == 1 and "t_one_claim_per_worker" in lines[0], errors
        await db.pool.execute(durable.sql.Query("t_drop", "drop index t_one_claim_per_worker", ""))
        for iid in ids:
            assert iid is not None
            await settle(db, iid, "done")
        lines = [e for e in errors if "pick on queue" in e]
        assert len(lines) == 2 and "claims again" in lines[1], lines
        errors.clear()  # running() checks that no pick failure is left


async def test_an_operator_retry_into_an_occupied_scope_is_refused_and_changes_nothing(db: durable.Database) -> None:
    """``retry`` moves a failed instance back to runnable: with the default scope, while another instance holds
    its key, that is UniqueKeyOccupied naming the key (it was asyncpg's UniqueViolationError), the instance
    stays failed; once the key is free the retry goes through."""
    db.registry.add(Fails)
    first = await db.insert(Fails, {"fail": True}, unique_key="k")
    assert first is not None
    await run_step(db, (await pick(db, QUEUE))[0])
    assert (await row(db, first))["status"] == "failed"  # failed is not in the default scope: the key is free
    second = await db.insert(Fails, {}, unique_key="k")
    assert second is not None
    with pytest.raises(UniqueKeyOccupied, match="instance .* not retried: its unique key 'k' is held") as caught:
        await db.retry(first)
    assert (caught.value.key, caught.value.status) == ("k", "runnable")
    assert (await row(db, first))["status"] == "failed"
    await run_step(db, (await pick(db, QUEUE))[0])  # the second ends done and frees the key
    assert await db.retry(first) == "runnable"
