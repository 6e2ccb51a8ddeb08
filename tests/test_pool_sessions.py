"""The driver layer (durable/_pg.py): which connections plan for parameters and which keep a cached plan,
and what a released connection keeps of its session."""

from __future__ import annotations

import asyncio

import pytest
import trio

import durable
from durable._pg import aio
from durable.sql import Q, Query, parse_queries

pytestmark = pytest.mark.trio


async def test_plan_marker_is_parsed_and_kept_out_of_the_doc() -> None:
    queries = parse_queries("-- name: a\n-- Does a.\n-- plan: generic\nselect 1;\n-- name: b\n-- Does b.\nselect 2;\n")
    assert queries["a"].generic and queries["a"].doc == "Does a."
    assert not queries["b"].generic
    # the statements whose plan cannot depend on their parameters, and only those
    marked = sorted(q.name for q in Q if q.generic)
    assert marked == ["complete_simple", "insert_instance", "insert_instances", "pick"]


async def _settings(raw: object) -> tuple[str, list[str]]:
    async def look() -> tuple[str, list[str]]:
        async with raw.acquire() as con:  # type: ignore[attr-defined]
            mode = await con.fetchval("show plan_cache_mode")
            channels = await con.fetchval("select coalesce(array_agg(c), '{}') from pg_listening_channels() c")
            return mode, list(channels)

    return await aio(look)()


async def test_marked_statements_run_on_connections_that_keep_a_cached_plan(db: durable.Database) -> None:
    pool = db.pool
    assert pool.generic is not pool.raw
    assert (await _settings(pool.raw))[0] == "force_custom_plan"
    assert (await _settings(pool.generic))[0] == "auto"
    await pool.fetch(Q.pick, "nothing_here", 10, "w", 30.0, None, None, None)
    await pool.fetch(Q.get_instance, 0)
    await pool.return_spares()  # _prepared takes every connection of a pool
    # where each statement was prepared: the pick only on the generic pool, get_instance only on the other
    assert await _prepared(pool.generic, "pick") and not await _prepared(pool.raw, "pick")
    assert await _prepared(pool.raw, "get_instance") and not await _prepared(pool.generic, "get_instance")
    assert pool.generic.get_max_size() <= 4  # type: ignore[attr-defined]


async def _prepared(raw: object, name: str) -> bool:
    """Whether any open connection of ``raw`` holds ``name``'s statement prepared."""
    text = getattr(Q, name).text

    async def look() -> bool:
        cons = [await raw.acquire() for _ in range(raw.get_size())]  # type: ignore[attr-defined]
        try:
            found = [
                await con.fetchval("select count(*) from pg_prepared_statements where statement = $1", text)
                for con in cons
            ]
        finally:
            for con in cons:
                await raw.release(con)  # type: ignore[attr-defined]
        return any(found)

    return await aio(look)()


async def test_a_released_connection_keeps_its_session_but_not_its_listen(db: durable.Database) -> None:
    pool = db.pool
    # a session setting made on a pooled connection survives its release (no reset query per statement)
    await pool.return_spares()

    async def set_on_every_connection() -> int:
        cons = [await pool.raw.acquire() for _ in range(pool.raw.get_size())]
        for con in cons:
            await con.execute("set application_name = 'kept'")
        for con in cons:
            await pool.raw.release(con)
        return len(cons)

    assert await aio(set_on_every_connection)() >= 1

    async def names() -> set[str]:
        async with pool.raw.acquire() as con:
            return {await con.fetchval("show application_name")}

    assert await aio(names)() == {"kept"}
    # a connection that LISTENed is reset in full when given back: no channel stays subscribed
    async with pool.connection() as conn:
        await aio(conn.raw.add_listener)("durable_test_channel", lambda *_: None)
        listening = await aio(conn.raw.fetchval)("select array_agg(c) from pg_listening_channels() c")
        assert "durable_test_channel" in listening
    for _ in range(pool.raw.get_size()):
        assert (await _settings(pool.raw))[1] == []


async def test_a_cancelled_transaction_gives_its_connection_back(db: durable.Database) -> None:
    """Cancelled before it starts or mid-statement: the transaction rolls back at once and the pool goes on."""
    from durable.sql import Query

    sleep, one = Query("t_sleep", "select pg_sleep(60)", ""), Query("t_one", "select 1", "")
    for delay in (0.0, 0.1):  # 0: cancelled at the first checkpoint; 0.1: during the statement
        with trio.fail_after(20):  # far less than the statement's 60 s: nothing waited for it
            with trio.move_on_after(delay):
                async with db.pool.transaction() as conn:
                    await conn.fetch(sleep)
        with trio.fail_after(10):
            assert await db.pool.fetchval(one) == 1
        raw = db.pool.raw
        await db.pool.return_spares()  # a connection kept for the next statement is not a leaked one
        assert raw.get_idle_size() == raw.get_size()  # every connection is back  # type: ignore[attr-defined]


NOTIFY = Query("t_notify", "select pg_notify($1, $2)", "")


async def test_listen_yields_payloads_in_order_and_unlistens_after(db: durable.Database) -> None:
    """Pool.listen: the payloads of NOTIFY on the channel, in order, as a trio receive channel; the
    connection goes back reset (no channel stays subscribed)."""
    pool = db.pool
    with trio.fail_after(20):
        async with pool.listen("durable_t_listen") as notifications:
            for n in range(5):
                await pool.fetchval(NOTIFY, "durable_t_listen", str(n))
            await pool.fetchval(NOTIFY, "durable_t_other", "not ours")
            got = [await notifications.receive() for _ in range(5)]
    assert got == ["0", "1", "2", "3", "4"]
    for _ in range(pool.raw.get_size()):
        assert (await _settings(pool.raw))[1] == []


async def test_listen_ends_when_its_connection_is_killed(db: durable.Database) -> None:
    """A LISTEN connection the server drops ends the channel (the caller listens again); nothing raises."""
    pool = db.pool
    with trio.fail_after(30):
        async with pool.listen("durable_t_killed") as notifications:
            await pool.fetchval(NOTIFY, "durable_t_killed", "before")
            assert await notifications.receive() == "before"
            pids = [r["pid"] for r in await pool.fetch(Q.sim_listeners, "durable_t_killed")]
            assert len(pids) == 1
            assert await pool.fetchval(Q.sim_terminate_backends, pids) == 1
            with pytest.raises(trio.EndOfChannel):
                await notifications.receive()
    # the pool goes on
    assert await pool.fetchval(Query("t_one", "select 1", "")) == 1


async def test_listen_ends_when_the_reader_falls_behind(db: durable.Database) -> None:
    """More than ``buffer`` payloads unread: the channel keeps the first ``buffer`` and ends (bounded: a
    notification is a hint, the caller catches up by re-reading and listens again)."""
    pool = db.pool
    with trio.fail_after(20):
        async with pool.listen("durable_t_behind", buffer=3) as notifications:
            for n in range(6):
                await pool.fetchval(NOTIFY, "durable_t_behind", str(n))
            while notifications._receive.statistics().open_send_channels:  # the 4th payload ends it
                await trio.sleep(0.01)
            got = [payload async for payload in notifications]
    assert got == ["0", "1", "2"]


async def test_pool_connections_sees_every_connection_and_a_killed_ones_socket_close(db: durable.Database) -> None:
    """``_pg.pool_connections`` and the simulator's ``_open`` (its connection kill waits until each killed
    backend's socket is closed, sim/gate.py ``_until_closed``) read asyncpg's private ``_holders``, ``_con``
    and ``_transport``: a driver that renamed one would make that wait end at once, silently (a seed's
    log would differ now and then). Here it fails: every connection of the pool is listed, a live one is
    open, and a killed one is no longer open once the driver has read its EOF."""
    from durable._pg import pool_connections
    from sim.gate import _open

    raw = db.pool.raw

    async def look() -> None:
        async with raw.acquire() as held:
            pid = held.get_server_pid()
            listed = pool_connections(raw)
            assert len(listed) == raw.get_size() and pid in [c.get_server_pid() for c in listed]
            assert all(_open(c) for c in listed)
            async with raw.acquire() as other:
                assert await other.fetchval("select pg_terminate_backend($1, 60000)", pid)
            while any(_open(c) for c in pool_connections(raw) if c.get_server_pid() == pid):
                await asyncio.sleep(0.01)

    with trio.fail_after(30):
        await aio(look)()


async def test_a_client_checked_pool_keeps_its_check_after_a_listen(pg_dsn: str, db: durable.Database) -> None:
    """connect(client_check=True) (durable serve's connections): every connection has PostgreSQL watch its
    client's socket (client_connection_check_interval), and one that LISTENed keeps it after the full reset
    (RESET ALL) it gets when given back."""
    from durable._pg import CLIENT_CHECK_MS

    async with durable.connect(pg_dsn, schema=db.schema, migrate=False, min_size=1, max_size=1, client_check=True) as c:

        async def interval() -> str:
            async with c.pool.connection() as conn:  # the pool's one connection
                return str(await aio(conn.raw.fetchval)("show client_connection_check_interval"))

        assert await interval() == f"{CLIENT_CHECK_MS // 1000}s"
        async with c.pool.connection() as conn:
            await aio(conn.raw.add_listener)("durable_test_checked", lambda *_: None)
        assert await interval() == f"{CLIENT_CHECK_MS // 1000}s"
    async with durable.connect(pg_dsn, schema=db.schema, migrate=False, min_size=1, max_size=1) as plain:
        async with plain.pool.connection() as conn:
            assert await aio(conn.raw.fetchval)("show client_connection_check_interval") == "0"
