"""Handoff: an insert made through the Database of an idle local runtime claims its due rows in the
insert's own statement, and the runtime runs them without a pick. Checked against the rows and the
history PostgreSQL holds: which rows are handed off (only plain due rows of the runtime's queue, at most
its free slots), what they look like (exactly a picked row), that the rest is picked as before, and
that claims whose insert answer was lost are given back."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import durable
from durable.sql import Q, Query

pytestmark = pytest.mark.trio

ran: list[int] = []


@durable.job(queue="ho_jobs", name="ho_noop")
async def noop(args: Any, ctx: durable.Context) -> Any:
    ran.append(ctx.id)
    return {"step_saw": args}


@durable.job(queue="ho_other", name="ho_other")
async def other(args: Any, ctx: durable.Context) -> None:
    return None


INSERTED = Query(
    "t_inserted",
    """
select instance_id as id, status::text as status, worker_id from history where event = 'inserted'
order by instance_id""",
    "",
)
ROWS = Query("t_rows", "select id, status::text as status, worker_id, lease_token from instances order by id", "")


async def until(check: Any, seconds: float = 20.0) -> None:
    with trio.fail_after(seconds):
        while not await check():
            await trio.sleep(0.02)


async def all_done(db: durable.Database) -> bool:
    return all(r["status"] == "done" for r in await db.pool.fetch(ROWS))


async def first_pick(rt: durable.Runtime) -> None:
    """Wait until the runtime's first pick has run (a condition, not a pause: under load it may come late)."""
    with trio.fail_after(30):
        while rt.schedulers["ho_jobs"].picks < 1:
            await trio.sleep(0.01)


async def test_an_idle_runtime_takes_a_local_insert_without_a_pick(db: durable.Database) -> None:
    ran.clear()
    rt = durable.Runtime(db, machines=[noop], queues={"ho_jobs": 4}, lease=600, poll_min=30, poll_max=30, listen=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(rt.run)
        await first_pick(rt)  # its first pick found nothing: idle
        picks = rt.schedulers["ho_jobs"].picks
        iid = await db.insert(noop, {"order": 7})
        # committed as a claim of this worker, in the insert's own statement
        row = await db.get(iid)
        assert row is not None and row.status in ("executing", "done")
        await until(lambda: all_done(db))
        assert rt.schedulers["ho_jobs"].picks == picks  # no pick ran
        assert rt.schedulers["ho_jobs"].handed == 1
        nursery.cancel_scope.cancel()
    assert ran == [iid]
    done = await db.get(iid)
    assert done is not None and done.result == {"step_saw": {"order": 7}} and done.attempt == 0
    history = await db.history(iid)
    assert [(e.event, e.status, e.worker_id) for e in history] == [
        ("inserted", "executing", rt.worker_id),
        ("done", "done", rt.worker_id),
    ]
    # the outcome was fenced by the token the insert stamped
    assert history[1].lease_token is not None


async def test_only_plain_due_rows_of_its_queue_up_to_its_free_slots_are_handed_off(db: durable.Database) -> None:
    ran.clear()
    rt = durable.Runtime(
        db, machines=[noop, other], queues={"ho_jobs": 2}, lease=600, poll_min=0.05, poll_max=0.2, listen=False
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(rt.run)
        await first_pick(rt)
        ids = await db.insert_many(
            [
                durable.Insert(noop, {"n": 0}, partition_key="k"),  # keyed: the pick checks the key
                durable.Insert(noop, {"n": 1}, unique_key="u"),  # unique key: its scope follows status
                durable.Insert(noop, {"n": 2}, schedule_in=0.3),  # not due yet
                durable.Insert(other, {"n": 3}),  # another queue (not served here)
                durable.Insert(noop, {"n": 4}),  # plain and due: handed off
                durable.Insert(noop, {"n": 5}),  # plain and due: handed off (2 slots)
                durable.Insert(noop, {"n": 6}),  # plain and due: no free slot left
            ]
        )
        await until(ran_all(ids, {0, 1, 2, 4, 5, 6}))
        nursery.cancel_scope.cancel()
    inserted = {r["id"]: (r["status"], r["worker_id"]) for r in await db.pool.fetch(INSERTED)}
    handed = [i for i in ids if inserted[i][0] == "executing"]
    assert handed == [ids[4], ids[5]]
    assert all(inserted[i] == ("runnable", None) for i in ids if i not in handed)
    assert sorted(ran) == sorted(ids[i] for i in (0, 1, 2, 4, 5, 6))
    other_row = await db.get(ids[3])
    assert other_row is not None and other_row.status == "runnable"


def ran_all(ids: list[Any], which: set[int]) -> Any:
    async def check() -> bool:
        return {ids[i] for i in which} <= set(ran)

    return check


release = trio.Event()


@durable.job(queue="ho_jobs", name="ho_block")
async def block(args: Any, ctx: durable.Context) -> None:
    await release.wait()


async def inserted_status(db: durable.Database, iid: Any) -> tuple[str, str | None]:
    rows = {r["id"]: (r["status"], r["worker_id"]) for r in await db.pool.fetch(INSERTED)}
    return rows[iid]


async def test_handoff_off_a_backlog_a_stopping_or_a_gone_runtime_takes_nothing(db: durable.Database) -> None:
    global release
    release = trio.Event()
    ran.clear()
    off = durable.Runtime(
        db, machines=[noop], queues={"ho_jobs": 4}, lease=600, poll_min=30, poll_max=30, listen=False, handoff=False
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(off.run)
        await first_pick(off)
        first = await db.insert(noop, {"n": 1})
        await until(lambda: all_done(db))
        assert off.schedulers["ho_jobs"].handed == 0
        assert await inserted_status(db, first) == ("runnable", None)
        off.stop()
        await off.wait_stopped()
        late = await db.insert(noop, {"n": 2})  # the runtime is gone: a plain runnable row
        nursery.cancel_scope.cancel()
    row = await db.get(late)
    assert row is not None and row.status == "runnable" and row.worker_id is None

    rt = durable.Runtime(
        db,
        machines=[noop, block],
        queues={"ho_jobs": 4},
        lease=600,
        poll_min=30,
        poll_max=30,
        listen=False,
        drain_timeout=30,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(rt.run)
        await first_pick(rt)
        sched = rt.schedulers["ho_jobs"]
        # its last pick filled its demand: rows are probably waiting, a new row must not overtake them
        sched.backlog = True
        behind = await db.insert(noop, {"n": 3})
        assert await inserted_status(db, behind) == ("runnable", None)
        sched.backlog = False
        # idle again: the insert woke the scheduler, whose pick of `behind` (and of `late`) may still sit in
        # its buffer, a row waiting, so offer() rightly hands nothing off (under load 1 run in 7 asserted
        # the next insert while it did); once every row has run, nothing is buffered
        await until(lambda: all_done(db))
        assert not sched.buffer
        # draining, with a step still running: it takes nothing new
        busy = await db.insert(block, {})
        assert await inserted_status(db, busy) == ("executing", rt.worker_id)
        rt.stop()
        draining = await db.insert(noop, {"n": 4})
        assert await inserted_status(db, draining) == ("runnable", None)
        assert sched.handed == 1
        release.set()
        await rt.wait_stopped()
        nursery.cancel_scope.cancel()


async def test_claims_whose_insert_answer_was_lost_are_given_back(db: durable.Database) -> None:
    """The insert claimed a row for this worker but its answer never reached the scheduler (a
    cancelled insert): the scheduler, told it may have orphans, releases the row, then runs it."""
    ran.clear()
    rt = durable.Runtime(
        db, machines=[noop], queues={"ho_jobs": 4}, lease=600, poll_min=0.05, poll_max=0.2, listen=False
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(rt.run)
        await first_pick(rt)
        sched = rt.schedulers["ho_jobs"]
        # the statement a handoff sends, with the answer thrown away
        cols = durable.client.InsertColumns()
        cols.add(durable.Insert(noop, {"n": 9}), db.registry, "test")
        rows = await db.pool.fetch(
            Q.insert_instances,
            *cols.rows(),
            None,
            cols.delay,
            None,
            db.token,
            "ho_jobs",
            rt.worker_id,
            600.0,
            1,
            cols.attributes_json,
        )
        lost = rows[0]["id"]
        assert rows[0]["lease_token"] is not None
        row = await db.get(lost)
        assert row is not None and row.status == "executing" and row.worker_id == rt.worker_id
        sched.suspect_orphans()
        await until(lambda: all_done(db))
        nursery.cancel_scope.cancel()
    assert ran == [lost]
    events = [e.event for e in await db.history(lost)]
    assert events[0] == "inserted" and "released" in events and events[-1] == "done"
