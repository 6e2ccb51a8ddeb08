"""procrastinate: batch-defer N no-op jobs (``batch_defer_async``), then drain them with one async
worker in this process (``run_worker_async(wait=False)``: it returns once the queue is caught up),
``concurrency`` async jobs at once over a psycopg pool sized to match."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..cpu import own_cpu, server_cpu
from .common import INSERT_CHUNK, emit, options, version


async def main(opts: dict[str, Any]) -> dict[str, Any]:
    import procrastinate

    dsn, n = opts["dsn"], int(opts["jobs"])
    concurrency = int(opts.get("concurrency", 20))
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=dsn, min_size=2, max_size=concurrency + 4)
    )
    ran = 0

    @app.task(queue="bench", name="noop")
    async def noop() -> None:
        nonlocal ran
        ran += 1

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        start = time.perf_counter()
        for offset in range(0, n, INSERT_CHUNK):
            await noop.batch_defer_async(*({} for _ in range(min(INSERT_CHUNK, n - offset))))
        insert_s = time.perf_counter() - start
        start, cpu0, pg0 = time.perf_counter(), own_cpu(), server_cpu(opts.get("postmaster"))
        await app.run_worker_async(queues=["bench"], concurrency=concurrency, wait=False, install_signal_handlers=False)
        seconds = time.perf_counter() - start
        cpu_s, pg1 = own_cpu() - cpu0, server_cpu(opts.get("postmaster"))
    if ran < n:
        raise RuntimeError(f"procrastinate ran {ran} of {n} jobs")
    return {
        "engine": "procrastinate",
        "version": version("procrastinate"),
        "jobs": n,
        "seconds": seconds,
        "cpu_s": cpu_s,
        "pg_cpu_s": None if pg0 is None or pg1 is None else pg1 - pg0,
        "per_s": n / seconds,
        "insert_rows_per_s": n / insert_s,
        "settings": {"concurrency": concurrency, "wait": False, "pool_max": concurrency + 4},
    }


if __name__ == "__main__":
    emit(asyncio.run(main(options())))
