"""The runtime's spans and metrics (issue 16: they live on the runtime side, so ``durable.tracing`` knows
nothing of claims or runtimes): the outcome of a step on its span, a lost lease, a blocked loop, and the
per-queue gauges of the runtimes running in this process. The generic helpers (``span``, ``step_span``,
context propagation, the on/off switch) are in :mod:`durable.tracing`."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import INVALID_SPAN, Status, StatusCode

from .. import tracing
from ..tracing import QUEUE, WORKER
from .claim import Claim, Committed, Encoded


class _Gauged(Protocol):
    def gauges(self) -> dict[str, float]: ...


class Watched(Protocol):
    """What the gauges read of a running runtime."""

    @property
    def worker_id(self) -> str:
        """The runtime's worker id, a label of its gauges."""

    @property
    def schedulers(self) -> Mapping[str, _Gauged]:
        """The runtime's schedulers by queue, whose gauges are reported."""


@dataclass(slots=True)
class PendingOutcome:
    """A step's span while its outcome commits, and the perf_counter time the commit began."""

    span: trace.Span
    started: float


def start_outcome(claim: Claim, encoded: Encoded) -> PendingOutcome:
    """Before committing a step's outcome: picks up the task's open step span."""
    if not tracing.enabled():  # no step span was opened (finish_outcome does nothing either)
        return _NO_OUTCOME
    s = tracing._step_span.get()
    tracing._step_span.set(INVALID_SPAN)
    return PendingOutcome(s, time.perf_counter())


_NO_OUTCOME = PendingOutcome(INVALID_SPAN, 0.0)


def finish_outcome(
    pending: PendingOutcome,
    claim: Claim,
    encoded: Encoded,
    *,
    result: Committed | None = None,
    error: BaseException | None = None,
) -> None:
    """After the commit: an ``outcome`` event on the step span (kind, or ``fenced`` when the lease
    was lost meanwhile; next step, delay, error, resulting status), then the span ends. Counts the
    step in the metrics."""
    if not tracing.enabled():
        return
    kind = "uncommitted" if result is None else "fenced" if result.fenced else encoded.kind
    s = pending.span
    if s.is_recording():
        s.add_event(
            "outcome",
            tracing._clean(
                {
                    "durable.outcome": kind,
                    "durable.next_step": encoded.step,
                    "durable.delay": encoded.delay,
                    "durable.error": encoded.error,
                    "durable.signal.name": encoded.awaits,
                    "durable.children": len(encoded.children) if encoded.children is not None else None,
                    "durable.status": result.status if result is not None else None,
                    "durable.run_ahead": True if result is not None and result.held is not None else None,
                    "durable.commit_ms": round((time.perf_counter() - pending.started) * 1000, 3),
                }
            ),
        )
        if result is None:
            s.set_attribute("durable.outcome", kind)
            if error is not None:
                tracing.record_error(s, error)
        else:
            s.set_attribute("durable.fenced", result.fenced)
            if result.status is not None:
                s.set_attribute("durable.status", result.status)
            if result.fenced:
                s.set_attribute("durable.outcome", "fenced")
                s.set_attribute("durable.outcome.requested", encoded.kind)
            elif result.status == "failed":
                s.set_status(Status(StatusCode.ERROR, encoded.error or "failed"))
    s.end()
    labels = {QUEUE: claim.queue, "durable.machine": claim.machine, "durable.outcome": kind}
    _steps.add(1, labels)
    duration_ms = encoded.detail.get("duration_ms")
    if isinstance(duration_ms, int | float):
        _step_duration.record(duration_ms / 1000, labels)


def lease_lost(s: trace.Span, claim: Claim, reason: str) -> None:
    """On a step span: the claim's lease was lost while the step ran; the step was cancelled and its
    outcome, if it had one, is not committed. Counted as a step with outcome ``lease_lost``."""
    if not tracing.enabled():
        return
    if s.is_recording():
        s.set_attribute("durable.lease_lost", True)
        s.add_event("durable.lease_lost", {"durable.reason": reason})
    _steps.add(1, {QUEUE: claim.queue, "durable.machine": claim.machine, "durable.outcome": "lease_lost"})


def finish_lost(pending: PendingOutcome, claim: Claim, encoded: Encoded, reason: str) -> None:
    """A step that returned after its lease was lost: its span ends with ``durable.lease_lost`` and the
    outcome it asked for, never committed."""
    if not tracing.enabled():
        return
    s = pending.span
    lease_lost(s, claim, reason)
    if s.is_recording():
        s.set_attribute("durable.outcome", "lease_lost")
        s.set_attribute("durable.outcome.requested", encoded.kind)
    s.end()


def loop_blocked(claim: Claim, seconds: float, limit: float) -> None:
    """A step held the event loop for ``seconds`` (over ``limit``): an event on its span (the current
    one while its code runs) and a count."""
    if not tracing.enabled():
        return
    s = trace.get_current_span()
    if s.is_recording():
        s.add_event(
            "durable.loop_blocked",
            {
                "durable.blocked_s": round(seconds, 3),
                "durable.block_limit_s": limit,
                "durable.machine": claim.machine,
                "durable.step": claim.step,
            },
        )
    _blocked.add(1, {QUEUE: claim.queue, "durable.machine": claim.machine, "durable.step": claim.step})


# -- metrics --------------------------------------------------------------------------------------
_runtimes: weakref.WeakSet[Watched] = weakref.WeakSet()
_runtimes_lock = threading.Lock()


def watch(runtime: Watched) -> None:
    """Report this runtime's per-queue gauges while it runs."""
    with _runtimes_lock:
        _runtimes.add(runtime)


def unwatch(runtime: Watched) -> None:
    """Stop reporting this runtime's gauges (it stopped)."""
    with _runtimes_lock:
        _runtimes.discard(runtime)


def _watched() -> list[Watched]:
    with _runtimes_lock:
        return list(_runtimes)


def _gauge(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        if not tracing.enabled():
            return []
        return [
            Observation(s.gauges()[field], {QUEUE: q, WORKER: rt.worker_id})
            for rt in _watched()
            for q, s in list(rt.schedulers.items())
        ]

    return observe


_steps = tracing.meter.create_counter(
    "durable.steps", unit="{step}", description="Step executions, by queue, machine and outcome."
)
_blocked = tracing.meter.create_counter(
    "durable.steps.blocked",
    unit="{step}",
    description="Steps that held the event loop longer than a third of the lease.",
)
_step_duration = tracing.meter.create_histogram(
    "durable.step.duration",
    unit="s",
    description="Time spent running a step (not committing it).",
    explicit_bucket_boundaries_advisory=[
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
        60,
        300,
    ],
)
tracing.meter.create_observable_gauge(
    "durable.in_flight",
    callbacks=[_gauge("in_flight")],
    unit="{step}",
    description="Steps executing now, per queue and worker.",
)
tracing.meter.create_observable_gauge(
    "durable.buffered",
    callbacks=[_gauge("buffered")],
    unit="{step}",
    description="Claims picked and waiting for a free slot, per queue and worker.",
)
tracing.meter.create_observable_gauge(
    "durable.concurrency",
    callbacks=[_gauge("concurrency")],
    unit="{step}",
    description="Configured concurrency, per queue and worker.",
)
