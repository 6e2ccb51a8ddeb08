"""Wake-ups for live readers: a stream's appends, closes and deletes are announced with NOTIFY (by every
writer: this server, other servers, engine steps); one LISTEN connection turns them into trio events.
A reader subscribes *before* it reads, so an append between its read and its wait is never missed."""

from __future__ import annotations

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
