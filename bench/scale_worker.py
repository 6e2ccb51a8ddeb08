"""One worker process of the scale-out measurement: ``python -m durable.bench.scale_worker '<json options>'``.

It opens its Database, prints ``armed``, waits for ``go`` on standard input, runs a :class:`durable.Runtime`
on the one-step queue until the orchestrator writes ``stop``, then prints one JSON line: its steps, the
wall-clock times (``time.time()``, comparable across the processes of one machine) of its first and last
committed step, and its CPU seconds from ``go`` to ``stop``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import trio

import durable

from . import workloads
from .cpu import own_cpu
from .worker import runtime_options


async def main(opts: dict[str, Any]) -> dict[str, Any]:
    queue = workloads.QUEUE_OF["onestep"]
    count = 0
    first: float | None = None
    last = 0.0

    def on_step(claim: Any, encoded: Any, committed: Any) -> None:
        nonlocal count, first, last
        count += 1
        last = time.time()
        if first is None:
            first = last

    stdin = trio.lowlevel.FdStream(0)
    lines = b""

    async def read_line() -> str:
        nonlocal lines
        while b"\n" not in lines:
            chunk = await stdin.receive_some(1024)
            if not chunk:
                return ""
            lines += chunk
        line, lines = lines.split(b"\n", 1)
        return line.decode().strip()

    async with durable.connect(
        opts["dsn"],
        schema=opts["schema"],
        machines=workloads.MACHINES,
        migrate=False,
        max_size=int(opts.get("pool", 10)),
    ) as db:
        rt = durable.Runtime(db, queues={queue: int(opts["concurrency"])}, on_step=on_step, **runtime_options(opts))
        from durable.runtime.gc_tuning import tune_for_throughput

        tune_for_throughput()
        print("armed", flush=True)
        if await read_line() != "go":
            raise SystemExit("no go")
        cpu0 = own_cpu()
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            await read_line()  # "stop" (or the orchestrator gone)
            cpu1 = own_cpu()
            counts = dict(db.pool.statement_counts)
            nursery.cancel_scope.cancel()
    return {"steps": count, "first": first, "last": last, "cpu_s": cpu1 - cpu0, "statement_counts": counts}


if __name__ == "__main__":
    result = trio.run(main, json.loads(sys.argv[1]))
    print(json.dumps(result, default=str), flush=True)
