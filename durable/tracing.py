"""OpenTelemetry instrumentation through the API only: a no-op unless the application configures an
SDK (see the ``otel`` package). Span, attribute and metric names live here, in one place.

Spans (attribute names follow the messaging semantic conventions, ``durable.*`` for our own):

    durable insert / durable signal   PRODUCER, in the client; the row stores this span's traceparent
    step {machine}.{step}             CONSUMER, one per execution, continuing the instance's trace and
                                      linked to the spans of the signals it reads; open until its
                                      outcome is committed, then an ``outcome`` event says what the
                                      database made of it: next/retry/await/spawn/done/stop/cancel,
                                      or ``fenced`` when the lease was lost meanwhile; a step cancelled
                                      because its lease was lost has ``durable.lease_lost``, and one
                                      that held the event loop too long a ``durable.loop_blocked`` event
    durable pick / heartbeat / reap   the runtime's own work, with counts

``DURABLE_TRACING=off`` (or :func:`set_enabled`) skips even the API calls.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import INVALID_SPAN, Link, SpanKind, Status, StatusCode

__all__ = [
    "Link",
    "SpanKind",
    "attribute_tags",
    "context_from",
    "current_context_headers",
    "enabled",
    "insert_attributes",
    "inserted",
    "link_from",
    "record_error",
    "set_enabled",
    "signal_attributes",
    "signalled",
    "span",
    "step_span",
    "traced",
]

P = ParamSpec("P")
R = TypeVar("R")

SYSTEM = "durable"
QUEUE = "messaging.destination.name"
WORKER = "durable.worker.id"

tracer = trace.get_tracer("durable")
meter = metrics.get_meter("durable")

_enabled = os.environ.get("DURABLE_TRACING", "on").strip().lower() not in ("0", "off", "false", "no")
_sdk_seen = False
# the current task's open step span, ended once its outcome is committed
_step_span: ContextVar[trace.Span] = ContextVar("durable_step_span", default=INVALID_SPAN)


def _sdk() -> bool:
    """Whether an SDK (any real tracer provider) is installed; without one every span is a no-op and
    the fast paths below do only what the no-op would: keep the caller's context flowing."""
    global _sdk_seen
    if not _sdk_seen:
        _sdk_seen = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    return _sdk_seen


def recording() -> bool:
    """Whether durable makes spans now (enabled and an SDK installed)."""
    return _enabled and _sdk()


class _NoContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


class _Attached:
    __slots__ = ("context", "token")

    def __init__(self, context: otel_context.Context) -> None:
        self.context = context

    def __enter__(self) -> None:
        self.token = otel_context.attach(self.context)

    def __exit__(self, *_: object) -> None:
        otel_context.detach(self.token)


_NO_CONTEXT = _NoContext()


def instance_context(traceparent: str | None, tracestate: str | None) -> _NoContext | _Attached:
    """When no span is recorded: run a step in its instance's trace context (so what it inserts or
    signals carries the trace on), or in an empty one; nothing at all when telemetry is off."""
    if not _enabled:
        return _NO_CONTEXT
    parent = context_from(traceparent, tracestate)
    return _Attached(parent if parent is not None else otel_context.Context())


def set_enabled(enabled: bool) -> None:
    """Turn all durable telemetry on or off (off: not even the no-op API is called)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    """Whether durable telemetry is on (``DURABLE_TRACING``, :func:`set_enabled`); off, no API call is made."""
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
    """The context a stored traceparent/tracestate stands for (None without one)."""
    if not traceparent or not _enabled:
        return None
    return _extract(traceparent, tracestate)


@functools.lru_cache(maxsize=4096)  # an instance's steps (and a batch's instances) share one context
def _extract(traceparent: str, tracestate: str | None) -> otel_context.Context:
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return propagate.extract(carrier, context=otel_context.Context())  # not the caller's context


def link_from(traceparent: str | None) -> Link | None:
    """A span link to the span a W3C ``traceparent`` names (a signal's sender), or None when there is none or it is
    invalid."""
    ctx = context_from(traceparent, None)
    if ctx is None:
        return None
    span_ctx = trace.get_current_span(ctx).get_span_context()
    return Link(span_ctx) if span_ctx.is_valid else None


# -- spans ----------------------------------------------------------------------------------------
def detached() -> otel_context.Context:
    """An empty context: a span started in it is a root, whatever the current task's span is."""
    return otel_context.Context()


@contextmanager
def span(
    name: str,
    attributes: dict[str, Any],
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: otel_context.Context | None = None,
    links: list[Link] | None = None,
) -> Iterator[trace.Span]:
    """A current span; an exception escaping it is recorded and sets status ERROR."""
    if not _enabled or not _sdk():
        yield INVALID_SPAN
        return
    s = tracer.start_span(name, context=parent, kind=kind, attributes=_clean(attributes), links=links)
    token = otel_context.attach(trace.set_span_in_context(s, parent))
    try:
        yield s
    except Exception as exc:
        record_error(s, exc)
        raise
    finally:
        otel_context.detach(token)
        s.end()


@contextmanager
def step_span(
    name: str, attributes: dict[str, Any], *, parent: otel_context.Context | None, links: list[Link] | None = None
) -> Iterator[trace.Span]:
    """A step's span: continues ``parent`` (the instance's trace) or starts a new trace, never the
    worker's own context. It stays open after the block until :func:`finish_outcome` records what
    the database made of the outcome (so one span tells the whole story); a block that raises, or is
    cancelled, ends it at once."""
    if not _enabled:
        yield INVALID_SPAN
        return
    root = parent if parent is not None else otel_context.Context()
    if not _sdk():  # no span to make: the step still runs in the instance's context (for its children)
        no_span = otel_context.attach(root)
        try:
            yield INVALID_SPAN
        finally:
            otel_context.detach(no_span)
        return
    s = tracer.start_span(name, context=root, kind=SpanKind.CONSUMER, attributes=_clean(attributes), links=links)
    token = otel_context.attach(trace.set_span_in_context(s, root))
    try:
        yield s
    except BaseException as exc:  # no outcome will be committed
        if isinstance(exc, Exception):
            record_error(s, exc)
        else:
            s.set_attribute("durable.interrupted", type(exc).__name__)  # cancelled: drain deadline, kill
        s.end()
        raise
    finally:
        otel_context.detach(token)
    _step_span.set(s)


def record_error(s: trace.Span, error: BaseException) -> None:
    """Mark the span failed with ``error``: an exception event and an ERROR status naming its type."""
    s.record_exception(error)
    s.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def traced(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    before: Callable[..., dict[str, Any]] | None = None,
    after: Callable[[trace.Span, Any], None] | None = None,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Run an async function inside a span; ``before(*args, **kwargs)`` gives its attributes,
    ``after(span, result)`` adds attributes from the result."""

    def wrap(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            if not _enabled or not _sdk():
                return await fn(*args, **kwargs)
            attrs = before(*args, **kwargs) if before is not None else {}
            operation = "send" if kind is SpanKind.PRODUCER else None
            with span(
                name, {"messaging.system": SYSTEM, "messaging.operation.type": operation, **attrs}, kind=kind
            ) as s:
                result = await fn(*args, **kwargs)
                if after is not None:
                    after(s, result)
                return result

        return inner

    return wrap


# client spans: ``before`` gets the method's arguments (self first)
def inserted(s: trace.Span, ids: list[int | None]) -> None:
    """After an insert: the batch size, how many rows were inserted, and the instance id of a single insert, on its
    span."""
    s.set_attribute("messaging.batch.message_count", len(ids))
    s.set_attribute("durable.inserted", sum(1 for i in ids if i is not None))
    if len(ids) == 1 and ids[0] is not None:
        s.set_attribute("durable.instance.id", ids[0])


def attribute_tags(attributes: dict[str, str] | None) -> dict[str, str]:
    """An instance's attributes as span attributes: ``durable.attr.<name>``."""
    if not attributes:
        return {}
    return {f"durable.attr.{k}": v for k, v in attributes.items()}


def insert_attributes(_db: Any, specs: Any) -> dict[str, Any]:
    """The insert span of one instance carries its attributes (``durable.attr.<name>``)."""
    if isinstance(specs, list | tuple) and len(specs) == 1:
        attrs = getattr(specs[0], "attributes", None)
        if isinstance(attrs, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()):
            return attribute_tags(attrs)
    return {}


def signal_attributes(_db: Any, instance_id: int, name: str, *_: Any, **kw: Any) -> dict[str, Any]:
    """The span attributes of ``Database.signal(instance_id, name, ...)`` (its arguments, self first)."""
    return {
        "durable.instance.id": instance_id,
        "durable.signal.name": name,
        "durable.signal.dedup_key": kw.get("dedup_key"),
    }


def signalled(s: trace.Span, signal_id: int | None) -> None:
    """After a signal: its id on the span, or ``durable.signal.duplicate`` when its dedup key was taken already."""
    if signal_id is None:
        s.set_attribute("durable.signal.duplicate", True)
    else:
        s.set_attribute("messaging.message.id", str(signal_id))
        s.set_attribute("durable.signal.id", signal_id)


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}
