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

import logging
import math
import os
import secrets
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Protocol

import orjson
import trio

from .. import tracing
from .._pg import InterfaceError, PostgresError, Record
from ..clock import Clock, VirtualClock
from ..errors import DatabaseUnavailable, DefinitionError
from ..inserts import Handoff
from ..machine import Machine, Registry
from ..outcomes import TERMINAL as _TERMINAL
from ..records import ScheduleTicks, Statistics
from ..results import Watchers, announce_loop
from ..schedules import Schedule, check_schedules
from ..sql import Q
from . import running, spans
from .backoff import Outage, unavailable
from .claim import Claim
from .executor import Database as StepsDatabase
from .flusher import Flusher
from .options import Flushing, Leases, Polling, Retention, RuntimeOptions, resolve
from .schedule_loop import ScheduleLoop
from .scheduler import Callbacks, Lifecycle, OnStep, Scheduler, SchedulerConfig


class Database(StepsDatabase, Protocol):
    """What a runtime uses of the ``durable.Database`` it runs on (the runtime never imports the public API):
    the pool, the registry and clock, and the hooks through which this process's inserts wake its
    schedulers and hand them due rows (the registries stay with the Database, which every insert passes)."""

    @property
    def schema(self) -> str:
        """The schema durable's tables live in."""

    @property
    def channel(self) -> str:
        """The NOTIFY channel of wake-up hints for this schema."""

    @property
    def notify(self) -> bool:
        """Whether inserts and ended instances send NOTIFY hints to other processes."""

    @property
    def token(self) -> str:
        """This Database's sender token: a hint it sent itself is skipped."""

    @property
    def watchers(self) -> Watchers:
        """This process's ``result()`` waiters, woken when an instance ends."""

    def wake(self, queues: Iterable[str | None]) -> None:
        """Wake this process's schedulers of ``queues`` (None entries are skipped)."""

    def add_waker(self, queue: str, wake: Callable[[], None]) -> None:
        """Register a scheduler's wake-up for inserts into ``queue`` made through this Database."""

    def remove_waker(self, queue: str, wake: Callable[[], None]) -> None:
        """Unregister a wake-up added by :meth:`add_waker`."""

    def add_handoff(self, queue: str, handoff: Handoff) -> None:
        """Register a scheduler that takes due rows of ``queue`` straight from a local insert."""

    def remove_handoff(self, queue: str, handoff: Handoff) -> None:
        """Unregister a handoff added by :meth:`add_handoff`."""

    async def gc(
        self, older_than: float | timedelta, *, batch: int = 1000, progress: Callable[[int], None] | None = None
    ) -> int:
        """Retention (``durable.ops.gc``, the operator tools': the runtime runs it, never imports it)."""
        ...


log = logging.getLogger("durable.runtime")


class Runtime:
    """Executes steps of ``queues`` (a mapping queue -> concurrency, or names sharing ``concurrency``).

    Throughput knobs (PERFORMANCE.md): ``concurrency`` steps run at once per queue; ``prefetch`` more
    claims wait in a buffer (default: ``concurrency``); a finished step frees its slot while its outcome
    commits. Outcomes are group-committed: up to ``flush_max`` per statement, after an optional
    ``flush_linger`` wait, and up to ``flush_parallel`` plain batches at once. ``chain`` lets a claim run
    that many ``next`` steps in a row without a new pick (run-ahead). ``handoff``: an idle scheduler
    takes due rows of an insert made through the same Database in the insert's own statement, so the
    step starts without a pick (one round trip and one commit less between insert and step).

    Options come grouped in frozen values (durable/runtime/options.py): ``leases=Leases(lease, heartbeat,
    reap_every)``, ``polling=Polling(poll_min, poll_max, listen, handoff, chain)``,
    ``flushing=Flushing(linger, max_batch, parallel)``, ``retention=Retention(older_than, every)``; the flat
    keywords (``lease=``, ``flush_max=``, ``retention=<seconds>``, ...) are shorthand for their fields.
    ``runtime.options`` holds the four groups as resolved.
    """

    def __init__(
        self,
        db: Database,
        *,
        machines: Iterable[type[Machine]] = (),
        queues: Mapping[str, int] | Iterable[str] | None = None,
        concurrency: int = 10,
        prefetch: int | None = None,
        leases: Leases | None = None,
        polling: Polling | None = None,
        flushing: Flushing | None = None,
        lease: float | None = None,
        heartbeat: float | None = None,
        reap_every: float | None = None,
        poll_min: float | None = None,
        poll_max: float | None = None,
        drain_timeout: float = 30.0,
        flush_linger: float | None = None,
        flush_max: int | None = None,
        flush_parallel: int | None = None,
        worker_id: str | None = None,
        clock: Clock | None = None,
        on_step: OnStep | None = None,
        on_error: Callable[[str], None] | None = None,
        retention: float | Retention | None = None,
        retention_every: float | None = None,
        listen: bool | None = None,
        chain: int | None = None,
        handoff: bool | None = None,
        schedules: Iterable[Schedule] = (),
    ) -> None:
        leases = resolve(leases, Leases(), {"lease": lease, "heartbeat": heartbeat, "reap_every": reap_every}, "leases")
        polling = resolve(
            polling,
            Polling(),
            {"poll_min": poll_min, "poll_max": poll_max, "listen": listen, "handoff": handoff, "chain": chain},
            "polling",
        )
        flushing = resolve(
            flushing,
            Flushing(),
            {"linger": flush_linger, "max_batch": flush_max, "parallel": flush_parallel},
            "flushing",
        )
        kept = resolve(
            retention if isinstance(retention, Retention) else None,
            Retention(),
            {"older_than": None if isinstance(retention, Retention) else retention, "every": retention_every},
            "retention",
        )
        self.options = RuntimeOptions(leases, polling, flushing, kept)
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
        self.db = db
        lease_s = float(leases.lease)
        # the settings the schedulers read, fixed from here on (the properties below read them)
        self.scheduler_config = SchedulerConfig(
            worker_id=worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}",
            clock=clock or db.clock,
            lease=lease_s,
            heartbeat_every=leases.heartbeat if leases.heartbeat is not None else lease_s / 3,
            poll_min=polling.poll_min,
            poll_max=polling.poll_max,
            chain=polling.chain,  # run-ahead: steps a claim may run in a row after `next` outcomes
            handoff=polling.handoff,  # an idle scheduler takes due rows of a local insert in the insert itself
            # lease loss: a step that holds the event loop longer than block_limit is reported; a claim
            # whose lease is lost has its step cancelled (lease_lost); dead workers' claims freed at start
            block_limit=lease_s / 3,
        )
        self.reap_every = leases.reap_every if leases.reap_every is not None else min(lease_s / 2, 30.0)
        self.drain_timeout = drain_timeout
        self.on_error = on_error
        self.retention = kept.older_than
        self.retention_every = kept.every
        # recurring schedules (durable/schedules.py): checked here, fired by one service loop
        checked = check_schedules(schedules, db.registry, db.max_value_bytes)
        self.schedule_loop = ScheduleLoop(self, checked) if checked else None
        # NOTIFY hints arrive out of band: off by default under a virtual clock (deterministic runs)
        self.listen = polling.listen if polling.listen is not None else not isinstance(self.clock, VirtualClock)
        self.flusher = Flusher(
            db.pool,
            self.worker_id,
            self.clock,
            max_batch=flushing.max_batch,
            linger=flushing.linger,
            on_commit=self._woken,
            lease=self.lease,
            parallel=flushing.parallel,
        )
        # a database that does not answer: one log line when it goes, one when it is back; loops back off
        self.outage = Outage(self.log_error, seed=self.worker_id, cap=min(2.0, self.heartbeat_every))
        self.flusher.outage = self.outage
        # the schedulers see this runtime through its fixed settings, the shared run state and the calls
        # back (scheduler.py's SchedulerConfig, Lifecycle and Callbacks), never the Runtime itself
        self.life = Lifecycle()
        self.callbacks = Callbacks(
            log_error=self.log_error,
            lose=self.lose,
            lease_lost=self.lease_lost,
            release=self.release,
            timer_set=self.timer_set,
            ran=self.ran,
            on_step=on_step,
        )
        self.schedulers = {
            q: Scheduler(
                q,
                n,
                prefetch if prefetch is not None else n,
                config=self.scheduler_config,
                db=db,
                flusher=self.flusher,
                outage=self.outage,
                life=self.life,
                calls=self.callbacks,
            )
            for q, n in qmap.items()
        }
        self.reaped = 0
        self.timeouts_fired = 0  # awaits this runtime's timer sweep moved on (fire_timeouts)
        self._timer_due = math.inf  # trio time of the nearest known await deadline
        self._timer_kick = trio.Event()
        self.heartbeats = 0
        self.blocked_steps = 0
        self.leases_lost = 0
        self.freed_at_start = 0
        self._running: running.Entry | None = None  # this runtime in the process's registry
        self._work_scope: trio.CancelScope | None = None
        self._stopped = trio.Event()

    # -- the fixed settings (self.scheduler_config), read-only ----------------------------------------
    @property
    def worker_id(self) -> str:
        """This runtime's worker id (its rows in ``workers``, its claims' ``leased_by``)."""
        return self.scheduler_config.worker_id

    @property
    def clock(self) -> Clock:
        """The clock whose ``now()`` this runtime's statements carry (default: its Database's)."""
        return self.scheduler_config.clock

    @property
    def lease(self) -> float:
        """Seconds a claim is leased for, from the statement that takes or extends it."""
        return self.scheduler_config.lease

    @property
    def heartbeat_every(self) -> float:
        """Seconds between heartbeats (default: a third of the lease)."""
        return self.scheduler_config.heartbeat_every

    @property
    def poll_min(self) -> float:
        """The shortest wait in seconds between an idle scheduler's picks."""
        return self.scheduler_config.poll_min

    @property
    def poll_max(self) -> float:
        """The longest wait in seconds between an idle scheduler's picks (the idle wait doubles up to it)."""
        return self.scheduler_config.poll_max

    @property
    def chain(self) -> int:
        """Run-ahead: ``next`` steps a claim may run in a row without a new pick."""
        return self.scheduler_config.chain

    @property
    def handoff(self) -> bool:
        """Whether an idle scheduler takes due rows of a local insert in the insert's own statement."""
        return self.scheduler_config.handoff

    @property
    def block_limit(self) -> float:
        """Seconds a step may hold the event loop before it is reported (a third of the lease)."""
        return self.scheduler_config.block_limit

    @property
    def on_step(self) -> OnStep | None:
        """The hook called after each committed step (``on_step=``), or None."""
        return self.callbacks.on_step

    @property
    def stopping(self) -> bool:
        """Draining or killed: the schedulers pick no more (``self.life.stopping``)."""
        return self.life.stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        self.life.stopping = value

    @property
    def killed(self) -> bool:
        """Killed like a crashed process (:meth:`kill`): nothing is released (``self.life.killed``)."""
        return self.life.killed

    @killed.setter
    def killed(self, value: bool) -> None:
        self.life.killed = value

    @property
    def lost(self) -> set[Claim]:
        """Claims that could not be given back, released once more when the runtime ends."""
        return self.life.lost

    @property
    def registry(self) -> Registry:
        """The machines this runtime runs (its Database's registry)."""
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
                if self._running is not None:
                    running.leave(self._running)
                    self._running = None
                self._stopped.set()
                guard.cancel_scope.cancel()

    def stop(self, drain_timeout: float | None = None) -> None:
        """Begin a graceful drain (idempotent)."""
        if drain_timeout is not None:
            self.drain_timeout = drain_timeout
        if not self.stopping:
            self.stopping = True
            if self._work_scope is not None:
                self._work_scope.deadline = min(self._work_scope.deadline, trio.current_time() + self.drain_timeout)
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
        """Wait until :meth:`run` has returned (drained, stopped or killed)."""
        await self._stopped.wait()

    async def _drain_when_cancelled(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self.stop()

    async def _run(self, task_status: trio.TaskStatus[Runtime]) -> None:
        pool = self.db.pool
        await self._free_dead_workers()  # before registering: this very id may be a dead predecessor's
        self._running = running.enter(self.worker_id)
        await self._register()
        for q, s in self.schedulers.items():
            self.db.add_waker(q, s.wakeup.set)
            self.db.add_handoff(q, s)
        spans.watch(self)
        try:
            async with trio.open_nursery() as services:
                await services.start(self.flusher.run)
                services.start_soon(self._heartbeat_loop)
                services.start_soon(self._lease_watch_loop)
                services.start_soon(self._reaper_loop)
                await services.start(self._timer_loop)  # its first sweep fires what is overdue already
                if self.schedule_loop is not None:
                    services.start_soon(self.schedule_loop.run)
                if self.retention is not None:
                    services.start_soon(self._retention_loop)
                if self.listen:
                    services.start_soon(self._listen_loop)
                if self.listen and self.db.notify:  # hints for result() waiters in other processes
                    services.start_soon(announce_loop, self.db, self._hint_lost)
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
            spans.unwatch(self)
            if not self.killed:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    try:
                        await pool.execute(Q.stop_worker, self.worker_id, self._gauges_json(), self.clock.now())
                    except (DatabaseUnavailable, PostgresError, OSError):
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
        claims = sorted(claims, key=_claim_id)  # held claims come from sets: one order, for the simulator's replay
        try:
            rows = await self.db.pool.fetch(
                Q.release,
                [c.id for c in claims],
                [c.lease_token for c in claims],
                [bump] * len(claims),
                self.worker_id,
                self.clock.now(),
            )
        except (DatabaseUnavailable, PostgresError, OSError) as exc:
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
            await trio.sleep(
                min(self.heartbeat_every, self.outage.delay()) if self.outage.down else self.heartbeat_every
            )
            await self.beat()

    async def beat(self) -> set[int]:
        """Extend every held lease in one statement and refresh the worker row; returns extended ids.
        A claim the database says is no longer held has its step cancelled (:meth:`lose`)."""
        self.check_leases()  # the loop may have been blocked past some leases: those are lost already
        held = sorted((c for s in self.schedulers.values() for c in s.held() if c.lost is None), key=_claim_id)
        tokens = [c.lease_token for c in held]
        began = trio.current_time()  # the extended leases run from a moment after this
        with tracing.span(
            "durable heartbeat", {"durable.worker.id": self.worker_id, "durable.claims": len(held)}
        ) as span:
            try:
                row = await self.db.pool.fetchrow(
                    Q.heartbeat,
                    [c.id for c in held],
                    tokens,
                    self.lease,
                    self.clock.now(),
                    self.worker_id,
                    self._gauges_json(),
                )
            except (DatabaseUnavailable, PostgresError, OSError) as exc:
                if unavailable(exc):
                    self.outage.failed(exc)
                else:
                    self.log_error(f"heartbeat failed: {exc}")
                tracing.record_error(span, exc)
                return set()
            self.outage.succeeded()
            extended = set(row["extended"]) if row else set()
            span.set_attribute("durable.extended", len(extended))
            self._settle_leases(
                held, tokens, set(row["tokens"]) if row else set(), set(row["lost"]) if row else set(), began
            )
            self.cancel_requested(held, tokens, set(row["cancel"]) if row else set())
        self.heartbeats += 1
        return extended

    def _settle_leases(
        self, held: list[Claim], tokens: list[int], extended: set[int], lost: set[int], began: float
    ) -> None:
        """After a heartbeat: extended claims hold until ``began + lease``; a claim no longer held (reaped,
        fenced, re-claimed) whose step runs or waits is lost. A claim whose outcome is committing is left
        to the commit (fenced there if it was lost); one that moved on meanwhile (run-ahead) is skipped."""
        active = {c for s in self.schedulers.values() for c in (*s.in_flight, *s.buffer)}
        for c, token in zip(held, tokens, strict=True):
            if c.lease_token != token:
                continue
            if token in extended:
                c.lease_until = max(c.lease_until, began + self.lease)
            elif token in lost and c in active:
                self.lose(c, "the heartbeat found the claim gone (reaped, fenced or claimed again)")

    def cancel_requested(self, held: list[Claim], tokens: list[int], cancel: set[int]) -> None:
        """After a heartbeat: held claims whose instance has a cancel pending (db.cancel, cancelling.py). A
        running step is cancelled through its scope (its slot then commits a ``cancel`` outcome, after
        on_cancel); a buffered claim runs no step; a committing one ends cancelled in its commit."""
        if not cancel:
            return
        for c, token in zip(held, tokens, strict=True):
            if token in cancel and c.lease_token == token and c.lost is None and not c.cancel_requested:
                c.cancel_requested = True
                if c.scope is not None:
                    c.scope.cancel()

    # -- lease loss ----------------------------------------------------------------------------------
    def lose(self, claim: Claim, why: str) -> None:
        """The claim's lease is lost: cancel its step at once (at its next checkpoint); the slot then
        records ``lease_lost`` and commits no outcome. A buffered claim is dropped when its turn comes."""
        if claim.lost is not None:
            return
        claim.lost = why
        if claim.scope is not None:
            claim.scope.cancel()

    def check_leases(self) -> None:
        """Lose every running or waiting claim whose lease passed by this runtime's own count (the last
        statement that took or extended it began more than a lease ago): its row may be reaped and given
        to another worker any moment, whether or not a heartbeat could say so."""
        now = trio.current_time()
        for s in self.schedulers.values():
            for c in (*s.in_flight, *s.buffer):
                if c.lost is None and now >= c.lease_until:
                    self.lose(
                        c,
                        f"the lease passed {now - c.lease_until + self.lease:.2f}s after it was last "
                        f"extended (lease {self.lease:g}s)",
                    )

    async def _lease_watch_loop(self) -> None:
        """Check the leases at each one's expiry (and at least every heartbeat period), so a step whose
        heartbeats stall (the event loop was blocked, the database does not answer) is cancelled at the
        first chance after its lease passes."""
        while True:
            now = trio.current_time()
            due = min(
                (c.lease_until for s in self.schedulers.values() for c in (*s.in_flight, *s.buffer) if c.lost is None),
                default=now + self.heartbeat_every,
            )
            # at most a third of a lease: a claim taken meanwhile is checked well before its lease passes
            await trio.sleep(max(0.0, min(due - now, self.heartbeat_every, self.lease / 3)))
            self.check_leases()

    def ran(self, claim: Claim, seconds: float) -> None:
        """(StepWatch) A stretch of a step's code held the event loop for ``seconds``, over the limit
        (executor.watched): reported with its machine and step; leases that passed meanwhile are lost
        now, this step's first (it is cancelled at the checkpoint it just reached)."""
        self.blocked_steps += 1
        log.warning(
            "durable[%s]: step %s.%s of instance %d (attempt %d) blocked the event loop for %.2fs, "
            "over a third of the %gs lease: every step and heartbeat of this worker waited; "
            "run blocking code with trio.to_thread.run_sync",
            self.worker_id,
            claim.machine,
            claim.step,
            claim.id,
            claim.attempt,
            seconds,
            self.lease,
        )
        spans.loop_blocked(claim, seconds, self.block_limit)
        if trio.current_time() >= claim.lease_until:
            self.lose(claim, f"the lease passed while the step held the event loop for {seconds:.2f}s")
        self.check_leases()  # the others' leases may have passed too

    async def lease_lost(self, claim: Claim, why: str) -> None:
        """Record a lost claim (its step cancelled or never started): a 'lease_lost' history row; a claim
        the database still holds (only our own count had passed) goes back to runnable at once."""
        self.leases_lost += 1
        log.warning(
            "durable[%s]: lost the lease of instance %d at %s.%s (attempt %d), step cancelled: %s",
            self.worker_id,
            claim.id,
            claim.machine,
            claim.step,
            claim.attempt,
            why,
        )
        try:
            rows = await self.db.pool.fetch(
                Q.lease_lost,
                [claim.id],
                [claim.lease_token],
                [1 if claim.started else 0],
                [why],
                [claim.step],
                [claim.attempt],
                self.worker_id,
                self.clock.now(),
            )
        except (DatabaseUnavailable, PostgresError, OSError) as exc:
            if unavailable(exc):
                self.outage.failed(exc)
            else:
                self.log_error(f"recording the lost lease of instance {claim.id} failed: {exc}")
            return  # the row, if still ours, is reaped when its lease expires
        self.outage.succeeded()
        self.db.wake(r["queue"] for r in rows)

    async def _register(self) -> None:
        """Register this runtime in ``workers``, waiting out a database that does not answer like every loop
        does (a connection killed at start ended the runtime: test_a_runtime_starts_through_a_killed_connection).
        A refusal (say an unmigrated schema) still raises; a stop ends the wait with the drain deadline."""
        while True:
            try:
                await self.db.pool.execute(
                    Q.register_worker,
                    self.worker_id,
                    socket.gethostname(),
                    os.getpid(),
                    list(self.schedulers),
                    self._gauges_json(),
                    self.clock.now(),
                )
            except (DatabaseUnavailable, OSError) as exc:
                if not unavailable(exc):
                    raise
                await self.outage.pause(exc)
                continue
            self.outage.succeeded()
            return

    async def _free_dead_workers(self) -> None:
        """At start: release the claims of this host's registered runtimes whose process is gone (and of a
        dead predecessor with this runtime's own id) at once, instead of after their leases."""
        host = socket.gethostname()
        try:
            rows = await self.db.pool.fetch(Q.workers_on_host, host)
            dead = [(r["id"], why) for r in rows if (why := _gone(r["id"], r["pid"], host)) is not None]
            if not dead:
                return
            freed = await self.db.pool.fetch(
                Q.release_dead_workers, [d[0] for d in dead], [d[1] for d in dead], self.worker_id, self.clock.now()
            )
        except (DatabaseUnavailable, PostgresError, OSError) as exc:
            self.log_error(f"releasing the claims of dead workers failed (the reaper will return them): {exc}")
            return
        self.freed_at_start += len(freed)
        self.db.wake(r["queue"] for r in freed)
        if freed:
            log.warning(
                "durable[%s]: released %d claims of dead workers at start: %s",
                self.worker_id,
                len(freed),
                "; ".join(f"{w} ({why})" for w, why in dead),
            )

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
                except (DatabaseUnavailable, PostgresError, OSError) as exc:
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

    def timer_set(self, seconds: float) -> None:
        """An await parked here with a timeout of ``seconds``: the timer sweep runs by then."""
        due = trio.current_time() + seconds
        if due < self._timer_due:
            self._timer_due = due
            self._timer_kick.set()

    async def _timer_loop(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fire due await timeouts, then sleep until the nearest deadline: the one the sweep saw, or an
        earlier one parked here since (timer_set). A deadline parked meanwhile by another runtime is
        seen within reap_every. Started once its first sweep is done."""
        while True:
            nap = await self.fire_timeouts()
            task_status.started()
            task_status = trio.TASK_STATUS_IGNORED
            self._timer_due = trio.current_time() + nap
            while trio.current_time() < self._timer_due:
                self._timer_kick = trio.Event()
                with trio.move_on_at(self._timer_due):
                    await self._timer_kick.wait()

    async def fire_timeouts(self, limit: int = 1000) -> float:
        """Move awaits whose timeout passed on (queries.sql fire_timeouts); returns the seconds until the
        sweep should run again (the next pending deadline, at most reap_every)."""
        nap = self.reap_every
        while True:
            try:
                rows = await self.db.pool.fetch(Q.fire_timeouts, self.clock.now(), limit)
            except (DatabaseUnavailable, PostgresError, OSError) as exc:
                if unavailable(exc):
                    self.outage.failed(exc)
                    return min(self.reap_every, self.outage.delay())
                self.log_error(f"timer sweep failed: {exc}")
                return nap
            self.outage.succeeded()
            fired = [r for r in rows if r["id"] is not None]
            self.timeouts_fired += len(fired)
            self.db.wake(r["queue"] for r in fired)
            if len(fired) < limit:
                next_in = rows[0]["next_in"] if rows else None
                if next_in is not None:
                    nap = min(nap, max(next_in, 0.001))
                return nap

    async def _listen_loop(self) -> None:
        """Wake schedulers on NOTIFY hints from inserts in other processes. Only a hint: polling
        remains the correctness floor, so a lost connection just means polling until it is back."""
        while True:
            try:
                async with self.db.pool.listen(self.db.channel) as hints:
                    async for payload in hints:
                        sender, _, queue = payload.partition("|")  # '<sender token>|<queue>' (signals: no sender)
                        if sender == self.db.token:  # our own insert: its local wake-up already fired
                            continue
                        scheduler = self.schedulers.get(queue)
                        if scheduler is not None:
                            scheduler.wakeup.set()
            except (DatabaseUnavailable, PostgresError, InterfaceError, OSError) as exc:
                if unavailable(exc):
                    self.outage.failed(exc)
                else:
                    self.log_error(f"listening for wake-up hints failed (polling meanwhile): {exc}")
            await trio.sleep(min(self.poll_max, self.outage.delay()) if self.outage.down else self.poll_max)

    async def _retention_loop(self) -> None:
        assert self.retention is not None
        while True:
            await trio.sleep(self.retention_every)
            try:
                await self.db.gc(older_than=self.retention)  # the operator tools' retention
            except (DatabaseUnavailable, PostgresError, OSError) as exc:
                if unavailable(exc):
                    self.outage.failed(exc)  # retried at the next round
                else:
                    self.log_error(f"retention failed: {exc}")

    # -- helpers -------------------------------------------------------------------------------------
    def _woken(self, rows: list[Record]) -> None:
        self.db.wake(r["queue"] for r in rows if r["status"] == "runnable" and not r["fenced"])
        # result() waiters: this process's at once, other processes' by the announcer's NOTIFY
        ended = [r["id"] for r in rows if r["kind"] == "outcome" and r["status"] in _TERMINAL and not r["fenced"]]
        if ended:
            self.db.watchers.wake(ended)

    def _hint_lost(self, exc: BaseException) -> None:
        """The announcer could not send its hint (result() waiters elsewhere fall back to re-reading)."""
        if unavailable(exc):
            self.outage.failed(exc)
        else:
            self.log_error(f"announcing ended instances failed (waiters re-read instead): {exc}")

    def _gauges_json(self) -> str:
        return orjson.dumps({q: s.gauges() for q, s in self.schedulers.items()}).decode()

    def statistics(self) -> Statistics:
        """A frozen snapshot of this runtime's counters (:class:`durable.records.Statistics`)."""
        loop = self.schedule_loop
        return Statistics(
            worker_id=self.worker_id,
            queues={q: s.gauges() for q, s in self.schedulers.items()},
            batches=self.flusher.batches,
            committed=self.flusher.committed,
            transient_retries=self.flusher.transient_retries,
            rejected=self.flusher.rejected,
            reaped=self.reaped,
            heartbeats=self.heartbeats,
            blocked_steps=self.blocked_steps,
            lease_lost=self.leases_lost,
            freed_at_start=self.freed_at_start,
            schedule_ticks=ScheduleTicks(loop.fired, loop.taken, loop.dropped) if loop is not None else ScheduleTicks(),
        )

    def log_error(self, message: str) -> None:
        """Report an error line: to ``on_error`` when given, else to stderr, prefixed with the worker id."""
        if self.on_error is not None:
            self.on_error(message)
        else:
            print(f"durable[{self.worker_id}]: {message}", file=sys.stderr)


def _claim_id(claim: Claim) -> int:
    return claim.id


def _gone(worker_id: str, pid: int, host: str) -> str | None:
    """Why the registered runtime ``worker_id`` (process ``pid`` of this host) is surely dead, or None when
    it may be alive. Only on POSIX, where a pid names one process of this host (a host name shared by
    several PID namespaces, e.g. containers with the host's UTS namespace, breaks that assumption)."""
    if running.runs_here(worker_id) or os.name != "posix" or pid <= 0:
        return None
    if pid == os.getpid():  # this process runs no runtime of that id: an earlier one, killed, or a dead
        return f"process {pid} on {host} (this one) no longer runs it"  # process whose pid we reuse
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"process {pid} on {host} is gone"
    except OSError:  # EPERM: alive, someone else's
        return None
    return None
