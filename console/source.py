"""The console's database access on Textual's asyncio loop: asyncpg used natively (no trio), every
statement a named :class:`~durable.sql.Query` from :data:`durable.sql.Q`, the same ones the engine runs.

The pool is opened lazily and dropped on any connection failure, so a database that is down, slow or
restarted costs one failed call per refresh (bounded by ``timeout``) and is picked up again when it
returns. Failures surface as :class:`Unreachable` with a one-line reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from asyncpg import Record

from durable.sql import Q, Query

__all__ = ["QueryFailed", "Reader", "Record", "SchemaMissing", "Source", "Unreachable"]

T = TypeVar("T")

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.AdminShutdownError,
    asyncpg.QueryCanceledError,
)


class Unreachable(Exception):
    """The database did not answer (down, slow beyond the timeout, or refused us)."""


class SchemaMissing(Unreachable):
    """The schema holds no durable tables (not migrated)."""


class QueryFailed(Unreachable):
    """The server answered with an error (e.g. the schema was dropped under us)."""


class Source:
    """A small asyncpg pool on one durable schema (``search_path`` set per connection)."""

    def __init__(self, dsn: str, schema: str, *, timeout: float = 3.0, max_size: int = 4) -> None:
        self.dsn = dsn
        self.schema = schema
        self.timeout = timeout
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Lock = asyncio.Lock()

    async def _open(self) -> asyncpg.Pool:
        async with self._opening:
            if self._pool is None:
                pool = await asyncio.wait_for(
                    asyncpg.create_pool(
                        self.dsn,
                        min_size=1,
                        max_size=self.max_size,
                        timeout=self.timeout,
                        command_timeout=self.timeout,
                        server_settings={"search_path": self.schema},
                    ),
                    self.timeout,
                )
                ready = await pool.fetchval(Q.console_schema_ready.text, self.schema)
                if not ready:
                    await pool.close()
                    raise SchemaMissing(
                        f"schema {self.schema!r} has no durable tables (run: durable migrate --schema {self.schema})"
                    )
                self._pool = pool
            return self._pool

    async def _call(self, method: str, q: Query, args: tuple[Any, ...]) -> Any:
        async def run() -> Any:
            pool = await self._open()
            return await getattr(pool, method)(q.text, *args)

        return await self._guard(run(), q.name)

    async def _guard(self, work: Awaitable[T], name: str) -> T:
        """``work`` within the timeout, its failures mapped to Unreachable / QueryFailed."""
        try:
            return await asyncio.wait_for(work, self.timeout)
        except asyncpg.PostgresError as exc:
            if isinstance(exc, _CONNECTION_ERRORS):
                await self._drop()
                raise Unreachable(_reason(exc, self.timeout)) from exc
            raise QueryFailed(f"{name}: {_reason(exc, self.timeout)}") from exc
        except _CONNECTION_ERRORS as exc:
            await self._drop()
            raise Unreachable(_reason(exc, self.timeout)) from exc

    async def fetch(self, q: Query, *args: Any) -> list[Record]:
        result: list[Record] = await self._call("fetch", q, args)
        return result

    async def fetchrow(self, q: Query, *args: Any) -> Record | None:
        result: Record | None = await self._call("fetchrow", q, args)
        return result

    async def fetchval(self, q: Query, *args: Any) -> Any:
        return await self._call("fetchval", q, args)

    async def read(self, fn: Callable[[Reader], Awaitable[T]]) -> T:
        """Run several reads on one snapshot (a read-only repeatable-read transaction), so what one
        screen shows is consistent: an instance's status, children and history from the same moment."""

        async def run() -> T:
            pool = await self._open()
            async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                return await fn(Reader(conn, self.timeout))

        return await self._guard(run(), "read")

    async def fetch_custom_plan(self, q: Query, *args: Any) -> list[Record]:
        """``q`` planned for its actual parameters (``force_custom_plans`` first, in one transaction):
        the instance queries' optional filters only use their indexes that way."""

        async def run(r: Reader) -> list[Record]:
            await r.fetchval(Q.force_custom_plans)
            return await r.fetch(q, *args)

        return await self.read(run)

    async def _drop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 2)
            except _CONNECTION_ERRORS:
                pool.terminate()


class Reader:
    """Named statements on the connection of one :meth:`Source.read` snapshot."""

    def __init__(self, conn: asyncpg.Connection, timeout: float) -> None:
        self.conn = conn
        self.timeout = timeout

    async def _run(self, method: str, q: Query, args: tuple[Any, ...]) -> Any:
        try:
            return await getattr(self.conn, method)(q.text, *args)
        except asyncpg.PostgresError as exc:
            if isinstance(exc, _CONNECTION_ERRORS):
                raise
            raise QueryFailed(f"{q.name}: {_reason(exc, self.timeout)}") from exc

    async def fetch(self, q: Query, *args: Any) -> list[Record]:
        rows: list[Record] = await self._run("fetch", q, args)
        return rows

    async def fetchrow(self, q: Query, *args: Any) -> Record | None:
        row: Record | None = await self._run("fetchrow", q, args)
        return row

    async def fetchval(self, q: Query, *args: Any) -> Any:
        return await self._run("fetchval", q, args)


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError | asyncpg.QueryCanceledError):
        return f"no answer within {timeout:g}s"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
