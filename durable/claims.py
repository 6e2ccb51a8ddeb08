"""The explicit pipeline: claim instances, then commit what became of each, for code that is not a Machine
(a script or cron job that drains one batch, a worker in another language over ``durable serve``).

    claims = await db.claim("orders", limit=10, lease=60)
    for claim in claims:
        await claim.transition("ship", {"paid": True})  # or complete / retry / fail / release / extend

    await db.run_once("orders", handler, limit=10)      # claim a batch, handler(claim) for each

Everything here is the runtime's own machinery, not a second implementation: the claim is the runtime's
``pick`` statement (durable/runtime/scheduler.py) with its optional machine/step filter, every outcome goes
through the runtime's :class:`~durable.runtime.flusher.Flusher` (``complete_simple`` / ``complete``:
the same fencing, history and parent joins; group-committed under :meth:`Database.run_once`), a
release is its ``release`` statement, an extension its ``heartbeat``, a lost lease its ``lease_lost``.

:class:`Claim` here is the public record of one claim. It wraps the runtime's internal claim
(``durable.runtime.claim.Claim``, the row a scheduler runs; called ``Held`` in this module).

Fencing: each call carries the claim's lease token. A call made after the claim stopped being held (its
lease expired and it was reaped, another worker claimed the row again, or the claim already ended)
changes nothing and raises :class:`~durable.errors.Fenced`; an outcome's (transition, complete, retry,
fail) history row says ``fenced``. A release or an extension of a lost claim writes no history row.

Signals: a claim shows the instance's inbox. An outcome consumes the shown signals of the awaited name(s)
(as a Machine's step does); ``consume=`` names the signal ids to consume instead. Others stay.

Without a Runtime: :meth:`Database.claim` also returns expired leases to runnable (the reaper's
statement) and fires due await timeouts (the timer sweep's), at most once a second per Database, so a
cron job's crashed predecessor does not hold its rows forever.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio

from . import codec
from ._pg import PostgresError, Record
from .context import ChildInfo, Signal
from .errors import DurableError, Fenced, InvalidArgument, NoSuchInstance, OutcomeError
from .limits import INT64, MAX_DELAY, MAX_VALUE_BYTES, check_id, check_int, check_text
from .machine import check_outcome, describe
from .outcomes import UNCHANGED, Await, Cancel, Done, Next, Outcome, Retry, Spawn, Stop
from .runtime.backoff import unavailable
from .runtime.cancelling import cancel_outcome
from .runtime.claim import Claim as Held
from .runtime.claim import Committed, Encoded, claims_from_rows
from .runtime.executor import consume_shown, encode
from .runtime.flusher import Flusher, rejection
from .sql import Q

if TYPE_CHECKING:
    from .runtime.runtime import Database as RuntimeDatabase
    from .values import Database as ValuesDatabase
    from .values import StepValues

    class Database(RuntimeDatabase, ValuesDatabase, Protocol):
        """What the explicit pipeline uses of a ``durable.Database``: the runtime's view and named values
        (no import of the public API above it)."""


MAX_CLAIMS = 1000  # one claim call's limit
SWEEP_EVERY = 1.0  # seconds between the reaper/timer sweeps db.claim runs itself
EXTEND_TRIES = 5  # an extension that finds the row locked (another statement holds it for a moment)
OUTCOMES = (Next, Retry, Await, Spawn, Done, Stop, Cancel)
BACKOFF_BASE, BACKOFF_MAX = 1.0, 300.0  # run_once's retry after a handler's exception (as Machine's)

Handler = Callable[["Claim"], Awaitable[Any]]


class AnyStep:
    """The step names of a machine that is not a class here: any name durable can store."""

    def __contains__(self, name: object) -> bool:
        check_text(name, "step", error=OutcomeError)
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


ANY_STEP = AnyStep()


def check_lease(lease: Any) -> float:
    """A lease in seconds: a positive number up to durable.MAX_DELAY."""
    if isinstance(lease, bool) or not isinstance(lease, int | float):
        raise TypeError(f"lease must be a number of seconds, not {type(lease).__name__} {lease!r}")
    if not 0 < lease <= MAX_DELAY:  # also NaN
        raise InvalidArgument(f"lease must be a positive number of seconds up to durable.MAX_DELAY, not {lease!r}")
    return float(lease)


@dataclass(eq=False)
class Claim:
    """One claimed instance (:meth:`Database.claim`): what the handler needs, and the fenced calls that end
    (or extend) the claim. ``state`` is the stored state as JSON values; ``inbox`` the signals shown,
    oldest first; ``lease_token`` fences every call; ``lease_expires`` is when the lease passes unless
    extended (by this process's clock, in trio time: ``trio.current_time()``)."""

    id: int
    machine: str
    version: int
    step: str
    state: Any
    attempt: int
    queue: str
    inbox: tuple[Signal, ...]
    lease_token: int
    priority: int = 0
    partition_key: str | None = None
    parent_id: int | None = None
    awaits: str | None = None
    children: tuple[ChildInfo, ...] = ()
    timed_out: bool = False
    cancel_requested: bool = False  # a cancel is pending: any outcome ends the instance cancelled
    lease_expires: float = math.inf
    status: str | None = None  # after a committed call: the instance's status (None while held)
    _held: Held = field(default=None, repr=False)  # type: ignore[assignment]
    _pipe: Pipeline = field(default=None, repr=False)  # type: ignore[assignment]
    _commit: Callable[[Held, Encoded], Awaitable[Committed]] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The claim as JSON values (``durable serve``'s answer to a claim request)."""
        return {
            "id": self.id,
            "machine": self.machine,
            "version": self.version,
            "step": self.step,
            "state": self.state,
            "attempt": self.attempt,
            "queue": self.queue,
            "priority": self.priority,
            "partition_key": self.partition_key,
            "parent_id": self.parent_id,
            "awaits": self.awaits,
            "timed_out": self.timed_out,
            "cancel_requested": self.cancel_requested,
            "lease_token": self.lease_token,
            "inbox": [{"id": s.id, "name": s.name, "payload": s.payload, "dedup_key": s.dedup_key} for s in self.inbox],
            "children": [
                {
                    "id": c.id,
                    "machine": c.machine,
                    "status": c.status,
                    "step": c.step,
                    "result": c.result,
                    "last_error": c.last_error,
                }
                for c in self.children
            ],
        }

    @property
    def values(self) -> StepValues:
        """The instance's named values (``put``, ``get``, ``list``), as a step's ``ctx.values``: a put is fenced
        by this claim's lease token (durable.Fenced once the claim is no longer held)."""
        from .values import StepValues

        return StepValues(self._pipe.db, self.id, self.lease_token)

    # -- the fenced calls --------------------------------------------------------------------------
    async def transition(
        self, step: str, state: Any = None, *, delay: float | None = None, consume: Iterable[int] | None = None
    ) -> str:
        """Commit the next step (and the new state; None keeps the stored one) and end the claim: the
        instance is runnable at ``step`` (after ``delay`` seconds) and is claimed again. Returns its
        status (``runnable``; ``cancelled`` when a cancel was pending). Fenced when no longer held."""
        outcome = Next(step, UNCHANGED if state is None else state, delay=delay)
        return await self._outcome(outcome, "transition", consume)

    async def complete(self, result: Any = None, *, consume: Iterable[int] | None = None) -> str:
        """End the instance done with ``result``; returns its status (``done``, or ``cancelled``)."""
        return await self._outcome(Done(result), "complete", consume)

    async def retry(self, delay: float = 0.0, error: str | None = None) -> str:
        """Run the same step again after ``delay`` seconds (attempt + 1), recording ``error``."""
        return await self._outcome(Retry(delay=delay, error=error), "retry", None)

    async def fail(self, reason: str) -> str:
        """End the instance failed with ``reason``; returns its status (``failed``, or ``cancelled``)."""
        return await self._outcome(Stop(reason), "fail", None)

    async def release(self) -> None:
        """Give the claim back unrun: runnable at once, attempt unchanged, its place in line kept."""
        rows = await self._pipe.db.pool.fetch(
            Q.release, [self.id], [self.lease_token], [0], self._pipe.worker_id, self._pipe.db.clock.now()
        )
        self._pipe.leases.pop(self.lease_token, None)
        if not rows:
            raise Fenced(self.id, self.lease_token, "release")
        self.status = "runnable"
        self._pipe.db.wake(r["queue"] for r in rows)

    async def extend(self, lease: float | None = None) -> None:
        """Heartbeat: the lease holds ``lease`` seconds (default: the claim's own) from now. Sets
        ``cancel_requested`` when a cancel of the instance is pending."""
        seconds = self._pipe.lease_of(self) if lease is None else check_lease(lease)
        for attempt in range(EXTEND_TRIES):
            began = trio.current_time()
            row = await self._pipe.db.pool.fetchrow(
                Q.heartbeat,
                [self.id],
                [self.lease_token],
                seconds,
                self._pipe.db.clock.now(),
                self._pipe.worker_id,
                "{}",
            )
            if row is not None and self.lease_token in row["tokens"]:
                self.lease_expires = self._held.lease_until = began + seconds
                self._pipe.leases[self.lease_token] = (self.id, seconds)
                if self.lease_token in row["cancel"]:
                    self.cancel_requested = self._held.cancel_requested = True
                return
            if row is None or self.lease_token in row["lost"]:
                self._pipe.leases.pop(self.lease_token, None)
                raise Fenced(self.id, self.lease_token, "extend")
            await trio.sleep(0.01 * 2**attempt)  # locked for a moment by another statement: try again
        raise DurableError(
            f"instance {self.id}: extend found the row locked {EXTEND_TRIES} times in a row; "
            "the lease was not extended (try again)"
        )

    async def _outcome(self, outcome: Outcome, call: str, consume: Iterable[int] | None) -> str:
        encoded = self._pipe.encode(self, outcome, consume)
        committed = await self._commit_encoded(encoded)
        if committed.fenced:
            raise Fenced(self.id, self.lease_token, call)
        self.status = committed.status
        return committed.status or "?"

    async def _commit_encoded(self, encoded: Encoded) -> Committed:
        commit = self._commit or self._pipe.commit_now
        try:
            return await commit(self._held, encoded)
        except Exception as exc:
            refusal = rejection(exc, encoded)
            if refusal is not None:
                raise refusal from None
            raise


@dataclass(slots=True)
class Report:
    """What :meth:`Database.run_once` did: claims taken, and what became of them."""

    claimed: int = 0
    committed: int = 0  # outcomes committed (the handler's, or its own calls)
    fenced: int = 0  # outcomes refused because the claim was no longer held
    errors: int = 0  # handlers that raised (their claims were retried or failed)
    lost: int = 0  # handlers cancelled because their lease was lost
    statuses: dict[int, str] = field(default_factory=dict)  # instance id -> status after its outcome


class Pipeline:
    """The explicit pipeline of one Database (``db.claims``): its worker id and the runtime pieces it
    runs on."""

    def __init__(self, db: Database, worker_id: str | None = None) -> None:
        self.db = db
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:claims-{secrets.token_hex(3)}"
        self.flusher = Flusher(db.pool, self.worker_id, db.clock)  # commit_now only: not run
        self.swept_at = -math.inf
        # lease token -> (instance id, lease seconds) of the claims handed out and not yet ended (bounded):
        # the simulator's lease model reads it as the claims this pipeline holds
        self.leases: dict[int, tuple[int, float]] = {}

    def lease_of(self, claim: Claim) -> float:
        """The lease in seconds ``claim`` was taken (or last extended) with (60 when unknown)."""
        return self.leases.get(claim.lease_token, (claim.id, 60.0))[1]

    async def claim(
        self, queue: str, limit: int = 10, lease: float = 60.0, machine: str | None = None, step: str | None = None
    ) -> list[Claim]:
        """Claim up to ``limit`` due instances of ``queue`` for ``lease`` seconds (optionally only of
        ``machine`` and ``step``), as :class:`durable.Claim` records (see ``db.claim``)."""
        check_text(queue, "queue")
        limit = check_int(limit, "limit", (1, MAX_CLAIMS))
        seconds = check_lease(lease)
        if machine is not None:
            check_text(machine, "machine")
        if step is not None:
            check_text(step, "step")
        await self.sweep()
        began = trio.current_time()
        rows = await self.db.pool.fetch(
            Q.pick, queue, limit, self.worker_id, seconds, self.db.clock.now(), machine, step
        )
        if len(self.leases) > 10 * MAX_CLAIMS:  # forget the oldest (a claim never ended: its lease passed)
            for token in list(self.leases)[: len(self.leases) // 2]:
                del self.leases[token]
        out = []
        for held in claims_from_rows(rows):
            held.lease_until = began + seconds
            self.leases[held.lease_token] = (held.id, seconds)
            out.append(self.public(held))
        return out

    def public(self, held: Held) -> Claim:
        """The :class:`durable.Claim` a caller gets for the runtime's claim ``held``."""
        return Claim(
            id=held.id,
            machine=held.machine,
            version=held.version,
            step=held.step,
            state=codec.decode(held.state_json),
            attempt=held.attempt,
            queue=held.queue,
            inbox=held.signals,
            lease_token=held.lease_token,
            priority=held.priority,
            partition_key=held.partition_key,
            parent_id=held.parent_id,
            awaits=held.awaits,
            children=held.children,
            timed_out=held.timed_out,
            cancel_requested=held.cancel_requested,
            lease_expires=held.lease_until,
            _held=held,
            _pipe=self,
        )

    async def adopt(self, instance_id: int, lease_token: int, consume: Iterable[int] | None = None) -> Claim:
        """The claim of instance ``instance_id`` under ``lease_token``, held elsewhere (a worker over
        ``durable serve`` sends back only the id and the token): built from the row as it is now, so a
        call commits what that claim would (a stale token is fenced by the statement, as any late call).
        Its shown signals are the inbox signals ``consume`` names (a worker's explicit list: the server
        cannot know what the worker saw), none by default. NoSuchInstance when there is no such row."""
        check_id(instance_id)
        check_int(lease_token, "lease_token", (1, INT64[1]))
        row = await self.db.pool.fetchrow(Q.get_instance, instance_id)
        if row is None:
            raise NoSuchInstance(f"no instance with id {instance_id}")
        shown: tuple[Signal, ...] = ()
        if consume is not None:
            ids = list(consume)
            if len(ids) > MAX_CLAIMS:
                raise InvalidArgument(f"consume names {len(ids)} signals; the limit is {MAX_CLAIMS}")
            wanted = set(ids)
            inbox = await self.db.pool.fetch(Q.get_inbox, instance_id) if wanted else []
            shown = tuple(
                Signal(s["id"], s["name"], codec.decode(s["payload"]), s["dedup_key"], s["traceparent"])
                for s in inbox
                if s["id"] in wanted
            )
        held = Held(
            id=row["id"],
            machine=row["machine"],
            version=row["version"],
            step=row["step"],
            state_json=row["state"],
            attempt=row["attempt"],
            queue=row["queue"],
            priority=row["priority"],
            partition_key=row["partition_key"],
            lease_token=lease_token,
            signal_seq=row["signal_seq"],
            awaits=row["awaits"],
            parent_id=row["parent_id"],
            cancel_requested=row["cancel_requested"],
            traceparent=row["traceparent"],
            tracestate=row["tracestate"],
            signals=shown,
            children=(),
            awaits_any=row["awaits_any"],
            timed_out=row["timed_out"],
        )
        claim = self.public(held)
        claim.state = None  # not read for a call: the row's state is whatever the worker last committed
        return claim

    async def sweep(self) -> None:
        """Expired leases back to runnable and due await timeouts fired (the reaper's and the timer sweep's
        statements), at most once every SWEEP_EVERY seconds: with no Runtime running, nobody else would."""
        now = trio.current_time()
        if now - self.swept_at < SWEEP_EVERY:
            return
        self.swept_at = now
        reaped = await self.db.pool.fetch(Q.reap, self.db.clock.now(), MAX_CLAIMS)
        fired = await self.db.pool.fetch(Q.fire_timeouts, self.db.clock.now(), MAX_CLAIMS)
        self.db.wake([*(r["queue"] for r in reaped), *(r["queue"] for r in fired if r["id"] is not None)])

    def encode(self, claim: Claim, outcome: Any, consume: Iterable[int] | None) -> Encoded:
        """The outcome checked (against the machine's steps when it is a class here) and encoded as the
        runtime encodes a step's; the signals it consumes: ``consume`` (ids of the inbox), or the shown
        ones of the awaited names."""
        where = f"{claim.machine}.{claim.step}"
        registry = self.db.registry
        known = (claim.machine, claim.version) in registry
        steps = type(registry.resolve(claim.machine, claim.version)).steps if known else ANY_STEP
        encoded = encode(check_outcome(outcome, where, steps), where, self.db)
        if consume is None:
            return consume_shown(encoded, claim._held)
        ids = list(consume)
        shown = {s.id for s in claim.inbox}
        for sid in ids:
            if type(sid) is not int or sid not in shown:
                raise InvalidArgument(
                    f"consume: {sid!r} is not the id of a signal in instance {claim.id}'s inbox "
                    f"(shown: {sorted(shown)})"
                )
        if claim._held.signals:
            encoded.consume = ids
        return encoded

    async def commit_now(self, held: Held, encoded: Encoded) -> Committed:
        """One outcome in one statement, through the runtime's flusher (no queue: nothing runs it)."""
        (committed,) = await self.flusher.commit_now([(held, encoded)])
        self.after(held, committed)
        return committed

    def after(self, held: Held, committed: Committed) -> None:
        """Bookkeeping after a call committed: forget the lease, wake local schedulers and result()
        waiters of what it changed."""
        self.leases.pop(held.lease_token, None)
        if committed.fenced:
            return
        if committed.status == "runnable":
            self.db.wake([held.queue])
        elif committed.status in ("done", "failed", "cancelled"):
            self.db.watchers.wake([held.id])

    # -- run_once ----------------------------------------------------------------------------------
    async def run_once(
        self,
        queue: str,
        handler: Handler,
        *,
        limit: int = 10,
        lease: float = 60.0,
        machine: str | None = None,
        step: str | None = None,
        max_attempts: int = 20,
    ) -> Report:
        """Claim a batch of ``queue`` and run ``handler(claim)`` on each claim, committing what it returns
        (see ``db.run_once``); returns what happened to the batch."""
        if not callable(handler):
            raise TypeError(f"handler must be an async function of a claim, not {handler!r}")
        max_attempts = check_int(max_attempts, "max_attempts", (1, 2**31 - 1))
        seconds = check_lease(lease)
        claims = await self.claim(queue, limit, seconds, machine, step)
        report = Report(claimed=len(claims))
        if not claims:
            return report
        flusher = Flusher(self.db.pool, self.worker_id, self.db.clock, lease=seconds, on_commit=self._committed)

        async def commit(held: Held, encoded: Encoded) -> Committed:
            committed = await flusher.commit(held, encoded)
            self.leases.pop(held.lease_token, None)
            return committed

        async with trio.open_nursery() as services:
            await services.start(flusher.run)
            services.start_soon(self._keep, claims, seconds)
            try:
                async with trio.open_nursery() as work:
                    for c in claims:
                        c._commit = commit
                        work.start_soon(self._handle, c, handler, max_attempts, report)
            finally:
                for c in claims:
                    c._commit = None
                flusher.close()
                with trio.CancelScope(shield=True):
                    await flusher.finished.wait()
                services.cancel_scope.cancel()
        return report

    def _committed(self, rows: list[Record]) -> None:
        """The flusher's wake-ups (as the runtime's): local schedulers of runnable rows, result() waiters."""
        self.db.wake(r["queue"] for r in rows if r["status"] == "runnable" and not r["fenced"])
        ended = [
            r["id"]
            for r in rows
            if r["kind"] == "outcome" and r["status"] in ("done", "failed", "cancelled") and not r["fenced"]
        ]
        if ended:
            self.db.watchers.wake(ended)

    async def _keep(self, claims: list[Claim], lease: float) -> None:
        """run_once's heartbeat: extend the leases of the claims still running every third of a lease, and
        cancel a handler whose claim is gone (reaped, claimed again) or whose lease passed unextended."""
        while True:
            await trio.sleep(lease / 3)
            running = [c for c in claims if c.status is None and c._held.lost is None]
            if not running:
                continue
            began = trio.current_time()
            try:
                row = await self.db.pool.fetchrow(
                    Q.heartbeat,
                    [c.id for c in running],
                    [c.lease_token for c in running],
                    lease,
                    self.db.clock.now(),
                    self.worker_id,
                    "{}",
                )
            except (DurableError, PostgresError, OSError) as exc:
                if not unavailable(exc) and not isinstance(exc, PostgresError):
                    raise
                row = None
            extended = set(row["tokens"]) if row else set()
            lost = set(row["lost"]) if row else set()
            for c in running:
                held = c._held
                if c.lease_token in extended:
                    held.lease_until = c.lease_expires = began + lease
                    if c.lease_token in row["cancel"]:  # type: ignore[index]
                        c.cancel_requested = held.cancel_requested = True
                elif c.lease_token in lost or trio.current_time() >= held.lease_until:
                    held.lost = (
                        "the heartbeat found the claim gone" if c.lease_token in lost else "the lease passed unextended"
                    )
                    if held.scope is not None:
                        held.scope.cancel()

    async def _handle(self, claim: Claim, handler: Handler, max_attempts: int, report: Report) -> None:
        held = claim._held
        value: Any = None
        error: BaseException | None = None
        if held.cancel_requested:  # claimed with a cancel pending: the handler does not run
            await self._settle(claim, None, report, cancel_outcome(held, interrupted=False))
            return
        if claim.attempt >= max_attempts:
            reason = (
                f"attempts exhausted: {claim.machine}.{claim.step} would run attempt {claim.attempt + 1} of at "
                f"most {max_attempts}"
            )
            await self._settle(claim, Stop(reason), report)
            return
        with trio.CancelScope() as held.scope:
            held.started = True
            try:
                value = await handler(claim)
            except Exception as exc:  # the handler's own failure: retried with backoff, then failed
                error = exc
        held.scope = None
        if held.lost is not None:
            report.lost += 1
            await self._lost(held)
            return
        if claim.status is not None:  # the handler ended the claim itself (transition, complete, ...)
            report.committed += 1
            report.statuses[claim.id] = claim.status
            return
        if error is None and isinstance(value, OUTCOMES):
            outcome: Any = value
        elif error is None:
            outcome = Done(value)
        else:
            report.errors += 1
            outcome = self._failed(claim, error, max_attempts)
        try:
            await self._settle(claim, outcome, report)
        except (OutcomeError, ValueError, TypeError, DurableError) as exc:  # a bad outcome: as a failure
            if isinstance(exc, Fenced) or claim.status is not None:
                return
            report.errors += 1
            await self._settle(claim, self._failed(claim, exc, max_attempts), report)

    def _failed(self, claim: Claim, error: BaseException, max_attempts: int) -> Outcome:
        text = describe(error)
        if claim.attempt + 1 < max_attempts:
            return Retry(delay=float(min(BACKOFF_BASE * 2**claim.attempt, BACKOFF_MAX)), error=_safe(text))
        return Stop(_safe(f"{text} (after {claim.attempt + 1} attempts)"))

    async def _settle(
        self, claim: Claim, outcome: Outcome | None, report: Report, encoded: Encoded | None = None
    ) -> None:
        try:
            if encoded is None:
                await claim._outcome(outcome, "run_once", None)  # type: ignore[arg-type]
            else:
                committed = await claim._commit_encoded(encoded)
                if committed.fenced:
                    raise Fenced(claim.id, claim.lease_token, "run_once")
                claim.status = committed.status
        except Fenced:
            report.fenced += 1
            return
        report.committed += 1
        report.statuses[claim.id] = claim.status or "?"

    async def _lost(self, held: Held) -> None:
        """Record a lost claim as the runtime does (``lease_lost``: a row still held goes back at once)."""
        with trio.CancelScope(shield=True):
            try:
                rows = await self.db.pool.fetch(
                    Q.lease_lost,
                    [held.id],
                    [held.lease_token],
                    [1],
                    [held.lost or "lost"],
                    [held.step],
                    [held.attempt],
                    self.worker_id,
                    self.db.clock.now(),
                )
            except (DurableError, PostgresError, OSError):
                return  # the row, if still ours, is reaped when its lease expires
            self.db.wake(r["queue"] for r in rows)


def _safe(text: str, limit: int = MAX_VALUE_BYTES) -> str:
    text = text.replace("\x00", "\\x00")
    return text if len(text) * 4 <= limit else text[: limit // 4]
