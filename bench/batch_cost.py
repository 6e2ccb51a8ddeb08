"""PostgreSQL's CPU per statement of a row's path, by batch size (issue 20, item 2):
``python -m durable.bench.batch_cost --dsn <maintenance dsn> [--batches 13,64,115,1000] [--cycles 100]``.

Each cycle inserts a batch of probe rows (``insert_instances``), claims them (``pick``) and commits their
``done`` outcomes (``complete_simple``, through the flusher's own statement builder), one statement at a time
on a fresh database of its own; each statement's cost is the on-CPU time of the server's processes
(/proc/<pid>/schedstat, every child of the postmaster: the session and the WAL writer alike) around it, its
commit included. CPU time, not wall time: a busy box inflates it much less. The server must be local and
used by nothing else meanwhile (``--data-dir`` of a private embedded server, or a quiet ``--dsn``)."""

from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio
import trio_asyncio

from durable import tracing
from durable._pg import asyncio_loop
from durable.runtime.flusher import Flusher
from durable.sql import Q

from . import durable_bench as d
from . import workloads
from .phases import server_pids
from .server import Server, start_embedded

STATEMENTS = ("insert", "pick", "complete")


def on_cpu(pids: list[int]) -> float:
    """Seconds on a core so far of ``pids`` together (those that are gone count 0)."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


async def measure(dsn: str, batches: list[int], cycles: int, warmup: int = 10) -> dict[str, Any]:
    """CPU and wall ms per statement (median, mean) for each batch size."""
    tracing.set_enabled(False)
    server = Server(dsn)
    postmaster = await trio_asyncio.aio_as_trio(server.postmaster)()
    if postmaster is None:
        raise SystemExit("error: the server's processes cannot be read here (not a local server)")
    db_dsn = await trio_asyncio.aio_as_trio(server.recreate_database)("bench_batch_cost")
    out: dict[str, Any] = {"cycles": cycles, "loadavg_at_start": os.getloadavg(), "batches": {}}
    try:
        async with d.fresh(db_dsn, "b_batch_cost", max_size=1) as db:
            flusher = Flusher(db.pool, "bench-batch-cost", db.clock)
            await db.insert_many(workloads.specs("probe", 2))  # open the pool's connections before listing them
            await db.pool.fetch(Q.pick, workloads.PROBE_QUEUE, 2, "bench-batch-cost", 60.0, None, None, None)
            pids = server_pids(postmaster)
            for n in batches:
                cpu: dict[str, list[float]] = {k: [] for k in STATEMENTS}
                wall: dict[str, list[float]] = {k: [] for k in STATEMENTS}
                for i in range(cycles + warmup):
                    specs = workloads.specs("probe", n)
                    marks = [(on_cpu(pids), time.perf_counter())]
                    await db.insert_many(specs)
                    marks.append((on_cpu(pids), time.perf_counter()))
                    rows = await db.pool.fetch(
                        Q.pick, workloads.PROBE_QUEUE, n, "bench-batch-cost", 60.0, None, None, None
                    )
                    marks.append((on_cpu(pids), time.perf_counter()))
                    await flusher._execute(d.done_batch(rows))
                    marks.append((on_cpu(pids), time.perf_counter()))
                    if len(rows) != n:
                        raise RuntimeError(f"pick claimed {len(rows)} of {n} rows")
                    if i >= warmup:
                        for k, (a, b) in zip(STATEMENTS, itertools.pairwise(marks), strict=True):
                            cpu[k].append(b[0] - a[0])
                            wall[k].append(b[1] - a[1])
                out["batches"][str(n)] = {
                    k: {
                        "cpu_ms_median": round(statistics.median(cpu[k]) * 1e3, 3),
                        "cpu_ms_mean": round(statistics.mean(cpu[k]) * 1e3, 3),
                        "cpu_us_per_row": round(statistics.mean(cpu[k]) * 1e6 / n, 1),
                        "wall_ms_median": round(statistics.median(wall[k]) * 1e3, 3),
                    }
                    for k in STATEMENTS
                }
    finally:
        await trio_asyncio.aio_as_trio(server.drop_database)("bench_batch_cost")
    out["loadavg_at_end"] = os.getloadavg()
    return out


async def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m durable.bench.batch_cost", description=__doc__)
    parser.add_argument("--dsn", default=None, help="a maintenance database DSN (default: --data-dir's server)")
    parser.add_argument("--data-dir", type=Path, default=None, help="a private embedded server's folder")
    parser.add_argument("--batches", default="13,64,115,1000", help="comma-separated batch sizes")
    parser.add_argument("--cycles", type=int, default=100, help="measured cycles per batch size")
    args = parser.parse_args(argv)
    try:
        batches = [int(x) for x in args.batches.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--batches: whole numbers, not {args.batches!r}")
    if not batches or min(batches) < 1 or max(batches) > 10_000 or not 1 <= args.cycles <= 10_000:
        parser.error("--batches: 1..10000 each; --cycles: 1..10000")
    dsn = args.dsn
    if dsn is None:
        if args.data_dir is None:
            parser.error("give --dsn or --data-dir (a server nothing else uses meanwhile)")
        dsn = await trio.to_thread.run_sync(start_embedded, args.data_dir)
    async with asyncio_loop():
        result = await measure(dsn, batches, args.cycles)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
