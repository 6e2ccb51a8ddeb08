"""OpenTelemetry instrumentation through the API only: a no-op unless the application configures an
SDK (see the ``otel`` package). Span and attribute names live here, in one place."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

tracer = trace.get_tracer("durable")


def current_context_headers() -> tuple[str | None, str | None]:
    """The W3C traceparent/tracestate of the caller's current span (None, None when there is none)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent"), carrier.get("tracestate")


def context_from(traceparent: str | None, tracestate: str | None) -> otel_context.Context | None:
    if not traceparent:
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


@contextmanager
def span(name: str, attributes: dict[str, Any], *, kind: SpanKind = SpanKind.INTERNAL,
         parent: otel_context.Context | None = None, links: list[Link] | None = None) -> Iterator[trace.Span]:
    with tracer.start_as_current_span(name, context=parent, kind=kind, attributes=_clean(attributes),
                                      links=links, record_exception=False,
                                      set_status_on_exception=False) as s:
        yield s


def record_error(s: trace.Span, error: BaseException) -> None:
    s.record_exception(error)
    s.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}
