"""Running one claim: resolve the machine and step, build ``ctx``, call the step (or ``handle`` on an
exception), validate and encode the outcome. Everything that can go wrong with user code or user data
becomes an outcome recorded on the row; nothing here raises into the scheduler."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Awaitable, Generator, Iterable
from datetime import UTC, datetime, timedelta
from time import perf_counter
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Protocol

import trio

from .. import codec, tracing
from ..context import Context, StepDatabase
from ..errors import UnknownMachine
from ..inserts import InsertColumns
from ..machine import Machine, describe, step_fn, validate_outcome
from ..outcomes import (
    UNCHANGED,
    Await,
    Cancel,
    Done,
    Next,
    Outcome,
    Retry,
    Spawn,
    Stop,
    seconds,
    step_name,
)
from . import spans
from .cancelling import cancel_outcome, compensate, interrupted
from .claim import Claim, Encoded

if TYPE_CHECKING:
    from ..machine import Registry


class Database(StepDatabase, Protocol):
    """What the runtime uses of a ``durable.Database`` (the runtime never imports the public API): what its
    steps may use (``ctx.db``, :class:`~durable.context.StepDatabase`), and the registry."""

    @property
    def registry(self) -> Registry:
        """The machines by name and version, from which a claim's step is found."""


UNKNOWN_MACHINE_RETRY = 60.0


class StepWatch(Protocol):
    """The runtime's eye on running steps (:func:`watched`)."""

    @property
    def block_limit(self) -> float:
        """Seconds a step may hold the event loop (run without yielding) before it is reported."""

    def ran(self, claim: Claim, seconds: float) -> None:
        """A stretch of the claim's step held the event loop for ``seconds``, over ``block_limit``."""


@types.coroutine
def _timed(it: Generator[Any, Any, Any], claim: Claim, watch: StepWatch) -> Generator[Any, Any, Any]:
    """Drive a step's coroutine, timing each stretch it runs without yielding to trio, i.e. each time it holds
    the event loop; a stretch over the watch's limit is reported. About a microsecond a step (the return
    comes back as a StopIteration here, not inside the interpreter)."""
    limit = watch.block_limit
    value: Any = None
    error: BaseException | None = None
    while True:
        start = perf_counter()
        try:
            yielded = it.send(value) if error is None else it.throw(error)
        except StopIteration as done:
            return done.value
        finally:
            if perf_counter() - start > limit:
                watch.ran(claim, perf_counter() - start)
        try:
            value, error = (yield yielded), None
        except BaseException as exc:  # trio's Cancelled (or a close) goes on into the step
            value, error = None, exc


def watched(awaitable: Awaitable[Any], claim: Claim, watch: StepWatch | None) -> Awaitable[Any]:
    """The step's (or handle's) awaitable, timed when the runtime watches (no watch: as is)."""
    if watch is None:
        return awaitable
    if type(awaitable) is CoroutineType:
        it: Generator[Any, Any, Any] = awaitable  # type: ignore[assignment]  # send/throw/close: as a generator
    else:
        try:
            it = awaitable.__await__()
        except AttributeError:  # not awaitable: awaiting it raises the usual TypeError
            return awaitable
    return _timed(it, claim, watch)


def encode_outcome(machine: Machine, outcome: Outcome, ctx: Context, db: Database) -> Encoded:
    """The ``complete`` columns of a validated outcome; StateError when a state does not serialize."""
    if type(outcome) is Done and outcome.result is None:  # the most common outcome: nothing to encode
        return Encoded("done", result="null")
    return encode(outcome, f"{machine.name}.{ctx.step}", db)


def encode(outcome: Outcome, where: str, db: Database) -> Encoded:
    """The ``complete`` columns of a validated outcome of ``where`` (``machine.step``), for a Machine's step
    and for the explicit pipeline's calls alike (durable/claims.py); StateError when a state does not
    serialize."""
    if type(outcome) is Done and outcome.result is None:
        return Encoded("done", result="null")

    def state(value: Any) -> str | None:
        if value is UNCHANGED:
            return None
        return codec.encode(value, f"state returned by {where}", db.max_value_bytes)

    if isinstance(outcome, Next):
        nxt = step_name(outcome.step)
        if outcome.wake is None:
            return Encoded("next", step=nxt, state=state(outcome.state), detail={"next": nxt})
        if outcome.delay is not None:  # a durable timer: the row is runnable again after the delay
            delay = seconds(outcome.delay, f"{where}: Next delay")
            return Encoded(
                "next", step=nxt, state=state(outcome.state), delay=delay, detail={"next": nxt, "delay": delay}
            )
        if outcome.at is not None:
            return Encoded(
                "next",
                step=nxt,
                state=state(outcome.state),
                wake_at=outcome.at,
                detail={"next": nxt, "at": outcome.at.isoformat()},
            )
        return Encoded("next", step=nxt, state=state(outcome.state), detail={"next": nxt})
    if isinstance(outcome, Retry):
        delay = seconds(outcome.delay, f"{where}: Retry delay")
        return Encoded(
            "retry",
            state=state(outcome.state),
            delay=delay,
            error=outcome.error,
            detail={"delay": delay, "error": outcome.error},
        )
    if isinstance(outcome, Await):
        wake = step_name(outcome.step) if outcome.step is not None else None
        names = (outcome.signal,) if isinstance(outcome.signal, str) else tuple(outcome.signal)
        encoded = Encoded(
            "await",
            step=wake,
            state=state(outcome.state),
            awaits=names[0],
            awaits_any=list(names) if len(names) > 1 else None,
            detail={"signal": outcome.signal if len(names) == 1 else list(names), "wake_step": wake},
        )
        if outcome.timeout is not None:
            encoded.timeout = seconds(outcome.timeout, f"{where}: Await timeout")
            encoded.timeout_step = step_name(outcome.timeout_step) if outcome.timeout_step is not None else None
            encoded.detail.update(timeout=encoded.timeout, timeout_step=encoded.timeout_step)
        return encoded
    if isinstance(outcome, Spawn):
        cols = InsertColumns(db.max_value_bytes, attributes=False)
        for i, child in enumerate(outcome.children):
            cols.add(child, db.registry, f"{where}: child #{i}")
        nxt = step_name(outcome.step)
        return Encoded(
            "spawn", step=nxt, state=state(outcome.state), children=cols, detail={"next": nxt, "children": len(cols)}
        )
    if isinstance(outcome, Done):
        return Encoded("done", result=codec.encode(outcome.result, f"result of {where}", db.max_value_bytes))
    if isinstance(outcome, Stop):
        return Encoded("stop", error=outcome.reason, detail={"error": outcome.reason})
    if isinstance(outcome, Cancel):
        return Encoded("cancel", error=outcome.reason, detail={"reason": outcome.reason})
    raise AssertionError(f"unvalidated outcome {outcome!r}")


def consuming(encoded: Encoded, claim: Claim, ctx: Context) -> Encoded:
    """The shown signals a progressing outcome consumes: those of the awaited name and those the step
    read by name (ctx.signal / ctx.signals_named). Others stay in the inbox for their own await."""
    return consume_shown(encoded, claim, ctx.taken)


def consume_shown(encoded: Encoded, claim: Claim, taken: Iterable[str] = ()) -> Encoded:
    """:func:`consuming` with the names read by name given as ``taken``."""
    if not claim.signals:
        return encoded
    names = set(taken)
    if claim.awaits is not None:
        names.add(claim.awaits)
    if claim.awaits_any is not None:  # an await of several names: whichever came are consumed
        names.update(claim.awaits_any)
    encoded.consume = [s.id for s in claim.signals if s.name in names]
    return encoded


async def execute(
    claim: Claim, db: Database, worker_id: str, watch: StepWatch | None = None
) -> tuple[Encoded, BaseException | None]:
    """Run the claim's step; returns the encoded outcome and the step's exception, if any. With a
    ``watch``, the step's code is timed (:func:`watched`)."""
    try:
        machine = db.registry.resolve(claim.machine, claim.version)
    except UnknownMachine as exc:
        # Not this runtime's machine (a rolling deploy?): put it back for a runtime that knows it.
        return Encoded(
            "retry",
            delay=UNKNOWN_MACHINE_RETRY,
            error=str(exc),
            detail={"error": str(exc), "delay": UNKNOWN_MACHINE_RETRY},
        ), exc
    if claim.rejected is not None and claim.rejections > 1:
        # handle()'s outcome was refused too: end the instance, with text the database surely stores
        reason = safe_text(f"{claim.rejected} (handle()'s outcome was refused as well)")
        return Encoded("stop", error=reason, detail={"error": reason}), claim.rejected
    if claim.attempt >= machine.max_attempts:
        # attempts that never reached handle() (crashes, lost leases, interrupted steps) are bounded too
        reason = (
            f"attempts exhausted: {machine.name}.{claim.step} would run attempt {claim.attempt + 1} of at "
            f"most {machine.max_attempts} (earlier attempts crashed, lost their lease or were interrupted)"
        )
        return Encoded("stop", error=reason, detail={"error": reason}), None

    ctx = Context(
        id=claim.id,
        machine=claim.machine,
        version=claim.version,
        step=claim.step,
        attempt=claim.attempt,
        state=None,
        inbox=claim.signals,
        children=claim.children,
        queue=claim.queue,
        priority=claim.priority,
        partition_key=claim.partition_key,
        parent_id=claim.parent_id,
        awaits=claim.awaits,
        lease_token=claim.lease_token,
        worker_id=worker_id,
        db=db,
        timed_out=claim.timed_out,
        awaits_any=tuple(claim.awaits_any) if claim.awaits_any is not None else None,
    )
    where = f"step {machine.name}.{claim.step}"
    if claim.cancel_requested:  # picked (or buffered) with a cancel pending: on_cancel, and no step
        with contextlib.suppress(Exception):  # on_cancel sees the stored state when it decodes
            ctx.state = codec.decode_state(type(machine).State, claim.state_json, f"state of instance {claim.id}")
        await compensate(machine, ctx, claim)
        return cancel_outcome(claim, interrupted=False), None
    # an outcome the database refused goes to handle() with the stored state, as a step's exception would
    error: BaseException | None = claim.rejected
    try:
        ctx.state = codec.decode_state(type(machine).State, claim.state_json, f"state of instance {claim.id}")
        if error is not None:
            raise error
        fn = step_fn(machine, claim.step)
        outcome = validate_outcome(machine, await watched(fn(machine, ctx), claim, watch), where)
        return consuming(encode_outcome(machine, outcome, ctx, db), claim, ctx), None
    except trio.Cancelled:
        if interrupted(claim):  # db.cancel reached the running step (Runtime.beat): compensate, then unwind
            await compensate(machine, ctx, claim)
        raise
    except Exception as exc:  # user code, bad outcome, state that does not (de)serialize
        error = exc
    try:
        handled = validate_outcome(
            machine, await watched(machine.handle(error, ctx), claim, watch), f"{machine.name}.handle"
        )
        encoded = consuming(encode_outcome(machine, handled, ctx, db), claim, ctx)
    except trio.Cancelled:
        if interrupted(claim):
            await compensate(machine, ctx, claim)
        raise
    except Exception as exc:
        reason = f"handle() failed with {describe(exc)} while handling {describe(error)}"
        encoded = Encoded("stop", error=reason, detail={"error": reason})
    encoded.detail.setdefault("error", describe(error))
    return encoded, error


def timer(span: Any, encoded: Encoded, db: Database) -> None:
    """A durable timer's wake time on the step span: ``durable.wake_at`` for a delayed next,
    ``durable.timeout_at`` for an await with a timeout (by this worker's clock: the row's own time is
    the database's at commit, in the history row's detail)."""
    now = db.clock.now() or datetime.now(UTC)
    if encoded.wake_at is not None:
        span.set_attribute("durable.wake_at", encoded.wake_at.isoformat())
    elif encoded.kind == "next" and encoded.delay is not None:
        span.set_attribute("durable.wake_at", (now + timedelta(seconds=encoded.delay)).isoformat())
    elif encoded.timeout is not None:
        span.set_attribute("durable.timeout", encoded.timeout)
        span.set_attribute("durable.timeout_at", (now + timedelta(seconds=encoded.timeout)).isoformat())
        if encoded.timeout_step is not None:
            span.set_attribute("durable.timeout_step", encoded.timeout_step)


def safe_text(text: str, limit: int = 2000) -> str:
    """Error text any database column takes: no NUL character, bounded length."""
    text = text.replace("\x00", "\\x00")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def attributes(claim: Claim, worker_id: str) -> dict[str, Any]:
    """The span attributes of a claim's step span (OpenTelemetry messaging conventions, then durable's)."""
    return {
        "messaging.system": "durable",
        "messaging.operation.type": "process",
        "messaging.destination.name": claim.queue,
        "messaging.message.id": str(claim.id),
        "durable.instance.id": claim.id,
        "durable.machine": claim.machine,
        "durable.machine.version": claim.version,
        "durable.step": claim.step,
        "durable.attempt": claim.attempt,
        "durable.partition_key": claim.partition_key,
        "durable.worker.id": worker_id,
        "durable.lease_token": claim.lease_token,
        **tracing.attribute_tags(claim.attributes),
    }


async def run_claim(
    claim: Claim, db: Database, worker_id: str, watch: StepWatch | None = None, start: float | None = None
) -> tuple[Encoded, float]:
    """Execute inside a step span that continues the instance's trace; returns outcome and seconds
    (``start``: trio time now, when the caller just read it)."""
    if start is None:
        start = trio.current_time()  # the sim's virtual time under its MockClock: durations stay deterministic
    if not tracing.recording():  # no span to make: skip building its name, attributes and links
        with tracing.instance_context(claim.traceparent, claim.tracestate):
            encoded, _ = await execute(claim, db, worker_id, watch)
        elapsed = trio.current_time() - start
        encoded.detail["duration_ms"] = round(elapsed * 1e6) / 1e3  # ms, 3 decimals
        return encoded, elapsed
    links = [link for s in claim.signals if (link := tracing.link_from(s.traceparent)) is not None]
    parent = tracing.context_from(claim.traceparent, claim.tracestate)
    with tracing.step_span(
        f"step {claim.machine}.{claim.step}", attributes(claim, worker_id), parent=parent, links=links
    ) as span:
        if claim.traceparent is None:  # no trace yet: this step's span becomes the instance's trace
            claim.traceparent, claim.tracestate = tracing.current_context_headers()
        try:
            encoded, error = await execute(claim, db, worker_id, watch)
        except trio.Cancelled:
            if claim.lost is not None:  # cancelled because its lease was lost (runtime.py)
                spans.lease_lost(span, claim, claim.lost)
            elif interrupted(claim):  # cancelled because its instance was (db.cancel, cancelling.py)
                span.set_attribute("durable.outcome", "cancel")
                span.set_attribute("durable.cancel", "cancel requested: step interrupted")
                if claim.compensation not in (None, "none"):
                    span.set_attribute("durable.on_cancel", claim.compensation)
            raise
        if error is not None:
            tracing.record_error(span, error)
        span.set_attribute("durable.outcome", encoded.kind)
        if encoded.step:
            span.set_attribute("durable.next_step", encoded.step)
        if encoded.delay is not None:
            span.set_attribute("durable.delay", encoded.delay)
        if encoded.kind in ("next", "await"):
            timer(span, encoded, db)
    elapsed = trio.current_time() - start
    encoded.detail["duration_ms"] = round(elapsed * 1e6) / 1e3  # ms, 3 decimals
    return encoded, elapsed
