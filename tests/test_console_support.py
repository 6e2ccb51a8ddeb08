"""Data for the console tests, written by the real engine (trio) before the asyncio part runs.

* :func:`fill_live` runs real runtimes: checkouts that await a signal or fan out, mail jobs that end done
  or failed, one scheduled for later, one cancelled, and one step left executing by a killed worker.
* :func:`fill_frozen` writes a deterministic data set through the engine's statements with a fixed
  clock (ids, lease tokens, timestamps and durations are all the same on every run) for snapshots.

No tests here; the console test modules import these helpers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import trio

import durable
from durable import Await, Child, Done, Insert, Machine, Next, Spawn, Stop, job, step
from durable.client import InsertColumns
from durable.migrate import drop_schema
from durable.runtime.claim import Claim, Encoded
from durable.runtime.flusher import Flusher
from durable.sql import Q, Query


class Ship(Machine, queue="shipping"):
    @step
    async def go(self, ctx: Any) -> Any:
        return Done({"shipped": ctx.state["n"]})


class Checkout(Machine, queue="orders"):
    class State(durable.State):
        order: int
        n: int = 0

    @step
    async def start(self, ctx: Any) -> Any:
        ctx.state.n += 1
        return Next("pay", ctx.state)

    @step
    async def pay(self, ctx: Any) -> Any:
        if ctx.signal("paid") is None:
            return Await("paid", ctx.state)
        return Spawn("join", [Child(Ship, {"n": i}) for i in range(2)], ctx.state)

    @step
    async def join(self, ctx: Any) -> Any:
        return Done({"children": len(ctx.children)})


@job(queue="mail")
async def send_mail(args: Any, ctx: Any) -> Any:
    if args.get("fail"):
        return Stop("smtp: connection refused")
    return {"sent": args["to"]}


class Slow(Machine, queue="slow"):
    @step
    async def crunch(self, ctx: Any) -> Any:
        await trio.sleep_forever()


class Timed(Machine, queue="timers"):
    """A durable timer (``sleep``) or an await of two names with a timeout (issue 17 items 2, 3)."""

    @step
    async def start(self, ctx: Any) -> Any:
        if ctx.state["sleep"]:
            return Next("later", ctx.state, delay=3600)
        return Await(["ok", "no"], ctx.state, timeout=3600, timeout_step="later")

    @step
    async def later(self, ctx: Any) -> Any:
        return Done()


@job(queue="reports")
async def report(args: Any, ctx: Any) -> Any:
    return {"tick": args}


MACHINES = [Checkout, Ship, send_mail, Slow, Timed, report]


@dataclass
class Live:
    """Ids of the interesting instances of :func:`fill_live`."""

    awaiting: list[int] = field(default_factory=list)  # checkouts awaiting 'paid'
    parents: list[int] = field(default_factory=list)  # checkouts awaiting their children
    done: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    scheduled: int = 0
    cancelled: int = 0
    executing: int = 0
    schedule: str = "every-second"  # a schedule that ran (its last instance done) and a yearly one
    yearly: str = "new-year"
    edited: str = "edited-by-hand"  # a schedule row whose times are 'infinity' and '-infinity'
    sleeping: int = 0  # a durable timer: runnable at 'later' in an hour
    timing_out: int = 0  # awaits 'ok' or 'no', timeout in an hour


async def fill_live(dsn: str, schema: str) -> Live:
    """Fill ``schema`` with the real runtime; returns the ids the tests look at."""
    out = Live()
    async with durable.connect(dsn, schema=schema, machines=MACHINES) as db:
        orders = [await db.insert(Checkout, {"order": i}, partition_key=f"order:{i}") for i in range(5)]
        mail = [await db.insert(send_mail, {"to": f"user{i}@example.com", "fail": i % 3 == 0}) for i in range(6)]
        out.scheduled = await db.insert(send_mail, {"to": "later@example.com"}, schedule_in=3600) or 0
        victim = await db.insert(send_mail, {"to": "cancelled@example.com"}, schedule_in=3600) or 0
        await db.cancel(victim, "no longer needed")
        out.cancelled = victim
        out.sleeping = await db.insert(Timed, {"sleep": True}) or 0
        out.timing_out = await db.insert(Timed, {"sleep": False}) or 0
        async with trio.open_nursery() as nursery:
            schedules = [
                durable.Schedule("* * * * * *", report, state={"n": 1}, name=out.schedule),
                durable.Schedule("0 0 1 1 *", report, name=out.yearly, tz="Europe/Paris"),
            ]
            rt = await nursery.start(
                durable.Runtime(
                    db,
                    queues={"orders": 2, "mail": 2, "timers": 2, "reports": 1},
                    lease=30,
                    worker_id="runtime-main",
                    schedules=schedules,
                ).run
            )
            with trio.fail_after(20):  # a tick fired and its instance ended
                while not any(
                    r["name"] == out.schedule and r["last_status"] == "done"
                    for r in await db.pool.fetch(Q.list_schedules)
                ):
                    await trio.sleep(0.05)
            await _wait_status(db, out.timing_out, "awaiting_signal")
            with trio.fail_after(20):
                while (await db.get(out.sleeping)).step != "later":
                    await trio.sleep(0.02)
            for iid in orders:
                await _wait_status(db, iid, "awaiting_signal")
            for iid in orders[:2]:
                assert iid is not None
                await db.signal(iid, "paid", {"amount": 10}, dedup_key=f"pay-{iid}")
            for iid in orders[:2]:
                await _wait_status(db, iid, "awaiting_children")
            for iid in mail:
                await _wait_status(db, iid, "done", "failed")
            rt.stop()
        # a worker killed mid-step leaves its claim executing until the lease expires
        slow = await db.insert(Slow, {})
        assert slow is not None
        out.executing = slow
        async with trio.open_nursery() as nursery:
            killed = await nursery.start(
                durable.Runtime(db, queues={"slow": 3}, lease=600, worker_id="runtime-killed").run
            )
            await _wait_status(db, slow, "executing")
            while not killed.schedulers["slow"].in_flight:
                await trio.sleep(0.01)
            await killed.beat()
            killed.kill()
        await db.pool.execute(
            Query(
                "edit",
                "insert into schedules (name, cron, tz, machine, catch_up, last_tick, "
                "next_tick, last_run, updated_at) values ($1, '@daily', 'UTC', "
                "'report', 'latest', now(), 'infinity', '-infinity', now())",
                "",
            ),
            out.edited,
        )
        out.awaiting = [i for i in orders[2:] if i is not None]
        out.parents = [i for i in orders[:2] if i is not None]
        for iid in mail:
            assert iid is not None
            (out.failed if (await db.get(iid)).status == "failed" else out.done).append(iid)
    return out


async def _wait_status(db: durable.Database, iid: int | None, *statuses: str) -> None:
    assert iid is not None
    with trio.fail_after(20):
        while (await db.get(iid)).status not in statuses:
            await trio.sleep(0.02)


async def wake_runtime(dsn: str, schema: str, iid: int, until: str) -> None:
    """Run a runtime on 'orders' until instance ``iid`` reaches status ``until``."""
    async with durable.connect(dsn, schema=schema, machines=MACHINES) as db, trio.open_nursery() as nursery:
        rt = await nursery.start(durable.Runtime(db, queues={"orders": 2}, lease=30, worker_id="runtime-wake").run)
        await _wait_status(db, iid, until)
        rt.stop()


async def drop(dsn: str, schema: str) -> None:
    async with durable.connect(dsn, schema=schema, migrate=False) as db:
        await drop_schema(db.pool, schema)


# -- the frozen data set ---------------------------------------------------------------------------
T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
FROZEN_NOW = T0 + timedelta(seconds=60)  # the console's frozen clock
SNAP_SCHEMA = "console_snap"


class FixedClock:
    """A clock the fill moves by hand: every statement sees exactly this time."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime | None:
        return self.at

    def set(self, seconds: float) -> None:
        self.at = T0 + timedelta(seconds=seconds)


def _gauges(**per_queue: dict[str, int]) -> str:
    import json

    base = {
        "concurrency": 0,
        "prefetch": 0,
        "in_flight": 0,
        "buffered": 0,
        "steps": 0,
        "done": 0,
        "failed": 0,
        "fenced": 0,
        "picks": 0,
    }
    return json.dumps({q: {**base, **g} for q, g in per_queue.items()}, sort_keys=True)


async def fill_frozen(dsn: str, schema: str = SNAP_SCHEMA) -> None:
    """The snapshot data set: instances 1-8 in every interesting status (1 awaits with a timeout, 6 wakes in
    an hour), two workers (one gone), two schedules (one ran).
    Drops and recreates ``schema`` first."""
    clock = FixedClock(T0)
    async with durable.connect(dsn, schema=schema, migrate=False) as pre:
        await drop_schema(pre.pool, schema)
    async with durable.connect(dsn, schema=schema, machines=MACHINES, clock=clock) as db:
        pool = db.pool
        flusher = Flusher(pool, "worker-a", clock)

        async def pick(queue: str, n: int, at: float) -> list[Claim]:
            clock.set(at)
            rows = await pool.fetch(Q.pick, queue, n, "worker-a", 600.0, clock.now(), None, None)
            return sorted((Claim.from_row(r) for r in rows), key=lambda c: c.id)

        async def commit(at: float, *items: tuple[Claim, Encoded]) -> None:
            clock.set(at)
            await flusher.commit_now(list(items))

        await db.insert(Checkout, {"order": 1}, partition_key="order:1")  # 1: awaits 'paid', inbox 1
        await db.insert(Checkout, {"order": 2}, partition_key="order:2")  # 2: executing
        await db.insert(Checkout, {"order": 3}, partition_key="order:3")  # 3: awaiting children 7, 8
        await db.insert(send_mail, {"to": "a@example.com"})  # 4: done
        await db.insert(send_mail, {"to": "b@example.com", "fail": True})  # 5: failed
        await db.insert(send_mail, {"to": "later@example.com"}, schedule_in=3600)  # 6: scheduled

        first = await pick("orders", 3, 1)
        await commit(
            2,
            *[
                (
                    c,
                    Encoded(
                        "next", step="pay", state=_state(c, n=1), detail={"next": "pay", "duration_ms": 12.5 + c.id}
                    ),
                )
                for c in first
            ],
        )
        second = await pick("orders", 3, 3)
        kids = InsertColumns()
        for i in range(2):
            kids.add(Insert(Ship, {"n": i}), db.registry, "snapshot child")
        await commit(
            4,
            (
                second[0],
                Encoded(
                    "await",
                    state=None,
                    awaits="paid",
                    timeout=3600.0,
                    timeout_step="pay",
                    detail={"signal": "paid", "wake_step": None, "duration_ms": 3.25},
                ),
            ),
            (
                second[2],
                Encoded(
                    "spawn", step="join", children=kids, detail={"next": "join", "children": 2, "duration_ms": 7.0}
                ),
            ),
        )
        mail = await pick("mail", 5, 5)
        await commit(
            6,
            (mail[0], Encoded("done", result='{"sent": "a@example.com"}', detail={"duration_ms": 41.0})),
            (
                mail[1],
                Encoded(
                    "stop",
                    error="smtp: connection refused",
                    detail={"error": "smtp: connection refused", "duration_ms": 1500.0},
                ),
            ),
        )
        clock.set(10)
        await db.signal(1, "note", {"text": "customer called"}, dedup_key="note-1")
        clock.set(-300)
        await pool.execute(
            Q.register_worker,
            "worker-b",
            "host-2",
            202,
            ["mail"],
            _gauges(mail={"concurrency": 2, "prefetch": 2, "in_flight": 1, "steps": 9}),
            clock.now(),
        )
        clock.set(0)
        await pool.execute(
            Q.register_worker, "worker-a", "host-1", 101, ["orders", "mail"], _gauges(orders={}, mail={}), clock.now()
        )
        # two schedules: one that ran at T0 (its instance is #4, done) and one that has not run yet
        clock.set(0)
        await pool.execute(
            Q.register_schedules,
            ["mail-digest", "new-year"],
            ["*/5 * * * *", "0 0 1 1 *"],
            ["UTC", "Europe/Paris"],
            ["send_mail", "send_mail"],
            ["latest", "none"],
            [T0 + timedelta(minutes=5), datetime(2030, 12, 31, 23, 0, tzinfo=UTC)],
            clock.now(),
        )
        await pool.execute(Q.advance_schedules, ["mail-digest"], [T0], [4], [T0 + timedelta(minutes=5)], clock.now())
        clock.set(55)
        await pool.execute(
            Q.heartbeat,
            [2],
            [second[1].lease_token],
            600.0,
            clock.now(),
            "worker-a",
            _gauges(
                orders={"concurrency": 4, "prefetch": 4, "in_flight": 1, "steps": 5, "done": 0, "picks": 2},
                mail={"concurrency": 2, "prefetch": 2, "steps": 2, "done": 1, "failed": 1, "picks": 1},
            ),
        )


def _state(c: Claim, **changes: Any) -> str:
    import json

    value = json.loads(c.state_json)
    value.update(changes)
    return json.dumps(value)


def run_trio(fn: Any, *args: Any) -> Any:
    """Run a trio coroutine function to completion from synchronous code (a fixture)."""
    return trio.run(fn, *args)
