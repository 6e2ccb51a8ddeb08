"""One queue's feeder: picks batches up to ``concurrency + prefetch`` claims, runs up to ``concurrency``
steps at once, refills on completion, backs off when idle and wakes at once on a local insert."""

from __future__ import annotations

import collections
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio

from .. import tracing
from .._pg import PostgresError, UniqueViolationError
from ..errors import DatabaseUnavailable
from ..sql import Q
from . import spans
from .backoff import unavailable
from .cancelling import cancel_outcome, interrupted
from .claim import Claim, Committed, Encoded, claims_from_rows
from .executor import run_claim
from .flusher import rejection

if TYPE_CHECKING:
    from ..clock import Clock
    from ..inserts import InsertColumns
    from .backoff import Outage
    from .executor import Database
    from .flusher import Flusher


OnStep = Callable[[Claim, Encoded, Committed], None]


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """The settings a scheduler reads, fixed when its runtime is built (``Runtime`` builds one for all its
    schedulers): the worker id and clock its statements carry, the lease and heartbeat period in seconds,
    the idle polling bounds, run-ahead (``chain``), ``handoff``, and the event-loop block limit of a step."""

    worker_id: str
    clock: Clock
    lease: float
    heartbeat_every: float
    poll_min: float
    poll_max: float
    chain: int
    handoff: bool
    block_limit: float


@dataclass(slots=True, eq=False)
class Lifecycle:
    """The run state a runtime shares with its schedulers: ``stopping`` (drain: pick no more, give buffered
    claims back), ``killed`` (die like a crash: release nothing) and ``lost``, the claims that could not be
    given back (released once more when the runtime ends)."""

    stopping: bool = False
    killed: bool = False
    lost: set[Claim] = field(default_factory=set)


class Release(Protocol):
    """Give claims back (runnable, attempt + ``bump``); False when the database could not be reached."""

    async def __call__(self, claims: list[Claim], *, bump: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class Callbacks:
    """What a scheduler calls in its runtime (``Runtime`` implements each; the scheduler never imports it):
    ``log_error`` (one line for the operator), ``lose`` (a held claim's lease is lost: cancel its step),
    ``lease_lost`` (record a lost claim), ``release`` (give claims back), ``timer_set`` (an await with a
    timeout was parked), ``ran`` (a step held the event loop over ``block_limit``) and ``on_step`` (the
    runtime's per-step hook, if any)."""

    log_error: Callable[[str], None]
    lose: Callable[[Claim, str], None]
    lease_lost: Callable[[Claim, str], Awaitable[None]]
    release: Release
    timer_set: Callable[[float], None]
    ran: Callable[[Claim, float], None]
    on_step: OnStep | None = None


@dataclass(frozen=True, slots=True)
class _Watch:
    """The executor's :class:`~durable.runtime.executor.StepWatch` of a scheduler's steps."""

    block_limit: float
    ran: Callable[[Claim, float], None]


PICK_RETRIES = 3


class Wakeup:
    """A level-triggered wake-up: ``set`` any number of times, ``wait`` returns once and resets."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        """Wake the waiter (or the next ``wait``); setting it again before then changes nothing."""
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a ``set``; True when woken (and reset), False on the timeout."""
        with trio.move_on_after(timeout):
            await self._event.wait()
        woke = self._event.is_set()
        if woke:
            self._event = trio.Event()
        return woke


class Scheduler:
    """Picks into ``buffer``; ``concurrency`` long-lived slot tasks take claims from it and run their
    steps. A finished step hands its outcome to the flusher and frees its slot at once: the claim waits
    for the commit in ``committing`` (still held, still heartbeated), so the next steps run while the
    previous batch commits. The flusher's callback (:meth:`committed`) settles each claim."""

    def __init__(
        self,
        queue: str,
        concurrency: int,
        prefetch: int,
        *,
        config: SchedulerConfig,
        db: Database,
        flusher: Flusher,
        outage: Outage,
        life: Lifecycle,
        calls: Callbacks,
    ) -> None:
        self.config = config
        self.db = db
        self.flusher = flusher
        self.outage = outage
        self.life = life
        self.calls = calls
        self._watch = _Watch(config.block_limit, calls.ran)
        self.queue = queue
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.buffer: collections.deque[Claim] = collections.deque()
        self.in_flight: set[Claim] = set()  # running step code
        self.committing: set[Claim] = set()  # outcome handed to the flusher, not yet committed
        self.uncommitted: list[Claim] = []  # outcome not committed (or unknown): to give back, attempt + 1
        self.wakeup = Wakeup()
        self._ready = trio.lowlevel.ParkingLot()  # idle slots
        self._slots_open = False
        self.backlog = False  # the last pick filled its demand: more rows are probably waiting
        self.orphans_suspected = False  # a pick failed: it may have claimed rows we never heard of
        self._offered = 0.0  # trio time of the last handoff offer (a handed-off lease starts after it)
        self.clash: str | None = None  # the unique index every pick try tripped (logged once), else None
        self.picks = 0
        self.picked = 0
        self.handed = 0  # claims taken straight from a local insert (handoff)
        self.done = 0
        self.failed = 0
        self.steps = 0
        self.fenced = 0
        self.errors = 0

    def held(self) -> list[Claim]:
        """Every claim this scheduler holds: running, committing, not committed, buffered."""
        return [*self.in_flight, *self.committing, *self.uncommitted, *self.buffer]

    def gauges(self) -> dict[str, float]:
        """This queue's gauges for the worker row and the metrics: sizes, settings and counters."""
        return {
            "concurrency": self.concurrency,
            "prefetch": self.prefetch,
            "in_flight": len(self.in_flight),
            "committing": len(self.committing),
            "buffered": len(self.buffer),
            "steps": self.steps,
            "done": self.done,
            "failed": self.failed,
            "fenced": self.fenced,
            "picks": self.picks,
            "handed": self.handed,
            "heartbeat": self.config.heartbeat_every,
        }

    def demand(self) -> int:
        """Claims to pick now: room in the slots and the prefetch buffer. Up to ``concurrency`` claims
        awaiting their commit do not count, so picking overlaps the flush."""
        waiting = max(0, len(self.committing) - self.concurrency)
        return self.concurrency + self.prefetch - len(self.in_flight) - len(self.buffer) - waiting

    # -- handoff: rows of a local insert claimed in the insert's own statement (inserts.Handoff) --------
    @property
    def worker_id(self) -> str:
        """The worker id the handed rows are claimed for (``inserts.Handoff``)."""
        return self.config.worker_id

    @property
    def lease(self) -> float:
        """The lease in seconds the handed rows are claimed with (``inserts.Handoff``)."""
        return self.config.lease

    def offer(self) -> int:
        """Rows to take from a local insert now: only when idle (nothing buffered, the last pick found
        no backlog), so a handed-off row never overtakes rows already waiting."""
        if not self.config.handoff or self.life.stopping or not self._slots_open or self.buffer or self.backlog:
            return 0
        self._offered = trio.current_time()  # the insert that may claim rows starts after this
        return max(0, min(self.demand(), self.concurrency - len(self.in_flight)))

    def accept(self, cols: InsertColumns, rows: Sequence[Any]) -> bool:
        """Buffer the rows the insert claimed for this worker; False when stopping (give them back)."""
        claims = handed_claims(cols, rows)
        if not claims or self.life.killed:  # a killed runtime leaves its claims to the reaper, like a crash
            return True
        if self.life.stopping or not self._slots_open:
            return False
        # a pick span like the scheduler's own (a root span of this worker), marked as a handoff
        with tracing.span(
            "durable pick",
            {
                "messaging.system": "durable",
                "messaging.operation.type": "receive",
                "messaging.destination.name": self.queue,
                "durable.demand": len(claims),
                "durable.worker.id": self.config.worker_id,
                "durable.claimed": len(claims),
                "durable.handoff": True,
            },
            kind=tracing.SpanKind.CONSUMER,
            parent=tracing.detached(),
        ):
            for c in claims:
                c.lease_until = self._offered + self.config.lease
            self.buffer.extend(claims)
            self.handed += len(claims)
            self._ready.unpark(count=len(claims))
        return True

    def suspect_orphans(self) -> None:
        """Rows may be claimed for this worker that nobody runs (a handing insert failed with its answer unknown,
        or handed rows could not be given back): :meth:`release_orphans` frees them at the next turn."""
        self.orphans_suspected = True
        self.wakeup.set()

    async def give_back(self, cols: InsertColumns, rows: Sequence[Any]) -> None:
        """Release rows a local insert handed over that this scheduler could not take (attempt unchanged)."""
        with trio.CancelScope(shield=True):
            if not await self.calls.release(handed_claims(cols, rows), bump=0):
                self.suspect_orphans()

    async def run(self) -> None:
        """Pick into the buffer while the slots run its claims, backing off when idle, until the runtime stops; then
        give the buffer back (unless killed)."""
        idle = self.config.poll_min
        async with trio.open_nursery() as slots:
            self._slots_open = True
            for _ in range(self.concurrency):
                slots.start_soon(self.slot)
            try:
                while not self.life.stopping:
                    got = 0
                    if self.uncommitted:
                        await self.give_back_uncommitted()
                    if self.orphans_suspected:
                        await self.release_orphans()
                    demand = self.demand()
                    if demand > 0:
                        try:
                            claims = await self.pick(demand)
                        except (DatabaseUnavailable, PostgresError, OSError) as exc:
                            self.errors += 1
                            # the claim may have committed with its answer lost: give such rows back
                            self.orphans_suspected = True
                            if unavailable(exc):  # logged once per outage; wait before the next try
                                self.outage.failed(exc)
                                await self.wakeup.wait(self.outage.delay())
                                continue
                            self.calls.log_error(f"pick on queue {self.queue!r} failed: {exc}")
                            claims = []
                        else:
                            self.outage.succeeded()
                        got = len(claims)
                        self.backlog = got >= demand
                        self.buffer.extend(claims)
                        self._ready.unpark(count=got)
                    if self.life.stopping:
                        break
                    if demand > 0 and got >= demand:
                        idle = self.config.poll_min
                        await self.wakeup.wait(self.config.poll_max)  # full: wait for a completion
                    elif got > 0:
                        idle = self.config.poll_min
                        await self.wakeup.wait(self.config.poll_min)
                    else:
                        if not await self.wakeup.wait(idle):
                            idle = min(idle * 2, self.config.poll_max)
                        else:
                            idle = self.config.poll_min
            finally:
                self._slots_open = False
                self._ready.unpark_all()
                # drain: give buffered claims back at once; running steps finish in their slots
                if not self.life.killed:
                    with trio.CancelScope(shield=True):
                        await self.calls.release(list(self.buffer), bump=0)
                        self.buffer.clear()

    async def slot(self) -> None:
        """One concurrency slot: run the next buffered claim's step, hand its outcome over, repeat. Its
        steps share one cancel scope (a scope per step cost ~3 us), renewed only after a lease loss or a
        cancel request has cancelled it."""
        while await self._slot_scope():
            pass

    async def _slot_scope(self) -> bool:
        """Run claims in one cancel scope (each running step's ``claim.scope``) until the slot ends (False)
        or the scope is cancelled (True: go on in a new one). A cancel meant for one step may land after
        that step returned: a cancelled scope runs no further step, and every await outside the steps is
        shielded or harmless to interrupt (waiting for a claim)."""
        running: Claim | None = None  # the claim whose step runs in the scope, if any
        with trio.CancelScope() as scope:
            while not scope.cancel_called:
                while not self.buffer or self.life.stopping:
                    if not self._slots_open or self.life.stopping:
                        return False
                    await self._ready.park()
                claim = self.buffer.popleft()
                self.in_flight.add(claim)
                # a step cut off by cancellation stays in in_flight so the drain can release it; so does a
                # lost claim until its loss is recorded (the row may still be ours: lease_lost releases it)
                now = trio.current_time()
                if claim.lost is not None or now >= claim.lease_until:  # never ran
                    with trio.CancelScope(shield=True):
                        await self.calls.lease_lost(claim, claim.lost or "the lease passed before the step started")
                    self.in_flight.discard(claim)
                    continue
                claim.started = True
                running, claim.scope = claim, scope  # cancelled when the lease is lost (Runtime.lose)
                ran = await run_claim(claim, self.db, self.config.worker_id, self._watch, start=now)
                running, claim.scope = None, None
                await self._ran(claim, ran, now + ran[1])
            return True
        if running is not None:  # its step was cut off (the scope's cancel caught it)
            running.scope = None
            await self._ran(running, None, trio.current_time())
        return True

    async def _ran(self, claim: Claim, ran: tuple[Encoded, float] | None, now: float) -> None:
        """After a step (``ran``: its outcome and duration; None when it was cancelled), at trio time ``now``:
        hand the outcome to the flusher, or record a lost lease."""
        if claim.lost is None and now >= claim.lease_until:
            claim.lost = "the lease passed while the step ran"  # it never reached a checkpoint since
        if ran is None and interrupted(claim):  # db.cancel reached the step (Runtime.beat): still held
            ran = (cancel_outcome(claim, interrupted=True), 0.0)
        if claim.lost is not None or ran is None:
            # another worker may be running it now: its outcome is not committed (it would be fenced)
            if ran is not None:
                spans.finish_lost(spans.start_outcome(claim, ran[0]), claim, ran[0], claim.lost or "")
            with trio.CancelScope(shield=True):  # the slot's scope may be cancelled already
                await self.calls.lease_lost(claim, claim.lost or "cancelled")
            self.in_flight.discard(claim)
            return
        encoded = ran[0]
        # run-ahead: a `next` keeps the claim and the slots run its next step without a pick
        encoded.hold = (
            encoded.kind == "next"
            and claim.ahead < self.config.chain
            and not self.life.stopping
            and encoded.delay is None
            and encoded.wake_at is None
        )  # a delayed next sleeps
        self.in_flight.discard(claim)
        self.committing.add(claim)
        claim.submitted = now  # the step's end: a run-ahead lease, which starts after it, is counted short
        span = spans.start_outcome(claim, encoded)
        self.flusher.submit(claim, encoded, functools.partial(self.committed, claim, encoded, span))
        if self.backlog:  # a slot is free and work is waiting: pick while the outcome commits
            self.wakeup.set()

    def committed(
        self,
        claim: Claim,
        encoded: Encoded,
        span: spans.PendingOutcome,
        result: Committed | None,
        error: BaseException | None,
    ) -> None:
        """The flusher's answer for one outcome (called in the flusher's task, after the commit)."""
        self.committing.discard(claim)
        if self.backlog:
            self.wakeup.set()
        if result is None and self.refused(claim, encoded, error):
            spans.finish_outcome(span, claim, encoded, error=error)
            return
        if result is None:
            # not committed (or unknown): give the claim back for a re-run (attempt + 1, fenced by its
            # token, so a commit that did go through is left alone); failing that, the reaper will
            spans.finish_outcome(span, claim, encoded, error=error)
            self.errors += 1
            if error is not None and unavailable(error):
                self.outage.failed(error)  # one line per outage, not one per outcome
            else:
                self.calls.log_error(f"outcome of instance {claim.id} not committed: {error}")
            self.uncommitted.append(claim)
            return
        spans.finish_outcome(span, claim, encoded, result=result)
        self.steps += 1
        if result.fenced:
            self.fenced += 1
        elif result.status == "done":
            self.done += 1
        elif result.status == "failed":
            self.failed += 1
        elif result.status == "awaiting_signal" and encoded.timeout is not None:
            self.calls.timer_set(encoded.timeout)  # the timer sweep runs by then
        if self.calls.on_step is not None:
            self.calls.on_step(claim, encoded, result)
        if result.held is not None:
            claim.run_ahead(result.held)
            claim.lease_until = claim.submitted + self.config.lease  # the commit that renewed it began after this
            claim.started = False
            if self._slots_open and not self.life.stopping:
                self.buffer.appendleft(claim)
                self._ready.unpark()
            else:
                self.uncommitted.append(claim)  # drained below or by the runtime (not started: bump 0)

    def refused(self, claim: Claim, encoded: Encoded, error: BaseException | None) -> bool:
        """An outcome the database refused for what it holds (a NUL, a constraint, a limit): run the
        claim again in a slot, where ``handle()`` sees the refusal instead of the step running (at most
        twice; then the instance stops). False when it is not such a refusal, or the runtime is stopping."""
        refusal = rejection(error, encoded)
        if refusal is None or claim.rejections >= 2 or not self._slots_open or self.life.stopping:
            return False
        claim.rejected, claim.rejections = refusal, claim.rejections + 1
        self.calls.log_error(
            f"outcome of instance {claim.id} ({claim.machine}.{claim.step}) refused, handle() decides: {refusal}"
        )
        self.buffer.appendleft(claim)
        self._ready.unpark()
        return True

    async def give_back_uncommitted(self) -> None:
        """Release the claims whose outcome was not committed (attempt + 1 if their step started); those that cannot be
        released go to the runtime's ``lost``."""
        claims, self.uncommitted = self.uncommitted, []
        started = [c for c in claims if c.started]
        fresh = [c for c in claims if not c.started]
        for group, bump in ((started, 1), (fresh, 0)):
            if group and not await self.calls.release(group, bump=bump):
                self.life.lost.update(group)

    async def release_orphans(self) -> None:
        """Release rows the database says this worker holds on this queue that the scheduler does not (a pick whose
        answer was lost); retried at the next turn on failure."""
        try:
            await self.db.pool.fetch(
                Q.release_orphans,
                self.config.worker_id,
                self.queue,
                [c.id for c in self.held()],
                self.config.clock.now(),
            )
        except (DatabaseUnavailable, PostgresError, OSError) as exc:
            if unavailable(exc):
                self.outage.failed(exc)
            else:
                self.calls.log_error(f"releasing orphaned claims on queue {self.queue!r} failed (will retry): {exc}")
            return
        self.orphans_suspected = False

    async def pick(self, demand: int) -> list[Claim]:
        """Claim up to ``demand`` due rows of this queue (the ``pick`` statement, retried on a unique-index clash) in a
        pick span; returns their claims, leased from before the statement."""
        with tracing.span(
            "durable pick",
            {
                "messaging.system": "durable",
                "messaging.operation.type": "receive",
                "messaging.destination.name": self.queue,
                "durable.demand": demand,
                "durable.worker.id": self.config.worker_id,
                "durable.claimed": 0,
            },  # until the claims are in
            kind=tracing.SpanKind.CONSUMER,
        ) as span:
            for attempt in range(PICK_RETRIES):
                try:
                    began = trio.current_time()  # the claims' leases start after this
                    rows = await self.db.pool.fetch(
                        Q.pick,
                        self.queue,
                        demand,
                        self.config.worker_id,
                        self.config.lease,
                        self.config.clock.now(),
                        None,
                        None,
                    )
                    break
                except UniqueViolationError as exc:
                    # two runtimes claimed rows of one partition or unique key at once: the index said
                    # no, and the next try sees the other claim and skips the key. Anything else that
                    # trips an index every time is logged (once) and retried at the idle interval.
                    if attempt == PICK_RETRIES - 1:
                        self.errors += 1
                        self.clashing(exc)
                        span.set_attribute("durable.claimed", 0)
                        return []
            self.clashing(None)
            self.picks += 1
            self.picked += len(rows)
            span.set_attribute("durable.claimed", len(rows))
            claims = claims_from_rows(rows)
            for c in claims:
                c.lease_until = began + self.config.lease
            if claims and (self.in_flight or self.committing or self.uncommitted or self.buffer):
                self.superseded(claims)
            return claims

    def superseded(self, claims: list[Claim]) -> None:
        """A picked row this scheduler still holds under an older token (its lease passed and it was reaped
        while the step ran or its outcome waited): the old claim is lost, its step cancelled, and its queued
        outcome will be fenced; only the new claim may run the step."""
        fresh = {c.id: c.lease_token for c in claims}.get
        for held in (self.in_flight, self.committing, self.uncommitted, self.buffer):
            for old in held:
                token = fresh(old.id)
                if token is not None and token != old.lease_token:
                    self.calls.lose(old, "picked again under a new lease token")

    def clashing(self, exc: UniqueViolationError | None) -> None:
        """Log a pick whose every try trips a unique index once per change (a new index, or passing again)."""
        clash = None if exc is None else (exc.constraint_name or "a unique index")
        if clash == self.clash:
            return
        if clash is not None:
            self.calls.log_error(
                f"pick on queue {self.queue!r} failed {PICK_RETRIES} tries in a row on "
                f"{clash}: {exc} (no rows claimed; retrying at the idle interval)"
            )
        else:
            self.calls.log_error(f"pick on queue {self.queue!r} claims again (it failed on {self.clash})")
        self.clash = clash


def handed_claims(cols: InsertColumns, rows: Sequence[Any]) -> list[Claim]:
    """The claims of the rows an insert handed over (``insert_instances`` rows with a lease token), built
    from the insert's own columns: a fresh instance, attempt 0, no signals, no children, no parent."""
    return [
        Claim(
            id=r["id"],
            machine=cols.machine[i],
            version=cols.version[i],
            step=cols.step[i],
            state_json=r["state"],
            attempt=0,
            queue=cols.queue[i],
            priority=cols.priority[i],
            partition_key=None,
            lease_token=r["lease_token"],
            signal_seq=0,
            awaits=None,
            parent_id=None,
            cancel_requested=False,
            traceparent=cols.traceparent[i],
            tracestate=cols.tracestate[i],
            signals=(),
            children=(),
            attributes=cols.attributes[i],
        )
        for i, r in enumerate(rows)
        if r["lease_token"] is not None
    ]
