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
    return {"commits_per_s": out}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))), flush=True)
