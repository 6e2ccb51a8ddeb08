"""Wake-ups for live readers: a stream's appends, closes and deletes are announced with NOTIFY (by every
writer: this server, other servers, engine steps); one LISTEN connection turns them into trio events.
A reader subscribes *before* it reads, so an append between its read and its wait is never missed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import trio

from .._pg import Pool, aio
from ..streams.store import is_closed


class Hub:
    def __init__(self) -> None:
        self._events: dict[int, trio.Event] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self._watchers: list[Callable[[int], None]] = []

    def watch(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(stream_id)`` (synchronously, in trio) on every notification."""
        self._watchers.append(callback)

    def subscribe(self, stream_id: int) -> trio.Event:
        """The event the next notification of ``stream_id`` sets."""
        ev = self._events.get(stream_id)
        if ev is None:
            ev = self._events[stream_id] = trio.Event()
        return ev

    def notify(self, stream_id: int) -> None:
        ev = self._events.pop(stream_id, None)
        if ev is not None:
            ev.set()
        for callback in self._watchers:
            callback(stream_id)

    def _on_notification(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        # runs in the asyncio loop (same thread as trio under trio-asyncio): hop into trio
        assert self._token is not None
        self._token.run_sync_soon(self.notify, int(payload))

    def notify_all(self) -> None:
        for stream_id in list(self._events):
            self.notify(stream_id)

    @asynccontextmanager
    async def listening(self, pool: Pool, channel: str) -> AsyncIterator[None]:
        """LISTEN on ``channel`` for the duration of the block (re-listening after a lost connection)."""
        self._token = trio.lowlevel.current_trio_token()
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
                raw = await pool.acquire_listening()
            except Exception:
                if not started:
                    raise
                await trio.sleep(1)  # the server is away; readers poll meanwhile
                continue
            try:
                await aio(raw.add_listener)(channel, self._on_notification)
                if not started:
                    task_status.started()
                    started = True
                self.notify_all()  # whatever was appended while we were not listening
                lost = trio.Event()
                token = self._token
                assert token is not None
                raw.add_termination_listener(
                    lambda _conn, token=token, lost=lost: token.run_sync_soon(lost.set))
                while not is_closed(raw):
                    with trio.move_on_after(5):  # also look now and then, in case no callback comes
                        await lost.wait()
            finally:
                with trio.CancelScope(shield=True), suppress(Exception):
                    await pool.release_listening(raw)


async def wait(event: trio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; True when it fired."""
    with trio.move_on_after(timeout):
        await event.wait()
        return True
    return False
