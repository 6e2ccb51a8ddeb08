"""One queue's feeder: picks batches up to ``concurrency + prefetch`` claims, runs up to ``concurrency``
steps at once, refills on completion, backs off when idle and wakes at once on a local insert."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import asyncpg
import trio

from .. import tracing
from ..errors import DatabaseUnavailable
from ..sql import Q
from .claim import Claim, Committed, Encoded, claims_from_rows
from .executor import run_claim

if TYPE_CHECKING:
    from .runtime import Runtime

PICK_RETRIES = 3


class Wakeup:
    """A level-triggered wake-up: ``set`` any number of times, ``wait`` returns once and resets."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            await self._event.wait()
        woke = self._event.is_set()
        if woke:
            self._event = trio.Event()
        return woke


class Scheduler:
    def __init__(self, runtime: Runtime, queue: str, concurrency: int, prefetch: int) -> None:
        self.runtime = runtime
        self.queue = queue
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.buffer: collections.deque[Claim] = collections.deque()
        self.in_flight: set[Claim] = set()
        self.wakeup = Wakeup()
        self.orphans_suspected = False  # a pick failed: it may have claimed rows we never heard of
        self.picks = 0
        self.picked = 0
        self.done = 0
        self.failed = 0
        self.steps = 0
        self.fenced = 0
        self.errors = 0

    def held(self) -> list[Claim]:
        return [*self.in_flight, *self.buffer]

    def gauges(self) -> dict[str, float]:
        return {
            "concurrency": self.concurrency, "prefetch": self.prefetch, "in_flight": len(self.in_flight),
            "buffered": len(self.buffer), "steps": self.steps, "done": self.done, "failed": self.failed,
            "fenced": self.fenced, "picks": self.picks, "heartbeat": self.runtime.heartbeat_every,
        }

    async def run(self) -> None:
        rt = self.runtime
        idle = rt.poll_min
        async with trio.open_nursery() as steps:
            try:
                while not rt.stopping:
                    demand = self.concurrency + self.prefetch - len(self.in_flight) - len(self.buffer)
                    got = 0
                    if self.orphans_suspected:
                        await self.release_orphans()
                    if demand > 0:
                        try:
                            claims = await self.pick(demand)
                        except (DatabaseUnavailable, asyncpg.PostgresError, OSError) as exc:
                            self.errors += 1
                            rt.log_error(f"pick on queue {self.queue!r} failed: {exc}")
                            claims = []
                            # the claim may have committed with its answer lost: give such rows back
                            self.orphans_suspected = True
                        got = len(claims)
                        self.buffer.extend(claims)
                    self.start_ready(steps)
                    if rt.stopping:
                        break
                    if demand > 0 and got >= demand:
                        idle = rt.poll_min
                        await self.wakeup.wait(rt.poll_max)  # full: wait for a completion
                    elif got > 0:
                        idle = rt.poll_min
                        await self.wakeup.wait(rt.poll_min)
                    else:
                        if not await self.wakeup.wait(idle):
                            idle = min(idle * 2, rt.poll_max)
                        else:
                            idle = rt.poll_min
            finally:
                # drain: give buffered claims back at once; in-flight steps finish in the nursery
                if not rt.killed:
                    with trio.CancelScope(shield=True):
                        await rt.release(list(self.buffer), bump=0)
                        self.buffer.clear()

    async def release_orphans(self) -> None:
        rt = self.runtime
        try:
            await rt.db.pool.fetch(Q.release_orphans, rt.worker_id, self.queue,
                                   [c.id for c in self.held()], rt.clock.now())
        except (DatabaseUnavailable, asyncpg.PostgresError, OSError) as exc:
            rt.log_error(f"releasing orphaned claims on queue {self.queue!r} failed (will retry): {exc}")
            return
        self.orphans_suspected = False

    def start_ready(self, nursery: trio.Nursery) -> None:
        while self.buffer and len(self.in_flight) < self.concurrency and not self.runtime.stopping:
            claim = self.buffer.popleft()
            self.in_flight.add(claim)
            nursery.start_soon(self.run_step, claim, nursery)

    async def pick(self, demand: int) -> list[Claim]:
        rt = self.runtime
        with tracing.span("durable pick", {"messaging.system": "durable",
                                            "messaging.operation.type": "receive",
                                            "messaging.destination.name": self.queue,
                                            "durable.demand": demand,
                                            "durable.worker.id": rt.worker_id},
                          kind=tracing.SpanKind.CONSUMER) as span:
            for attempt in range(PICK_RETRIES):
                try:
                    rows = await rt.db.pool.fetch(Q.pick, self.queue, demand, rt.worker_id, rt.lease,
                                                  rt.clock.now())
                    break
                except asyncpg.UniqueViolationError:
                    # two runtimes claimed rows of one partition key at once: the index said no
                    if attempt == PICK_RETRIES - 1:
                        span.set_attribute("durable.claimed", 0)
                        return []
            self.picks += 1
            self.picked += len(rows)
            span.set_attribute("durable.claimed", len(rows))
            return claims_from_rows(rows)

    async def run_step(self, claim: Claim, nursery: trio.Nursery) -> None:
        rt = self.runtime
        claim.started = True
        # a step cut off by cancellation stays in in_flight so the drain can release it
        for ahead in range(rt.chain + 1):
            encoded, _ = await run_claim(claim, rt.db, rt.worker_id)
            # run-ahead: a `next` keeps the claim and this task runs the next step without a pick
            encoded.hold = encoded.kind == "next" and ahead < rt.chain and not rt.stopping
            result = await self.commit(claim, encoded)
            if result is None or result.held is None:
                break
            claim.run_ahead(result.held)
        self.in_flight.discard(claim)
        self.start_ready(nursery)
        self.wakeup.set()

    async def commit(self, claim: Claim, encoded: Encoded) -> Committed | None:
        rt = self.runtime
        span = tracing.start_outcome(claim, encoded)
        try:
            result = await rt.flusher.commit(claim, encoded)
        except (DatabaseUnavailable, asyncpg.PostgresError, OSError, RuntimeError) as exc:
            # not committed (or unknown): give the claim back for a re-run (attempt + 1, fenced by its
            # token, so a commit that did go through is left alone); failing that, the reaper will
            tracing.finish_outcome(span, claim, encoded, error=exc)
            self.errors += 1
            rt.log_error(f"outcome of instance {claim.id} not committed: {exc}")
            if not await rt.release([claim], bump=1):
                rt.lost.add(claim)
            return None
        tracing.finish_outcome(span, claim, encoded, result=result)
        self.steps += 1
        if result.fenced:
            self.fenced += 1
        elif result.status == "done":
            self.done += 1
        elif result.status == "failed":
            self.failed += 1
        if rt.on_step is not None:
            rt.on_step(claim, encoded, result)
        return result
