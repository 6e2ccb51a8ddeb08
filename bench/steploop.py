"""The engine's Python per step with no database: decode a picked row into a ``Claim``, run the
step through ``run_claim`` (context, step call, validation, encoding, tracing hooks), and the same
with one trio task per step as the scheduler does. CPU time (``process_time``), so a loaded machine
moves it far less than wall time. A yardstick for the runtime's per-step overhead."""

from __future__ import annotations

import time
from typing import Any, cast

import trio

from durable.client import Database
from durable.clock import DatabaseClock
from durable.machine import Registry
from durable.runtime.claim import Claim
from durable.runtime.executor import run_claim

from . import workloads

BATCH = 200


PICK_COLUMNS = (
    "id",
    "machine",
    "version",
    "step",
    "state",
    "attempt",
    "queue",
    "priority",
    "partition_key",
    "lease_token",
    "signal_seq",
    "awaits",
    "parent_id",
    "cancel_requested",
    "traceparent",
    "tracestate",
    "signals",
    "children",
    "awaits_any",
    "timed_out",
    "attributes",
)


class _Row(tuple[Any, ...]):
    """A pick row as ``Claim.from_row`` reads it (by name; by position too, like asyncpg's Record)."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            key = PICK_COLUMNS.index(key)
        return tuple.__getitem__(self, key)


def pick_row(i: int) -> _Row:
    values = {
        "id": i,
        "machine": workloads.noop.name,
        "version": 1,
        "step": "perform",
        "state": "{}",
        "attempt": 0,
        "queue": workloads.ONE_STEP_QUEUE,
        "priority": 0,
        "lease_token": i,
        "signal_seq": 0,
        "cancel_requested": False,
        "signals": "[]",
        "children": "[]",
        "timed_out": False,
    }
    return _Row(values.get(c) for c in PICK_COLUMNS)


async def measure(n: int) -> dict[str, float]:
    # a Database without a pool: run_claim reads only its registry (nothing here touches SQL)
    db = Database(cast(Any, None), clock=DatabaseClock(), registry=Registry(workloads.MACHINES))
    rows = [pick_row(i) for i in range(n)]

    start = time.process_time()
    claims = [Claim.from_row(r) for r in rows]
    from_row = time.process_time() - start

    start = time.process_time()
    for c in claims:
        await run_claim(c, db, "bench-steploop")
    sequential = time.process_time() - start

    claims = [Claim.from_row(r) for r in rows]
    start = time.process_time()
    for offset in range(0, n, BATCH):
        async with trio.open_nursery() as nursery:
            for c in claims[offset : offset + BATCH]:
                nursery.start_soon(run_claim, c, db, "bench-steploop")
    spawned = time.process_time() - start
    return {
        "steps": n,
        "from_row_us": round(from_row / n * 1e6, 2),
        "run_claim_us": round(sequential / n * 1e6, 2),
        "run_claim_task_per_step_us": round(spawned / n * 1e6, 2),
    }
