"""oban (oban-py, the Python port of Elixir's Oban): batch-enqueue N no-op ``@job`` jobs
(``enqueue_many``), then drain them with one ``Oban`` instance in this process, queue ``bench`` with
``concurrency`` slots. oban requires Python >= 3.12: on an older interpreter this module reports that
and exits non-zero, and the run lists oban as not installable (never silently dropped)."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from ..cpu import own_cpu, server_cpu
from .common import INSERT_CHUNK, emit, options, version


async def main(opts: dict[str, Any]) -> dict[str, Any]:
    if sys.version_info < (3, 12):
        raise RuntimeError(f"not installable: oban needs Python >= 3.12, this is {sys.version.split()[0]}")
    from oban import Oban, job
    from oban.schema import install

    dsn, n = opts["dsn"], int(opts["jobs"])
    concurrency = int(opts.get("concurrency", 100))
    pool = await Oban.create_pool(dsn, min_size=2, max_size=10)
    await install(pool)
    ran = 0
    all_ran = asyncio.Event()

    @job(queue="bench")
    async def noop() -> None:
        nonlocal ran
        ran += 1
        if ran >= n:
            all_ran.set()

    client = Oban(pool=pool)
    start = time.perf_counter()
    for offset in range(0, n, INSERT_CHUNK):
        await client.enqueue_many([noop.new() for _ in range(min(INSERT_CHUNK, n - offset))])
    insert_s = time.perf_counter() - start
    server = Oban(pool=pool, name="bench-worker", queues={"bench": concurrency})
    start, cpu0, pg0 = time.perf_counter(), own_cpu(), server_cpu(opts.get("postmaster"))
    await server.start()
    await all_ran.wait()
    seconds = time.perf_counter() - start
    cpu_s, pg1 = own_cpu() - cpu0, server_cpu(opts.get("postmaster"))
    await server.stop()
    await pool.close()
    return {
        "engine": "oban",
        "version": version("oban"),
        "jobs": n,
        "seconds": seconds,
        "cpu_s": cpu_s,
        "pg_cpu_s": None if pg0 is None or pg1 is None else pg1 - pg0,
        "per_s": n / seconds,
        "insert_rows_per_s": n / insert_s,
        "settings": {"queue_concurrency": concurrency},
    }


if __name__ == "__main__":
    emit(asyncio.run(main(options())))
