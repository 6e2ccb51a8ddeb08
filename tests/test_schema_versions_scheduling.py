"""Migrations, machine versions side by side, scheduling (schedule_at/in, priority), the Clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import trio

import durable
from durable import Done, Machine, Next, step
from durable.migrate import LATEST_VERSION, drop_schema, migrate, migrated_version
from durable.sql import MIGRATIONS, Query

from .helpers import pick, row, wait_status
from .helpers import step as run_step

pytestmark = pytest.mark.trio


async def test_migrate_is_idempotent_and_versioned(pg_dsn: str, schema_name: str) -> None:
    async with durable.connect(pg_dsn, schema=schema_name, migrate=False) as db:
        try:
            assert await migrated_version(db.pool) == 0
            assert await migrate(db.pool) == [m.version for m in MIGRATIONS]
            assert await migrated_version(db.pool) == LATEST_VERSION
            assert await migrate(db.pool) == []  # nothing left to apply
            async with trio.open_nursery() as n:  # concurrent migrators serialize on an advisory lock
                for _ in range(3):
                    n.start_soon(migrate, db.pool)
            assert await migrated_version(db.pool) == LATEST_VERSION
        finally:
            await drop_schema(db.pool, schema_name)


async def test_schemas_are_isolated(pg_dsn: str, schema_name: str, db: durable.Database) -> None:
    other = schema_name + "_b"
    async with durable.connect(pg_dsn, schema=other) as db2:
        try:
            await db2.insert("X", {}, step="s")
            count = Query("t_count", "select count(*) from instances", "")
            assert await db2.pool.fetchval(count) == 1
            assert await db.pool.fetchval(count) == 0
        finally:
            await drop_schema(db2.pool, other)


class OrderV1(Machine, name="Order", version=1):
    @step
    async def start(self, ctx):
        return Next("finish", {"v": 1})

    @step
    async def finish(self, ctx):
        return Done({"by": "v1", **ctx.state})


class OrderV2(Machine, name="Order", version=2, initial="begin"):
    @step
    async def begin(self, ctx):
        return Done({"by": "v2"})


async def test_old_versions_keep_running_on_their_definition(db: durable.Database) -> None:
    old = await db.insert(OrderV1, {})
    async with trio.open_nursery() as n:
        await n.start(durable.Runtime(db, machines=[OrderV1, OrderV2]).run)
        await wait_status(db, old, "done")
        new = await db.insert("Order", {})  # by name: the latest registered version
        await wait_status(db, new, "done")
        n.cancel_scope.cancel()
    assert (await db.get(old)).result == {"by": "v1", "v": 1}
    assert (await db.get(new)).version == 2 and (await db.get(new)).result == {"by": "v2"}


class Tick(Machine, queue="sched"):
    @step
    async def go(self, ctx):
        return Done(ctx.state)


async def test_schedule_in_and_at_delay_eligibility(db: durable.Database) -> None:
    db.registry.add(Tick)
    later = await db.insert(Tick, {"n": 1}, schedule_in=3600)
    at = await db.insert(Tick, {"n": 2}, schedule_at=datetime.now(UTC) + timedelta(hours=2))
    now = await db.insert(Tick, {"n": 3})
    assert [c.id for c in await pick(db, "sched")] == [now]
    r1, r2 = await row(db, later), await row(db, at)
    assert timedelta(minutes=59) < r1["eligible_at"] - r1["inserted_at"] <= timedelta(hours=1)
    assert r2["eligible_at"] > r1["eligible_at"]


async def test_priority_orders_the_pick(db: durable.Database) -> None:
    db.registry.add(Tick)
    low = await db.insert(Tick, {}, priority=5)
    high = await db.insert(Tick, {}, priority=-1)
    mid = await db.insert(Tick, {})
    assert [c.id for c in await pick(db, "sched", 3)] == [high, mid, low]


async def test_virtual_clock_drives_sql_time(db: durable.Database) -> None:
    """The injected clock's `now` is what the statements use (the simulator relies on it)."""
    db.registry.add(Tick)
    epoch = datetime(2031, 5, 1, tzinfo=UTC)
    db.clock = durable.VirtualClock(epoch)
    iid = await db.insert(Tick, {}, schedule_in=10)
    r = await row(db, iid)
    assert r["inserted_at"].year == 2031 and r["eligible_at"] - r["inserted_at"] == timedelta(seconds=10)
    assert await pick(db, "sched") == []  # virtual now < eligible_at
    claim_time = durable.VirtualClock(epoch + timedelta(seconds=11))
    db.clock = claim_time
    claim = (await pick(db, "sched"))[0]
    _, committed = await run_step(db, claim)
    assert committed.status == "done"
