"""Waiting for an instance to end: what ``Database.result`` waits on, and the hints that wake it.

A waiter is woken by the commit that ends its instance, never by a busy poll:

* in this process, a Runtime's flusher (``Runtime._woken``) and ``Database.cancel`` call
  :meth:`Watchers.wake` with the ids they made terminal, right after the commit;
* other processes hear a NOTIFY on the schema's ``durable_ended_<schema>`` channel, payload
  ``'<sender token>|<id>,<id>,...'`` (``'<token>|*'``: re-check every waiter). A Runtime sends them from
  a task of its own after its commits (:func:`announce_loop`), coalescing the ids of every batch committed
  meanwhile into one ``announce_ended`` statement; it is not part of the ``complete`` statements on
  purpose: a NOTIFY in the committing transaction takes PostgreSQL's global notify lock through that
  commit's WAL flush, which serializes concurrent commits (measured: 8 connections committing one-row
  transactions, 3,300 -> 1,440 per second; 4 connections committing 50-row batches, 770 -> 500), while a
  separate notifying statement writes no WAL and leaves the commits in parallel.

Hints are only hints: each wake-up re-reads the row, and a waiter also re-reads it every
``Database.result_recheck`` seconds (a lost hint, a listening connection that dropped, an instance ended by
a tool that sends none, a Runtime with ``listen=False`` or under a virtual clock, which announces nothing).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio

from ._pg import InterfaceError, PostgresError
from .errors import DatabaseUnavailable
from .outcomes import TERMINAL as _TERMINAL
from .sql import Q

if TYPE_CHECKING:
    from ._pg import Notifications, Pool


class Database(Protocol):
    """What the waiters and the announcer use of a ``durable.Database`` (they sit below it)."""

    @property
    def pool(self) -> Pool:
        """The pool the waiters read instances through."""

    @property
    def schema(self) -> str:
        """The schema durable's tables live in."""

    @property
    def token(self) -> str:
        """This Database's sender token, carried by its NOTIFY hints."""

    @property
    def watchers(self) -> Watchers:
        """This process's ``result()`` waiters."""


TERMINAL: Final = frozenset(_TERMINAL)
RECHECK: Final = 5.0  # seconds between a waiter's own re-reads (the safety net under the hints)
PAYLOAD_BYTES: Final = 7000  # of one NOTIFY payload (PostgreSQL's limit is 8000)
MAX_PAYLOADS: Final = 16  # NOTIFYs per announce_ended; more ids than they hold: one '*' instead


def channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel of a schema's 'instances ended' hints."""
    return f"durable_ended_{schema}"[:63]


def payloads(token: str, ids: Iterable[int]) -> list[str]:
    """The NOTIFY payloads announcing ``ids``: ``'<token>|1,2,3'`` chunks, or one ``'<token>|*'``."""
    out: list[str] = []
    chunk: list[str] = []
    size = 0
    for i in sorted(set(ids)):
        text = str(i)
        if size + len(text) + 1 > PAYLOAD_BYTES - len(token) - 1:
            out.append(f"{token}|{','.join(chunk)}")
            chunk, size = [], 0
        chunk.append(text)
        size += len(text) + 1
    if chunk:
        out.append(f"{token}|{','.join(chunk)}")
    return out if len(out) <= MAX_PAYLOADS else [f"{token}|*"]


@dataclass(eq=False, slots=True)
class Watch:
    """One waiter on one instance. ``arm()`` before each read of the row, so that a wake-up between the
    read and the wait is not lost."""

    instance_id: int
    event: trio.Event = field(default_factory=trio.Event)
    waiting: bool = False  # read the row, found it live, now waits for a wake-up
    scope: trio.CancelScope | None = None  # while it waits (or reads the hints): cancelled by wake()

    def arm(self) -> None:
        """A fresh event to wait on, before the row is read (a commit after the read still wakes it)."""
        self.event = trio.Event()

    def wake(self) -> None:
        """Its instance may have ended: set its event and end its wait (or its turn reading the hints)."""
        self.event.set()
        if self.scope is not None:
            self.scope.cancel()


class Watchers:
    """This process's waiters of one Database, and the one LISTEN (``Pool.listen``, on a pooled connection)
    that hears other processes' hints for them, held while anyone waits. No task of its own reads the
    hints: the first waiter that waits while nobody reads them does, until its own wait ends, then hands
    the reading over to another waiter."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._by_id: dict[int, set[Watch]] = defaultdict(set)
        self._users = 0
        self._hints: Notifications | None = None  # the open LISTEN's payloads, while anyone waits
        self._listening: AsyncExitStack | None = None  # exits the Pool.listen block: the connection goes back
        self._ended = False  # the hints ended (connection lost, or read too late): listen() opens a new one
        self._reader: Watch | None = None  # the waiter reading the hints now
        self._lock_: trio.Lock | None = None
        self.pending: set[int] = set()  # ended here, not yet announced (while an announcer runs)
        self.announcers = 0
        self._kick: trio.Event | None = None

    @property
    def channel(self) -> str:
        """The NOTIFY channel of ended-instance hints of this schema."""
        return channel(self.db.schema)

    @property
    def listening(self) -> bool:
        """Whether the LISTEN for other processes' hints is open (while anyone in this process waits)."""
        return self._hints is not None and not self._ended

    @property
    def _lock(self) -> trio.Lock:
        if self._lock_ is None:  # made in the trio run that first needs it
            self._lock_ = trio.Lock()
        return self._lock_

    @property
    def kick(self) -> trio.Event:
        """Set when ended ids are pending for a runtime's announcer (announce_loop) to send as hints (made
        in the trio run that first needs it)."""
        if self._kick is None:
            self._kick = trio.Event()
        return self._kick

    @kick.setter
    def kick(self, event: trio.Event) -> None:
        self._kick = event

    def wake(self, ids: Iterable[int]) -> None:
        """Instances ended in this process: wake their local waiters, and queue them for the announcer."""
        if self._by_id:
            for i in ids:
                for w in self._by_id.get(i, ()):
                    w.wake()
        if self.announcers:
            self.pending.update(ids)
            if len(self.pending) > PAYLOAD_BYTES * MAX_PAYLOADS:  # far more than a '*' announces anyway
                self.pending = {-1}  # (no instance has id -1: just '*')
            self.kick.set()

    def waiting(self, instance_id: int) -> int:
        """How many waiters of this process wait for ``instance_id`` to end right now."""
        return sum(w.waiting for w in self._by_id.get(instance_id, ()))

    def wake_all(self) -> None:
        """Wake every waiter of this process (a '*' hint: more instances ended than one hint names)."""
        for watches in list(self._by_id.values()):
            for w in list(watches):
                w.wake()

    def _hint(self, payload: str) -> None:
        sender, _, ids = payload.partition("|")
        if sender == self.db.token:  # our own runtime's commit: its local wake-up already fired
            return
        if ids == "*":
            self.wake_all()
            return
        for text in ids.split(","):
            try:
                iid = int(text)
            except ValueError:  # not one of ours (a truncated channel name shared with another schema)
                continue
            for w in self._by_id.get(iid, ()):
                w.wake()

    @asynccontextmanager
    async def watching(self, instance_id: int) -> AsyncIterator[Watch]:
        """Register a waiter (and LISTEN, if nobody in this process does yet) before the first read."""
        w = Watch(instance_id)
        self._by_id[instance_id].add(w)
        self._users += 1
        try:
            await self.listen()
            yield w
        finally:
            watches = self._by_id.get(instance_id)
            if watches is not None:
                watches.discard(w)
                if not watches:
                    del self._by_id[instance_id]
            self._users -= 1
            with trio.CancelScope(shield=True):
                async with self._lock:
                    if self._users == 0:
                        await self._unlisten()

    async def wait(self, watch: Watch, recheck: float) -> None:
        """Until ``watch`` is woken, or ``recheck`` seconds. Meanwhile it reads the LISTEN's hints when
        nobody else does (waking the waiters they name), and hands that over to another waiter when done."""
        watch.waiting = True
        try:
            with trio.move_on_after(recheck):
                while not watch.event.is_set():
                    hints = self._hints
                    with trio.CancelScope() as watch.scope:  # cancelled by watch.wake()
                        if hints is not None and not self._ended and self._reader is None:
                            self._reader = watch
                            await self._read(watch, hints)
                        else:
                            await watch.event.wait()
                    watch.scope = None
        finally:
            watch.waiting = False
            watch.scope = None
            if self._reader is watch:
                self._reader = None
                self._hand_over()

    async def _read(self, watch: Watch, hints: Notifications) -> None:
        """Dispatch hints until this waiter's own event is set (its scope is cancelled then) or the hints end."""
        try:
            async for payload in hints:
                self._hint(payload)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        if hints is self._hints:  # lost, or read too late: hints may be missed, every waiter re-reads
            self._ended = True
            self.wake_all()

    def _hand_over(self) -> None:
        """The reader's wait ended: the next waiter that waits reads the hints (one waiting now, at once)."""
        if self._hints is None or self._ended:
            return
        for watches in self._by_id.values():
            for w in watches:
                if w.scope is not None and not w.event.is_set():
                    w.scope.cancel()  # it loops and takes the reading over
                    return

    async def listen(self) -> None:
        """Make sure the LISTEN is open (again, if it ended). Best effort: without it a waiter is woken by
        another process's commit only at its re-check."""
        async with self._lock:
            if self._hints is not None and not self._ended:
                return
            await self._unlisten()
            stack = AsyncExitStack()
            try:
                hints = await stack.enter_async_context(self.db.pool.listen(self.channel))
            except (PostgresError, InterfaceError, OSError, DatabaseUnavailable):
                return  # the re-check reads the row (and says why it cannot)
            self._listening, self._hints, self._ended = stack, hints, False

    async def _unlisten(self) -> None:
        """End the LISTEN (its connection goes back to the pool), if one is open."""
        stack, self._listening, self._hints = self._listening, None, None
        if stack is not None:
            with trio.CancelScope(shield=True):
                await stack.aclose()


async def announce(db: Database, ids: Iterable[int]) -> None:
    """Tell other processes' waiters that ``ids`` ended (one statement; nothing when ``ids`` is empty)."""
    texts = payloads(db.token, ids)
    if texts:
        await db.pool.fetchval(Q.announce_ended, db.watchers.channel, texts)


async def announce_loop(db: Database, on_error: Any) -> None:
    """A Runtime's announcer: after its commits, one ``announce_ended`` for every id ended meanwhile.
    A failure loses only hints (the waiters' re-check is the floor): ``on_error(exc)`` and go on."""
    w = db.watchers
    w.announcers += 1
    try:
        while True:
            await w.kick.wait()
            w.kick = trio.Event()
            ids, w.pending = w.pending, set()
            if not ids:
                continue
            try:
                if -1 in ids:
                    await db.pool.fetchval(Q.announce_ended, w.channel, [f"{db.token}|*"])
                else:
                    await announce(db, ids)
            except (DatabaseUnavailable, PostgresError, InterfaceError, OSError) as exc:
                on_error(exc)
    finally:
        w.announcers -= 1
        if not w.announcers:
            w.pending = set()


def check_timeout(value: Any) -> float | None:
    """``timeout`` of ``Database.result``: None (forever), or seconds (a number or timedelta), finite and
    not negative (ValueError, TypeError otherwise)."""
    from datetime import timedelta

    from .errors import InvalidArgument
    from .limits import check_delay

    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | timedelta):
        raise TypeError(
            f"timeout must be a number of seconds, a timedelta or None, not {type(value).__name__} {value!r}"
        )
    return check_delay(value, "timeout", InvalidArgument)
