"""PostgreSQL's own limit: single-row UPDATE commits/s through asyncpg (plain asyncio, autocommit),
from 1 client and from 16, each client updating its own row.

``python -m durable.bench.pglimit '{"dsn": ..., "seconds": 5, "clients": [1, 16]}'`` prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import asyncpg

from .sql import B


async def clients_rate(dsn: str, clients: int, seconds: float) -> float:
    conns = [await asyncpg.connect(dsn) for _ in range(clients)]
    try:
        stop = time.perf_counter() + seconds
        counts = [0] * clients

        async def client(i: int, conn: asyncpg.Connection) -> None:
            stmt = await conn.prepare(B.counter_bump.text)
            while time.perf_counter() < stop:
                await stmt.fetch(i + 1)
                counts[i] += 1

        start = time.perf_counter()
        await asyncio.gather(*(client(i, c) for i, c in enumerate(conns)))
        return sum(counts) / (time.perf_counter() - start)
    finally:
        for c in conns:
            await c.close()


async def idle_commits(dsn: str, samples: int) -> dict[str, float | None]:
    """One client's single-row commit after an idle gap of 10-50 ms (the pickup bench's inserts wait as
    long between them): p50 and p99 in ms. Back to back, the host keeps the backend and the client awake;
    after a gap each commit pays their wake-ups too."""
    import random

    conn = await asyncpg.connect(dsn)
    try:
        stmt = await conn.prepare(B.counter_bump.text)
        took = []
        for _ in range(samples):
            await asyncio.sleep(random.uniform(0.01, 0.05))
            start = time.perf_counter()
            await stmt.fetch(1)
            took.append((time.perf_counter() - start) * 1000)
    finally:
        await conn.close()
    took.sort()
    return {
        "p50_ms": round(took[len(took) // 2], 3) if took else None,
        "p99_ms": round(took[min(len(took) - 1, int(len(took) * 0.99))], 3) if took else None,
        "samples": samples,
    }


async def main(opts: dict[str, Any]) -> dict[str, Any]:
    dsn = opts["dsn"]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(B.counter_table.text)
        await conn.execute(B.counter_seed.text, max(opts["clients"]))
    finally:
        await conn.close()
    out: dict[str, Any] = {}
    for n in opts["clients"]:
        out[str(n)] = round(await clients_rate(dsn, n, float(opts["seconds"])), 1)
    single = out.get("1")
    return {
        "commits_per_s": out,
        "commit_ms": round(1000 / single, 3) if single else None,
        "idle_commit": await idle_commits(dsn, int(opts.get("idle_samples", 100))),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))), flush=True)
