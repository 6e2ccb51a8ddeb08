"""An instance inserted with no trace context adopts its first step's span as its trace."""

from __future__ import annotations

import os
import signal as signals
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

import durable
from tests.test_tracing import DURABLE, ROOT, TIMEOUT, receiver, wait_status  # noqa: F401

pytestmark = pytest.mark.trio


async def test_untraced_insert_reads_as_one_trace(
    receiver: Any,  # noqa: F811
    db: durable.Database,
    tmp_path: Path,
) -> None:
    from examples.checkout import Checkout

    order = await db.insert(Checkout, {"order": 7, "items": 2})  # no SDK, no context: no traceparent
    assert order is not None and (await db.get(order)).traceparent is None
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DURABLE_DSN": db.pool.dsn}
    with open(tmp_path / "worker.log", "w") as stderr:  # noqa: ASYNC230
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
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        await wait_status(db, order, "awaiting_signal")
        await db.signal(order, "payment", {"amount": 1})
        done = await wait_status(db, order, "done", "failed")
    finally:
        worker.send_signal(signals.SIGTERM)
        with trio.fail_after(TIMEOUT):
            await worker.wait()
    assert done.traceparent is not None
    ids = {order, *(c["id"] for c in done.children)}
    steps = [s for s in receiver.spans if s.name.startswith("step ") and s.attributes["durable.instance.id"] in ids]
    assert Counter(s.name for s in steps) == {
        "step Checkout.reserve": 1,
        "step Checkout.await_payment": 2,
        "step Checkout.finish": 1,
        "step Shipment.book": 2,
    }
    assert len({s.trace_id for s in steps}) == 1
    (first,) = [s for s in steps if s.name == "step Checkout.reserve"]
    assert first.parent_span_id is None
    assert all(
        s.parent_span_id == first.span_id for s in steps if s.name.startswith("step Checkout.") and s is not first
    )
