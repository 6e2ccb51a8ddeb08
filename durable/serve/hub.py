"""Wake-ups for live readers: a stream's appends, closes and deletes are announced with NOTIFY (by every
writer: this server, other servers, engine steps); one LISTEN connection turns them into trio events.
A reader subscribes *before* it reads, so an append between its read and its wait is never missed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio_asyncio

from .._pg import Pool


class Hub:
    def __init__(self) -> None:
        self._events: dict[int, trio.Event] = {}
        self._token: trio.lowlevel.TrioToken | None = None

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

    def _on_notification(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        # runs in the asyncio loop (same thread as trio under trio-asyncio): hop into trio
        assert self._token is not None
        self._token.run_sync_soon(self.notify, int(payload))

    @asynccontextmanager
    async def listening(self, pool: Pool, channel: str) -> AsyncIterator[None]:
        """LISTEN on ``channel`` for the duration of the block."""
        self._token = trio.lowlevel.current_trio_token()
        async with pool.connection() as conn:
            await trio_asyncio.aio_as_trio(conn.raw.add_listener)(channel, self._on_notification)
            try:
                yield
            finally:
                with trio.CancelScope(shield=True):
                    await trio_asyncio.aio_as_trio(conn.raw.remove_listener)(channel, self._on_notification)


async def wait(event: trio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; True when it fired."""
    with trio.move_on_after(timeout):
        await event.wait()
        return True
    return False
