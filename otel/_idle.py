"""A span processor that drops idle runtime spans before they reach an exporter."""

from __future__ import annotations

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import StatusCode

# runtime spans that carry no news when this attribute is 0
IDLE_SPANS = {
    "durable pick": "durable.claimed",
    "durable heartbeat": "durable.claims",
    "durable reap": "durable.reaped",
}


def is_idle(span: ReadableSpan) -> bool:
    key = IDLE_SPANS.get(span.name)
    return (
        key is not None
        and span.attributes is not None
        and span.attributes.get(key) == 0
        and span.status.status_code is not StatusCode.ERROR
    )


class SkipIdle(SpanProcessor):
    """Pass every span to ``inner`` except idle picks, heartbeats and reaps without an error."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if not is_idle(span):
            self.inner.on_end(span)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)
