"""A postmaster SIGKILLed mid-run (issue 14, item 6). The test's own embedded server, reached the way a user
reaches it (``durable.connect()`` without a DSN, ``$DURABLE_HOME`` pointing at a temporary folder): the
process using it restarts it, the runtime's loops back off with one log line per change of state, and every
checkout still finishes exactly once."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import durable
from durable import Await, Child, Done, Machine, Next, Spawn, embedded, step
from durable.errors import DatabaseUnavailable
from durable.sql import Query

from .locks import holding

pytestmark = pytest.mark.trio

ORDERS = 500

DONE_BY_MACHINE = Query(
    "test_dead_db_done",
    "select machine, status::text as status, count(*) as n from instances group by 1, 2",
    "Instances by machine and status.",
)
DONE_EVENTS = Query(
    "test_dead_db_done_events",
    "select i.machine, count(h.*) as n from instances i left join history h on h.instance_id = i.id"
    " and h.event = 'done' group by i.id, i.machine having count(h.*) <> 1",
    "Instances without exactly one 'done' history row.",
)
CHILDREN = Query(
    "test_dead_db_children",
    "select o.id, count(c.*) as n from instances o left join instances c on c.parent_id = o.id"
    " where o.machine = 'DeadDbOrder' group by o.id having count(c.*) <> 1",
    "Orders without exactly one parcel child.",
)


class DeadDbParcel(Machine, queue="dd_ship"):
    @step
    async def ship(self, ctx):
        return Done({"parcel": ctx.state["order"]})


class DeadDbOrder(Machine, queue="dd_orders", initial="reserve"):
    """A checkout: reserve, wait for the payment signal, ship one parcel as a child, finish."""

    @step
    async def reserve(self, ctx):
        return Next("pay", ctx.state)

    @step
    async def pay(self, ctx):
        if ctx.signal("paid") is None:
            return Await("paid", ctx.state)
        return Spawn("close", [Child(DeadDbParcel, {"order": ctx.state["order"]})], ctx.state)

    @step
    async def close(self, ctx):
        return Done({"order": ctx.state["order"], "shipped": [c.status for c in ctx.children]})


@pytest.fixture
def embedded_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private embedded server's home for this test (never the shared one); stopped and removed after."""
    home = Path(tempfile.mkdtemp(prefix="durable-deaddb-"))
    monkeypatch.setenv("DURABLE_HOME", str(home))
    monkeypatch.delenv("DURABLE_DSN", raising=False)
    try:
        yield home
    finally:
        try:
            embedded.release(home / "pgdata")
            embedded.stop(home / "pgdata")  # whatever the test left running
        finally:
            shutil.rmtree(home, ignore_errors=True)


async def answered(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Call the database until it answers (the test's own calls ride out the outage too)."""
    while True:
        try:
            return await fn(*args, **kwargs)
        except DatabaseUnavailable:
            await trio.sleep(0.05)


async def test_killed_postmaster_is_restarted_and_every_checkout_finishes_once(
    embedded_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="durable.embedded")
    folder = embedded_home / "pgdata"
    log: list[str] = []
    async with durable.connect(schema="deaddb", machines=[DeadDbOrder, DeadDbParcel]) as db:
        assert str(folder) in db.pool.dsn  # the private embedded server, through the public path
        runtime = durable.Runtime(db, queues={"dd_orders": 20, "dd_ship": 20}, lease=5.0, on_error=log.append)
        ids = [
            i
            for i in await db.insert_many([durable.Insert(DeadDbOrder, {"order": n}) for n in range(ORDERS)])
            if i is not None
        ]
        assert len(ids) == ORDERS

        async def counts() -> dict[tuple[str, str], int]:
            return {(r["machine"], r["status"]): r["n"] for r in await answered(db.pool.fetch, DONE_BY_MACHINE)}

        async def pay() -> None:  # a steady payer, so that the kill lands mid-run
            for n, iid in enumerate(ids):
                await answered(db.signal, iid, "paid", {"n": n}, dedup_key=f"pay-{n}")
                await trio.sleep(0.003)

        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            nursery.start_soon(pay)
            with trio.fail_after(30):
                while (await counts()).get(("DeadDbOrder", "done"), 0) < ORDERS // 5:
                    await trio.sleep(0.02)
            victim = int((folder / "postmaster.pid").read_text().split()[0])
            os.kill(victim, signal.SIGKILL)
            assert (await counts()).get(("DeadDbOrder", "done"), 0) < ORDERS  # mid-run (counted once back)
            with trio.fail_after(45):
                while (await counts()).get(("DeadDbOrder", "done"), 0) < ORDERS:
                    await trio.sleep(0.05)
                while (await counts()).get(("DeadDbParcel", "done"), 0) < ORDERS:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

        # every checkout finished exactly once: one done row each, one parcel each, nothing else left
        final = await counts()
        assert final == {("DeadDbOrder", "done"): ORDERS, ("DeadDbParcel", "done"): ORDERS}, final
        assert await db.pool.fetch(DONE_EVENTS) == []
        assert await db.pool.fetch(CHILDREN) == []

        # the supervisor started a new postmaster; the runtime saw the outage and said so once each way
        assert int((folder / "postmaster.pid").read_text().split()[0]) != victim
        assert any("restarted after" in r.getMessage() for r in caplog.records), caplog.text
        assert len(log) <= 8, log  # a line per change of state, not one per failed attempt
        down = [m for m in log if m.startswith("database unavailable")]
        back = [m for m in log if m.startswith("database available again")]
        assert 1 <= len(down) <= 3 and len(back) == len(down), log
        assert runtime.outage.failures > len(down)  # attempts were made (and backed off), not each logged

    # a server stopped on purpose (durable db stop) leaves no postmaster.pid: not a crash, not restarted
    assert embedded.crashed(folder) is None
    await trio.to_thread.run_sync(embedded.stop, folder)
    assert embedded.crashed(folder) is None and not embedded.status(folder)["running"]


async def test_a_connection_killed_mid_statement_is_database_unavailable(db: durable.Database) -> None:
    """The server ending a connection during a statement (57P01 here; a dead postmaster gives SQLSTATE class
    08) reaches the caller as DatabaseUnavailable, never as the driver's error."""
    marker = f"t_{uuid.uuid4().hex[:12]}"
    sleep = Query("test_dead_db_sleep", f"select pg_sleep(30) as {marker}", "A statement to kill.")
    find = Query(
        "test_dead_db_find",
        "select pid from pg_stat_activity where query like '%' || $1 || '%' and pid <> pg_backend_pid()",
        "The backend running the statement marked $1.",
    )
    kill = Query("test_dead_db_kill", "select pg_terminate_backend($1)", "End backend $1.")
    caught: list[BaseException] = []

    async def victim() -> None:
        try:
            await db.pool.fetchval(sleep)
        except Exception as exc:
            caught.append(exc)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(victim)
            while not (pids := [r["pid"] for r in await db.pool.fetch(find, marker)]):
                await trio.sleep(0.02)
            assert await db.pool.fetchval(kill, pids[0])
    assert len(caught) == 1 and isinstance(caught[0], DatabaseUnavailable), caught
    assert await db.pool.fetchval(Query("test_dead_db_one", "select 1", "")) == 1  # the pool carries on


async def test_a_callers_mistake_is_not_taken_for_a_lost_database(db: durable.Database) -> None:
    """asyncpg reports a wrong argument count or a bad argument as an InterfaceError, the class it also uses
    for a dropped connection: those are the caller's mistakes, raised as they are, never DatabaseUnavailable
    (which the runtime would wait out as an outage)."""
    import asyncpg

    two = Query("test_two_args", "select $1::int + $2::int", "Two arguments (test).")
    with pytest.raises(asyncpg.InterfaceError) as wrong_count:
        await db.pool.fetchval(two, 1)
    assert not isinstance(wrong_count.value, DatabaseUnavailable)
    with pytest.raises(asyncpg.exceptions.DataError):  # an argument that does not encode: SQLSTATE 22000
        await db.pool.fetchval(two, "one", 2)
    assert await db.pool.fetchval(two, 1, 2) == 3  # the pool carries on


class DeadDbStart(Machine, queue="dd_start"):
    @step
    async def run(self, ctx):
        return Done(ctx.state["n"] + 1)


async def test_a_runtime_starts_through_a_killed_connection(
    db: durable.Database, pg_dsn: str, schema_name: str
) -> None:
    """The server ending the connection of the runtime's registration (here while it waits on a lock) is
    waited out like an outage of any loop: the runtime registers on another connection, starts and runs.
    Before, the registration's DatabaseUnavailable ended the runtime (a simulator worker process died of it
    at startup: test_worker_processes_are_killed_and_the_run_still_converges)."""
    kill = Query("test_dead_db_kill_start", "select pg_terminate_backend($1)", "End backend $1.")
    runtime = durable.Runtime(db, machines=[DeadDbStart], queues={"dd_start": 1})
    started = trio.Event()

    async def start(nursery: trio.Nursery) -> None:
        await nursery.start(runtime.run)
        started.set()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            async with holding(pg_dsn, "lock table workers in exclusive mode", schema=schema_name) as held:
                nursery.start_soon(start, nursery)
                await held.until_waited_on(30)  # the registration's insert waits on the lock
                waiting = await held.waiting()
                assert len(waiting) == 1 and await db.pool.fetchval(kill, waiting[0])
                await held.release()
            await started.wait()
            iid = await db.insert(DeadDbStart, {"n": 41})
            while (await db.get(iid)).status != "done":
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    assert (await db.get(iid)).result == 42
    assert runtime.outage.failures >= 1 and not runtime.outage.down  # the kill was an outage, now over
