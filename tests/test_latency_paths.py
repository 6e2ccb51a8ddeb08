"""Regression guard for the latency paths (issue 20, item 6): what an insert, a pick woken by a NOTIFY hint and
one outcome cost in statements, in round trips and in crossings of the trio <-> asyncio bridge. It times
nothing: a slower path shows up here as one more statement, round trip, asyncio Task or scheduler turn.

* ``statement_counts``: statements by name;
* ``round_trips``: statements plus BEGIN / COMMIT / ROLLBACK, one round trip each;
* ``bridge``: connections taken from or given back to asyncpg's pool, each through an asyncio Task (a warm
  pool keeps its connections between statements and takes none);
* trio task steps per statement: a statement on a warm pool is driven in the caller's task (durable/_pg.py:
  ``_drive``); through asyncio Tasks and asyncpg's pool it took 13 steps, then 5 (the caller twice, the
  connection's reader task twice, trio-asyncio's loop task once), now 3 (the caller twice, the reader once:
  ``_tune_loop``).
"""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
import trio

import durable
from durable.sql import Q, Query

from .helpers import until_idle, wait_for

pytestmark = pytest.mark.trio


async def announced(db: durable.Database, n: int) -> bool:
    """The runtime has sent ``n`` announce_ended statements (one follows each ended step here)."""
    return db.pool.statement_counts.get("announce_ended", 0) >= n


@durable.job(queue="lp_jobs", name="lp_noop")
async def noop(args: Any, ctx: durable.Context) -> None:
    return None


class Steps(trio.abc.Instrument):
    """Counts trio task steps (each one a turn of some task through trio's scheduler)."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


def costs(db: durable.Database) -> tuple[dict[str, int], int, dict[str, int]]:
    pool = db.pool
    return dict(pool.statement_counts), pool.round_trips, dict(pool.bridge)


def since(
    before: tuple[dict[str, int], int, dict[str, int]], after: tuple[dict[str, int], int, dict[str, int]]
) -> tuple[dict[str, int], int, dict[str, int]]:
    counts = {k: v - before[0].get(k, 0) for k, v in after[0].items() if v != before[0].get(k, 0)}
    bridge = {k: v - before[2].get(k, 0) for k, v in after[2].items() if v != before[2].get(k, 0)}
    return counts, after[1] - before[1], bridge


async def test_a_statement_on_a_warm_pool_takes_no_asyncio_task_and_three_scheduler_turns(db: durable.Database) -> None:
    """The caller twice (send, then the result) and the connection's reader task once. The loop task of
    trio-asyncio takes no turn: asyncpg's done callback on the query's waiter runs at once, and the reader skips
    its synchronize when its read queued nothing (durable/_pg.py: _tune_loop); with either undone it is 4 or 5."""
    pool = db.pool
    for _ in range(3):  # warm: a connection of each pool is kept between statements
        await pool.fetch(Q.pick, "lp_nothing", 10, "w", 30.0, None, None, None)
        await pool.fetchrow(Q.get_instance, 0)
    before = costs(db)
    steps = Steps()
    fewest = None
    trio.lowlevel.add_instrument(steps)
    try:
        for _ in range(5):  # the fewest of five: a background task of the fixture may take a turn meanwhile
            steps.steps = 0
            await pool.fetch(Q.pick, "lp_nothing", 10, "w", 30.0, None, None, None)
            fewest = steps.steps if fewest is None else min(fewest, steps.steps)
    finally:
        trio.lowlevel.remove_instrument(steps)
    counts, trips, bridge = since(before, costs(db))
    assert counts == {"pick": 5} and trips == 5
    assert bridge == {}, "a warm pool takes no connection from asyncpg's pool per statement"
    assert fewest is not None and fewest <= 3, f"{fewest} scheduler turns for one statement (3 expected)"


async def test_an_insert_is_one_statement_and_one_round_trip(db: durable.Database) -> None:
    db.registry.add(noop)
    await db.insert(noop, {"warm": True})
    before = costs(db)
    await db.insert(noop, {"x": 1})
    assert since(before, costs(db)) == ({"insert_instance": 1}, 1, {})
    before = costs(db)
    await db.insert_many([durable.Insert(noop, {"i": i}) for i in range(50)])
    assert since(before, costs(db)) == ({"insert_instances": 1}, 1, {})


async def test_a_pick_after_a_notify_and_its_outcome_are_one_round_trip_each(db: durable.Database, pg_dsn: str) -> None:
    """An insert through another Database (another process, in production) reaches the idle runtime by
    its NOTIFY hint: the runtime then sends one pick and, for the outcome, one complete_simple; nothing
    else (no BEGIN/COMMIT, no read per step), and on a warm pool no asyncio Task for a connection."""
    db.registry.add(noop)
    seen: list[tuple[dict[str, int], int, dict[str, int]]] = []
    ran = trio.Event()

    def on_step(*_: Any) -> None:  # after the outcome's commit
        seen.append(costs(db))
        ran.set()

    # long lease and polls: no heartbeat, reap or idle poll inside the measured window; LISTEN on
    rt = durable.Runtime(db, queues={"lp_jobs": 4}, lease=600, poll_min=30, poll_max=30, listen=True, on_step=on_step)
    async with durable.connect(pg_dsn, schema=db.schema, machines=[noop], migrate=False) as other:
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            for round_ in range(2):  # the first warms the pools; the second is measured
                ran = trio.Event()
                # the first pick is done, the LISTEN in place, and the last round's announce_ended sent (it
                # tells result waiters elsewhere that the step's instance ended); no refill pick follows a round
                await until_idle(db, rt, "lp_jobs", listen=True)
                await wait_for(functools.partial(announced, db, round_))
                before = costs(db)
                other_before = costs(other)
                await other.insert(noop, {"round": round_})
                inserted = since(other_before, costs(other))
                with trio.fail_after(20):  # far below the 30 s poll: the hint woke it
                    await ran.wait()
                counts, trips, bridge = since(before, seen[-1])
            nursery.cancel_scope.cancel()
    assert inserted == ({"insert_instance": 1}, 1, {})
    assert counts == {"pick": 1, "complete_simple": 1}, counts
    assert trips == 2
    assert bridge == {}, bridge


async def test_a_statement_cancelled_mid_flight_gives_its_connection_back(db: durable.Database) -> None:
    """Cancelled while the server runs it: asyncpg cancels the query, the connection goes back to asyncpg's
    pool (not kept for the next statement), and the pool goes on."""
    from durable.sql import Query

    sleep, one = Query("lp_sleep", "select pg_sleep(60)", ""), Query("lp_one", "select 1", "")
    assert await db.pool.fetchval(one) == 1
    released = db.pool.bridge["release"]
    with trio.fail_after(20):  # far less than the statement's 60 s
        with trio.move_on_after(0.2):
            await db.pool.fetchval(sleep)
    assert db.pool.bridge["release"] == released + 1
    with trio.fail_after(10):
        assert await db.pool.fetchval(one) == 1
    await db.pool.return_spares()
    raw = db.pool.raw
    assert raw.get_idle_size() == raw.get_size()  # type: ignore[attr-defined]


async def plan_nodes(db: durable.Database, q: Query, params: int) -> list[str]:
    """The node names of ``q``'s generic plan (prepared, explained for NULL parameters; rolled back)."""
    nodes: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        nodes.append(node["Node Type"])
        for child in node.get("Plans", ()):
            walk(child)

    with pytest.raises(ZeroDivisionError):
        async with db.pool.transaction() as conn:
            await conn.execute(Query("lp_generic", "set local plan_cache_mode = force_generic_plan", ""))
            await conn.execute(Query("lp_prepare", f"prepare lp_{q.name} as {q.text}", ""))
            nulls = ", ".join(["null"] * params)
            rows = await conn.fetch(Query("lp_explain", f"explain (format json) execute lp_{q.name}({nulls})", ""))
            await conn.execute(Query("lp_deallocate", f"deallocate lp_{q.name}", ""))  # not transactional
            walk(json.loads(rows[0][0])[0]["Plan"])
            raise ZeroDivisionError  # roll back
    return nodes


async def test_a_lone_insert_runs_a_plan_without_the_batch_machinery(db: durable.Database) -> None:
    """db.insert sends insert_instance, whose plan reads no arrays and neither numbers, sorts nor joins the
    batch: insert_instances for one row took 160-200 us of backend CPU, insert_instance 110-130 us
    (synchronous_commit off, back to back, load 9). Counted in plan nodes, not timed."""
    lone, batch = await plan_nodes(db, Q.insert_instance, 22), await plan_nodes(db, Q.insert_instances, 22)
    machinery = {"Function Scan", "WindowAgg", "Sort"}
    assert machinery <= set(batch), batch  # what the lone form leaves out is there in the batch form
    assert not machinery & set(lone), lone
    assert len(lone) < len(batch) - 3, (len(lone), len(batch))


async def test_a_notification_reaches_its_listener_without_the_loop_task(db: durable.Database) -> None:
    """A NOTIFY's payload is handed to the trio side in the reader task that parsed it: neither trio-asyncio's
    loop task (asyncpg queues the listener callback with call_soon) nor trio's run_sync_soon task (the hop the
    callback used to take) takes a turn on the way. The fewest of five, as a fixture's background task may
    use the loop meanwhile; before, every delivery took a turn of each."""
    notify = Query("lp_notify", "select pg_notify($1, 'x')", "")
    steps: list[str] = []

    class Names(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            steps.append(task.name)

    fewest = None
    async with db.pool.listen("lp_channel") as hints:
        await db.pool.fetchval(notify, "lp_channel")  # warm
        with trio.fail_after(10):
            assert await hints.receive() == "x"
        for _ in range(5):
            steps.clear()
            instrument = Names()
            trio.lowlevel.add_instrument(instrument)
            try:
                await db.pool.fetchval(notify, "lp_channel")
                with trio.fail_after(10):
                    assert await hints.receive() == "x"
            finally:
                trio.lowlevel.remove_instrument(instrument)
            hops = sum(1 for name in steps if "_main_loop" in name or "run_sync_soon" in name)
            fewest = hops if fewest is None else min(fewest, hops)
    assert fewest == 0, f"{fewest} turns of the loop task or run_sync_soon per notification (0 expected)"


async def test_the_reader_task_copied_by_tune_loop_is_trio_asyncios_own() -> None:
    """_pg._tune_loop replaces trio-asyncio's reader task with a copy that skips an idle synchronize. It does
    so only for the source it copied: a trio-asyncio whose reader task changed keeps its own (statements
    then take 5 scheduler turns, and the turn guards above fail). This says why, before they do."""
    from trio_asyncio._base import BaseTrioEventLoop

    from durable._pg import IO_TASK_DIGEST, _source_digest

    assert _source_digest(BaseTrioEventLoop._io_task) == IO_TASK_DIGEST, (
        "trio-asyncio's BaseTrioEventLoop._io_task changed: compare it with durable/_pg.py's _tune_loop copy, "
        "then update IO_TASK_DIGEST"
    )


class LaneSteps(trio.abc.Instrument):
    """Counts the steps of group commit's lane tasks."""

    def __init__(self) -> None:
        self.lanes = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if "_run_lane" in task.name:
            self.lanes += 1


async def test_a_lone_append_is_one_statement_one_round_trip_written_by_its_caller(db: durable.Database) -> None:
    """Issue 20, item 3: an append to an idle group-commit lane (one writer) is one ``stream_append``
    statement, its own transaction: one round trip, no BEGIN or COMMIT of its own, no statement before or
    after it; and its caller writes it, so the lane's task takes no turn (a hand-over to the lane's task
    and back took turns of both, and two events)."""
    from durable.streams.store import CreateSpec, Store

    store = Store(db.pool)
    async with store.pinned(2, group_commit=True):
        await store.create("/lp/a", CreateSpec(content_type="text/plain"))
        await store.append("/lp/a", b"warm", content_type="text/plain")
        await trio.testing.wait_all_tasks_blocked()  # the lanes' tasks wait for work
        before = costs(db)
        steps = LaneSteps()
        trio.lowlevel.add_instrument(steps)
        try:
            for i in range(5):
                result = await store.append("/lp/a", b"%d" % i, content_type="text/plain")
        finally:
            trio.lowlevel.remove_instrument(steps)
        counts, trips, bridge = since(before, costs(db))
        group = store._group
        assert group is not None and group.batches == group.appends == 6
    assert result.status == "accepted" and result.next_offset.endswith("_0000000000000009")
    assert counts == {"stream_append": 5} and trips == 5, (counts, trips)
    assert bridge == {}, bridge
    assert steps.lanes == 0, f"the lane's task took {steps.lanes} turns for appends its callers wrote"
