"""The runtime: a trio nursery tree that executes steps.

    run (guard nursery)
    └── shielded work scope  (outer cancellation becomes a graceful drain with a deadline)
        ├── services: flusher (group commit), heartbeat (one batched statement), reaper
        └── schedulers: one per queue, each with its steps' nursery

Cancelling ``run`` (or calling :meth:`Runtime.stop`) drains: schedulers stop picking and give their
buffered claims back at once, in-flight steps get ``drain_timeout`` seconds to finish and commit, then
the services stop. Steps still running at the deadline are cancelled and their claims released
(attempt + 1, like a crash).
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import asyncpg
import orjson
import trio

from .. import tracing
from .._pg import aio
from ..client import Database
from ..clock import Clock, VirtualClock
from ..errors import DatabaseUnavailable, DefinitionError
from ..machine import Machine, Registry
from ..sql import Q
from .backoff import Outage, unavailable
from .claim import Claim, Committed, Encoded
from .flusher import Flusher
from .scheduler import Scheduler

OnStep = Callable[[Claim, Encoded, Committed], None]


class Runtime:
    """Executes steps of ``queues`` (a mapping queue -> concurrency, or names sharing ``concurrency``).

    Throughput knobs (PERFORMANCE.md): ``concurrency`` steps run at once per queue; ``prefetch`` more
    claims wait in a buffer (default: ``concurrency``); a finished step frees its slot while its outcome
    commits. Outcomes are group-committed: up to ``flush_max`` per statement, after an optional
    ``flush_linger`` wait, and up to ``flush_parallel`` plain batches at once. ``chain`` lets a claim run
    that many ``next`` steps in a row without a new pick (run-ahead). ``handoff``: an idle scheduler
    takes due rows of an insert made through the same Database in the insert's own statement, so the
    step starts without a pick (one round trip and one commit less between insert and step).
    """

    def __init__(
        self,
        db: Database,
        *,
        machines: Iterable[type[Machine]] = (),
        queues: Mapping[str, int] | Iterable[str] | None = None,
        concurrency: int = 10,
        prefetch: int | None = None,
        lease: float = 60.0,
        heartbeat: float | None = None,
        reap_every: float | None = None,
        poll_min: float = 0.05,
        poll_max: float = 1.0,
        drain_timeout: float = 30.0,
        flush_linger: float = 0.0,
        flush_max: int = 500,
        flush_parallel: int = 2,
        worker_id: str | None = None,
        clock: Clock | None = None,
        on_step: OnStep | None = None,
        on_error: Callable[[str], None] | None = None,
        retention: float | None = None,
        retention_every: float = 60.0,
        listen: bool | None = None,
        chain: int = 0,
        handoff: bool = True,
    ) -> None:
        for m in machines:
            if (m.name, m.version) not in db.registry:
                db.registry.add(m)
        if queues is None:
            queues = sorted({m.queue for m in db.registry}) or ["default"]
        if isinstance(queues, Mapping):
            qmap = dict(queues)
        else:
            qmap = {q: concurrency for q in queues}
        for q, n in qmap.items():
            if not isinstance(n, int) or n < 1:
                raise DefinitionError(f"queue {q!r}: concurrency must be a positive int, not {n!r}")
        if lease <= 0:
            raise DefinitionError("lease must be positive")
        self.db = db
        self.clock = clock or db.clock
        self.lease = float(lease)
        self.heartbeat_every = heartbeat if heartbeat is not None else self.lease / 3
        self.reap_every = reap_every if reap_every is not None else min(self.lease / 2, 30.0)
        self.poll_min = poll_min
        self.poll_max = poll_max
        self.drain_timeout = drain_timeout
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.on_step = on_step
        self.on_error = on_error
        self.stopping = False
        self.killed = False
        self.retention = retention
        self.retention_every = retention_every
        # NOTIFY hints arrive out of band: off by default under a virtual clock (deterministic runs)
        self.chain = chain  # run-ahead: steps a claim may run in a row after `next` outcomes
        self.handoff = handoff  # an idle scheduler takes due rows of a local insert in the insert itself
        self.listen = listen if listen is not None else not isinstance(self.clock, VirtualClock)
        self.lost: set[Claim] = set()
        self.schedulers = {
            q: Scheduler(self, q, n, prefetch if prefetch is not None else n) for q, n in qmap.items()
        }
        self.flusher = Flusher(db.pool, self.worker_id, self.clock, max_batch=flush_max, linger=flush_linger,
                               on_commit=self._woken, lease=self.lease, parallel=flush_parallel)
        # a database that does not answer: one log line when it goes, one when it is back; loops back off
        self.outage = Outage(self.log_error, seed=self.worker_id, cap=min(2.0, self.heartbeat_every))
        self.flusher.outage = self.outage
        self.reaped = 0
        self.heartbeats = 0
        self._work_scope: trio.CancelScope | None = None
        self._stopped = trio.Event()

    @property
    def registry(self) -> Registry:
        return self.db.registry

    # -- lifecycle -----------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled or :meth:`stop`; ``await nursery.start(runtime.run)`` returns once the
        worker is registered and its schedulers are running."""
        async with trio.open_nursery() as guard:
            guard.start_soon(self._drain_when_cancelled)
            try:
                with trio.CancelScope(shield=True) as work:
                    self._work_scope = work
                    try:
                        await self._run(task_status)
                    finally:
                        await self._release_unfinished()
            finally:
                self._stopped.set()
                guard.cancel_scope.cancel()

    def stop(self, drain_timeout: float | None = None) -> None:
        """Begin a graceful drain (idempotent)."""
        if drain_timeout is not None:
            self.drain_timeout = drain_timeout
        if not self.stopping:
            self.stopping = True
            if self._work_scope is not None:
                self._work_scope.deadline = min(self._work_scope.deadline,
                                                trio.current_time() + self.drain_timeout)
            for s in self.schedulers.values():
                s.wakeup.set()

    def kill(self) -> None:
        """Die like a crashed process: stop at once, release nothing, leave every claim to the reaper
        (the simulator's worker crash)."""
        self.killed = True
        self.stopping = True
        if self._work_scope is not None:
            self._work_scope.cancel()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def _drain_when_cancelled(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self.stop()

    async def _run(self, task_status: trio.TaskStatus[Runtime]) -> None:
        pool = self.db.pool
        await pool.execute(Q.register_worker, self.worker_id, socket.gethostname(), os.getpid(),
                           list(self.schedulers), self._gauges_json(), self.clock.now())
        for q, s in self.schedulers.items():
            self.db.add_waker(q, s.wakeup.set)
            self.db.add_handoff(q, s)
        tracing.watch(self)
        try:
            async with trio.open_nursery() as services:
                await services.start(self.flusher.run)
                services.start_soon(self._heartbeat_loop)
                services.start_soon(self._reaper_loop)
                if self.retention is not None:
                    services.start_soon(self._retention_loop)
                if self.listen:
                    services.start_soon(self._listen_loop)
                async with trio.open_nursery() as work:
                    for s in self.schedulers.values():
                        work.start_soon(s.run)
                    task_status.started(self)
                # every scheduler has drained: flush what is queued, then stop the services
                self.flusher.close()
                with trio.move_on_after(self.drain_timeout):
                    await self.flusher.finished.wait()
                services.cancel_scope.cancel()
        finally:
            for q, s in self.schedulers.items():
                self.db.remove_waker(q, s.wakeup.set)
                self.db.remove_handoff(q, s)
            tracing.unwatch(self)
            if not self.killed:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    try:
                        await pool.execute(Q.stop_worker, self.worker_id, self._gauges_json(), self.clock.now())
                    except (DatabaseUnavailable, asyncpg.PostgresError, OSError):
                        pass

    async def _release_unfinished(self) -> None:
        """After the drain deadline: claims whose step was cut off go back with attempt + 1."""
        if self.killed:
            return
        leftovers = [c for s in self.schedulers.values() for c in s.held()]
        leftovers += list(self.lost)
        if not leftovers:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            started = [c for c in leftovers if c.started]
            fresh = [c for c in leftovers if not c.started]
            await self.release(started, bump=1)
            await self.release(fresh, bump=0)

    async def release(self, claims: list[Claim], *, bump: int) -> bool:
        """Give claims back (runnable, attempt + bump); False when the database could not be reached
        (the leases then expire and the reaper returns them)."""
        if not claims:
            return True
        try:
            rows = await self.db.pool.fetch(Q.release, [c.id for c in claims], [c.lease_token for c in claims],
                                            [bump] * len(claims), self.worker_id, self.clock.now())
        except (DatabaseUnavailable, asyncpg.PostgresError, OSError) as exc:
            if unavailable(exc):
                self.outage.failed(exc)
            else:
                self.log_error(f"releasing {len(claims)} claims failed (the reaper will return them): {exc}")
            return False
        self.outage.succeeded()
        self.db.wake(r["queue"] for r in rows)
        return True

    # -- services ------------------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            # the database down: try again sooner than the next beat, backing off
            await trio.sleep(min(self.heartbeat_every, self.outage.delay()) if self.outage.down
                             else self.heartbeat_every)
            await self.beat()

    async def beat(self) -> set[int]:
        """Extend every held lease in one statement and refresh the worker row; returns extended ids."""
        held = [c for s in self.schedulers.values() for c in s.held()]
        with tracing.span("durable heartbeat", {"durable.worker.id": self.worker_id,
                                                 "durable.claims": len(held)}) as span:
            try:
                row = await self.db.pool.fetchrow(
                    Q.heartbeat, [c.id for c in held], [c.lease_token for c in held], self.lease,
                    self.clock.now(), self.worker_id, self._gauges_json())
            except (DatabaseUnavailable, asyncpg.PostgresError, OSError) as exc:
                if unavailable(exc):
                    self.outage.failed(exc)
                else:
                    self.log_error(f"heartbeat failed: {exc}")
                tracing.record_error(span, exc)
                return set()
            self.outage.succeeded()
            extended = set(row["extended"]) if row else set()
            span.set_attribute("durable.extended", len(extended))
        self.heartbeats += 1
        return extended

    async def _reaper_loop(self) -> None:
        while True:
            await trio.sleep(min(self.reap_every, self.outage.delay()) if self.outage.down else self.reap_every)
            await self.reap()

    async def reap(self, limit: int = 1000) -> int:
        """Return expired leases to runnable; returns how many."""
        total = 0
        # the count starts at 0: a reap cancelled at shutdown ends as an idle span, not one without a count
        with tracing.span("durable reap", {"durable.worker.id": self.worker_id, "durable.reaped": 0}) as span:
            while True:
                try:
                    rows = await self.db.pool.fetch(Q.reap, self.clock.now(), limit)
                except (DatabaseUnavailable, asyncpg.PostgresError, OSError) as exc:
                    if unavailable(exc):
                        self.outage.failed(exc)
                    else:
                        self.log_error(f"reaper failed: {exc}")
                    tracing.record_error(span, exc)
                    break
                self.outage.succeeded()
                total += len(rows)
                self.db.wake(r["queue"] for r in rows)
                if len(rows) < limit:
                    break
            span.set_attribute("durable.reaped", total)
        self.reaped += total
        return total

    async def _listen_loop(self) -> None:
        """Wake schedulers on NOTIFY hints from inserts in other processes. Only a hint: polling
        remains the correctness floor, so a lost connection just means polling until it is back."""
        def hint(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            sender, _, queue = payload.partition("|")  # '<sender token>|<queue>' (signals: no sender)
            if sender == self.db.token:  # our own insert: its local wake-up already fired
                return
            scheduler = self.schedulers.get(queue)
            if scheduler is not None:
                scheduler.wakeup.set()

        def alive(conn: Any) -> bool:
            try:
                return not conn.raw.is_closed()
            except asyncpg.InterfaceError:  # dropped by the server: already back in the pool
                return False

        channel = self.db.channel
        while True:
            try:
                async with self.db.pool.connection() as conn:
                    await aio(conn.raw.add_listener)(channel, hint)
                    try:
                        while alive(conn):  # noqa: ASYNC110 - asyncpg offers no trio event for this
                            await trio.sleep(self.poll_max)
                    finally:
                        if alive(conn):
                            with trio.CancelScope(shield=True), trio.move_on_after(2):
                                await aio(conn.raw.remove_listener)(channel, hint)
            except (DatabaseUnavailable, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                if unavailable(exc):
                    self.outage.failed(exc)
                else:
                    self.log_error(f"listening for wake-up hints failed (polling meanwhile): {exc}")
            await trio.sleep(min(self.poll_max, self.outage.delay()) if self.outage.down else self.poll_max)

    async def _retention_loop(self) -> None:
        from ..ops import gc  # retention lives with the operator tools

        assert self.retention is not None
        while True:
            await trio.sleep(self.retention_every)
            try:
                await gc(self.db, older_than=self.retention)
            except (DatabaseUnavailable, asyncpg.PostgresError, OSError) as exc:
                if unavailable(exc):
                    self.outage.failed(exc)  # retried at the next round
                else:
                    self.log_error(f"retention failed: {exc}")

    # -- helpers -------------------------------------------------------------------------------------
    def _woken(self, rows: list[asyncpg.Record]) -> None:
        self.db.wake(r["queue"] for r in rows if r["status"] == "runnable" and not r["fenced"])

    def _gauges_json(self) -> str:
        return orjson.dumps({q: s.gauges() for q, s in self.schedulers.items()}).decode()

    def statistics(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "queues": {q: s.gauges() for q, s in self.schedulers.items()},
            "batches": self.flusher.batches,
            "committed": self.flusher.committed,
            "transient_retries": self.flusher.transient_retries,  # batches retried (connection, 40001, 40P01)
            "rejected": self.flusher.rejected,  # outcomes the database refused, each handed to handle()
            "reaped": self.reaped,
            "heartbeats": self.heartbeats,
        }

    def log_error(self, message: str) -> None:
        if self.on_error is not None:
            self.on_error(message)
        else:
            print(f"durable[{self.worker_id}]: {message}", file=sys.stderr)
