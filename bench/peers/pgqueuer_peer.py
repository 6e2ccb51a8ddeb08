"""pgqueuer: batch-enqueue N no-op jobs, then drain them in this one process with the settings of
pgqueuer's own drain benchmark (``tools/benchmark.py --strategy drain``): several ``PgQueuer``
dequeuers, each on its own asyncpg connection, ``mode=drain``, under uvloop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..cpu import own_cpu, server_cpu
from .common import INSERT_CHUNK, emit, options, version


async def main(opts: dict[str, Any]) -> dict[str, Any]:
    import asyncpg
    from pgqueuer import PgQueuer, types
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    dsn, n = opts["dsn"], int(opts["jobs"])
    dequeuers, batch = int(opts.get("dequeuers", 5)), int(opts.get("batch", 10))
    admin = Queries(AsyncpgDriver(await asyncpg.connect(dsn)))
    await admin.install()
    start = time.perf_counter()
    for offset in range(0, n, INSERT_CHUNK):
        k = min(INSERT_CHUNK, n - offset)
        await admin.enqueue(["noop"] * k, [None] * k, [0] * k)
    insert_s = time.perf_counter() - start

    ran = 0
    pgqs = [PgQueuer(AsyncpgDriver(await asyncpg.connect(dsn))) for _ in range(dequeuers)]
    for pgq in pgqs:

        @pgq.entrypoint("noop")
        async def noop(job: Any) -> None:
            nonlocal ran
            ran += 1

    start, cpu0, pg0 = time.perf_counter(), own_cpu(), server_cpu(opts.get("postmaster"))
    await asyncio.gather(*(p.run(batch_size=batch, mode=types.QueueExecutionMode.drain) for p in pgqs))
    seconds = time.perf_counter() - start
    cpu_s, pg1 = own_cpu() - cpu0, server_cpu(opts.get("postmaster"))
    left = sum(s.count for s in await admin.queue_size())
    if ran < n or left:
        raise RuntimeError(f"pgqueuer ran {ran} of {n} jobs, {left} left queued")
    return {
        "engine": "pgqueuer",
        "version": version("pgqueuer"),
        "jobs": n,
        "seconds": seconds,
        "cpu_s": cpu_s,
        "pg_cpu_s": None if pg0 is None or pg1 is None else pg1 - pg0,
        "per_s": n / seconds,
        "insert_rows_per_s": n / insert_s,
        "settings": {"dequeuers": dequeuers, "batch_size": batch, "mode": "drain", "loop": "uvloop"},
    }


if __name__ == "__main__":
    import uvloop

    emit(uvloop.run(main(options())))
