"""A session that holds locks in an open transaction, and a second one that sees who waits on them: the
tests that stop or kill a process while its statement waits on a lock (durable serve, durable worker)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import trio

from durable._pg import aio, asyncio_loop


@dataclass
class Holding:
    """A session holding locks in an open transaction (``holder``, its backend), and a second session
    (``watch``) that asks who waits on them outside any transaction: within one, pg_stat_activity is a
    snapshot that a backend connecting later is missing from."""

    holder: int
    watch: asyncpg.Connection
    tx: Any

    async def waiting(self) -> list[int]:
        """The backends waiting on a lock the holder holds."""
        query = "select pid from pg_stat_activity where $1::int = any(pg_blocking_pids(pid))"
        return [r["pid"] for r in await aio(self.watch.fetch)(query, self.holder)]

    async def until_waited_on(self, limit: float, alive: Callable[[], None] | None = None) -> None:
        """Until a backend waits on the holder's locks (``limit`` seconds guard against a hang); ``alive``
        is called on each look (it asserts that the process expected to wait is still running)."""
        with trio.fail_after(limit):
            while not await self.waiting():
                if alive is not None:
                    alive()
                await trio.sleep(0.02)

    async def until_free(self, limit: float) -> None:
        """Until no backend waits on the holder's locks: while they are held, a statement left behind by a
        stopped or killed process would wait on, so ``limit`` seconds fail the test."""
        with trio.fail_after(limit):
            while await self.waiting():
                await trio.sleep(0.02)

    async def busy(self, pids: list[int]) -> bool:
        """Whether any of the backends ``pids`` still runs a statement."""
        query = "select count(*) from pg_stat_activity where pid = any($1::int[]) and state = 'active'"
        return bool(await aio(self.watch.fetchval)(query, pids))

    async def release(self) -> None:
        """End the holder's transaction (its locks go)."""
        await aio(self.tx.rollback)()


@contextlib.asynccontextmanager
async def holding(pg_dsn: str, query: str, *args: Any, schema: str | None = None) -> AsyncIterator[Holding]:
    """Run ``query`` in a transaction left open for the block (its locks held), with ``schema`` as the
    search_path; both sessions close when the block ends."""
    async with asyncio_loop():
        settings = {"search_path": schema} if schema is not None else None
        con = await aio(asyncpg.connect)(pg_dsn, server_settings=settings)
        watch = await aio(asyncpg.connect)(pg_dsn)
        try:
            tx = con.transaction()
            await aio(tx.start)()
            await aio(con.fetch)(query, *args)
            yield Holding(con.get_server_pid(), watch, tx)
        finally:
            await aio(con.close)()
            await aio(watch.close)()
