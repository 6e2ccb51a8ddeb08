"""Sustained throughput (issue 20, item 5): does a drain slow down as the tables age?

``continuous``: one schema for the whole run, never dropped. ``segments`` times: insert ``segment`` one-step
jobs, then drain them with a fresh worker process, and read what the tables look like afterwards (live and
dead row versions, HOT updates, autovacuum runs, heap and index sizes) and what the server did (WAL,
full-page images, checkpoints). The finished rows and their history stay, as they would in a deployment
without retention, so the last segment runs against ``segments - 1`` times as many finished rows and
twice as many history rows as the first. The target: the last segment's drain within 15 % of the first's.

``rounds``: the same drains, each in a fresh schema (what the duel does), to tell table aging apart from
the server's own state (WAL, checkpoints) and the machine's load.

    python -m durable.bench.sustained [--dsn DSN] [--jobs 1000000] [--segment 100000] [--json out.json]
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import trio

import durable
from durable.migrate import LATEST_VERSION, drop_schema
from durable.sql import Query

from .durable_bench import Tuning, fresh, insert_all, q
from .sql import B
from .subproc import run_json


async def snapshot(db: durable.Database, schema: str) -> dict[str, Any]:
    """The two growing tables and the server's WAL and checkpoints, now."""
    tables = {
        r["table"]: {k: r[k] for k in r.keys() if k != "table"} for r in await db.pool.fetch(q(B.table_stats), schema)
    }
    indexes = {r["index"]: r["bytes"] for r in await db.pool.fetch(q(B.index_sizes), schema)}
    server = dict(await db.pool.fetchrow(q(B.server_wal_checkpoints)) or {})
    return {"tables": tables, "indexes": indexes, "server": server}


async def drain_segment(dsn: str, schema: str, n: int, tuning: Tuning, postmaster: int | None) -> dict[str, Any]:
    """Drain ``n`` already inserted one-step jobs with a fresh worker process."""
    out = await run_json(
        "durable.bench.worker",
        {
            "dsn": dsn,
            "schema": schema,
            "workload": "onestep",
            "expect": n,
            "timeout": 900,
            "postmaster": postmaster,
            **tuning.worker_options(),
        },
        limit=960,
    )
    if out["timed_out"]:
        raise RuntimeError(f"sustained: {out['steps']} of {n} steps before the timeout")
    tenths = out.get("tenths_s") or []
    return {
        "per_s": round(n / out["seconds"], 1),
        "seconds": round(out["seconds"], 3),
        # the drain's last tenth against its first (dead row versions pile up within a drain: no
        # autovacuum runs in a few seconds)
        "last_tenth_over_first": round(tenths[0] / tenths[-1], 3) if len(tenths) >= 2 and tenths[-1] else None,
        "cpu_us_per_job": round(out["cpu_s"] / n * 1e6, 1),
        "pg_cpu_us_per_job": None if out["pg_cpu_s"] is None else round(out["pg_cpu_s"] / n * 1e6, 1),
    }


def delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, int]:
    return {k: int(after[k]) - int(before[k]) for k in ("wal_records", "wal_fpi", "wal_bytes", "checkpoints")}


async def set_storage(db: durable.Database, storage: dict[str, str]) -> None:
    """A variant's storage parameters: ``{"instances": "fillfactor = 80", ...}``; ``"reset: a, b"`` resets."""
    for table, options in storage.items():
        if options.startswith("reset:"):
            ddl = await db.pool.fetchval(q(B.reset_storage_ddl), table, options.removeprefix("reset:"))
        else:
            ddl = await db.pool.fetchval(q(B.set_storage_ddl), table, options)
        await db.pool.execute(Query("set_storage", ddl, ""))


async def continuous(
    dsn: str,
    total: int,
    segment: int,
    tuning: Tuning | None = None,
    postmaster: int | None = None,
    schema: str = "b_sustained",
    fresh_each: bool = False,
    storage: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``total // segment`` segments of insert-then-drain in one schema (``fresh_each``: a fresh one each).
    ``storage``: storage parameters set on the tables after the migrations (a variant to compare)."""
    tuning = tuning or Tuning()
    segments: list[dict[str, Any]] = []
    async with fresh(dsn, schema) as db:
        for i in range(total // segment):
            if fresh_each and i:
                await drop_schema(db.pool, schema)
                await db.migrate()
            if storage and (i == 0 or fresh_each):
                await set_storage(db, storage)
            start = time.perf_counter()
            insert_rate = await insert_all(db, "onestep", segment)
            before = await snapshot(db, schema)
            load = os.getloadavg()[0]
            drained = await drain_segment(dsn, schema, segment, tuning, postmaster)
            after = await snapshot(db, schema)
            segments.append(
                {
                    "segment": i + 1,
                    **drained,
                    "insert_rows_per_s": round(insert_rate),
                    "loadavg": round(load, 2),
                    "server": delta(after["server"], before["server"]),
                    "tables": after["tables"],
                    "indexes": after["indexes"],
                    "wall_s": round(time.perf_counter() - start, 1),
                }
            )
            print(
                json.dumps({k: segments[-1][k] for k in ("segment", "per_s", "pg_cpu_us_per_job", "loadavg")}),
                file=sys.stderr,
                flush=True,
            )
        options = {r["table"]: list(r["options"]) for r in await db.pool.fetch(q(B.reloptions), schema)}
        await drop_schema(db.pool, schema)
    first, last = segments[0]["per_s"], segments[-1]["per_s"]
    return {
        "jobs": total,
        "segment": segment,
        "fresh_each": fresh_each,
        "reloptions": options,
        "storage": storage,
        "segments": segments,
        "last_over_first": round(last / first, 3) if first else None,
        "schema_version": LATEST_VERSION,
    }


async def main(argv: list[str]) -> None:
    import argparse

    from durable._pg import asyncio_loop

    from . import server as srv

    parser = argparse.ArgumentParser(prog="python -m durable.bench.sustained", description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--segment", type=int, default=100_000)
    parser.add_argument("--fresh-each", action="store_true", help="a fresh schema per segment (the duel's way)")
    parser.add_argument(
        "--storage",
        action="append",
        default=[],
        metavar="TABLE:OPTIONS",
        help="a variant: storage parameters for a table, e.g. 'instances:fillfactor = 80' or "
        "'instances:reset:fillfactor' (repeatable)",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    storage = dict(item.split(":", 1) for item in args.storage)
    if args.segment < 100 or args.jobs < args.segment:
        parser.error("--segment must be >= 100 and --jobs >= --segment")
    dsn = args.dsn
    if dsn is None:
        from pathlib import Path

        folder = Path(args.data_dir) if args.data_dir else srv.default_data_dir()
        dsn = await trio.to_thread.run_sync(srv.start_embedded, folder)
    async with asyncio_loop():
        server = srv.Server(dsn)
        import trio_asyncio

        postmaster = await trio_asyncio.aio_as_trio(server.postmaster)()
        target = await trio_asyncio.aio_as_trio(server.recreate_database)("bench_sustained")
        result = await continuous(
            target, args.jobs, args.segment, postmaster=postmaster, fresh_each=args.fresh_each, storage=storage
        )
        await trio_asyncio.aio_as_trio(server.drop_database)("bench_sustained")
    result["loadavg_at_end"] = list(os.getloadavg())
    text = json.dumps(result, indent=2, default=str)
    if args.json:
        await trio.Path(args.json).write_text(text + "\n")
    for s in result["segments"]:
        inst = s["tables"].get("instances", {})
        print(
            f"segment {s['segment']:>2}: {s['per_s']:>9,.0f} jobs/s  PG {s['pg_cpu_us_per_job']} us/job  "
            f"engine {s['cpu_us_per_job']} us/job  dead {inst.get('dead')}  live {inst.get('live')}  "
            f"heap {inst.get('heap_bytes', 0) / 2**20:.0f} MiB  idx {inst.get('index_bytes', 0) / 2**20:.0f} MiB  "
            f"autovac {inst.get('autovacuums')}  fpi {s['server']['wal_fpi']}  ckpt {s['server']['checkpoints']}  "
            f"load {s['loadavg']}"
        )
    print(f"last / first: {result['last_over_first']}")


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
