"""Wake-ups for live readers: a stream's appends, closes and deletes are announced with NOTIFY (by every
writer: this server, other servers, engine steps); one LISTEN connection turns them into trio events.
A reader subscribes *before* it reads, so an append between its read and its wait is never missed."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from .._pg import Pool
from ..limits import decimal


def stream_id(payload: str) -> int | None:
    """The stream id a notification's payload names, or None for any other payload: anyone who can connect
    may NOTIFY the channel (a bigint has at most 19 digits)."""
    return decimal(payload, 19)


class Hub:
    """In-process wake-ups of live readers: one event per stream, set by the next notification of it
    (the NOTIFY of an append), plus watchers called on every notification."""

    def __init__(self) -> None:
        self._events: dict[int, trio.Event] = {}
        self._watchers: list[Callable[[int], None]] = []
        self._interests: list[Callable[[], bool]] = []

    def watch(self, callback: Callable[[int], None], interest: Callable[[], bool] | None = None) -> None:
        """Call ``callback(stream_id)`` (synchronously, in trio) on every notification; ``interest``: whether
        the watcher wants notifications at all just now (see :meth:`wants`), always when None."""
        self._watchers.append(callback)
        self._interests.append(interest or (lambda: True))

    def wants(self, stream_id: int) -> bool:
        """Whether a notification of ``stream_id`` would do anything: a reader waits for it, or a watcher
        wants notifications. Safe from another thread (dict and list reads under the GIL). A reader
        subscribes before it reads, so a notification of an append its read did not see finds it here."""
        return stream_id in self._events or any(interest() for interest in self._interests)

    def subscribe(self, stream_id: int) -> trio.Event:
        """The event the next notification of ``stream_id`` sets."""
        ev = self._events.get(stream_id)
        if ev is None:
            ev = self._events[stream_id] = trio.Event()
        return ev

    def notify(self, stream_id: int) -> None:
        """Stream ``stream_id`` changed: wake its readers and tell the watchers."""
        ev = self._events.pop(stream_id, None)
        if ev is not None:
            ev.set()
        for callback in self._watchers:
            callback(stream_id)

    def notify_all(self) -> None:
        """Wake every reader (after LISTEN was re-established: anything may have been appended meanwhile)."""
        for stream_id in list(self._events):
            self.notify(stream_id)

    @asynccontextmanager
    async def listening(self, pool: Pool, channel: str) -> AsyncIterator[None]:
        """LISTEN on ``channel`` for the duration of the block (re-listening after a lost connection)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._listen, pool, channel)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()

    async def _listen(self, pool: Pool, channel: str, *, task_status: trio.TaskStatus[None]) -> None:
        started = False
        while True:
            try:
                async with pool.listen(channel) as notifications:
                    if not started:
                        task_status.started()
                        started = True
                    self.notify_all()  # whatever was appended while we were not listening
                    async for payload in notifications:
                        if (sid := stream_id(payload)) is not None:  # a stream id (anything else is not ours)
                            self.notify(sid)
                continue  # the connection dropped: listen again at once
            except Exception:
                if not started:
                    raise
            await trio.sleep(1)  # the server is away; readers poll meanwhile


async def wait(event: trio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; True when it fired."""
    with trio.move_on_after(timeout):
        await event.wait()
        return True
    return False


class Handover:
    """Notifications on their way from another thread (``durable serve``'s front, which LISTENs on its own
    loop) to the hub's trio thread: a set of stream ids, taken by at most one scheduled callback at a time.
    A storm of NOTIFYs therefore queues one callback in trio, not one per NOTIFY (trio's queue of
    ``run_sync_soon`` callbacks has no bound), and holds one entry per stream. A notification is a hint
    (readers re-read from their offset), so a stream notified twice before the callback runs is woken once."""

    def __init__(self, hub: Hub, schedule: Callable[[Callable[[], None]], None]) -> None:
        self._hub = hub
        self._schedule = schedule  # runs a callable on the trio thread soon (TrioToken.run_sync_soon)
        self._lock = threading.Lock()
        self._ids: set[int] = set()
        self._everything = False
        self._scheduled = False

    def notify(self, stream_id: int) -> None:
        """From any thread: the stream changed."""
        self._pend(stream_id)

    def notify_all(self) -> None:
        """From any thread: anything may have changed (LISTEN was re-established)."""
        self._pend(None)

    def _pend(self, stream_id: int | None) -> None:
        """Add ``stream_id`` (None: every stream) to what the next delivery hands over; schedule that
        delivery unless one is already on its way."""
        with self._lock:
            if stream_id is None:
                self._everything = True
            else:
                self._ids.add(stream_id)
            if self._scheduled:
                return
            self._scheduled = True
        self._schedule(self._deliver)

    def _deliver(self) -> None:
        """On the trio thread: hand the hub what came since the last delivery."""
        with self._lock:
            ids, everything = self._ids, self._everything
            self._ids, self._everything, self._scheduled = set(), False, False
        if everything:
            self._hub.notify_all()
        for sid in sorted(ids):
            self._hub.notify(sid)
