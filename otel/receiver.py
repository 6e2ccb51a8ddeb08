"""A minimal in-process OTLP receiver: an OTLP/gRPC server (TraceService, MetricsService) and an
OTLP/HTTP server (``POST /v1/traces``, ``/v1/metrics``, protobuf, optionally gzip) on loopback, both
decoding ``Export*ServiceRequest`` with opentelemetry-proto into plain records. For tests and
benchmarks: it keeps everything in memory.

    with Receiver() as rx:
        otel.configure(otlp="grpc", endpoint=rx.grpc_endpoint)
        ...
        otel.shutdown()
        rx.spans_named("step Checkout.start")
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

KINDS = {
    Span.SPAN_KIND_UNSPECIFIED: "UNSPECIFIED",
    Span.SPAN_KIND_INTERNAL: "INTERNAL",
    Span.SPAN_KIND_SERVER: "SERVER",
    Span.SPAN_KIND_CLIENT: "CLIENT",
    Span.SPAN_KIND_PRODUCER: "PRODUCER",
    Span.SPAN_KIND_CONSUMER: "CONSUMER",
}
STATUSES = {Status.STATUS_CODE_UNSET: "UNSET", Status.STATUS_CODE_OK: "OK", Status.STATUS_CODE_ERROR: "ERROR"}


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    kind: str
    attributes: dict[str, Any]
    status: str
    status_message: str
    events: list[tuple[str, dict[str, Any]]]
    links: list[tuple[str, str]]  # (trace id, span id)
    resource: dict[str, Any]
    scope: str
    start_ns: int
    end_ns: int
    transport: str  # "grpc" or "http"


@dataclass(frozen=True)
class ReceivedPoint:
    metric: str
    kind: str  # "sum", "gauge" or "histogram"
    attributes: dict[str, Any]
    value: float  # sum/gauge value, histogram count
    total: float | None  # histogram sum
    resource: dict[str, Any]
    transport: str


@dataclass
class Receiver:
    """Start with ``with Receiver() as rx`` (or :meth:`start`); endpoints are base addresses."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    points: list[ReceivedPoint] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=dict)
    grpc_endpoint: str = ""
    http_endpoint: str = ""

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Receiver:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_GrpcTraces(self), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_GrpcMetrics(self), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._grpc = server
        self.grpc_endpoint = f"http://127.0.0.1:{port}"

        http = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(self))
        http.daemon_threads = True
        threading.Thread(target=http.serve_forever, name="otlp-http", daemon=True).start()
        self._http = http
        self.http_endpoint = f"http://127.0.0.1:{http.server_address[1]}"
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- queries ---------------------------------------------------------------------------------
    def spans_named(self, name: str) -> list[ReceivedSpan]:
        with self._changed:
            return [s for s in self.spans if s.name == name]

    def wait_for(self, condition: Callable[[Receiver], bool], timeout: float = 10.0) -> bool:
        """Block until ``condition(self)`` holds (re-checked on every export) or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    # -- decoding --------------------------------------------------------------------------------
    def add_traces(self, request: trace_service_pb2.ExportTraceServiceRequest, transport: str) -> None:
        decoded = []
        for rs in request.resource_spans:
            resource = attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                decoded += [_span(s, resource, ss.scope.name, transport) for s in ss.spans]
        with self._changed:
            self.spans.extend(decoded)
            self.requests[f"{transport} traces"] = self.requests.get(f"{transport} traces", 0) + 1
            self._changed.notify_all()

    def add_metrics(self, request: metrics_service_pb2.ExportMetricsServiceRequest, transport: str) -> None:
        decoded = []
        for rm in request.resource_metrics:
            resource = attributes(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    decoded += list(_points(m, resource, transport))
        with self._changed:
            self.points.extend(decoded)
            self.requests[f"{transport} metrics"] = self.requests.get(f"{transport} metrics", 0) + 1
            self._changed.notify_all()


def value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return attributes(v.kvlist_value.values)
    return getattr(v, which)


def attributes(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs}


def _span(s: Span, resource: dict[str, Any], scope: str, transport: str) -> ReceivedSpan:
    return ReceivedSpan(
        name=s.name,
        trace_id=s.trace_id.hex(),
        span_id=s.span_id.hex(),
        parent_span_id=s.parent_span_id.hex() or None,
        kind=KINDS.get(s.kind, str(s.kind)),
        attributes=attributes(s.attributes),
        status=STATUSES.get(s.status.code, str(s.status.code)),
        status_message=s.status.message,
        events=[(e.name, attributes(e.attributes)) for e in s.events],
        links=[(ln.trace_id.hex(), ln.span_id.hex()) for ln in s.links],
        resource=resource,
        scope=scope,
        start_ns=s.start_time_unix_nano,
        end_ns=s.end_time_unix_nano,
        transport=transport,
    )


def _points(m: Any, resource: dict[str, Any], transport: str) -> Iterable[ReceivedPoint]:
    which = m.WhichOneof("data")
    if which in ("sum", "gauge"):
        for p in getattr(m, which).data_points:
            v = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
            yield ReceivedPoint(m.name, which, attributes(p.attributes), float(v), None, resource, transport)
    elif which == "histogram":
        for p in m.histogram.data_points:
            yield ReceivedPoint(
                m.name, "histogram", attributes(p.attributes), float(p.count), p.sum, resource, transport
            )


class _GrpcTraces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:  # the gRPC method name
        self.receiver.add_traces(request, "grpc")
        return trace_service_pb2.ExportTraceServiceResponse()


class _GrpcMetrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:  # the gRPC method name
        self.receiver.add_metrics(request, "grpc")
        return metrics_service_pb2.ExportMetricsServiceResponse()


def _http_handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server names it so
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            reply: Any
            if self.path == "/v1/traces":
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                receiver.add_traces(request, "http")
                reply = trace_service_pb2.ExportTraceServiceResponse()
            elif self.path == "/v1/metrics":
                mrequest = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                receiver.add_metrics(mrequest, "http")
                reply = metrics_service_pb2.ExportMetricsServiceResponse()
            else:
                self.send_error(404)
                return
            data = reply.SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    return Handler
