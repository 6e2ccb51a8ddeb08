"""OpenTelemetry SDK setup for applications and the ``durable`` CLI. The engine itself uses only the
API (``durable.tracing``); call :func:`configure` once at start-up to export what it emits.

    import durable.otel as otel
    otel.configure(service_name="checkout-worker", otlp="grpc")   # endpoint: $OTEL_EXPORTER_OTLP_ENDPOINT
    try:
        trio.run(main)
    finally:
        otel.shutdown()                                              # flush what is still queued

Endpoints follow the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``..._TRACES_ENDPOINT``,
``..._HEADERS``, ``..._TIMEOUT``...) unless ``endpoint=`` is given; like ``OTEL_EXPORTER_OTLP_ENDPOINT``
it is the base address (``http://host:4317`` for gRPC, ``http://host:4318`` for HTTP, which gets
``/v1/traces`` and ``/v1/metrics`` appended). The service name comes from ``service_name=``, else
``OTEL_SERVICE_NAME``, else ``durable``; ``OTEL_RESOURCE_ATTRIBUTES`` is merged in.

Idle runtime spans (a pick that claimed nothing, a heartbeat with no claims, a reap that found
nothing) are dropped unless ``keep_idle=True``: an idle worker would otherwise fill Jaeger with
one-span traces.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "PROTOCOLS",
    "ConfigurationError",
    "Telemetry",
    "configure",
    "configured",
    "from_environment",
    "session",
    "shutdown",
]

Protocol = Literal["grpc", "http"]
PROTOCOLS: tuple[Protocol, ...] = ("grpc", "http")


class ConfigurationError(Exception):
    """Telemetry cannot be configured as asked (bad protocol, configured twice, another SDK set)."""


@dataclass(frozen=True)
class Telemetry:
    """The providers :func:`configure` installed globally."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider | None
    service_name: str
    otlp: Protocol | None
    endpoint: str | None

    def force_flush(self, timeout: float = 10.0) -> bool:
        ok = self.tracer_provider.force_flush(int(timeout * 1000))
        if self.meter_provider is not None:
            ok = self.meter_provider.force_flush(int(timeout * 1000)) and ok
        return ok

    def shutdown(self) -> None:
        """Flush and stop the exporters (idempotent)."""
        self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


_current: Telemetry | None = None


def configured() -> Telemetry | None:
    """What :func:`configure` installed in this process, if anything."""
    return _current


def configure(
    service_name: str | None = None,
    *,
    otlp: Protocol | None = None,
    endpoint: str | None = None,
    console: bool = False,
    resource_attributes: Mapping[str, Any] | None = None,
    metrics: bool = True,
    metrics_interval: float | None = None,
    keep_idle: bool = False,
) -> Telemetry:
    """Install the OpenTelemetry SDK as the global tracer (and meter) provider: a batch span processor
    per exporter (OTLP over ``grpc`` or ``http``, and/or the console), metrics over the same OTLP
    protocol every ``metrics_interval`` seconds (default ``$OTEL_METRIC_EXPORT_INTERVAL``, 60 s).
    Once per process: the OpenTelemetry API does not allow replacing a global provider."""
    global _current
    if otlp is not None and otlp not in PROTOCOLS:
        raise ConfigurationError(f"unknown OTLP protocol {otlp!r}: use one of {', '.join(PROTOCOLS)}")
    if endpoint is not None and otlp is None:
        raise ConfigurationError("an OTLP endpoint was given without a protocol (otlp='grpc' or 'http')")
    if _current is not None:
        raise ConfigurationError("telemetry is already configured in this process")

    from opentelemetry import metrics as metrics_api
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        raise ConfigurationError("another OpenTelemetry SDK is already installed in this process")
    name = service_name or os.environ.get("OTEL_SERVICE_NAME") or "durable"
    resource = Resource.create({**dict(resource_attributes or {}), SERVICE_NAME: name})
    tracer_provider = TracerProvider(resource=resource)
    if otlp is not None:
        exporter = _span_exporter(otlp, endpoint)
        tracer_provider.add_span_processor(_processor(BatchSpanProcessor(exporter), keep_idle))
    if console:
        tracer_provider.add_span_processor(_processor(SimpleSpanProcessor(ConsoleSpanExporter()), keep_idle))

    meter_provider = None
    if metrics and otlp is not None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        interval = None if metrics_interval is None else metrics_interval * 1000
        reader = PeriodicExportingMetricReader(_metric_exporter(otlp, endpoint), export_interval_millis=interval)
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        metrics_api.set_meter_provider(meter_provider)
    trace.set_tracer_provider(tracer_provider)
    _current = Telemetry(tracer_provider, meter_provider, name, otlp, endpoint)
    return _current


def shutdown() -> None:
    """Flush and stop what :func:`configure` installed (a no-op when nothing was)."""
    if _current is not None:
        _current.shutdown()


def from_environment(service_name: str | None = None) -> Telemetry | None:
    """:func:`configure` as the standard OpenTelemetry variables ask, as ``opentelemetry-instrument``
    users expect; None when they ask for nothing. ``OTEL_TRACES_EXPORTER`` (comma list of ``otlp``,
    ``console``, ``none``; when unset, a set ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` means ``otlp``),
    ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` (``grpc``, the Python SDK's default, or ``http/protobuf``),
    ``OTEL_METRICS_EXPORTER`` (``none`` turns metrics off), ``OTEL_SDK_DISABLED=true``; the endpoint,
    headers, timeout and service name variables are read by :func:`configure` and the exporters."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = {e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()}
    if not exporters and (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        exporters = {"otlp"}
    exporters.discard("none")
    if not exporters:
        return None
    unknown = exporters - {"otlp", "console"}
    if unknown:
        raise ConfigurationError(
            f"OTEL_TRACES_EXPORTER: unsupported exporter(s) {', '.join(sorted(unknown))} "
            "(durable supports otlp and console)"
        )
    otlp: Protocol | None = None
    if "otlp" in exporters:
        protocol = (
            (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc")
            .strip()
            .lower()
        )
        if protocol == "grpc":
            otlp = "grpc"
        elif protocol == "http/protobuf":
            otlp = "http"
        else:
            raise ConfigurationError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: use grpc or http/protobuf")
    metrics = env.get("OTEL_METRICS_EXPORTER", "").strip().lower() != "none"
    return configure(service_name, otlp=otlp, console="console" in exporters, metrics=metrics)


@contextmanager
def session(service_name: str | None = None, **options: Any) -> Iterator[Telemetry]:
    """``configure(...)`` for the duration of a block, flushed on exit."""
    telemetry = configure(service_name, **options)
    try:
        yield telemetry
    finally:
        telemetry.shutdown()


# -- exporters ------------------------------------------------------------------------------------
def _base(endpoint: str) -> str:
    """``host:port`` means plain-text ``http://host:port`` (the gRPC exporter would assume TLS)."""
    return endpoint if "://" in endpoint else f"http://{endpoint}"


def _span_exporter(otlp: Protocol, endpoint: str | None) -> SpanExporter:
    if otlp == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=_base(endpoint) if endpoint else None)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=_base(endpoint).rstrip("/") + "/v1/traces" if endpoint else None)


def _metric_exporter(otlp: Protocol, endpoint: str | None) -> MetricExporter:
    if otlp == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        return GrpcMetricExporter(endpoint=_base(endpoint) if endpoint else None)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter(endpoint=_base(endpoint).rstrip("/") + "/v1/metrics" if endpoint else None)


def _processor(inner: SpanProcessor, keep_idle: bool) -> SpanProcessor:
    from ._idle import SkipIdle

    return inner if keep_idle else SkipIdle(inner)
