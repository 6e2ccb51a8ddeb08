"""pgqueuer at a steady offered load: the pickup latency of every job, enqueue -> handler start, beside
durable's ``pickup_under_load`` at the same rate (issue 20, item 2).

A producer task enqueues ``per_tick`` jobs every 10 ms (``tick``), each carrying the wall-clock time of its enqueue;
one ``PgQueuer`` consumer (its own connection, continuous mode: it dequeues on its NOTIFY and polls at
most every ``dequeue_timeout``) records ``time.time() - t`` when the handler starts and stops once every
job ran. Both run in this one process under uvloop (durable's producer and worker are two processes: the
producer's CPU does not compete with pgqueuer's consumer for the event loop there).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from datetime import timedelta
from typing import Any

from ..cpu import own_cpu, server_cpu
from ..phases import busy_fraction, cpu_times, run_queue_wait, server_pids, waited
from .common import emit, options, version

TICK = 0.01


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(len(ordered) * q / 100))) - 1]  # nearest rank


async def main(opts: dict[str, Any]) -> dict[str, Any]:
    import asyncpg
    from pgqueuer import PgQueuer
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    dsn, per_s, seconds = opts["dsn"], float(opts["per_s"]), float(opts["seconds"])
    batch = int(opts.get("batch", 500))
    tick = float(opts.get("tick", TICK))
    per_tick = max(1, round(per_s * tick))
    ticks = int(seconds / tick)
    total = per_tick * ticks
    producer = Queries(AsyncpgDriver(await asyncpg.connect(dsn)))
    await producer.install()
    latencies: list[float] = []
    pgq = PgQueuer(AsyncpgDriver(await asyncpg.connect(dsn)))

    @pgq.entrypoint("probe")
    async def probe(job: Any) -> None:
        latencies.append(time.time() - json.loads(job.payload)["t"])
        if len(latencies) >= total:
            pgq.shutdown.set()

    behind = 0
    postmaster = opts.get("postmaster")
    cpu: dict[str, Any] = {}

    async def produce() -> None:
        nonlocal behind
        await asyncio.sleep(0.5)  # the consumer is listening
        box0, own0, pg0 = cpu_times(), own_cpu(), server_cpu(postmaster)
        pg_pids = server_pids(postmaster)
        waits0 = [run_queue_wait(p) for p in (pg_pids, [os.getpid()])]
        start = time.perf_counter()
        for i in range(ticks):
            payload = json.dumps({"t": time.time()}).encode()
            await producer.enqueue(["probe"] * per_tick, [payload] * per_tick, [0] * per_tick)
            wait = start + (i + 1) * tick - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                behind += 1
        box1, own1, pg1 = cpu_times(), own_cpu(), server_cpu(postmaster)
        waits1 = [run_queue_wait(p) for p in (pg_pids, [os.getpid()])]
        wall = time.perf_counter() - start
        cpu.update(
            {
                "seconds": round(wall, 3),
                "box_busy": busy_fraction(box0, box1),
                "process_cores": round((own1 - own0) / wall, 3),  # producer and consumer: one process
                "postgres_cores": None if pg0 is None or pg1 is None else round((pg1 - pg0) / wall, 3),
                "nproc": os.cpu_count(),
                "run_queue_wait": {
                    "postgres": round(waited(waits0[0], waits1[0]) / wall, 3),
                    "process": round(waited(waits0[1], waits1[1]) / wall, 3),
                },
            }
        )

    async def consume() -> None:
        await pgq.run(batch_size=batch, dequeue_timeout=timedelta(seconds=1))

    done = asyncio.gather(consume(), produce())
    try:
        await asyncio.wait_for(done, seconds * 10 + 60)
    finally:
        pgq.shutdown.set()
    ms = [x * 1000 for x in latencies]
    p50, p99 = percentile(ms, 50), percentile(ms, 99)
    return {
        "engine": "pgqueuer",
        "version": version("pgqueuer"),
        "n": len(ms),
        "p50_ms": None if p50 is None else round(p50, 2),
        "p99_ms": None if p99 is None else round(p99, 2),
        "max_ms": round(max(ms), 2) if ms else None,
        "offered_per_s": round(per_tick / tick),
        "rows_per_tick": per_tick,
        "tick_ms": round(tick * 1000, 1),
        "achieved_per_s": round(total / cpu["seconds"]) if cpu.get("seconds") else None,
        "late_ticks": behind,
        "cpu": cpu,
        "ticks": ticks,
        "settings": {"batch_size": batch, "mode": "continuous", "loop": "uvloop", "dequeue_timeout_s": 1},
    }


if __name__ == "__main__":
    import uvloop

    emit(uvloop.run(main(options())))
