"""``durable demo --schema X`` never drops a schema holding instances it did not make (issue 14, item 9):
refused with exit 2 and one ``error:`` line unless ``--force``; a schema the demo made is reused."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from click.testing import CliRunner, Result

import durable
from durable import Done, Machine, step
from durable.cli import main
from durable.migrate import drop_schema
from durable.sql import Query

COMMENT = Query(
    "test_demo_comment", "select obj_description(to_regnamespace($1), 'pg_namespace')", "The comment on schema $1."
)
MACHINES = Query(
    "test_demo_machines",
    "select machine, count(*) as n from instances group by 1 order by 1",
    "Instances by machine in the pool's schema.",
)


class Payroll(Machine, queue="payroll"):
    """Someone's real work, in the schema the demo is pointed at."""

    @step
    async def pay(self, ctx):
        return Done()


@pytest.fixture
def schema(pg_dsn: str) -> Iterator[str]:
    name = f"t_demo_{uuid.uuid4().hex[:10]}"
    yield name

    async def drop() -> None:
        async with durable.connect(pg_dsn, schema=name, migrate=False) as db:
            await drop_schema(db.pool, name)

    trio.run(drop)


def sync(dsn: str, schema: str, work: Any) -> Any:
    """Run ``work(db)`` on the schema in a trio run of its own (the CLI runs its own too)."""

    async def go() -> Any:
        async with durable.connect(dsn, schema=schema, migrate=False, machines=[Payroll]) as db:
            return await work(db)

    return trio.run(go)


def demo(dsn: str, schema: str, *extra: str) -> Result:
    return CliRunner().invoke(main, ["demo", "--dsn", dsn, "--schema", schema, "-n", "3", *extra])


async def real_instance(db: durable.Database) -> int:
    await db.migrate()
    iid = await db.insert(Payroll, {"month": "2025-01"})
    assert iid is not None
    return iid


async def machines(db: durable.Database) -> dict[str, int]:
    return {r["machine"]: r["n"] for r in await db.pool.fetch(MACHINES)}


async def comment(db: durable.Database) -> str | None:
    return await db.pool.fetchval(COMMENT, db.pool.schema)  # type: ignore[no-any-return]


def test_a_schema_with_real_instances_is_refused_and_kept(pg_dsn: str, schema: str) -> None:
    iid = sync(pg_dsn, schema, real_instance)
    result = demo(pg_dsn, schema)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"error: schema {schema!r} holds 1 instances that durable demo did not make: choose another --schema, "
        "or add --force to drop it with everything in it"
    ]
    assert result.stdout == ""  # refused before it started
    assert sync(pg_dsn, schema, machines) == {"Payroll": 1}
    assert sync(pg_dsn, schema, lambda db: db.get(iid)).machine == "Payroll"


def test_force_drops_it_and_runs(pg_dsn: str, schema: str) -> None:
    sync(pg_dsn, schema, real_instance)
    result = demo(pg_dsn, schema, "--force")
    assert result.exit_code == 0, result.output
    found = sync(pg_dsn, schema, machines)
    assert "Payroll" not in found and found["Checkout"] == 3
    assert sync(pg_dsn, schema, comment) == "durable demo"  # the demo's now


def test_a_schema_the_demo_made_is_reused_without_force(pg_dsn: str, schema: str) -> None:
    first = demo(pg_dsn, schema)  # a new schema: made and marked
    assert first.exit_code == 0, first.output
    assert sync(pg_dsn, schema, comment) == "durable demo"
    again = demo(pg_dsn, schema)
    assert again.exit_code == 0, again.output
    assert sync(pg_dsn, schema, machines)["Checkout"] == 3  # started afresh, not 6


def test_a_schema_without_instances_is_used_as_it_is(pg_dsn: str, schema: str) -> None:
    async def migrated_and_empty(db: durable.Database) -> None:
        await db.migrate()

    sync(pg_dsn, schema, migrated_and_empty)
    result = demo(pg_dsn, schema)
    assert result.exit_code == 0, result.output
    assert sync(pg_dsn, schema, machines)["Checkout"] == 3
    assert sync(pg_dsn, schema, comment) is None  # not dropped, not taken over


def test_real_work_added_to_a_schema_the_demo_made_is_never_dropped(pg_dsn: str, schema: str) -> None:
    """The demo's default schema is the one real work lands in too: once anything that is not the demo's
    is there, the demo refuses, however the schema was made (no mark makes a schema disposable)."""
    first = demo(pg_dsn, schema)
    assert first.exit_code == 0, first.output
    iid = sync(pg_dsn, schema, real_instance)
    again = demo(pg_dsn, schema)
    assert again.exit_code == 2 and "1 instances that durable demo did not make" in again.stderr
    assert sync(pg_dsn, schema, lambda db: db.get(iid)).machine == "Payroll"
    assert sync(pg_dsn, schema, machines)["Checkout"] == 3  # the demo's own are left as they were too


def test_a_rerun_clears_only_the_demos_instances(pg_dsn: str, schema: str) -> None:
    """What the schema holds besides instances (streams here) survives a demo re-run."""
    first = demo(pg_dsn, schema)
    assert first.exit_code == 0, first.output
    mark = Query(
        "test_demo_stream",
        "insert into streams (path, content_type) values ('kept', 'text/plain') returning id",
        "A stream row.",
    )
    count = Query("test_demo_streams", "select count(*) from streams", "Streams in the schema.")
    sync(pg_dsn, schema, lambda db: db.pool.fetchval(mark))
    again = demo(pg_dsn, schema)
    assert again.exit_code == 0, again.output
    assert sync(pg_dsn, schema, machines)["Checkout"] == 3
    assert sync(pg_dsn, schema, lambda db: db.pool.fetchval(count)) == 1


def test_the_payment_actor_survives_an_order_that_already_ended(pg_dsn: str, schema: str) -> None:
    """On a busy box a declined order can end before the actor's repeat payment: the repeat is a dropped
    duplicate, not an error that ends the demo (a fresh clone beside another suite hit it)."""
    import random
    from collections import Counter

    from durable.demo import Checkout, pay

    async def ended_order(db: durable.Database) -> Counter[str]:
        await db.migrate()
        db.registry.add(Checkout)
        iid = await db.insert(Checkout, {"order": 1, "items": 1})
        assert iid is not None
        await db.cancel(iid, "ended before its payment")
        sent: Counter[str] = Counter()
        await pay(db, [iid], random.Random(1), sent)
        return sent

    assert sync(pg_dsn, schema, ended_order) == {"duplicate": 1}
