"""durable behind PgBouncer in transaction mode (docs/scaling.md): ``pooler="transaction"`` prepares no
statement and sends no session setting through the pooler, the server sets search_path, and LISTEN goes
through ``listen_dsn``, a direct connection. Skipped where the pgbouncer binary is not installed (.ci/run
installs Debian's)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
import trio

import durable
from durable import Await, Done, Machine, Next, step
from durable._pg import aio, search_path_head
from durable.errors import DatabaseUnavailable, SchemaError
from durable.migrate import drop_schema

from . import pgbouncer
from .helpers import wait_status

pytestmark = pytest.mark.trio
needs_pgbouncer = pytest.mark.skipif(pgbouncer.binary() is None, reason="pgbouncer is not installed")


@durable.job(queue="pgb_jobs", name="pgb_noop")
async def noop(args: Any, ctx: durable.Context) -> Any:
    return args


class Payment(Machine, queue="pgb_pay", name="pgb_payment"):
    @step
    async def wait(self, ctx):
        sig = ctx.signal("paid")
        if sig is None:
            return Await("paid", ctx.state)
        return Next("ship", {**ctx.state, "amount": sig.payload["amount"]})

    @step
    async def ship(self, ctx):
        return Done(ctx.state)


@pytest.fixture
def bouncer(pg_dsn: str, schema_name: str) -> Iterator[str]:
    """PgBouncer (transaction mode, 2 server connections) whose server connections start in the test's
    schema, as `ALTER ROLE ... SET search_path` would make them."""
    if pgbouncer.binary() is None:
        pytest.skip("pgbouncer is not installed")
    with pgbouncer.pgbouncer(pg_dsn, connect_query=f"set search_path = {schema_name}, public") as dsn:
        yield dsn


@pytest.fixture
async def pooled(bouncer: str, pg_dsn: str, schema_name: str) -> AsyncIterator[durable.Database]:
    """A migrated Database through PgBouncer (migrations included), LISTENing directly."""
    async with durable.connect(
        bouncer, schema=schema_name, pooler="transaction", listen_dsn=pg_dsn, machines=[noop, Payment], max_size=8
    ) as db:
        try:
            yield db
        finally:
            with trio.CancelScope(shield=True):
                await drop_schema(db.pool, schema_name)


async def listeners(dsn: str, channel: str) -> int:
    """How many server sessions LISTEN on ``channel`` (read through a direct connection)."""

    async def count() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(
                await conn.fetchval(
                    "select count(*) from pg_stat_activity where query ilike 'listen%' and position($1 in query) > 0",
                    channel,
                )
            )
        finally:
            await conn.close()

    return await aio(count)()


@needs_pgbouncer
async def test_the_engine_runs_through_pgbouncer_in_transaction_mode(pooled: durable.Database) -> None:
    """Inserts, picks, outcome commits (both forms), signals and results through 2 server connections shared
    by 8 client connections. With asyncpg's statement cache (the default mode) the second statement on a
    reused server connection fails: 'prepared statement "__asyncpg_stmt_1__" does not exist'."""
    db = pooled
    assert db.pool.pooler == "transaction" and db.pool.generic is db.pool.raw and db.pool.listen_pool is not db.pool.raw
    jobs = await db.insert_many([durable.Insert(noop, {"n": i}) for i in range(300)])
    payments = [await db.insert(Payment, {"order": i}) for i in range(10)]
    rt = durable.Runtime(db, queues={"pgb_jobs": 50, "pgb_pay": 5})
    async with trio.open_nursery() as nursery:
        await nursery.start(rt.run)
        with trio.fail_after(120):
            for i, iid in enumerate(payments):  # half seen at the first step (the full `complete`), half parked
                if i % 2:
                    await wait_status(db, iid, "awaiting_signal", timeout=60)
                await db.signal(iid, "paid", {"amount": iid})
            results = [await db.result(iid) for iid in jobs]
            paid = [await db.result(iid) for iid in payments]
        nursery.cancel_scope.cancel()
    assert results == [{"n": i} for i in range(300)]
    assert paid == [{"order": i, "amount": iid} for i, iid in enumerate(payments)]


@needs_pgbouncer
async def test_listen_goes_through_the_direct_connection(
    pooled: durable.Database, bouncer: str, pg_dsn: str, schema_name: str
) -> None:
    """An idle runtime that polls once an hour runs a job inserted by another process (another Database)
    at once: the NOTIFY of the insert, committed through PgBouncer, reaches its LISTEN on the direct
    connection. Without listen_dsn the LISTEN would sit on a server connection PgBouncer hands to others."""
    db = pooled
    ran = trio.Event()
    rt = durable.Runtime(
        db, queues={"pgb_jobs": 5}, poll_min=3600, poll_max=3600, handoff=False, on_step=lambda *_: ran.set()
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(rt.run)
        with trio.fail_after(60):
            while await listeners(pg_dsn, db.channel) == 0:
                await trio.sleep(0.02)
        async with durable.connect(
            bouncer,
            schema=schema_name,
            pooler="transaction",
            listen_dsn=pg_dsn,
            machines=[noop],
            migrate=False,
            max_size=2,
        ) as other:
            await other.insert(noop, {"from": "elsewhere"})
        with trio.fail_after(60):  # the hint, not the hourly poll
            await ran.wait()
        nursery.cancel_scope.cancel()


@needs_pgbouncer
async def test_without_pooler_mode_the_refusal_names_the_setting(bouncer: str, schema_name: str) -> None:
    with pytest.raises(DatabaseUnavailable, match="pooler='transaction'"):
        async with durable.connect(bouncer, schema=schema_name):
            pass


@needs_pgbouncer
async def test_a_search_path_the_server_does_not_set_is_refused(pg_dsn: str, schema_name: str) -> None:
    """Behind the pooler durable cannot set search_path; migrating with another schema first would create the
    tables there."""
    with pgbouncer.pgbouncer(pg_dsn) as plain, pytest.raises(SchemaError, match="ALTER ROLE"):
        async with durable.connect(plain, schema=schema_name, pooler="transaction", listen_dsn=pg_dsn):
            pass


async def test_pooler_settings_are_checked(pg_dsn: str, schema_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="needs listen_dsn"):
        async with durable.connect(pg_dsn, schema=schema_name, pooler="transaction"):
            pass
    with pytest.raises(ValueError, match="pooler must be"):
        async with durable.connect(pg_dsn, schema=schema_name, pooler="statement", listen_dsn=pg_dsn):
            pass
    monkeypatch.setenv("DURABLE_POOLER", "transaction")
    with pytest.raises(ValueError, match="needs listen_dsn"):
        async with durable.connect(pg_dsn, schema=schema_name):
            pass


async def test_search_path_head() -> None:
    assert search_path_head("durable, public") == "durable"
    assert search_path_head('"My""Schema", public') == 'My"Schema'
    assert search_path_head('"$user", public') == "$user"
    assert search_path_head("") == ""
