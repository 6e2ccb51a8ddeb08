"""Span ids from the seed (``durable sim --spans``): a dst run installs the OpenTelemetry SDK with trace
and span ids drawn from a PRNG seeded by the run's seed, and every finished span joins the operation log
(name, trace id, span id), so a run's traces are reproducible and covered by the log's hash.

The SDK's tracer provider is global to a process: it is installed once and re-seeded for each run.
"""

from __future__ import annotations

import random
from typing import Any

_installed: Any = None


def install(seed: int) -> Any:
    """Install (once) and re-seed the seeded provider; returns the collector of finished spans, or None
    when another SDK provider already owns this process."""
    global _installed
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.id_generator import IdGenerator

    class SeededIds(IdGenerator):
        def __init__(self) -> None:
            self.rng = random.Random(0)

        def generate_span_id(self) -> int:
            return self.rng.getrandbits(64) or 1

        def generate_trace_id(self) -> int:
            return self.rng.getrandbits(128) or 1

    class Collect(SpanProcessor):
        def __init__(self) -> None:
            self.lines: list[str] = []

        def on_end(self, span: ReadableSpan) -> None:
            ctx = span.get_span_context()
            if ctx is not None:
                self.lines.append(f"span {span.name} trace={ctx.trace_id:032x} span={ctx.span_id:016x}")

    if _installed is None:
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            return None
        ids, collect = SeededIds(), Collect()
        provider = TracerProvider(id_generator=ids)
        provider.add_span_processor(collect)
        trace.set_tracer_provider(provider)
        _installed = (ids, collect)
    ids, collect = _installed
    ids.rng = random.Random(f"spans:{seed}")
    collect.lines = []
    return collect
