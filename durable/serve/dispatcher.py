"""The subscription dispatcher: a task of the server's nursery that issues wakes and runs webhook
deliveries (child tasks of its own nursery, so none outlives the server).

It wakes on the stream notifications the hub already receives (an append to a linked stream), on kicks
from the endpoints (a wake ended with work still pending) and every ``sweep_interval`` seconds for a full
sweep: expired leases are cleared and every idle subscription with pending work, past its retry backoff,
gets a wake. All state is in PostgreSQL and every wake is issued under the subscription's row lock, so
several servers on one schema never issue the same wake twice, and a restarted server carries on.
"""

from __future__ import annotations

import logging

import trio

from ..errors import DatabaseUnavailable
from ..streams.wakes import Wake, Wakes
from .webhooks import Deliverer

log = logging.getLogger("durable.serve")


class Dispatcher:
    """Finds subscriptions with pending work and sends their wakes (at most ``max_deliveries`` at once),
    when kicked by an append and every ``sweep_interval`` seconds (lease expiry, retries)."""

    def __init__(self, wakes: Wakes, deliverer: Deliverer, *, sweep_interval: float, max_deliveries: int = 64) -> None:
        self.wakes = wakes
        self.deliverer = deliverer
        self.sweep_interval = sweep_interval
        self.max_deliveries = max_deliveries
        self._streams: set[int] = set()
        self._subs: set[int] = set()
        self._kicked = trio.Event()
        # whether the schema has subscriptions at all (from the last sweep, or a PUT here): without
        # any, appends cost no lookup; one created on another server is found by the next sweep
        self.active = True

    def stream_changed(self, stream_id: int) -> None:
        """A stream was appended to (from the hub; synchronous)."""
        if self.active:
            self._streams.add(stream_id)
            self._kicked.set()

    def kick(self, sub_id: int) -> None:
        """Look at this subscription soon (it was created, or a wake of it ended)."""
        self.active = True
        self._subs.add(sub_id)
        self._kicked.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Dispatch until cancelled."""
        limiter = trio.CapacityLimiter(self.max_deliveries)
        async with trio.open_nursery() as nursery:
            task_status.started()
            next_sweep = trio.current_time()
            while True:
                with trio.move_on_at(next_sweep):
                    await self._kicked.wait()
                self._kicked = trio.Event()
                streams, self._streams = self._streams, set()
                subs, self._subs = self._subs, set()
                full = trio.current_time() >= next_sweep
                if full:
                    next_sweep = trio.current_time() + self.sweep_interval
                try:
                    for wake in await self._issue(streams, subs, full=full):
                        nursery.start_soon(self._deliver, wake, limiter)
                except DatabaseUnavailable as exc:
                    log.warning("subscriptions: %s (retrying)", exc)
                    await trio.sleep(min(1.0, self.sweep_interval))

    async def _issue(self, streams: set[int], subs: set[int], *, full: bool) -> list[Wake]:
        candidates = set(subs)
        if full:
            self.active = await self.wakes.any_live()
        if full and self.active:
            candidates.update(await self.wakes.expire_leases())
            candidates.update(await self.wakes.wakeable(None))
        elif streams and self.active:
            candidates.update(await self.wakes.wakeable(sorted(streams)))
        webhooks = []
        for sub_id in sorted(candidates):
            wake = await self.wakes.issue(sub_id)
            if wake is not None and wake.sub.type == "webhook":
                webhooks.append(wake)
        return webhooks

    async def _deliver(self, wake: Wake, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            try:
                ended = await self.deliverer.deliver(wake)
            except DatabaseUnavailable as exc:
                log.warning("subscriptions: delivery of %s: %s (the lease expiry retries)", wake.wake_id, exc)
                return
        if ended:
            self.kick(wake.sub.id)  # new events may have arrived after the snapshot
