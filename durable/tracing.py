"""OpenTelemetry instrumentation through the API only: a no-op unless the application configures an
SDK (see the ``otel`` package). Span, attribute and metric names live here, in one place.

Spans (attribute names follow the messaging semantic conventions, ``durable.*`` for our own):

    durable insert / durable signal   PRODUCER, in the client; the row stores this span's traceparent
    step {machine}.{step}             CONSUMER, one per execution, continuing the instance's trace and
                                      linked to the spans of the signals it reads
    └── outcome {kind}                the commit of its outcome: next/retry/await/spawn/done/stop/cancel,
                                      or ``fenced`` when the lease was lost meanwhile
    durable pick / heartbeat / reap   the runtime's own work, with counts

``DURABLE_TRACING=off`` (or :func:`set_enabled`) skips even the API calls.
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import INVALID_SPAN, Link, SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from .runtime.claim import Claim, Committed, Encoded
    from .runtime.runtime import Runtime

__all__ = [
    "Link",
    "SpanKind",
    "context_from",
    "current_context_headers",
    "finish_outcome",
    "link_from",
    "record_error",
    "set_enabled",
    "span",
    "start_outcome",
    "step_span",
    "traced",
    "unwatch",
    "watch",
]

P = ParamSpec("P")
R = TypeVar("R")

SYSTEM = "durable"
QUEUE = "messaging.destination.name"
WORKER = "durable.worker.id"

tracer = trace.get_tracer("durable")
meter = metrics.get_meter("durable")

_enabled = os.environ.get("DURABLE_TRACING", "on").strip().lower() not in ("0", "off", "false", "no")
# the current task's step span, read when its outcome is committed (after the step span has ended)
_step_span: ContextVar[trace.Span] = ContextVar("durable_step_span", default=INVALID_SPAN)


def set_enabled(enabled: bool) -> None:
    """Turn all durable telemetry on or off (off: not even the no-op API is called)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    return _enabled


# -- propagation ----------------------------------------------------------------------------------
def current_context_headers() -> tuple[str | None, str | None]:
    """The W3C traceparent/tracestate of the caller's current span (None, None when there is none)."""
    if not _enabled:
        return None, None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent"), carrier.get("tracestate")


def context_from(traceparent: str | None, tracestate: str | None) -> otel_context.Context | None:
    if not traceparent or not _enabled:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return propagate.extract(carrier)


def link_from(traceparent: str | None) -> Link | None:
    ctx = context_from(traceparent, None)
    if ctx is None:
        return None
    span_ctx = trace.get_current_span(ctx).get_span_context()
    return Link(span_ctx) if span_ctx.is_valid else None


# -- spans ----------------------------------------------------------------------------------------
@contextmanager
def span(name: str, attributes: dict[str, Any], *, kind: SpanKind = SpanKind.INTERNAL,
         parent: otel_context.Context | None = None, links: list[Link] | None = None) -> Iterator[trace.Span]:
    """A current span; an exception escaping it is recorded and sets status ERROR."""
    if not _enabled:
        yield INVALID_SPAN
        return
    with tracer.start_as_current_span(name, context=parent, kind=kind, attributes=_clean(attributes),
                                      links=links, record_exception=False,
                                      set_status_on_exception=False) as s:
        try:
            yield s
        except Exception as exc:
            record_error(s, exc)
            raise


@contextmanager
def step_span(name: str, attributes: dict[str, Any], *, parent: otel_context.Context | None,
              links: list[Link] | None = None) -> Iterator[trace.Span]:
    """A step's span: continues ``parent`` (the instance's trace) or starts a new trace, never the
    worker's own context; remembered for the outcome span of the same task."""
    root = parent if parent is not None else otel_context.Context()
    with span(name, attributes, kind=SpanKind.CONSUMER, parent=root, links=links) as s:
        _step_span.set(s)
        yield s


def record_error(s: trace.Span, error: BaseException) -> None:
    s.record_exception(error)
    s.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def traced(name: str, *, kind: SpanKind = SpanKind.INTERNAL,
           before: Callable[..., dict[str, Any]] | None = None,
           after: Callable[[trace.Span, Any], None] | None = None,
           ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Run an async function inside a span; ``before(*args, **kwargs)`` gives its attributes,
    ``after(span, result)`` adds attributes from the result."""

    def wrap(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            if not _enabled:
                return await fn(*args, **kwargs)
            attrs = before(*args, **kwargs) if before is not None else {}
            with span(name, {"messaging.system": SYSTEM, **attrs}, kind=kind) as s:
                result = await fn(*args, **kwargs)
                if after is not None:
                    after(s, result)
                return result

        return inner

    return wrap


# client spans: ``before`` gets the method's arguments (self first)
def inserted(s: trace.Span, ids: list[int | None]) -> None:
    s.set_attribute("messaging.operation.type", "send")
    s.set_attribute("messaging.batch.message_count", len(ids))
    s.set_attribute("durable.inserted", sum(1 for i in ids if i is not None))
    if len(ids) == 1 and ids[0] is not None:
        s.set_attribute("durable.instance.id", ids[0])


def signal_attributes(_db: Any, instance_id: int, name: str, *_: Any, **kw: Any) -> dict[str, Any]:
    return {"messaging.operation.type": "send", "durable.instance.id": instance_id,
            "durable.signal.name": name, "durable.signal.dedup_key": kw.get("dedup_key")}


def signalled(s: trace.Span, signal_id: int | None) -> None:
    if signal_id is None:
        s.set_attribute("durable.signal.duplicate", True)
    else:
        s.set_attribute("messaging.message.id", str(signal_id))
        s.set_attribute("durable.signal.id", signal_id)


# -- outcomes -------------------------------------------------------------------------------------
def start_outcome(claim: Claim, encoded: Encoded) -> trace.Span:
    """A child of the task's step span, open while the outcome is being committed."""
    if not _enabled:
        return INVALID_SPAN
    step = _step_span.get()
    parent = trace.set_span_in_context(step) if step.get_span_context().is_valid else otel_context.Context()
    return tracer.start_span(f"outcome {encoded.kind}", context=parent, attributes=_clean({
        "durable.instance.id": claim.id,
        "durable.outcome": encoded.kind,
        "durable.next_step": encoded.step,
        "durable.delay": encoded.delay,
        "durable.error": encoded.error,
        "durable.signal.name": encoded.awaits,
        "durable.children": len(encoded.children) if encoded.children is not None else None,
    }))


def finish_outcome(s: trace.Span, claim: Claim, encoded: Encoded, *, result: Committed | None = None,
                   error: BaseException | None = None) -> None:
    """End the outcome span with what the database made of it; count the step."""
    if not _enabled:
        return
    if result is None:
        kind = "uncommitted"
        if error is not None:
            record_error(s, error)
    else:
        kind = "fenced" if result.fenced else encoded.kind
        s.set_attribute("durable.fenced", result.fenced)
        if result.status is not None:
            s.set_attribute("durable.status", result.status)
        if result.fenced:
            s.update_name("outcome fenced")
            s.set_attribute("durable.outcome", "fenced")
            s.set_attribute("durable.outcome.requested", encoded.kind)
        elif result.status == "failed":
            s.set_status(Status(StatusCode.ERROR, encoded.error or "failed"))
    s.end()
    _step_span.set(INVALID_SPAN)
    labels = {QUEUE: claim.queue, "durable.machine": claim.machine, "durable.outcome": kind}
    _steps.add(1, labels)
    duration_ms = encoded.detail.get("duration_ms")
    if isinstance(duration_ms, int | float):
        _step_duration.record(duration_ms / 1000, labels)


# -- metrics --------------------------------------------------------------------------------------
_runtimes: weakref.WeakSet[Runtime] = weakref.WeakSet()
_runtimes_lock = threading.Lock()


def watch(runtime: Runtime) -> None:
    """Report this runtime's per-queue gauges while it runs."""
    with _runtimes_lock:
        _runtimes.add(runtime)


def unwatch(runtime: Runtime) -> None:
    with _runtimes_lock:
        _runtimes.discard(runtime)


def _watched() -> list[Runtime]:
    with _runtimes_lock:
        return list(_runtimes)


def _gauge(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        if not _enabled:
            return []
        return [
            Observation(s.gauges()[field], {QUEUE: q, WORKER: rt.worker_id})
            for rt in _watched() for q, s in list(rt.schedulers.items())
        ]

    return observe


_steps = meter.create_counter("durable.steps", unit="{step}",
                              description="Step executions, by queue, machine and outcome.")
_step_duration = meter.create_histogram("durable.step.duration", unit="s",
                                        description="Time spent running a step (not committing it).")
meter.create_observable_gauge("durable.in_flight", callbacks=[_gauge("in_flight")], unit="{step}",
                              description="Steps executing now, per queue and worker.")
meter.create_observable_gauge("durable.buffered", callbacks=[_gauge("buffered")], unit="{step}",
                              description="Claims picked and waiting for a free slot, per queue and worker.")
meter.create_observable_gauge("durable.concurrency", callbacks=[_gauge("concurrency")], unit="{step}",
                              description="Configured concurrency, per queue and worker.")


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}
