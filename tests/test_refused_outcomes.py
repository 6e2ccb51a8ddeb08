"""An outcome the database refuses is never retried as is (issue 14, item 1 and its "done means"): the
refusal (SQLSTATE classes 22, 23, 54) reaches ``handle(error, ctx)`` as ``durable.OutcomeRejected`` with the
instance's stored state, the default ``handle`` retries with backoff up to ``max_attempts`` and then the
instance ends ``failed`` with the refusal in ``last_error`` and the history; a ``handle`` whose own outcome
is refused ends the instance at once. Attempts that never reach ``handle`` (crashes, lost leases) are
bounded by ``max_attempts`` too. Other outcomes of the same batch commit.

The refusal is real: a CHECK constraint added to the test's own schema makes PostgreSQL reject a state
(23514), and a NUL character in a JSON string is refused by jsonb itself (22P05)."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import asyncpg
import pytest
import trio

import durable
from durable import Done, Machine, Next, Retry, step
from durable.errors import OutcomeRejected
from durable.runtime.claim import Encoded
from durable.runtime.flusher import Flusher, rejection, transient
from durable.sql import Q, Query

from .helpers import pick, row, wait_status
from .helpers import step as run_step

pytestmark = pytest.mark.trio

SEEN: list[BaseException] = []
RUNS: list[int] = []


@pytest.fixture(autouse=True)
def _fresh() -> None:
    SEEN.clear()
    RUNS.clear()


class Poisoned(Machine, queue="poison", max_attempts=3):
    """Its first step always returns a state the database refuses; its `handle` records what it sees."""

    backoff_base = 0.01

    @step
    async def start(self, ctx: durable.Context) -> Next:
        RUNS.append(ctx.attempt)
        ctx.state["t"] = "poison"  # mutated in place: must not leak into what handle() sees
        return Next("end", ctx.state)

    @step
    async def end(self, ctx: durable.Context) -> Done:
        return Done(ctx.state)

    async def handle(self, error: BaseException, ctx: durable.Context) -> Any:
        SEEN.append(error)
        assert ctx.state.get("t") != "poison", "handle() must see the stored state, not the refused one"
        return await super().handle(error, ctx)


class PoisonedTwice(Poisoned, name="poisoned_twice", queue="poison"):
    async def handle(self, error: BaseException, ctx: durable.Context) -> Any:
        SEEN.append(error)
        return Next("end", {"t": "poison"})  # refused as well


class Healthy(Machine, queue="poison"):
    @step
    async def go(self, ctx: durable.Context) -> Done:
        return Done("fine")


async def forbid_poison(db: durable.Database) -> None:
    q = Query(
        "t_poison", "alter table instances add constraint no_poison check (state->>'t' is distinct from 'poison')", ""
    )
    await db.pool.execute(q)


async def run_until(db: durable.Database, rt: durable.Runtime, *iids: int) -> None:
    async with trio.open_nursery() as n:
        await n.start(rt.run)
        for iid in iids:
            await wait_status(db, iid, "done", "failed", timeout=60)
        n.cancel_scope.cancel()


async def test_a_refused_outcome_goes_to_handle_and_ends_failed_within_max_attempts(db: durable.Database) -> None:
    await forbid_poison(db)
    errors: list[str] = []
    rt = durable.Runtime(db, machines=[Poisoned, Healthy], queues={"poison": 4}, on_error=errors.append)
    bad = await db.insert(Poisoned, {"t": "clean"})
    good = [await db.insert(Healthy, {}) for _ in range(3)]
    assert bad is not None
    await run_until(db, rt, bad, *[g for g in good if g is not None])

    after = await row(db, bad)
    assert after["status"] == "failed"
    assert "SQLSTATE 23514" in after["last_error"] and "no_poison" in after["last_error"]
    assert durable.codec.decode(after["state"]) == {"t": "clean"}  # nothing of the refused outcome stored
    assert RUNS == [0, 1, 2]  # max_attempts runs of the step, no more
    assert len(SEEN) == 3 and all(isinstance(e, OutcomeRejected) and e.sqlstate == "23514" for e in SEEN)
    history = [e.event for e in await db.history(bad)]
    assert history.count("retry") == 2 and history[-1] == "stop"
    assert "released" not in history  # never given back for a blind re-run
    for g in good:  # the rest of the queue went on
        assert (await row(db, g))["status"] == "done"  # type: ignore[arg-type]
    stats = rt.statistics()
    assert stats.rejected == 3 and stats.transient_retries == 0
    assert stats["rejected"] == 3  # read by name, as when statistics() was a dict
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.rejected = 0  # type: ignore[misc]
    assert stats.to_json()["rejected"] == 3 and stats.schedule_ticks.to_json() == {"fired": 0, "taken": 0, "dropped": 0}
    assert sum("refused" in e for e in errors) == 3


async def test_a_handle_whose_outcome_is_refused_too_ends_the_instance(db: durable.Database) -> None:
    await forbid_poison(db)
    rt = durable.Runtime(db, machines=[PoisonedTwice], queues={"poison": 2}, on_error=lambda _: None)
    iid = await db.insert(PoisonedTwice, {"t": "clean"})
    assert iid is not None
    await run_until(db, rt, iid)
    after = await row(db, iid)
    assert after["status"] == "failed" and after["attempt"] == 0 and RUNS == [0]
    assert "handle()'s outcome was refused as well" in after["last_error"]
    assert len(SEEN) == 1


async def test_a_nul_in_a_state_is_refused_by_postgresql_and_classified(db: durable.Database) -> None:
    db.registry.add(Healthy)
    iid = await db.insert(Healthy, {})
    (claim,) = await pick(db, "poison", 1)
    flusher = Flusher(db.pool, "w1", db.clock)
    with pytest.raises(asyncpg.PostgresError) as caught:  # straight to the database, no validation
        await flusher.commit_now([(claim, Encoded("next", step="go", state='{"t": "a\\u0000b"}'))])
    refusal = rejection(caught.value)
    assert refusal is not None and refusal.sqlstate.startswith("22")
    assert (await row(db, iid))["status"] == "executing"  # nothing changed


async def test_which_errors_are_refusals_and_which_are_transient() -> None:
    assert rejection(asyncpg.exceptions.CheckViolationError("x")).sqlstate == "23514"  # type: ignore[union-attr]
    assert rejection(asyncpg.exceptions.ProgramLimitExceededError("x")).sqlstate == "54000"  # type: ignore[union-attr]
    assert rejection(asyncpg.exceptions.SerializationError("x")) is None
    assert rejection(asyncpg.exceptions.DeadlockDetectedError("x")) is None
    assert rejection(asyncpg.exceptions.ConnectionDoesNotExistError("x")) is None
    assert rejection(asyncpg.exceptions._base.DataError("bad argument")) is not None
    assert transient(asyncpg.exceptions.SerializationError("x"))
    assert transient(asyncpg.exceptions.ConnectionDoesNotExistError("x"))
    assert not transient(asyncpg.exceptions._base.DataError("bad argument"))  # an InterfaceError, not transient


async def test_attempts_that_never_reach_handle_are_bounded(db: durable.Database) -> None:
    """A step that crashes its worker every time (or always outlives its lease) is reaped again and again;
    once its attempts reach max_attempts the engine stops it instead of running it once more."""
    db.registry.add(Poisoned)
    iid = await db.insert(Poisoned, {"t": "clean"})
    assert iid is not None
    for _ in range(Poisoned.max_attempts):
        (claim,) = await pick(db, "poison", 1)
        later = (await row(db, iid))["lease_expires_at"] + datetime.timedelta(seconds=1)
        assert [r["id"] for r in await db.pool.fetch(Q.reap, later, 10)] == [iid]  # the crash path
    (claim,) = await pick(db, "poison", 1)
    assert claim.attempt == Poisoned.max_attempts
    encoded, committed = await run_step(db, claim)
    assert RUNS == [] and encoded.kind == "stop" and committed.status == "failed"
    assert "attempts exhausted" in (await row(db, iid))["last_error"]


async def test_a_retry_under_max_attempts_still_runs(db: durable.Database) -> None:
    """The bound does not cut a step short: attempt max_attempts - 1 runs (and its handle may stop it)."""

    class Flaky(Machine, queue="poison", name="flaky", max_attempts=2):
        @step
        async def go(self, ctx: durable.Context) -> Retry | Done:
            RUNS.append(ctx.attempt)
            return Retry(delay=0) if ctx.attempt == 0 else Done(ctx.attempt)

    db.registry.add(Flaky)
    iid = await db.insert(Flaky, {})
    for _ in range(2):
        (claim,) = await pick(db, "poison", 1)
        await run_step(db, claim)
    assert RUNS == [0, 1] and (await row(db, iid))["status"] == "done"  # type: ignore[arg-type]
