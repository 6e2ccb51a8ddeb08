"""The one module that owns the trio <-> asyncio boundary: asyncpg under trio through trio-asyncio.

Every statement goes through :class:`Pool` by its :class:`~durable.sql.Query` (never raw text), so
statements can be counted per name and passed one at a time through a gate (the simulator's hook).
Driver errors are mapped here: an unreachable server becomes :class:`~durable.errors.DatabaseUnavailable`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol, TypeAlias, TypeVar

import anyio
import asyncpg
import trio
import trio_asyncio

# The driver's names the modules above need (the errors they catch, the connection and row types), re-exported
# so that this module stays the only importer of asyncpg (pyproject.toml's import contract "boundary").
from asyncpg import Connection as Connection
from asyncpg import DeadlockDetectedError as DeadlockDetectedError
from asyncpg import InterfaceError as InterfaceError
from asyncpg import PostgresConnectionError as PostgresConnectionError
from asyncpg import PostgresError as PostgresError
from asyncpg import SerializationError as SerializationError
from asyncpg import UniqueViolationError as UniqueViolationError
from asyncpg.exceptions import OperatorInterventionError as OperatorInterventionError
from asyncpg.exceptions import ProgramLimitExceededError as ProgramLimitExceededError

from .errors import DatabaseUnavailable, SchemaError
from .sql import Q, Query

T = TypeVar("T")
Record: TypeAlias = asyncpg.Record
ServerDataError = asyncpg.exceptions.DataError  # SQLSTATE class 22 (a value the server refused)
ClientDataError = asyncpg.exceptions._base.DataError  # the client refused an argument (an InterfaceError)


class Gate(Protocol):
    """Wraps every database call; the simulator serializes calls and injects faults here."""

    async def call(self, name: str, run: Callable[[], Awaitable[T]]) -> T:
        """Run ``run()``, the database call of statement ``name``, and return its result."""
        ...


def redact(dsn: str) -> str:
    """The DSN without its password, for error messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", dsn)


_UNREACHABLE = (
    OSError,
    ConnectionError,
    # client-side states of a connection the server dropped mid-operation
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.CannotConnectNowError,
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
    # server-side: SQLSTATE class 08 (e.g. "connection was closed in the middle of operation", a postmaster
    # that died), and the server shutting down or crashed (57P01, 57P02)
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


def unreachable(exc: BaseException) -> bool:
    """Whether an error of ``_UNREACHABLE`` means the server is gone. asyncpg's InterfaceError also covers the
    caller's own mistakes (a bad argument: its DataError; a wrong argument count): those are not an outage
    and must not be retried as one."""
    if isinstance(exc, asyncpg.exceptions._base.DataError):
        return False
    if type(exc) is asyncpg.InterfaceError:
        return "clos" in str(exc) or "connection" in str(exc).lower()
    return True


def aio(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """``fn`` (an asyncio coroutine function: asyncpg's) made callable from trio."""
    return trio_asyncio.aio_as_trio(fn)  # type: ignore[no-any-return]


# -- the statement bridge ------------------------------------------------------------------------------
# aio() runs an asyncio coroutine as an asyncio Task on trio-asyncio's loop, itself a trio task that takes
# one queued callback per turn of trio's scheduler. A statement then costs 8 task steps (each a turn of
# trio's run loop with its epoll call): schedule the Task, run it to the send, wake it on the reply,
# finish it, wake the caller; asyncpg's pool adds 5 more (its release runs in a shielded Task). Measured
# on this 2-core VM: `select 1` took ~0.6 ms of CPU through durable's pool, 0.05 ms on plain asyncio.
# A statement on an already acquired connection is instead driven in the calling trio task (_drive): the
# query is sent at once, and the reply's future wakes the caller directly (_Wake) instead of through a
# loop callback. 5 task steps, and the caller's wake-up is the first thing after the reply is read.
# Two of those steps were trio-asyncio's own for nothing (_tune_loop): asyncpg's done callback on the query's
# waiter (a no-op unless the query was cancelled) queued for the loop task, and the connection's reader task
# waiting for the loop to run every queued callback after each read (`synchronize`) when its read had queued
# none. Both are skipped now: 3 task steps (the caller twice, the reader once), and the loop task is no
# longer scheduled beside the woken caller (trio runs a batch in either order: half the time it went first).


class _Wake:
    """A future's done callback that reschedules the trio task waiting on it. trio-asyncio's loop would
    queue it as a callback for its own task's next turn; the loop's ``call_soon`` runs it at once instead
    (:func:`_wake_at_once`): rescheduling a task only puts it on trio's run queue, which is safe from
    any callback."""

    __slots__ = ("task",)

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task

    def __call__(self, _future: object) -> None:
        trio.lowlevel.reschedule(self.task)


class _Queued:
    """A future's done callback that reschedules the trio task waiting on it in its turn among the loop's
    callbacks (after those the future's completion queued before it)."""

    __slots__ = ("task",)

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task

    def __call__(self, _future: object) -> None:
        trio.lowlevel.reschedule(self.task)


class _Hint:
    """asyncpg's listener callback of :meth:`Pool.listen`: hands a notification's payload to the trio side
    (``deliver``: a memory channel's send, which only reschedules the reader). asyncpg queues it with
    ``loop.call_soon``; :func:`_wake_at_once` runs it at once, in the reader task that parsed the
    notification, where it took a turn of the loop task and then one of trio's ``run_sync_soon`` task."""

    __slots__ = ("deliver",)

    def __init__(self, deliver: Callable[[str], None]) -> None:
        self.deliver = deliver

    def __call__(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.deliver(payload)


def _wake_at_once(loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop.call_soon`` run :class:`_Wake` and :class:`_Hint` callbacks at once, and asyncpg's done
    callback on a query's waiter when the query was not cancelled (every other callback as before); see
    :func:`_tune_loop`."""
    if getattr(loop, "_durable_wake_at_once", False):
        return
    call_soon = loop.call_soon

    def fast_call_soon(callback: Any, *args: Any, context: Any = None) -> Any:
        if type(callback) is _Wake or type(callback) is _Hint:
            callback(*args)
            return None
        if (
            args
            and getattr(callback, "__name__", None) == "_on_waiter_completed"
            and isinstance(args[0], asyncio.Future)
            and not args[0].cancelled()
        ):
            # asyncpg's protocol: on a waiter that completed (not cancelled) it only cancels the query's
            # timeout handle, if any; queued, it cost the loop task a turn beside the woken caller
            callback(*args)
            return None
        return call_soon(callback, *args, context=context)

    loop.call_soon = fast_call_soon  # type: ignore[method-assign, assignment]
    loop._durable_wake_at_once = True  # type: ignore[attr-defined]
    _tune_loop(loop)


# sha256 of trio-asyncio 0.16.0's BaseTrioEventLoop._io_task source, the code _tune_loop's io_task copies
IO_TASK_DIGEST = "a4d30e42473f8b5316eb1c2198ddf7cc9defbcee06a67acfa1fe42aac20e5674"


def _source_digest(fn: Any) -> str | None:
    """sha256 of ``fn``'s source text, None when it has none (an installation without sources)."""
    try:
        return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()
    except (OSError, TypeError):
        return None


def _tune_loop(loop: Any) -> None:
    """Let trio-asyncio's reader and writer tasks skip their ``synchronize`` (a turn of the loop task, then
    one of their own) after a callback that queued nothing for the loop. trio-asyncio runs each fd's
    callback in a trio task of its own and then waits until the loop task has run every callback queued so
    far, so that what the callback scheduled runs before its next call. When the callback scheduled nothing
    (a reply that only woke a trio task through :class:`_Wake`), the wait was two scheduler turns for
    nothing. Callbacks that do queue something (an asyncio Task woken by its reply: the gated pools, a
    pool acquire) are synchronized as before. Installed only on trio-asyncio's own ``_io_task``, and only
    when its source is the one copied here (``IO_TASK_DIGEST``): another version keeps its own."""
    original = getattr(type(loop), "_io_task", None)
    if getattr(original, "__qualname__", None) != "BaseTrioEventLoop._io_task" or not hasattr(loop, "_queue_handle"):
        return
    if _source_digest(original) != IO_TASK_DIGEST:
        return  # another trio-asyncio: its reader task is not the one copied below (statements take 5 turns)
    queue_handle = loop._queue_handle
    queued = [0]  # handles queued for the loop task so far

    def counted_queue_handle(handle: Any) -> Any:
        queued[0] += 1
        return queue_handle(handle)

    async def io_task(fd: Any, handle: Any, wait_ready: Any) -> None:
        # trio-asyncio 0.16's BaseTrioEventLoop._io_task, but for the synchronize when nothing was queued
        with handle._scope:
            try:
                while True:
                    if handle._cancelled:
                        break
                    try:
                        await wait_ready(fd)
                    except OSError:
                        if handle._cancelled:
                            break
                        raise
                    if handle._cancelled:
                        break
                    before = queued[0]
                    handle._run()
                    if queued[0] != before:
                        await loop.synchronize()
            except Exception as exc:
                handle._raise(exc)

    loop._queue_handle = counted_queue_handle
    loop._io_task = io_task


def _lost(con: Any) -> bool:
    """Whether a pooled connection is closed, or asyncpg already took it back (it does so when the
    server drops a connection: the proxy we hold is then detached)."""
    try:
        return bool(con.is_closed())
    except asyncpg.InterfaceError:
        return True


def _cancelling(con: Any) -> bool:
    """Whether asyncpg still waits out the cancel request of a cancelled query on ``con``: its next
    statement waits for that under an asyncio timeout, which needs an asyncio Task (not :func:`_drive`)."""
    try:
        is_cancelling = getattr(getattr(con, "_protocol", None), "_is_cancelling", None)
    except asyncpg.InterfaceError:  # a proxy asyncpg took back: its own call says so
        return True
    return is_cancelling is None or bool(is_cancelling())


async def _drive(coro: Any) -> Any:
    """Run an asyncio coroutine of asyncpg in the current trio task, waiting on the asyncio futures it
    awaits (as an asyncio Task would, minus the Task). A trio cancellation cancels the future awaited at
    that moment, once, as cancelling a Task would; the coroutine then unwinds (asyncpg cancels the
    query on the server in a Task of its own) and trio.Cancelled is raised. Only for calls that need no
    ``asyncio.current_task()`` (asyncpg's statements without a timeout; not connect, not acquire)."""
    task = trio.lowlevel.current_task()
    raise_cancel: Any = None
    value: Any = None
    while True:
        try:
            future = coro.send(value)
        except StopIteration as stop:
            return stop.value
        except asyncio.CancelledError:
            if raise_cancel is None:  # cancelled from the asyncio side: passed on as is
                raise
            raise_cancel()  # trio.Cancelled (its context: the CancelledError)
            raise
        value = None
        if future is None:  # a bare yield (asyncio.sleep(0)): one turn
            await trio.lowlevel.cancel_shielded_checkpoint()
            continue
        future._asyncio_future_blocking = False
        if future.done():
            continue
        # at once only when no callback registered before ours has to run first, as asyncio's order would
        # have it: none, or asyncpg's own on a query's waiter (it only cancels a timeout when the query
        # succeeded; on a cancelled query it starts the cancel request: see abort)
        wake: Any = (
            _Wake(task)
            if all(getattr(cb, "__name__", None) == "_on_waiter_completed" for cb, _ in future._callbacks or ())
            else _Queued(task)
        )
        if type(wake) is _Wake:
            _wake_at_once(future.get_loop())
        future.add_done_callback(wake)

        def abort(rc: Any, future: Any = future, wake: Any = wake) -> trio.lowlevel.Abort:
            nonlocal raise_cancel
            if raise_cancel is None:  # the first cancellation cancels the future; later waits are not cut
                raise_cancel = rc
                if type(wake) is _Wake and future.remove_done_callback(wake):
                    # in asyncio's order: asyncpg's callback starts the cancel request before we go on
                    future.add_done_callback(_Queued(task))
                future.cancel()
            return trio.lowlevel.Abort.FAILED  # the callback reschedules us once the future is done

        await trio.lowlevel.wait_task_rescheduled(abort)


class Conn:
    """One connection, inside a transaction opened by :meth:`Pool.transaction`."""

    def __init__(self, pool: Pool, raw: asyncpg.Connection) -> None:
        self._pool = pool
        self.raw = raw

    async def fetch(self, q: Query, *args: Any) -> list[Record]:
        """The rows of statement ``q`` with parameters ``args``."""
        return await self._pool._on(q, self.raw, "fetch", args)  # type: ignore[no-any-return]

    async def fetchrow(self, q: Query, *args: Any) -> Record | None:
        """The first row of statement ``q`` (None when it returns none)."""
        return await self._pool._on(q, self.raw, "fetchrow", args)

    async def fetchval(self, q: Query, *args: Any) -> Any:
        """The first column of the first row of statement ``q`` (None when it returns none)."""
        return await self._pool._on(q, self.raw, "fetchval", args)

    async def execute(self, q: Query, *args: Any) -> str:
        """Run statement ``q``; returns its status tag."""
        return await self._pool._on(q, self.raw, "execute", args)  # type: ignore[no-any-return]


class Notifications(trio.abc.ReceiveChannel[str]):
    """The payloads of one LISTEN (see :meth:`Pool.listen`), a trio receive channel. Besides the
    connection's termination callback, it looks at the connection every ``LISTEN_CHECK`` seconds while
    nothing arrives, and ends when it is gone."""

    def __init__(self, receive: trio.MemoryReceiveChannel[str], raw: asyncpg.Connection) -> None:
        self._receive = receive
        self._raw = raw

    async def receive(self) -> str:
        """The next payload; EndOfChannel once the listening connection is gone."""
        while True:
            with trio.move_on_after(LISTEN_CHECK):
                return await self._receive.receive()
            if connection_closed(self._raw):
                raise trio.EndOfChannel

    async def aclose(self) -> None:
        """Stop receiving."""
        await self._receive.aclose()


class _Direct:
    async def call(self, name: str, run: Callable[[], Awaitable[T]]) -> T:
        return await run()


# Every statement is planned for its actual parameters. The engine's statements take arrays of 1 to 500
# elements; a cached generic plan assumes 10 rows and chooses nested loops over them that are quadratic
# in the batch (measured: `complete` of 200 outcomes 12.8 ms generic vs 6.1 ms custom, planning included).
SESSION_SETTINGS = {"application_name": "durable", "plan_cache_mode": "force_custom_plan"}
# ... except the statements marked `-- plan: generic`, whose plan cannot depend on their parameters (the
# pick: an index scan under a LIMIT; complete_simple: one JSON parameter, estimated at 100 rows either
# way; insert_instances: written without a join of the batch to the inserted rows). They run on
# connections of their own that keep a cached plan: planning was half of an idle pick's latency
# (0.95 -> 0.50 ms measured).
GENERIC_SETTINGS = {"application_name": "durable", "plan_cache_mode": "auto"}


async def keep_session(_con: asyncpg.Connection) -> None:
    """asyncpg's ``reset`` for durable's pools: released connections keep their session. durable leaves
    no session state behind (locks are transaction-scoped, settings are fixed per pool), so asyncpg's
    reset query (unlock, CLOSE ALL, UNLISTEN, RESET ALL) would be a round trip per statement for
    nothing. An open transaction is still rolled back by asyncpg. The connections that LISTEN are reset
    in full when released."""


LISTEN_BUFFER = 10_000  # notifications a listener may leave unread before its channel ends (see Pool.listen)
LISTEN_CHECK = 5.0  # seconds between looks at a listening connection, in case its loss calls back nothing


def pool_connections(raw: asyncpg.Pool | None) -> list[asyncpg.Connection]:
    """The connections an asyncpg pool holds now, in use or idle (asyncpg has no public list of them)."""
    holders = getattr(raw, "_holders", ())
    return [h._con for h in holders if getattr(h, "_con", None) is not None]


def connection_closed(raw: asyncpg.Connection) -> bool:
    """Whether a pooled connection is gone (a proxy whose connection died raises instead of saying so)."""
    try:
        return bool(raw.is_closed())
    except asyncpg.InterfaceError:
        return True


# durable serve's connections have PostgreSQL (14+: client_connection_check_interval) look at their client's
# socket every CLIENT_CHECK_MS while a statement runs, and abort the statement once the client is gone. A
# server killed mid-request (SIGKILL, or a second signal or --stop-timeout, which end it at once) leaves no
# statement behind for long: an append waiting on its stream's row lock ran to its end once the lock was
# released, after its client had been cut off. The engine's pools do not set it: the simulator's crash fault
# terminates a pool while its statements run, and whether such a statement lands would then depend on the
# wall clock, not the seed; and a killed worker's statements are harmless when they land late (a complete
# is fenced by its lease token, a pick's lease expires).
CLIENT_CHECK_MS = 1000


async def check_client(con: asyncpg.Connection) -> None:
    """asyncpg's ``init`` for the connections of a pool opened with ``client_check``: set
    client_connection_check_interval (see CLIENT_CHECK_MS) when the server has it (PostgreSQL 14+; on an
    older server, or on a platform where PostgreSQL cannot watch a socket, a killed client's statement
    still runs to its end)."""
    if con.get_server_version() < (14, 0):
        return
    try:
        await con.fetchval(Q.check_client_connection.text, str(CLIENT_CHECK_MS))
    except asyncpg.InvalidParameterValueError:  # "must be set to 0 on this platform"
        return


GENERIC_POOL_MAX = 4  # a runtime's picks (one per queue at a time) and its plain flushes (two at a time)
LISTEN_POOL_MAX = 4  # a runtime's LISTEN, a Database's result watcher, a streams server's hub (listen_dsn only)

# Behind a connection pooler in transaction mode (PgBouncer `pool_mode = transaction`) a client's statements go to
# whichever server connection is free: no named prepared statement survives from one transaction to the next, no
# session setting is kept, and PgBouncer (before 1.20) refuses startup parameters it does not know, such as
# search_path. So the pools then prepare nothing (asyncpg's unnamed statements: planned for every execution,
# which is what force_custom_plan does anyway), send no setting but application_name, and expect search_path
# from the server (`ALTER ROLE ... SET search_path`, or PgBouncer's `connect_query`); LISTEN, which needs a
# session of its own, goes through `listen_dsn`, a direct connection. docs/scaling.md has the setup.
POOLERS = ("transaction",)


def check_pooler(pooler: str | None, listen_dsn: str | None) -> str | None:
    """``pooler`` as given (None or "" for a direct connection or a session pooler; "transaction"), checked."""
    if pooler in (None, ""):
        return None
    if pooler not in POOLERS:
        raise ValueError(f"pooler must be 'transaction' (PgBouncer's pool_mode = transaction) or None, not {pooler!r}")
    if not listen_dsn:
        raise ValueError(
            "pooler='transaction' needs listen_dsn: a direct connection to PostgreSQL for LISTEN "
            "(a transaction pooler hands each statement to any server connection, and a "
            "LISTEN there would be lost)"
        )
    return pooler


def search_path_head(setting: str) -> str:
    """The first schema named by a ``search_path`` setting (quotes and spaces taken off)."""
    first = setting.split(",", 1)[0].strip()
    return first[1:-1].replace('""', '"') if len(first) >= 2 and first[0] == first[-1] == '"' else first


class Pool:
    """Two asyncpg pools on one schema (``search_path = <schema>``): ``raw`` (up to ``max_size``
    connections) plans every statement for its parameters, ``generic`` (up to ``min(max_size, 4)`` more,
    opened on first use) keeps cached plans for the statements marked so. The connections that LISTEN come
    from ``listen_pool``: ``raw`` itself, or a pool of direct connections (``listen_dsn``) behind a transaction
    pooler, where ``generic`` is ``raw`` too. All calls are trio calls."""

    def __init__(
        self,
        raw: asyncpg.Pool,
        dsn: str,
        schema: str,
        generic: asyncpg.Pool | None = None,
        listen: asyncpg.Pool | None = None,
        pooler: str | None = None,
    ) -> None:
        self.raw = raw
        self.generic = generic if generic is not None else raw
        self.listen_pool = listen if listen is not None else raw
        # the listen pool's connections set client_connection_check_interval when opened (check_client);
        # a full reset (RESET ALL) when one is given back clears it, so it is set again there
        self.listen_checked = False
        self.dsn = dsn
        self.schema = schema
        self.pooler = pooler
        self.gate: Gate = _Direct()
        self.statement_counts: collections.Counter[str] = collections.Counter()
        # native: opened by open_native() on a plain asyncio loop (durable serve's HTTP front), where
        # asyncpg is called directly; else every call is a trio call through trio-asyncio
        self.native = False
        self.round_trips = 0  # statements, BEGINs, COMMITs and ROLLBACKs sent: one round trip each
        # crossings of the bridge that take an asyncio Task (and extra turns of trio's scheduler): a connection
        # taken from ('acquire') or given back to ('release') asyncpg's pool. A warm pool takes none per statement
        self.bridge: collections.Counter[str] = collections.Counter()
        # connections kept acquired between statements (see _keep), per asyncpg pool, last used on top
        self._spare: dict[asyncpg.Pool, list[Any]] = {raw: [], self.generic: []}
        self._closing = False

    def _fast(self) -> bool:
        """Whether statements are driven in the calling trio task (:func:`_drive`): a trio pool whose gate is
        the direct one (not the simulator's, which serializes asyncio Tasks; not a native pool)."""
        return type(self.gate) is _Direct and not self.native

    def _aio(self, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        return fn if self.native else aio(fn)

    @classmethod
    async def open(
        cls,
        dsn: str,
        schema: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        pooler: str | None = None,
        listen_dsn: str | None = None,
        client_check: bool = False,
    ) -> Pool:
        """Open the pools. ``pooler="transaction"``: ``dsn`` reaches PostgreSQL through a transaction pooler
        (no prepared statements, no startup settings, search_path checked), and ``listen_dsn`` directly.
        ``client_check``: the direct connections' statements end when this process is gone (CLIENT_CHECK_MS;
        not through a pooler, which stays connected, and where a session setting would not stay either)."""
        pooler = check_pooler(pooler, listen_dsn)
        loop = trio_asyncio.current_loop.get(None)
        if loop is not None:  # before any connection's reader task starts (see _tune_loop)
            _wake_at_once(loop)
        path = {"search_path": f"{schema},public"}
        opened: list[asyncpg.Pool] = []

        async def create(
            target: str, settings: dict[str, str], low: int, high: int, cache: int = 256, direct: bool = True
        ) -> asyncpg.Pool:
            pool = await aio(asyncpg.create_pool)(
                target,
                min_size=low,
                max_size=high,
                server_settings=settings,
                statement_cache_size=cache,
                reset=keep_session,
                init=check_client if client_check and direct else None,
            )
            assert pool is not None
            opened.append(pool)
            return pool

        try:
            try:
                if pooler is None:
                    raw = await create(dsn, SESSION_SETTINGS | path, min_size, max_size)
                    generic = await create(dsn, GENERIC_SETTINGS | path, 0, min(max_size, GENERIC_POOL_MAX))
                else:
                    raw = generic = await create(
                        dsn, {"application_name": "durable"}, min_size, max_size, cache=0, direct=False
                    )
                listen = await create(listen_dsn, SESSION_SETTINGS | path, 0, LISTEN_POOL_MAX) if listen_dsn else raw
            except BaseException:
                for pool in opened:
                    pool.terminate()
                raise
        except asyncpg.ProtocolViolationError as exc:
            if "startup parameter" not in str(exc):
                raise
            raise DatabaseUnavailable(
                f"{redact(dsn)} refused durable's session settings ({exc}): a connection "
                "pooler in transaction mode? Then pass pooler='transaction' and "
                "listen_dsn (docs/scaling.md)"
            ) from exc
        except _UNREACHABLE as exc:
            if not unreachable(exc):
                raise
            raise DatabaseUnavailable(f"cannot reach PostgreSQL at {redact(dsn)}: {exc}") from exc
        pool = cls(raw, dsn, schema, generic, listen, pooler)
        pool.listen_checked = client_check and (listen_dsn is not None or pooler is None)
        if pooler is not None:
            try:
                await pool.check_search_path()
            except BaseException:
                pool.terminate()
                raise
        return pool

    @classmethod
    async def open_native(
        cls,
        dsn: str,
        schema: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        pooler: str | None = None,
        client_check: bool = False,
    ) -> Pool:
        """A pool for a plain asyncio event loop (no trio, no trio-asyncio): asyncpg called directly.
        Only :meth:`fetch` and its siblings, :meth:`pinned` and :meth:`close_native` are used there (by
        ``durable serve``'s HTTP front, which runs on its own loop in a thread of its own); the gate and
        the statement counts are the same as a trio pool's. ``pooler``: as :meth:`open`'s (behind a
        transaction pooler: no prepared statement, no startup setting but the application name).
        ``client_check``: as :meth:`open`'s."""
        if pooler not in (None, *POOLERS):
            raise ValueError(f"pooler must be 'transaction' or None, not {pooler!r}")
        settings = (
            SESSION_SETTINGS | {"search_path": f"{schema},public"}
            if pooler is None
            else {"application_name": "durable"}
        )
        try:
            raw = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                statement_cache_size=256 if pooler is None else 0,
                server_settings=settings,
                reset=keep_session,
                init=check_client if client_check and pooler is None else None,
            )
        except _UNREACHABLE as exc:
            if not unreachable(exc):
                raise
            raise DatabaseUnavailable(f"cannot reach PostgreSQL at {redact(dsn)}: {exc}") from exc
        assert raw is not None
        pool = cls(raw, dsn, schema, pooler=pooler)
        pool.listen_checked = client_check and pooler is None
        pool.native = True
        return pool

    async def close_native(self) -> None:
        """Close a pool of :meth:`open_native` (at most 10 s, then terminate)."""
        import asyncio

        try:
            await asyncio.wait_for(self.raw.close(), 10)
        except TimeoutError:
            self.raw.terminate()

    async def check_search_path(self) -> None:
        """Behind a transaction pooler durable cannot set ``search_path``: the server must, for every
        connection the pooler opens. Refuse to run when it names another schema first (migrations would
        create durable's tables there)."""
        setting = str(await self.fetchval(Q.search_path))
        if search_path_head(setting) != self.schema:
            raise SchemaError(
                f"behind a transaction pooler the server must set search_path to start with schema "
                f"{self.schema!r}, but it is {setting!r}: run `ALTER ROLE <user> SET search_path = "
                f"{self.schema}, public` (or set PgBouncer's connect_query for the database; docs/scaling.md)"
            )

    def pools(self) -> list[asyncpg.Pool]:
        """The distinct asyncpg pools behind this Pool (plain, generic-plan, listening)."""
        return list(dict.fromkeys([self.raw, self.generic, self.listen_pool]))

    async def close(self) -> None:
        """Close every pool, shielded from cancellation."""
        with trio.CancelScope(shield=True):
            self._closing = True
            await self.return_spares()
            for raw in self.pools():
                with trio.move_on_after(10) as scope:
                    await aio(raw.close)()
                if scope.cancelled_caught:
                    raw.terminate()

    def terminate(self) -> None:
        """Close every connection at once (a crashed process's)."""
        for spare in self._spare.values():
            spare.clear()
        for raw in self.pools():
            raw.terminate()

    async def return_spares(self) -> None:
        """Give the connections kept between statements back to asyncpg's pools (before closing them, or
        for a caller that takes every connection of one)."""
        for raw, spare in self._spare.items():
            while spare:
                await self._give_back(raw, spare.pop())

    def spares(self) -> int:
        """Connections kept acquired between statements."""
        return sum(len(spare) for spare in self._spare.values())

    async def _run(self, q: Query, method: Callable[..., Awaitable[T]], args: Sequence[Any]) -> T:
        """A statement through the gate as an asyncio Task (``method``: asyncpg's bound fetch, fetchrow,
        fetchval or execute), or a direct call on a native pool."""
        self.statement_counts[q.name] += 1
        self.round_trips += 1

        async def run() -> T:
            try:
                return await self._aio(method)(q.text, *args)
            except _UNREACHABLE as exc:
                if not unreachable(exc):
                    raise
                raise DatabaseUnavailable(f"lost PostgreSQL at {redact(self.dsn)}: {exc}") from exc

        return await self.gate.call(q.name, run)

    def _mapped(self, call: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
        """``call`` with a lost server mapped to DatabaseUnavailable."""

        async def run() -> T:
            try:
                return await call()
            except _UNREACHABLE as exc:
                if not unreachable(exc):
                    raise
                raise DatabaseUnavailable(f"lost PostgreSQL at {redact(self.dsn)}: {exc}") from exc

        return run

    @asynccontextmanager
    async def pinned(self, connections: int) -> AsyncIterator[Pinned]:
        """Hold ``connections`` connections of this pool for the block's owner (see :class:`Pinned`);
        they go back to the pool when the block ends."""
        if not 1 <= connections <= 1000:
            raise ValueError(f"pinned connections must be 1..1000, not {connections}")
        pinned = Pinned(self, connections)
        try:
            await pinned._open()
            yield pinned
        finally:
            await pinned._close()

    def _for(self, q: Query) -> asyncpg.Pool:
        return self.generic if q.generic else self.raw

    async def _on(self, q: Query, con: Any, method: str, args: Sequence[Any]) -> Any:
        """A statement on a connection this task holds, driven in this task (:func:`_drive`)."""
        if not self._fast() or _cancelling(con):
            return await self._run(q, getattr(con, method), args)
        self.statement_counts[q.name] += 1
        self.round_trips += 1
        try:
            return await _drive(getattr(con, method)(q.text, *args))
        except _UNREACHABLE as exc:
            if not unreachable(exc):
                raise
            raise DatabaseUnavailable(f"lost PostgreSQL at {redact(self.dsn)}: {exc}") from exc

    async def _pooled(self, q: Query, method: str, args: Sequence[Any]) -> Any:
        pool = self.generic if q.generic else self.raw
        if not self._fast():
            return await self._run(q, getattr(pool, method), args)
        con = await self._acquire(pool)
        try:
            result = await self._on(q, con, method, args)
        except BaseException:
            # whatever failed goes back for asyncpg to clean up, a server refusal too: the error can reach
            # this task before the protocol has read the server's ReadyForQuery, and a statement sent on it
            # then fails with "cannot switch to state 11; another operation (2) is in progress" (a simulator
            # worker process died of it at startup: test_worker_processes_are_killed_and_the_run_still_converges)
            await self._give_back(pool, con)
            raise
        if not self._keep(pool, con):
            await self._give_back(pool, con)
        return result

    async def _acquire(self, pool: asyncpg.Pool) -> Any:
        spare = self._spare[pool]
        while spare:
            con = spare.pop()
            if not _lost(con):
                return con
            await self._give_back(pool, con)  # the server dropped it meanwhile: asyncpg replaces it
        self.bridge["acquire"] += 1
        try:
            return await aio(pool.acquire)()
        except _UNREACHABLE as exc:
            if not unreachable(exc):
                raise
            raise DatabaseUnavailable(f"lost PostgreSQL at {redact(self.dsn)}: {exc}") from exc

    def _keep(self, pool: asyncpg.Pool, con: Any) -> bool:
        """Keep ``con`` acquired for the next statement (True), if it is fit for one (open, no transaction)
        and asyncpg's pool still has a free connection slot for whoever acquires from it directly (the
        LISTEN connections): a connection kept here is never one somebody else waits for."""
        spare = self._spare[pool]
        free = getattr(getattr(pool, "_queue", None), "qsize", None)  # asyncpg's free holders
        if (
            self._closing
            or free is None
            or free() < 1
            or len(spare) >= pool.get_max_size()
            or _lost(con)
            or con.is_in_transaction()
        ):
            return False
        spare.append(con)
        return True

    async def _give_back(self, pool: asyncpg.Pool, con: Any) -> None:
        """Release to asyncpg's pool, which rolls back, waits out a cancelled query or replaces a broken
        connection."""
        self.bridge["release"] += 1
        with trio.CancelScope(shield=True):
            try:
                await aio(pool.release)(con)
            except Exception:
                # asyncpg terminated it (its reset failed: e.g. InternalClientError "cannot switch to state"
                # on a connection the server is dropping), or had it back already. Whatever failed, the
                # caller's own error (or result) is what it must see, never the release's
                pass

    async def fetch(self, q: Query, *args: Any) -> list[Record]:
        """The rows of statement ``q`` with parameters ``args``."""
        return await self._pooled(q, "fetch", args)  # type: ignore[no-any-return]

    async def fetchrow(self, q: Query, *args: Any) -> Record | None:
        """The first row of statement ``q`` (None when it returns none)."""
        return await self._pooled(q, "fetchrow", args)

    async def fetchval(self, q: Query, *args: Any) -> Any:
        """The first column of the first row of statement ``q`` (None when it returns none)."""
        return await self._pooled(q, "fetchval", args)

    async def execute(self, q: Query, *args: Any) -> str:
        """Run statement ``q``; returns its status tag."""
        return await self._pooled(q, "execute", args)  # type: ignore[no-any-return]

    async def release_listening(self, raw: asyncpg.Connection) -> None:
        """Give back a connection that LISTENed: reset in full (UNLISTEN *) first."""
        with trio.CancelScope(shield=True):
            try:
                if not raw.is_closed():
                    with trio.move_on_after(2):
                        await aio(raw.reset)()
                        if self.listen_checked:
                            await aio(check_client)(raw)
            except Exception:  # the release below terminates a broken connection
                pass
            try:
                await aio(self.listen_pool.release)(raw)
            except asyncpg.InterfaceError:
                pass  # the server dropped it: asyncpg already gave it back to the pool

    async def acquire_listening(self) -> asyncpg.Connection:
        """A connection for LISTEN (a direct one behind a transaction pooler); give it back with
        :meth:`release_listening`."""
        return await aio(self.listen_pool.acquire)()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        """A connection in a transaction: commit on success, rollback on error or cancellation.
        Commit, rollback and release are shielded so a cancelled caller never leaks a connection."""
        if not self._fast():
            async with self._gated_transaction() as conn:
                yield conn
            return
        with trio.CancelScope(shield=True):  # a cancel during BEGIN would leave the connection taken
            raw = await self._acquire(self.raw)
            tx = raw.transaction()
            try:
                self.round_trips += 1
                with self._lost_is_unavailable():
                    await _drive(tx.start())
            except BaseException:
                await self._give_back(self.raw, raw)
                raise
        broken = False
        try:
            try:
                yield Conn(self, raw)
            except BaseException:
                with trio.CancelScope(shield=True):
                    self.round_trips += 1
                    try:
                        # as a Task: after a cancelled statement asyncpg first waits out the cancel request,
                        # under an asyncio timeout, which needs a Task
                        await aio(tx.rollback)()
                    except Exception:
                        # the block's own error is the one to raise; asyncpg's release terminates the
                        # connection (a failed rollback on a connection the server dropped)
                        broken = True
                raise
            else:
                with trio.CancelScope(shield=True):
                    self.round_trips += 1
                    try:
                        with self._lost_is_unavailable():
                            await _drive(tx.commit())
                    except BaseException:
                        broken = True
                        raise
        finally:
            if broken or not self._keep(self.raw, raw):
                await self._give_back(self.raw, raw)

    @contextmanager
    def _lost_is_unavailable(self) -> Iterator[None]:
        """A lost server inside the block (BEGIN, COMMIT: asyncpg's InterfaceError, InternalClientError,
        a class 08 error...) is raised as DatabaseUnavailable, as a statement's would be; any other error
        as it is."""
        try:
            yield
        except _UNREACHABLE as exc:
            if not unreachable(exc):
                raise
            raise DatabaseUnavailable(f"lost PostgreSQL at {redact(self.dsn)}: {exc}") from exc

    @asynccontextmanager
    async def _gated_transaction(self) -> AsyncIterator[Conn]:
        """:meth:`transaction` through a gate: BEGIN, COMMIT and ROLLBACK pass it too (the simulator's
        clock must not run meanwhile), each as an asyncio Task."""

        async def begin() -> tuple[asyncpg.Connection, Any]:
            raw = await aio(self.raw.acquire)()
            tx = raw.transaction()
            try:
                with self._lost_is_unavailable():
                    await aio(tx.start)()
            except BaseException:
                await aio(self.raw.release)(raw)
                raise
            return raw, tx

        # a cancel during BEGIN would leave the release hanging, hence the shield
        with trio.CancelScope(shield=True):
            self.round_trips += 1
            raw, tx = await self.gate.call("begin", begin)
        try:
            try:
                yield Conn(self, raw)
            except BaseException:
                with trio.CancelScope(shield=True):
                    self.round_trips += 1
                    try:
                        await self.gate.call("rollback", aio(tx.rollback))
                    except Exception:
                        pass  # the block's own error is the one to raise (asyncpg's release below cleans up)
                raise
            else:
                with trio.CancelScope(shield=True), self._lost_is_unavailable():
                    self.round_trips += 1
                    await self.gate.call("commit", aio(tx.commit))
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await aio(self.raw.release)(raw)
                except Exception:
                    pass  # asyncpg terminated it (a failed reset): the block's outcome stands

    @asynccontextmanager
    async def listen(self, channel: str, *, buffer: int = LISTEN_BUFFER) -> AsyncIterator[Notifications]:
        """LISTEN on ``channel`` on a pooled connection of its own for the duration of the block; the trio
        receive channel yields each notification's payload in order. It ends (``async for`` finishes) when
        the connection is lost, or when more than ``buffer`` payloads wait unread: a notification is a
        hint, and a caller that missed some catches up by re-reading, then listens again. An unreachable
        server raises :class:`~durable.errors.DatabaseUnavailable`. The connection is reset in full
        (UNLISTEN) when given back."""
        send, receive = trio.open_memory_channel[str](buffer)
        token = trio.lowlevel.current_trio_token()

        def deliver(payload: str) -> None:
            try:
                send.send_nowait(payload)
            except trio.WouldBlock:
                send.close()  # the reader fell behind: end the channel, it catches up and listens again
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass  # lost, after the block, or the reader closed its end

        # called in this thread by trio-asyncio's loop (at once: _Hint), in the order they arrive
        on_notification = _Hint(deliver)

        def on_lost(_conn: object) -> None:
            token.run_sync_soon(send.close)

        async def start() -> asyncpg.Connection:
            raw = await self.acquire_listening()
            try:
                await aio(raw.add_listener)(channel, on_notification)
            except BaseException:
                await self.release_listening(raw)
                raise
            return raw

        try:
            raw = await self.gate.call("listen", start)
        except _UNREACHABLE as exc:
            if not unreachable(exc):
                raise
            raise DatabaseUnavailable(f"cannot listen at {redact(self.dsn)}: {exc}") from exc
        try:
            raw.add_termination_listener(on_lost)
            # no cancel scope or nursery may span this yield: results.Watchers enters the block in one task
            # and leaves it in another (trio requires a scope to be exited by the task that entered it)
            yield Notifications(receive, raw)
        finally:
            send.close()
            with contextlib.suppress(asyncpg.InterfaceError):  # a reset keeps these; the connection is pooled
                raw.remove_termination_listener(on_lost)
            await self.release_listening(raw)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        """A pooled connection outside any transaction (for LISTEN or session-level work: a direct one
        behind a transaction pooler); reset in full when given back."""
        raw = await self.acquire_listening()
        try:
            yield Conn(self, raw)
        finally:
            await self.release_listening(raw)


@contextmanager
def lost_is_unavailable() -> Iterator[None]:
    """A connection lost inside the block (a statement, BEGIN, COMMIT, a pool acquire) is
    DatabaseUnavailable: the streams server answers 503 and clients back off."""
    try:
        yield
    except (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, ConnectionError, OSError) as exc:
        raise DatabaseUnavailable(f"lost PostgreSQL: {exc}") from exc


class Pinned:
    """Connections held for one owner while :meth:`Pool.pinned`'s block runs (the streams store of
    ``durable serve``): a statement costs one round trip, with no acquire and release around it. Written
    with anyio, it runs under trio (through trio-asyncio) and on a native pool's plain asyncio loop. Each
    statement, and the BEGIN, COMMIT and ROLLBACK of :meth:`transaction`, passes the pool's gate like
    every other call. A connection found closed (the server restarted) is replaced when handed back."""

    def __init__(self, pool: Pool, connections: int) -> None:
        self.pool = pool
        self.connections = connections
        self._send, self._receive = anyio.create_memory_object_stream[asyncpg.Connection](connections)
        self._owned: set[asyncpg.Connection] = set()

    async def _open(self) -> None:
        for _ in range(self.connections):
            raw = await self.pool._aio(self.pool.raw.acquire)()
            self._owned.add(raw)
            self._send.send_nowait(raw)

    async def _close(self) -> None:
        with anyio.CancelScope(shield=True):
            for raw in list(self._owned):
                try:
                    await self.pool._aio(self.pool.raw.release)(raw)
                except Exception:  # a broken connection: the pool terminates it
                    pass
            self._owned.clear()

    async def _checkout(self) -> asyncpg.Connection:
        try:  # a free connection is taken without a turn of the event loop (receive() takes one first)
            raw = self._receive.receive_nowait()
        except anyio.WouldBlock:
            raw = await self._receive.receive()
        if connection_closed(raw):
            with anyio.CancelScope(shield=True):
                return await self._replace(raw)
        return raw

    async def _checkin(self, raw: asyncpg.Connection) -> None:
        """Hand a connection back: replaced when dead, or when a transaction is still open on it."""
        if not connection_closed(raw) and raw.is_in_transaction():
            raw.terminate()  # a transaction its owner could not end: drop the connection for a fresh one
        if connection_closed(raw):
            with anyio.CancelScope(shield=True):
                raw = await self._replace(raw)
        self._send.send_nowait(raw)

    async def _replace(self, raw: asyncpg.Connection) -> asyncpg.Connection:
        """A fresh connection for a dead one; the dead one if none is to be had yet (its statement then
        fails with DatabaseUnavailable, and the next hand-back tries again)."""
        try:
            fresh = await self.pool._aio(self.pool.raw.acquire)()
        except Exception:
            return raw
        self._owned.discard(raw)
        try:
            await self.pool._aio(self.pool.raw.release)(raw)
        except Exception:  # the pool terminates a broken connection
            pass
        self._owned.add(fresh)
        return fresh

    async def _one(self, q: Query, method: str, args: Sequence[Any]) -> Any:
        raw = await self._checkout()
        try:
            return await self.pool._run(q, getattr(raw, method), args)
        finally:
            await self._checkin(raw)

    async def fetch(self, q: Query, *args: Any) -> list[Record]:
        """One statement (its own transaction) on a pinned connection."""
        return await self._one(q, "fetch", args)  # type: ignore[no-any-return]

    async def fetchrow(self, q: Query, *args: Any) -> Record | None:
        """The first row of statement ``q`` (None when it returns none)."""
        return await self._one(q, "fetchrow", args)

    async def fetchval(self, q: Query, *args: Any) -> Any:
        """The first column of the first row of statement ``q`` (None when it returns none)."""
        return await self._one(q, "fetchval", args)

    async def execute(self, q: Query, *args: Any) -> str:
        """Run statement ``q``; returns its status tag."""
        return await self._one(q, "execute", args)  # type: ignore[no-any-return]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        """A pinned connection in a transaction: commit on success, rollback on error or cancellation;
        BEGIN, COMMIT and ROLLBACK pass the gate (as :meth:`Pool.transaction`'s do). A rollback on a
        connection that died is skipped (the server already ended the transaction)."""
        raw = await self._checkout()
        try:
            tx = raw.transaction()
            with anyio.CancelScope(shield=True):
                await self.pool.gate.call("begin", self.pool._mapped(self.pool._aio(tx.start)))
            try:
                yield Conn(self.pool, raw)
            except BaseException:
                if not connection_closed(raw):
                    with anyio.CancelScope(shield=True):
                        await self.pool.gate.call("rollback", self.pool._mapped(self.pool._aio(tx.rollback)))
                raise
            else:
                with anyio.CancelScope(shield=True):
                    try:
                        await self.pool.gate.call("commit", self.pool._mapped(self.pool._aio(tx.commit)))
                    except BaseException:
                        if not connection_closed(raw) and raw.is_in_transaction():  # the COMMIT never ran
                            try:
                                await self.pool.gate.call("rollback", self.pool._mapped(self.pool._aio(tx.rollback)))
                            except Exception:  # the check-in replaces a connection still in a transaction
                                pass
                        raise
        finally:
            await self._checkin(raw)


@asynccontextmanager
async def asyncio_loop() -> AsyncIterator[None]:
    """Open a trio-asyncio loop unless one is already running in this trio task tree."""
    try:
        trio_asyncio.current_loop.get()
        running = trio_asyncio.current_loop.get() is not None
    except LookupError:
        running = False
    if running:
        yield
        return
    try:
        async with trio_asyncio.open_loop():
            yield
    except BaseExceptionGroup as group:
        # the loop's internal nurseries wrap everything raised inside; hand a lone error back as is
        lone: BaseException = group
        while isinstance(lone, BaseExceptionGroup) and len(lone.exceptions) == 1:
            lone = lone.exceptions[0]
        if lone is not group and not isinstance(lone, BaseExceptionGroup):
            raise lone from None
        raise
