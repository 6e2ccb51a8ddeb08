"""The durable worker process of a measurement: ``python -m durable.bench.worker '<json options>'``.

It runs one :class:`durable.Runtime` on one workload's queue, prints ``ready`` once the runtime is
running, counts committed steps (``on_step`` fires after the outcome's commit) and stops at
``expect`` steps, then prints one JSON line: seconds from ready to the last commit, steps, the
statements counted by name, the runtime's statistics and the probe latencies it saw.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from typing import Any

import trio

import durable

from . import phases, workloads
from .cpu import own_cpu, server_cpu


def runtime_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The Runtime keywords given in ``opts`` that this engine version accepts."""
    accepted = set(inspect.signature(durable.Runtime).parameters)
    return {k: v for k, v in opts.get("runtime", {}).items() if k in accepted}


async def main(opts: dict[str, Any]) -> dict[str, Any]:
    workload = opts["workload"]
    queue = workloads.QUEUE_OF[workload]
    expect = int(opts["expect"])
    done = trio.Event()
    count = 0
    first: float | None = None
    last = 0.0
    every = max(1, expect // 10)  # a mark at every tenth of the drain: does it slow down as it goes?
    marks: list[float] = []

    def on_step(claim: Any, encoded: Any, committed: Any) -> None:
        nonlocal count, first, last
        count += 1
        now = time.perf_counter()
        if first is None:
            first = now
        last = now
        if count % every == 0:
            marks.append(now)
        if count >= expect:
            done.set()

    async with durable.connect(
        opts["dsn"],
        schema=opts["schema"],
        machines=workloads.MACHINES,
        migrate=False,
        max_size=int(opts.get("pool", 10)),
    ) as db:
        rt = durable.Runtime(db, queues={queue: int(opts["concurrency"])}, on_step=on_step, **runtime_options(opts))
        log = phases.install(rt) if opts.get("phases") else None  # where a row's pickup time goes
        if opts.get("tune_gc", True):  # what `durable worker` does by default
            from durable.runtime.gc_tuning import tune_for_throughput

            tune_for_throughput()
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            db.pool.statement_counts.clear()
            start = time.perf_counter()
            cpu0, pg0 = own_cpu(), server_cpu(opts.get("postmaster"))
            print("ready", flush=True)
            with trio.move_on_after(float(opts.get("timeout", 600))) as scope:
                await done.wait()
            cpu1, pg1 = own_cpu(), server_cpu(opts.get("postmaster"))
            counts = dict(db.pool.statement_counts)
            stats = rt.statistics().to_json()
            nursery.cancel_scope.cancel()
    return {
        "steps": count,
        "seconds": last - start if count else None,
        "seconds_first_to_last": (last - first) if first is not None else None,
        "tenths_s": [round(b - a, 4) for a, b in zip([start, *marks], marks, strict=False)],
        "timed_out": scope.cancelled_caught,
        "statement_counts": counts,
        "statistics": stats,
        "latencies": workloads.latencies,
        "cpu_s": cpu1 - cpu0,
        "pg_cpu_s": None if pg0 is None or pg1 is None else pg1 - pg0,
        "phases": None if log is None else log.to_json(workloads.starts),
    }


if __name__ == "__main__":
    result = trio.run(main, json.loads(sys.argv[1]))
    print(json.dumps(result, default=str), flush=True)
