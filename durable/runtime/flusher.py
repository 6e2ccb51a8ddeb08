"""Group commit of outcomes: concurrent steps' outcomes go to the database in one ``complete``
statement. A step's caller proceeds only after its own outcome is committed. While one batch is in
flight the next accumulates, so batching costs no latency at low load; ``linger`` adds an optional wait.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import trio

from .._pg import (
    ClientDataError,
    DeadlockDetectedError,
    InterfaceError,
    OperatorInterventionError,
    Pool,
    PostgresConnectionError,
    PostgresError,
    Record,
    SerializationError,
    UniqueViolationError,
)
from ..clock import Clock
from ..errors import DatabaseUnavailable, OutcomeRejected, UniqueKeyOccupied
from ..sql import Q
from .backoff import Outage, unavailable
from .claim import Claim, Committed, Encoded

# errors after which the same batch is simply tried again (a fenced re-try is harmless: it is logged)
_TRANSIENT = (
    DeadlockDetectedError,
    SerializationError,
    DatabaseUnavailable,
    PostgresConnectionError,
    OperatorInterventionError,
    InterfaceError,
)


# SQLSTATE classes of a refusal that a retry of the same outcome would meet again: data exception,
# integrity constraint violation, program limit exceeded
_REFUSALS = ("22", "23", "54")


def transient(exc: BaseException) -> bool:
    """An error after which the same batch may simply be tried again (not asyncpg's client-side DataError,
    a bad argument, which is an InterfaceError too)."""
    return isinstance(exc, _TRANSIENT) and not isinstance(exc, ClientDataError)


# the columns of a Spawn's children, in the order the complete statement takes them (after each child's
# parent ordinal)
_CHILD_COLUMNS = (
    "machine",
    "version",
    "step",
    "state",
    "queue",
    "priority",
    "partition_key",
    "unique_key",
    "scope",
    "eligible_at",
    "traceparent",
    "tracestate",
    "delay",
)

# the status an outcome of each kind moves its row into (a unique scope may name it)
_ENTERS = {
    "next": "runnable",
    "retry": "runnable",
    "await": "awaiting_signal",
    "spawn": "awaiting_children",
    "done": "done",
    "stop": "failed",
    "cancel": "cancelled",
}
_GUARD_KEY = re.compile(r"\(unique_guard\)=\((.*)\) already exists", re.S)


def rejection(exc: BaseException | None, outcome: Encoded | None = None) -> OutcomeRejected | None:
    """The database's refusal of an outcome as durable's own error, when committing it again would fail
    the same way; None for anything else (transient, or not the outcome's fault). An outcome moving its row
    into a status of its unique scope while another instance holds the key is ``UniqueKeyOccupied``."""
    if isinstance(exc, OutcomeRejected):
        return exc
    if isinstance(exc, UniqueViolationError) and exc.constraint_name == "instances_unique":
        found = _GUARD_KEY.search(getattr(exc, "detail", None) or "")
        status = (
            "executing"
            if outcome is not None and outcome.hold
            else _ENTERS.get(outcome.kind if outcome is not None else "", "?")
        )
        return UniqueKeyOccupied(found.group(1) if found else "?", status)
    if isinstance(exc, PostgresError):
        sqlstate = exc.sqlstate or ""
        if sqlstate[:2] in _REFUSALS:
            return OutcomeRejected(sqlstate, str(exc))
        return None
    if isinstance(exc, ClientDataError | OverflowError | ValueError | TypeError):
        return OutcomeRejected("22000", str(exc))  # refused while encoding the statement's arguments
    return None


OnCommitted = Callable[[Committed | None, BaseException | None], None]


@dataclass(eq=False, slots=True)
class _Pending:
    claim: Claim
    outcome: Encoded
    on_done: OnCommitted | None = None  # submit(): called with (result, error) after the flush
    done: trio.Event | None = None  # commit(): set after the flush
    result: Committed | None = None
    error: BaseException | None = None

    def settle(self) -> None:
        if self.on_done is not None:
            self.on_done(self.result, self.error)
        if self.done is not None:
            self.done.set()


class Flusher:
    """Group commit of step outcomes: :meth:`submit` queues an outcome; :meth:`run` commits the queue in batches
    of up to ``max_batch`` (one transaction each, after an optional ``linger``; plain batches up to ``parallel``
    at once), fenced by each claim's lease token, then calls each outcome's ``on_done``. :meth:`close` lets
    ``run`` end once the queue is empty (``finished``)."""

    def __init__(
        self,
        pool: Pool,
        worker_id: str,
        clock: Clock,
        *,
        max_batch: int = 500,
        linger: float = 0.0,
        on_commit: Any = None,
        lease: float = 60.0,
        parallel: int = 2,
        parallel_min: int = 100,
    ) -> None:
        self.parallel = max(1, parallel)  # plain batches committed at once (separate connections)
        self.parallel_min = parallel_min
        self._in_flight = 0
        self._in_flight_full = False
        self.lease = lease  # for claims kept by run-ahead
        self.pool = pool
        self.worker_id = worker_id
        self.clock = clock
        self.max_batch = max_batch
        self.linger = linger
        self.on_commit = on_commit  # callback(rows) for wake-ups
        self._queue: list[_Pending] = []
        self._kick = trio.Event()
        self._closing = False
        self._running = False
        self.finished = trio.Event()  # set when run() returns after close()
        self.batches = 0
        self.committed = 0
        self.transient_retries = 0  # batches tried again after a connection loss, 40001 or 40P01
        self.rejected = 0  # outcomes the database refused (each goes to handle(), see rejection())
        self.outage: Outage | None = None  # the runtime's: a batch waits out a database that does not answer

    async def commit(self, claim: Claim, outcome: Encoded) -> Committed:
        """Queue an outcome and wait until it is committed (or raise the database error)."""
        if self._closing and not self._running:
            raise RuntimeError("flusher is closed")
        p = _Pending(claim, outcome, done=trio.Event())
        self._queue.append(p)
        self._kick.set()
        assert p.done is not None
        await p.done.wait()
        if p.error is not None:
            raise p.error
        assert p.result is not None
        return p.result

    def submit(self, claim: Claim, outcome: Encoded, on_done: OnCommitted) -> None:
        """Queue an outcome; ``on_done(result, error)`` runs in the flusher's task once it is committed
        (or has failed). No task waits per outcome."""
        if self._closing and not self._running:
            raise RuntimeError("flusher is closed")
        self._queue.append(_Pending(claim, outcome, on_done=on_done))
        self._kick.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit queued outcomes until :meth:`close` has been called and the queue is empty (``finished`` is set
        then)."""
        self._running = True
        task_status.started()
        try:
            async with trio.open_nursery() as flushes:
                while True:
                    if not self._queue:
                        if self._closing:
                            break
                        await self._wait_kick()
                        continue
                    if self.linger > 0 and len(self._queue) < self.max_batch and not self._in_flight:
                        await trio.sleep(self.linger)
                    batch, rest = _one_per_instance(self._queue, self.max_batch)
                    plain = all(_plain(p) for p in batch)
                    if not self._may_start(plain):
                        await self._wait_kick()  # a flush ends (or more outcomes arrive)
                        continue
                    self._queue = rest
                    self._in_flight += 1
                    self._in_flight_full = not plain
                    flushes.start_soon(self._flush_one, batch)
        finally:
            self._running = False
            self.finished.set()
            for p in self._queue:
                p.error = RuntimeError("runtime stopped before this outcome was committed")
                p.settle()

    def _may_start(self, plain: bool) -> bool:
        """Whether the next batch may go now. One flush at a time, except that plain batches (which touch
        only their own claimed rows, so they cannot wait on each other) may overlap up to ``parallel``,
        the second one only once it is worth a statement of its own (``parallel_min`` outcomes)."""
        if not self._in_flight:
            return True
        return (
            plain
            and not self._in_flight_full
            and self._in_flight < self.parallel
            and len(self._queue) >= self.parallel_min
        )

    async def _wait_kick(self) -> None:
        await self._kick.wait()
        self._kick = trio.Event()

    async def _flush_one(self, batch: list[_Pending]) -> None:
        try:
            await self._flush(batch)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._in_flight_full = False
            self._kick.set()

    def close(self) -> None:
        """Stop after the queued outcomes are flushed."""
        self._closing = True
        self._kick.set()

    async def _flush(self, batch: list[_Pending]) -> None:
        try:
            rows = await self._execute_with_retry(batch)
        except BaseException as exc:
            if len(batch) > 1 and isinstance(exc, Exception) and not transient(exc):
                for p in batch:  # isolate a bad outcome: commit the others one by one
                    await self._flush([p])
                return
            if len(batch) == 1 and rejection(exc) is not None:
                self.rejected += 1
            for p in batch:
                p.error = exc
                p.settle()
            if not isinstance(exc, Exception):
                raise
            return
        for p, result in zip(batch, self.results(batch, rows), strict=True):
            p.result = result
            p.settle()
        self.batches += 1
        self.committed += len(batch)
        if self.on_commit is not None:
            self.on_commit(rows)

    @staticmethod
    def results(batch: list[_Pending], rows: list[Record]) -> list[Committed]:
        # both forms of the commit lead with kind, id, status, queue, fenced and return one 'outcome' row
        # per input carrying the input's lease token: an outcome is its claim's (id and token), never
        # just its instance's
        """Each pending outcome's :class:`Committed`, matched to the statement's rows by claim (instance id and lease
        token)."""
        by_claim = {(r[1], r["claim_token"]): r for r in rows if r[0] == "outcome"}
        out = []
        for p in batch:
            r = by_claim[(p.claim.id, p.claim.lease_token)]
            status = r[2]
            out.append(Committed(status, r[4], r if status == "executing" else None))
        return out

    async def commit_now(self, items: list[tuple[Claim, Encoded]]) -> list[Committed]:
        """Commit outcomes in one statement right away, bypassing the queue (tests, tools)."""
        batch = [_Pending(c, o) for c, o in items]
        rows = await self._execute(batch)
        if self.on_commit is not None:
            self.on_commit(rows)
        return self.results(batch, rows)

    async def _execute_with_retry(self, batch: list[_Pending]) -> list[Record]:
        delay = 0.05
        attempt = 0
        down_since: float | None = None
        while True:
            try:
                rows = await self._execute(batch)
            except _TRANSIENT as exc:
                if not transient(exc):
                    raise
                self.transient_retries += 1
                # the database does not answer: keep trying (backing off, one log line per outage) while the
                # claims' leases may still hold; a retry of a batch that did commit is fenced, not doubled
                if self.outage is not None and unavailable(exc):
                    down_since = trio.current_time() if down_since is None else down_since
                    if trio.current_time() - down_since < self.lease:
                        await self.outage.pause(exc)
                        continue
                attempt += 1
                if attempt == 4:
                    raise
                await trio.sleep(delay)
                delay *= 2
                continue
            if self.outage is not None:
                self.outage.succeeded()
            return rows

    async def _execute(self, batch: list[_Pending]) -> list[Record]:
        # by instance id: concurrent statements lock their rows in one order, and the statement does not
        # depend on the order in which the steps ended (a simulated seed gives one log)
        batch = sorted(batch, key=_pending_id)
        if all(_plain(p) for p in batch):
            return await self._execute_simple(batch)
        return await self._execute_full(batch)

    async def _execute_simple(self, batch: list[_Pending]) -> list[Record]:
        """``complete_simple``: plain outcomes only (see :func:`_plain`), sent as one JSON parameter."""
        rows = [
            [
                c.id,
                c.lease_token,
                o.kind,
                o.step,
                o.state,
                _delay(o.delay),
                o.result,
                o.error,
                o.detail,
                c.machine,
                c.step,
                c.attempt,
                c.traceparent,
                c.tracestate,
                o.wake_at,
            ]
            for c, o in ((p.claim, p.outcome) for p in batch)
        ]
        return await self.pool.fetch(Q.complete_simple, orjson.dumps(rows).decode(), self.worker_id, self.clock.now())

    async def _execute_full(self, batch: list[_Pending]) -> list[Record]:
        ids, tokens, kinds, steps, states, delays, awaits, results, errors, seqs, details = (
            [],
            [],
            [],
            [],
            [],
            [],
            [],
            [],
            [],
            [],
            [],
        )
        shown_i: list[int] = []
        shown_s: list[int] = []
        eat_i: list[int] = []
        eat_s: list[int] = []
        kid_cols: dict[str, list[Any]] = {k: [] for k in ("parent", *_CHILD_COLUMNS)}
        for ordinal, p in enumerate(batch, start=1):
            c, o = p.claim, p.outcome
            ids.append(c.id)
            tokens.append(c.lease_token)
            kinds.append(o.kind)
            steps.append(o.step)
            states.append(o.state)
            delays.append(_delay(o.delay))
            awaits.append(o.awaits)
            results.append(o.result)
            errors.append(o.error)
            seqs.append(c.signal_seq)
            details.append(orjson.dumps(o.detail).decode())
            # signals and children are tied to their outcome by ordinal, not by instance id (fencing is
            # per claim: a zombie's and the live claim's outcomes of one instance may share a batch)
            for s in c.signals:
                shown_i.append(ordinal)
                shown_s.append(s.id)
            eat_i.extend([ordinal] * len(o.consume))
            eat_s.extend(o.consume)
            if o.children is not None:
                cols = o.children
                n = len(cols)
                kid_cols["parent"].extend([ordinal] * n)
                for col in _CHILD_COLUMNS:
                    kid_cols[col].extend(getattr(cols, col))
        k = kid_cols
        return await self.pool.fetch(
            Q.complete,
            ids,
            tokens,
            kinds,
            steps,
            states,
            delays,
            awaits,
            results,
            errors,
            seqs,
            details,
            shown_i,
            shown_s,
            k["parent"],
            k["machine"],
            k["version"],
            k["step"],
            k["state"],
            k["queue"],
            k["priority"],
            k["partition_key"],
            k["unique_key"],
            k["scope"],
            k["eligible_at"],
            k["traceparent"],
            k["tracestate"],
            self.worker_id,
            self.clock.now(),
            k["delay"],
            eat_i,
            eat_s,
            [p.outcome.hold for p in batch],
            self.lease,
            [p.claim.traceparent for p in batch],
            [p.claim.tracestate for p in batch],
            [_text_array(p.outcome.awaits_any) for p in batch],
            [p.outcome.timeout for p in batch],
            [p.outcome.timeout_step for p in batch],
            [p.outcome.wake_at for p in batch],
        )


def _one_per_instance(queue: list[_Pending], max_batch: int) -> tuple[list[_Pending], list[_Pending]]:
    """The next batch (at most ``max_batch``, in queue order) and the rest. A second outcome of an
    instance already in the batch (a zombie's and the live claim's, after a lost lease) waits for the next
    batch: the database decides between them one statement at a time."""
    batch = queue[:max_batch]
    ids = {p.claim.id for p in batch}
    if len(ids) == len(batch):  # the common case: no instance twice
        return batch, queue[max_batch:]
    seen: set[int] = set()
    taken: list[_Pending] = []
    later: list[_Pending] = []
    for p in queue:
        if len(taken) < max_batch and p.claim.id not in seen:
            seen.add(p.claim.id)
            taken.append(p)
        else:
            later.append(p)
    return taken, later


def _pending_id(p: _Pending) -> int:
    return p.claim.id


_PLAIN = frozenset({"next", "retry", "done", "stop", "cancel"})


def _plain(p: _Pending) -> bool:
    """An outcome ``complete_simple`` can commit: no spawn, await or run-ahead hold, no parent, and an
    empty inbox (nothing shown, so nothing to consume)."""
    o, c = p.outcome, p.claim
    return o.kind in _PLAIN and not o.hold and c.parent_id is None and not c.signals


def _text_array(names: list[str] | None) -> str | None:
    """A text[] literal of ``names`` (every element quoted), or None."""
    if names is None:
        return None
    return "{" + ",".join('"' + n.replace("\\", "\\\\").replace('"', '\\"') + '"' for n in names) + "}"


def _delay(delay: float | None) -> float:
    return delay if delay is not None and math.isfinite(delay) else 0.0
