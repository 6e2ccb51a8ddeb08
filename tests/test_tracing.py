"""Tracing end to end: a workload runs in a subprocess (the OpenTelemetry SDK is process-global) with
``otel.configure`` and the real OTLP exporter, against a real OTLP receiver in this process (gRPC and
HTTP servers decoding ``ExportTraceServiceRequest`` with opentelemetry-proto).

Run as a script, this file is that workload: ``python tests/test_tracing.py DSN SCHEMA PROTO ENDPOINT OUT``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

import durable
from durable import Await, Child, Done, Machine, Next, Retry, Spawn, Stop, step

TIMEOUT = 60
ROOT = Path(__file__).resolve().parent.parent
DURABLE = str(Path(sys.executable).with_name("durable"))  # the console script of this environment


# -- the workload -----------------------------------------------------------------------------------
class Ship(Machine, queue="trace"):
    @step
    async def go(self, ctx: durable.Context) -> Done:
        return Done({"parcel": ctx.state["n"]})


class Order(Machine, queue="trace", initial="start"):
    """start fails once (retried through ``handle``), pay awaits a signal, then fans out two Ships."""

    class State(durable.State):
        order: int

    @step
    async def start(self, ctx: durable.Context) -> Next:
        if ctx.attempt == 0:
            raise RuntimeError("card reader offline")
        return Next("pay", ctx.state)

    @step
    async def pay(self, ctx: durable.Context) -> Await | Spawn:
        if ctx.signal("paid") is None:
            return Await("paid", ctx.state)
        return Spawn("join", [Child(Ship, {"n": i}) for i in range(2)], ctx.state)

    @step
    async def join(self, ctx: durable.Context) -> Done:
        return Done({"parcels": sorted(c.result["parcel"] for c in ctx.children)})

    async def handle(self, error: BaseException, ctx: durable.Context) -> Retry:
        return Retry(ctx.state, delay=0, error=f"{type(error).__name__}: {error}")


class Doomed(Machine, queue="trace"):
    @step
    async def check(self, ctx: durable.Context) -> Stop:
        return Stop("out of stock")


# The slow queue's lease, never extended: attempt 0 must outlive it, attempt 1 (from its pick to its
# commit) must not. 0.8 s left a loaded box too little for attempt 1 (a lost lease and an attempt 2).
SLOW_LEASE = 3.0


class Slow(Machine, queue="slow"):
    """The first attempt outlives its lease: the runtime cancels it when the lease passes (lease_lost,
    no outcome), and attempt 1 runs."""

    @step
    async def work(self, ctx: durable.Context) -> Done:
        if ctx.attempt == 0:
            await trio.sleep(60.0)  # cancelled when its lease passes
        return Done(ctx.attempt)


async def wait_status(db: durable.Database, iid: int, *statuses: str) -> durable.Instance:
    with trio.fail_after(20):
        while (inst := await db.get(iid)).status not in statuses:
            await trio.sleep(0.02)
    return inst


async def workload(dsn: str, schema: str, chain: int) -> dict[str, Any]:
    from opentelemetry import trace

    from durable.migrate import drop_schema

    tracer = trace.get_tracer("checkout-app")
    async with durable.connect(dsn, schema=schema, machines=[Order, Ship, Doomed, Slow]) as db:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(durable.Runtime(db, queues={"trace": 4}, worker_id="w-trace", chain=chain).run)
                await nursery.start(
                    durable.Runtime(
                        db, queues={"slow": 2}, worker_id="w-slow", lease=SLOW_LEASE, heartbeat=60, reap_every=0.1
                    ).run
                )
                with tracer.start_as_current_span("POST /checkout"):
                    order = await db.insert(Order, {"order": 7})
                doomed = await db.insert(Doomed)
                slow = await db.insert(Slow)
                assert order is not None and doomed is not None and slow is not None
                await wait_status(db, order, "awaiting_signal")
                with tracer.start_as_current_span("POST /payment-webhook"):
                    await db.signal(order, "paid", {"amount": 100}, dedup_key="evt-1")
                done = await wait_status(db, order, "done", "failed")
                await wait_status(db, doomed, "failed")
                await wait_status(db, slow, "done")
                # attempt 0 is cancelled once its lease passes (no heartbeat extends it)
                with trio.fail_after(20):
                    while not any(e.event == "lease_lost" for e in await db.history(slow)):
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await drop_schema(db.pool, schema)
    return {
        "order": order,
        "doomed": doomed,
        "slow": slow,
        "result": done.result,
        "status": done.status,
        "children": [c["id"] for c in done.children],
    }


def main(argv: list[str]) -> None:
    import durable.otel as otel

    dsn, schema, proto, endpoint, out = argv
    otel.configure(
        "tracing-test",
        otlp=proto,
        endpoint=endpoint,  # type: ignore[arg-type]
        console=proto == "http",
        metrics_interval=0.2,
        resource_attributes={"deployment.environment": "test"},
    )
    try:
        ids = trio.run(workload, dsn, schema, 2 if proto == "http" else 0)  # HTTP: with run-ahead
    finally:
        otel.shutdown()
    Path(out).write_text(json.dumps(ids))


# -- the tests --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def receiver() -> Any:
    from durable.otel.receiver import Receiver

    with Receiver() as rx:
        yield rx


@pytest.fixture(scope="module")
def workloads(receiver: Any, pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The workload exported over gRPC and over HTTP, both runs at once (each in its own schema):
    per protocol, the ids it reports and its stdout."""
    folder = tmp_path_factory.mktemp("workloads")
    procs = {}
    for proto, endpoint in (("grpc", receiver.grpc_endpoint), ("http", receiver.http_endpoint)):
        schema = f"t_trace_{proto}_{uuid.uuid4().hex[:8]}"
        procs[proto] = subprocess.Popen(
            [sys.executable, __file__, pg_dsn, schema, proto, endpoint, str(folder / f"{proto}.json")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    results = {}
    for proto, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, stderr[-3000:]
        results[proto] = (json.loads((folder / f"{proto}.json").read_text()), stdout)
    return results


def tree(spans: list[Any]) -> dict[str, Any]:
    return {s.span_id: s for s in spans}


def test_grpc_export_one_trace_per_instance(receiver: Any, workloads: dict[str, Any]) -> None:
    ids, _ = workloads["grpc"]
    assert ids["status"] == "done" and ids["result"] == {"parcels": [0, 1]}
    spans = [s for s in receiver.spans if s.transport == "grpc"]
    by_id = tree(spans)
    assert {s.resource["service.name"] for s in spans} == {"tracing-test"}
    assert {s.resource["deployment.environment"] for s in spans} == {"test"}

    # the order: one trace from the HTTP request that inserted it, through every step, to its children
    (request,) = [s for s in spans if s.name == "POST /checkout"]
    order_trace = [s for s in spans if s.trace_id == request.trace_id]
    steps = [s for s in order_trace if s.name.startswith("step Order.")]
    assert Counter(s.name for s in steps) == {"step Order.start": 2, "step Order.pay": 2, "step Order.join": 1}
    (insert,) = [s for s in order_trace if s.name == "durable insert"]
    assert insert.parent_span_id == request.span_id and insert.kind == "PRODUCER"
    assert insert.attributes["messaging.operation.type"] == "send"
    assert insert.attributes["messaging.batch.message_count"] == 1
    assert insert.attributes["durable.instance.id"] == ids["order"]
    for s in steps:
        assert s.parent_span_id == insert.span_id, s.name  # every step continues the inserted trace
        assert s.kind == "CONSUMER"
        assert s.attributes["messaging.system"] == "durable"
        assert s.attributes["messaging.operation.type"] == "process"
        assert s.attributes["messaging.destination.name"] == "trace"
        assert s.attributes["durable.instance.id"] == ids["order"]
        assert s.attributes["durable.machine"] == "Order"
        assert s.attributes["durable.machine.version"] == 1
        assert s.attributes["durable.worker.id"] == "w-trace"
        assert s.attributes["durable.step"] == s.name.removeprefix("step Order.")

    # the failed attempt: exception recorded, status ERROR, outcome retry; attempt 1 goes on
    first, second = sorted(
        (s for s in steps if s.name == "step Order.start"), key=lambda s: s.attributes["durable.attempt"]
    )
    assert first.attributes["durable.attempt"] == 0 and first.status == "ERROR"
    assert "card reader offline" in first.status_message
    assert [name for name, _ in first.events] == ["exception", "outcome"]
    assert first.events[0][1]["exception.type"] == "RuntimeError"
    assert first.attributes["durable.outcome"] == "retry"
    assert outcome(first)["durable.error"] == "RuntimeError: card reader offline"
    assert outcome(first)["durable.status"] == "runnable"
    assert second.attributes["durable.attempt"] == 1 and second.status == "UNSET"
    assert second.attributes["durable.outcome"] == "next" and second.attributes["durable.next_step"] == "pay"
    assert outcome(second)["durable.next_step"] == "pay"

    # every step span carries one outcome event, with what the database made of it
    assert all(s.attributes["durable.fenced"] is False for s in steps)
    assert {s.name for s in order_trace} == {
        "POST /checkout",
        "durable insert",
        "step Order.start",
        "step Order.pay",
        "step Order.join",
        "step Ship.go",
    }

    # await, then the signal wakes pay: the woken step links to the signal's PRODUCER span
    await_pay, woken_pay = sorted((s for s in steps if s.name == "step Order.pay"), key=lambda s: s.start_ns)
    assert outcome(await_pay)["durable.outcome"] == "await"
    assert outcome(await_pay)["durable.signal.name"] == "paid"
    assert outcome(await_pay)["durable.status"] == "awaiting_signal"
    (signal,) = [
        s for s in spans if s.name == "durable signal" and s.attributes.get("durable.instance.id") == ids["order"]
    ]
    webhook = by_id[signal.parent_span_id]
    assert webhook.name == "POST /payment-webhook" and signal.kind == "PRODUCER"
    assert signal.trace_id != request.trace_id  # the webhook is its own trace, linked, not merged
    assert signal.attributes["durable.signal.name"] == "paid"
    assert signal.attributes["durable.signal.dedup_key"] == "evt-1"
    assert signal.attributes["messaging.operation.type"] == "send"
    assert (signal.trace_id, signal.span_id) in woken_pay.links
    assert await_pay.links == []
    assert outcome(woken_pay)["durable.outcome"] == "spawn" and outcome(woken_pay)["durable.children"] == 2
    assert outcome(by_name(steps, "step Order.join"))["durable.status"] == "done"

    # children: their steps are in the parent's trace, under the step that spawned them
    kids = [s for s in order_trace if s.name == "step Ship.go"]
    assert sorted(s.attributes["durable.instance.id"] for s in kids) == sorted(ids["children"])
    assert all(s.parent_span_id == woken_pay.span_id for s in kids)
    assert [outcome(s)["durable.outcome"] for s in kids] == ["done", "done"]

    # one trace per instance: the order's trace holds only the order and its children
    instances = {s.attributes["durable.instance.id"] for s in order_trace if s.name.startswith("step ")}
    assert instances == {ids["order"], *ids["children"]}

    # a step that returned Stop: the instance failed, the step span says so with status ERROR
    (doomed,) = [
        s for s in spans if s.name == "step Doomed.check" and s.attributes["durable.instance.id"] == ids["doomed"]
    ]
    assert (doomed.status, doomed.status_message) == ("ERROR", "out of stock")
    assert outcome(doomed)["durable.outcome"] == "stop" and outcome(doomed)["durable.status"] == "failed"
    assert by_id[doomed.parent_span_id].name == "durable insert"  # no caller span: the insert is the root

    # the attempt that lost its lease: cancelled, marked durable.lease_lost, no outcome; the retry's is "done"
    slow_steps = sorted((s for s in spans if s.name == "step Slow.work"), key=lambda s: s.attributes["durable.attempt"])
    assert [s.attributes["durable.attempt"] for s in slow_steps] == [0, 1]
    assert len({s.trace_id for s in slow_steps}) == 1
    lost = slow_steps[0]
    assert lost.attributes["durable.lease_lost"] is True and lost.attributes["durable.interrupted"] == "Cancelled"
    assert [name for name, _ in lost.events] == ["durable.lease_lost"]  # no outcome event: nothing committed
    assert "lease passed" in lost.events[0][1]["durable.reason"]
    assert outcome(slow_steps[1])["durable.outcome"] == "done" and "durable.lease_lost" not in slow_steps[1].attributes
    reaps = [s for s in spans if s.name == "durable reap" and s.attributes["durable.worker.id"] == "w-slow"]
    assert all(s.attributes["durable.reaped"] > 0 for s in reaps)  # idle reaps are dropped

    # picks: CONSUMER spans with demand and rows claimed; the empty ones were dropped
    picks = [
        s for s in spans if s.name == "durable pick" and s.attributes["durable.worker.id"] in ("w-trace", "w-slow")
    ]
    assert picks and all(s.attributes["durable.claimed"] > 0 and s.kind == "CONSUMER" for s in picks)
    assert all(s.attributes["durable.demand"] >= s.attributes["durable.claimed"] for s in picks)
    claimed = sum(s.attributes["durable.claimed"] for s in picks if s.attributes["durable.worker.id"] == "w-trace")
    assert claimed == len(
        [s for s in spans if s.name.startswith("step ") and s.attributes["durable.worker.id"] == "w-trace"]
    )


def outcome(span: Any) -> dict[str, Any]:
    (event,) = [attrs for name, attrs in span.events if name == "outcome"]
    return event  # type: ignore[no-any-return]


def by_name(spans: list[Any], name: str) -> Any:
    (found,) = [s for s in spans if s.name == name]
    return found


def test_http_export_spans_metrics_and_console(receiver: Any, workloads: dict[str, Any]) -> None:
    ids, stdout = workloads["http"]
    spans = [s for s in receiver.spans if s.transport == "http"]
    assert receiver.requests["http traces"] >= 1
    (request,) = [s for s in spans if s.name == "POST /checkout"]
    order_steps = [s for s in spans if s.name.startswith("step ") and s.trace_id == request.trace_id]
    assert {s.attributes["durable.instance.id"] for s in order_steps} == {ids["order"], *ids["children"]}
    assert len(order_steps) == 7
    # run-ahead (chain=2): Order.start's retry ends with `next`, and the same claim runs pay at once
    (start,) = [s for s in order_steps if s.name == "step Order.start" and s.attributes["durable.attempt"] == 1]
    assert outcome(start)["durable.run_ahead"] is True
    picked = sum(
        s.attributes["durable.claimed"]
        for s in spans
        if s.name == "durable pick" and s.attributes["durable.worker.id"] == "w-trace"
    )
    assert picked < len(
        [s for s in spans if s.name.startswith("step ") and s.attributes["durable.worker.id"] == "w-trace"]
    )
    assert {s.resource["service.name"] for s in spans} == {"tracing-test"}

    # metrics: cumulative step counts by machine and outcome (the last export of each series wins)
    steps: dict[tuple[str, str], float] = {}
    for p in receiver.points:
        if p.transport == "http" and p.metric == "durable.steps":
            key = (p.attributes["durable.machine"], p.attributes["durable.outcome"])
            steps[key] = max(steps.get(key, 0), p.value)
    assert steps == {
        ("Order", "retry"): 1,
        ("Order", "next"): 1,
        ("Order", "await"): 1,
        ("Order", "spawn"): 1,
        ("Order", "done"): 1,
        ("Ship", "done"): 2,
        ("Doomed", "stop"): 1,
        ("Slow", "lease_lost"): 1,
        ("Slow", "done"): 1,
    }
    durations = [
        p
        for p in receiver.points
        if p.transport == "http"
        and p.metric == "durable.step.duration"
        and p.attributes["durable.outcome"] == "done"
        and p.attributes["durable.machine"] == "Slow"
    ]
    assert durations and durations[-1].value == 1 and durations[-1].total < 2.0  # attempt 1 did not sleep
    in_flight = [p for p in receiver.points if p.transport == "http" and p.metric == "durable.in_flight"]
    series = {(p.attributes["messaging.destination.name"], p.attributes["durable.worker.id"]) for p in in_flight}
    assert series == {("trace", "w-trace"), ("slow", "w-slow")}
    assert max(p.value for p in in_flight if p.attributes["durable.worker.id"] == "w-slow") >= 1

    # the console exporter printed the same spans as JSON
    assert '"name": "step Order.join"' in stdout and '"durable.outcome": "spawn"' in stdout


class Parcel(Machine, queue="api-only"):
    @step
    async def go(self, ctx: durable.Context) -> Done:
        return Done()


class Box(Machine, queue="api-only", initial="pack"):
    @step
    async def pack(self, ctx: durable.Context) -> Spawn | Await:
        if ctx.signal("label") is None:
            return Await("label")
        return Spawn("sent", [Child(Parcel)])

    @step
    async def sent(self, ctx: durable.Context) -> Done:
        return Done()


@pytest.mark.trio
async def test_api_only_propagates_the_callers_trace(db: durable.Database) -> None:
    """No SDK in this process: nothing is recorded, yet the caller's W3C context flows through rows —
    to the instance, to the children its steps spawn, and to signals."""
    from opentelemetry import context, propagate

    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    sender = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    token = context.attach(propagate.extract({"traceparent": caller}))
    try:
        box = await db.insert(Box)
    finally:
        context.detach(token)
    assert box is not None
    async with trio.open_nursery() as nursery:
        await nursery.start(durable.Runtime(db, machines=[Box, Parcel], queues={"api-only": 2}).run)
        await wait_status(db, box, "awaiting_signal")
        token = context.attach(propagate.extract({"traceparent": sender}))
        try:
            await db.signal(box, "note", "fragile")  # not awaited: stays in the inbox
            await db.signal(box, "label", {"to": "Lyon"})
        finally:
            context.detach(token)
        done = await wait_status(db, box, "done")
        nursery.cancel_scope.cancel()
    (child,) = done.children
    kid = await db.get(child["id"])
    assert trace_id(done.traceparent) == trace_id(kid.traceparent) == trace_id(caller)
    (note,) = [s for s in done.inbox if s["name"] == "note"]
    assert trace_id(note["traceparent"]) == trace_id(sender)


def trace_id(traceparent: str | None) -> str:
    assert traceparent is not None
    return traceparent.split("-")[1]


@pytest.mark.trio
async def test_worker_command_exports_one_trace_per_checkout(
    receiver: Any, db: durable.Database, tmp_path: Path
) -> None:
    """The documented flow: ``durable worker examples.checkout --otlp grpc`` (compose runs exactly
    this) exports each checkout, its signal wake-up and its shipment children as one trace."""
    import os
    import signal as signals

    from opentelemetry import context, propagate

    from examples.checkout import Checkout

    caller = "00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-01"
    token = context.attach(propagate.extract({"traceparent": caller}))  # the shop's request, no SDK here
    try:
        order = await db.insert(Checkout, {"order": 42, "items": 2})
    finally:
        context.detach(token)
    assert order is not None
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DURABLE_DSN": db.pool.dsn}
    log = tmp_path / "worker.log"
    with open(log, "w") as stderr:  # noqa: ASYNC230 - a local file for the worker's stderr
        worker = await trio.lowlevel.open_process(
            [
                DURABLE,
                "worker",
                "examples.checkout",
                "--schema",
                db.schema,
                "--otlp",
                "grpc",
                "--otlp-endpoint",
                receiver.grpc_endpoint,
                "--lease",
                "30",
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        await wait_status(db, order, "awaiting_signal")
        await db.signal(order, "payment", {"amount": 100}, dedup_key="evt-1")
        done = await wait_status(db, order, "done", "failed")
    finally:
        worker.send_signal(signals.SIGTERM)  # drain, then flush the exporter on the way out
        with trio.fail_after(TIMEOUT):
            await worker.wait()
    assert worker.returncode == 0, log.read_text()[-3000:]
    assert done.status == "done", done.last_error
    steps = [
        s
        for s in receiver.spans
        if s.resource.get("service.name") == "durable-worker" and s.trace_id == trace_id(caller)
    ]
    assert Counter(s.name for s in steps) == {
        "step Checkout.reserve": 1,
        "step Checkout.await_payment": 2,
        "step Checkout.finish": 1,
        "step Shipment.book": 2,
    }
    assert {s.attributes["durable.instance.id"] for s in steps if s.name == "step Shipment.book"} == {
        c["id"] for c in done.children
    }
    assert all(outcome(s)["durable.status"] for s in steps)


OFF_PROGRAM = """
import sys, trio, durable, otel
from opentelemetry import trace

@durable.job(queue="off")
async def ping(args, ctx):
    return args

async def main(dsn, schema):
    from durable.migrate import drop_schema
    async with durable.connect(dsn, schema=schema, machines=[ping]) as db:
        async with trio.open_nursery() as nursery:
            await nursery.start(durable.Runtime(db, queues={"off": 2}).run)
            with trace.get_tracer("app").start_as_current_span("app work"):
                iid = await db.insert(ping, {"n": 1})
            while (await db.get(iid)).status != "done":
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
        await drop_schema(db.pool, schema)

otel.configure("tracing-off", otlp="grpc", endpoint=sys.argv[3])
trio.run(main, sys.argv[1], sys.argv[2])
otel.shutdown()
"""


def test_durable_tracing_off_leaves_only_the_application_spans(receiver: Any, pg_dsn: str, schema_name: str) -> None:
    import os

    env = {**os.environ, "DURABLE_TRACING": "off"}
    proc = subprocess.run(
        [sys.executable, "-c", OFF_PROGRAM, pg_dsn, schema_name, receiver.grpc_endpoint],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert receiver.wait_for(
        lambda rx: any(s.resource.get("service.name") == "tracing-off" for s in rx.spans), timeout=10
    )
    mine = [s.name for s in receiver.spans if s.resource.get("service.name") == "tracing-off"]
    assert mine == ["app work"]


def test_configure_rejects_bad_options() -> None:
    import durable.otel as otel

    with pytest.raises(otel.ConfigurationError, match="unknown OTLP protocol 'zipkin'"):
        otel.configure(otlp="zipkin")  # type: ignore[arg-type]
    with pytest.raises(otel.ConfigurationError, match="without a protocol"):
        otel.configure(endpoint="http://localhost:4317")
    assert otel.configured() is None


def test_otlp_option_parses_and_rejects() -> None:
    import click
    from click.testing import CliRunner
    from durable.otel.cli import configure_from_options, otlp_option

    seen: list[tuple[str | None, str | None]] = []

    @click.command()
    @otlp_option
    def worker(otlp: str | None, otlp_endpoint: str | None) -> None:
        seen.append((otlp, otlp_endpoint))
        if otlp is None:
            assert configure_from_options(otlp, otlp_endpoint) is None

    runner = CliRunner()
    ok = runner.invoke(worker, ["--otlp", "grpc", "--otlp-endpoint", "jaeger:4317"])
    assert ok.exit_code == 0, ok.output
    from_env = runner.invoke(worker, [], env={"DURABLE_OTLP": "http"})
    assert from_env.exit_code == 0, from_env.output
    assert seen == [("grpc", "jaeger:4317"), ("http", None)]
    bad = runner.invoke(worker, ["--otlp", "zipkin"])
    assert bad.exit_code == 2 and "'zipkin' is not one of 'grpc', 'http'" in bad.output
    lonely = runner.invoke(worker, ["--otlp-endpoint", "jaeger:4317"])
    assert lonely.exit_code == 2 and "--otlp-endpoint needs --otlp grpc or --otlp http" in lonely.output
    assert "Traceback" not in bad.output + lonely.output


CLI_PROGRAM = """
import click
from opentelemetry import trace
from durable.otel.cli import otlp_option, telemetry

@click.command()
@otlp_option
def cmd(otlp, otlp_endpoint):
    with telemetry(otlp, otlp_endpoint, service_name="cli-probe"):
        with trace.get_tracer("probe").start_as_current_span("probe work"):
            pass

cmd()
"""


@pytest.mark.parametrize("proto", ["grpc", "http"])
def test_otlp_option_configures_and_flushes(receiver: Any, proto: str) -> None:
    endpoint = receiver.grpc_endpoint if proto == "grpc" else receiver.http_endpoint
    address = endpoint.removeprefix("http://")  # host:port means plain text, not TLS
    proc = subprocess.run(
        [sys.executable, "-c", CLI_PROGRAM, "--otlp", proto, "--otlp-endpoint", address],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [s for s in receiver.spans if s.name == "probe work" and s.transport == proto]
    assert [s.resource["service.name"] for s in got] == ["cli-probe"]  # flushed before exit


def test_compose_file_is_valid() -> None:
    """``docker-compose config`` (Debian's docker-compose) accepts compose.yaml and resolves what the
    docs promise: PostgreSQL, Jaeger v2 with OTLP and the UI published, a worker wired to both."""
    import shutil

    import yaml

    exe = shutil.which("docker-compose")
    if exe is None:  # .ci/run installs it; elsewhere say what is missing instead of failing
        pytest.skip("docker-compose is not installed (apt-get install -y docker-compose)")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [exe, "-f", str(root / "compose.yaml"), "--profile", "worker", "config"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    services = config["services"]
    assert set(services) == {"postgres", "jaeger", "worker"}
    assert services["jaeger"]["image"].startswith("jaegertracing/jaeger:2.")
    published = {
        int(p["target"]) if isinstance(p, dict) else int(str(p).split(":")[-1]) for p in services["jaeger"]["ports"]
    }
    assert {4317, 4318, 16686} <= published
    worker = services["worker"]
    assert "durable worker examples.checkout --otlp grpc" in " ".join(_command(worker["command"]))
    env = worker["environment"]
    assert env["DURABLE_DSN"].startswith("postgresql://") and "@postgres:5432/" in env["DURABLE_DSN"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"


def _command(cmd: str | list[str]) -> list[str]:
    return [cmd] if isinstance(cmd, str) else cmd


if __name__ == "__main__":
    main(sys.argv[1:])
