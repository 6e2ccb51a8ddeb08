"""Regression guard for the engine's round trips: statements per pick, per step and per outcome,
counted by name through the driver (``db.pool.statement_counts``). It times nothing.

The designed costs (DESIGN.md §3, durable/sql/queries.sql):
* inserting a batch is ONE ``insert_instances`` statement, whatever its size (its NOTIFY hint rides
  inside it);
* a pick is ONE ``pick`` statement that claims up to ``concurrency + prefetch`` rows and brings their
  inbox and children along, so running a step costs no further read (no ``get_*`` statement);
* outcomes are group-committed: ONE ``complete`` statement per flush, carrying every outcome that
  was ready, never one per step. A flush of plain outcomes (no spawn, await, parent or inbox: every
  outcome of a one-step job or of a machine's plain steps) uses its lean form ``complete_simple``;
  both are counted as completes here.

Bounds are derived from the scheduler's structure, not from a stopwatch:
* with timers out of the way (long polls, no LISTEN) a pick is driven only by wake-ups, and wake-ups
  come from finished steps and committed outcomes while the last pick was full: a batch wakes the
  scheduler as its steps finish (the next pick overlaps the flush) and once more if that pick was in
  flight when the flush committed, so ``picks <= 2 * completes + SLACK``
  (observed: picks ~= completes when idle, 33 picks for 26 completes on a loaded machine);
* with no step code to wait for, the steps of one pick finish together; the flusher takes what is
  queued when it wakes and the rest in its next flush, so a batch costs one or two ``complete``
  statements: ``completes <= 2 * ceil(steps / concurrency) + SLACK``. On an idle machine one
  (observed 12 completes for 1200 jobs at concurrency 100; 18 for 900 steps at 50); a loaded machine
  splits more batches in two (observed 33 for 900 steps at 50), never more.
SLACK covers the pick that finds the queue empty and the flush boundaries at the start and the end.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio

import durable
from durable import UNCHANGED, Done, Machine, Next, step

from .helpers import until_idle

pytestmark = pytest.mark.trio

# Slack, in statements, for the pick/flush boundaries described above (observed: 0 to 2).
SLACK = 4


@durable.job(queue="sc_jobs", name="sc_noop")
async def noop(args: Any, ctx: durable.Context) -> None:
    return None


class ThreeStep(Machine, queue="sc_steps", name="sc_three", initial="a"):
    @step
    async def a(self, ctx: durable.Context) -> Next:
        return Next("b", UNCHANGED)

    @step
    async def b(self, ctx: durable.Context) -> Next:
        return Next("c", UNCHANGED)

    @step
    async def c(self, ctx: durable.Context) -> Done:
        return Done(None)


async def drain(db: durable.Database, queue: str, steps: int, concurrency: int, prefetch: int) -> dict[str, int]:
    """Run a runtime until ``steps`` outcomes are committed; the statements counted meanwhile."""
    committed = 0
    done = trio.Event()
    counts: dict[str, int] = {}

    def on_step(*_: Any) -> None:
        nonlocal committed, counts
        committed += 1
        if committed == steps:
            counts = dict(db.pool.statement_counts)  # at the last commit, before any idle poll
            counts["complete"] = counts.get("complete", 0) + counts.pop("complete_simple", 0)
            done.set()

    # long lease: no heartbeat or reaper statement falls inside the measured window; long polls and
    # no LISTEN: every pick is driven by a wake-up (a committed outcome), none by a timer
    rt = durable.Runtime(
        db,
        queues={queue: concurrency},
        prefetch=prefetch,
        lease=600,
        on_step=on_step,
        poll_min=30,
        poll_max=30,
        listen=False,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(rt.run)
        db.pool.statement_counts.clear()
        with trio.fail_after(60):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert rt.flusher.committed >= steps
    return counts


async def test_one_step_jobs_cost_one_insert_then_a_pick_and_a_complete_per_batch(db: durable.Database) -> None:
    n, concurrency, prefetch = 1200, 100, 100
    db.registry.add(noop)
    db.pool.statement_counts.clear()
    ids = await db.insert_many([durable.Insert(noop, {"i": i}) for i in range(n)])
    assert len(ids) == n and all(ids)
    # the whole batch, its history rows and its NOTIFY hint: one statement
    assert dict(db.pool.statement_counts) == {"insert_instances": 1}
    counts = await drain(db, "sc_jobs", n, concurrency, prefetch)

    # nothing but picks and group commits: no per-step read, no per-outcome statement
    assert set(counts) <= {"pick", "complete"}, counts
    assert "complete" not in db.pool.statement_counts, "a one-step job's outcome is plain: complete_simple"
    picks, completes = counts["pick"], counts["complete"]
    # a pick claims up to concurrency + prefetch rows: never fewer picks than that allows
    assert picks >= math.ceil(n / (concurrency + prefetch)), counts
    # every pick but the first follows a committed flush (at most two per flush, see above)
    assert picks <= 2 * completes + SLACK, counts
    # group commit: one or two complete statements per batch, never one per job
    assert completes <= 2 * math.ceil(n / concurrency) + SLACK, counts


async def test_machine_steps_cost_the_same_per_step(db: durable.Database) -> None:
    instances, concurrency = 300, 50
    steps = 3 * instances
    db.registry.add(ThreeStep)
    await db.insert_many([durable.Insert(ThreeStep, {}) for _ in range(instances)])
    counts = await drain(db, "sc_steps", steps, concurrency, concurrency)

    assert set(counts) <= {"pick", "complete"}, counts
    # a Next makes the row runnable again in the same statement that commits it: the next step is
    # picked like any other row, so a machine step costs what a job costs
    picks, completes = counts["pick"], counts["complete"]
    assert picks <= 2 * completes + SLACK, counts
    assert completes <= 2 * math.ceil(steps / concurrency) + SLACK, counts
    # together: at most 6 statements per `concurrency` steps (+ slack), i.e. < 0.15 per step here
    assert picks + completes <= 6 * math.ceil(steps / concurrency) + 4 * SLACK, counts


@pytest.mark.parametrize("listen", [False, True])
@pytest.mark.parametrize("handoff", [False, True])
async def test_a_lone_job_costs_one_pick_and_one_complete(db: durable.Database, listen: bool, handoff: bool) -> None:
    """Idle runtime, local insert: the insert wakes the scheduler, whose one pick claims the row;
    its outcome is one complete. Counted from just before the insert to its commit. With handoff (the
    default) there is no pick at all: the insert's own statement claims the row for the idle scheduler.

    With LISTEN on, the runtime also hears the NOTIFY hint of the insert, but the hint names the
    inserting Database and a runtime of that Database skips it (its local wake-up already fired); a
    handed-off row sends no hint."""
    db.registry.add(noop)
    ran = trio.Event()
    counts: dict[str, int] = {}

    def on_step(*_: Any) -> None:
        nonlocal counts
        counts = dict(db.pool.statement_counts)
        ran.set()

    # poll_min high: no idle poll can fall between the insert and its pick
    rt = durable.Runtime(
        db, queues={"sc_jobs": 4}, lease=600, poll_min=30, poll_max=30, on_step=on_step, listen=listen, handoff=handoff
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(rt.run)
        await until_idle(db, rt, "sc_jobs", listen=listen)  # the first (empty) pick is done; it now waits 30 s
        db.pool.statement_counts.clear()
        await db.insert(noop, {"x": 1})
        with trio.fail_after(20):
            await ran.wait()
        await trio.sleep(0.3)  # time for the insert's own NOTIFY to arrive (and be skipped)
        later = dict(db.pool.statement_counts)
        nursery.cancel_scope.cancel()
    picks = 0 if handoff else 1
    assert counts.pop("pick", 0) == picks
    assert later.get("pick", 0) == picks, later
    assert counts == {"insert_instance": 1, "complete_simple": 1}
    assert rt.schedulers["sc_jobs"].handed == (1 if handoff else 0)


async def test_hints_from_another_database_wake_the_runtime(db: durable.Database, pg_dsn: str) -> None:
    """An insert made through another Database (another process, in production) reaches an idle
    runtime by its NOTIFY hint alone: no local wake-up, and polls 30 s apart."""
    db.registry.add(noop)
    ran = trio.Event()
    rt = durable.Runtime(
        db, queues={"sc_jobs": 4}, lease=600, poll_min=30, poll_max=30, listen=True, on_step=lambda *_: ran.set()
    )
    async with durable.connect(pg_dsn, schema=db.schema, machines=[noop], migrate=False) as other:
        assert other.token != db.token
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            await until_idle(db, rt, "sc_jobs", listen=True)  # the first (empty) pick and the LISTEN are in place
            db.pool.statement_counts.clear()
            await other.insert(noop, {"x": 1})
            with trio.fail_after(10):  # far below the 30 s poll
                await ran.wait()
            nursery.cancel_scope.cancel()
    assert db.pool.statement_counts["pick"] == 1
