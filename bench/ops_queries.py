"""How fast the operator queries are (``durable ls``, ``db.query``, the console's instance table) on a
large table: the first and the next page of each filter, median of several runs, on a synthetic
dataset (see ``seed_ops_dataset`` in bench.sql). Prints a table; run it after changing an index or
an ``ops.sql`` statement, and compare with the figures in docs/operations.md.

    python -m durable.bench.ops_queries [--dsn DSN] [--rows 1000000] [--runs 5]
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import click
import trio
import trio_asyncio
from rich.console import Console
from rich.table import Table

from durable import ops
from durable._pg import asyncio_loop
from durable.migrate import drop_schema
from durable.sql import Q

from . import server as srv
from .durable_bench import fresh, q
from .sql import B

SCHEMA = "b_ops_queries"

# (label, filters): each runs with order id unless it names one
CASES: list[tuple[str, dict[str, Any]]] = [
    ("none, by id", {}),
    ("none, by -id", {"order": "-id"}),
    ("ids (3)", {"ids": [10, 500_000, 999_999]}),
    ("status failed", {"status": "failed"}),
    ("status executing", {"status": "executing"}),
    ("status active (runnable, executing, awaiting)", {"status": "active"}),
    ("machine", {"machine": "billing.refund"}),
    ("machine prefix", {"machine_prefix": "mail."}),
    ("machine + version + status (rare)", {"machine": "etl.load", "version": 2, "status": "failed"}),
    ("machine + status executing", {"machine": "etl.load", "status": "executing"}),
    ("queue + status", {"queue": "q2", "status": "runnable"}),
    ("state, selective", {"state": {"order": 424_242}}),
    ("state, 200 rows", {"state": {"customer": 42}}),
    ("state + status failed", {"state": {"customer": 45}, "status": "failed"}),
    ("machine, by updated", {"machine": "billing.refund", "order": "updated"}),
    ("status failed, by -updated", {"status": "failed", "order": "-updated"}),
]


async def measure(db: Any, filters: dict[str, Any], runs: int) -> tuple[float, float, int]:
    """Median ms of the first page and of the next page, and the first page's size."""
    first: list[float] = []
    second: list[float] = []
    size = 0
    for _ in range(runs):
        t = time.perf_counter()
        page = await ops.query(db, **filters)
        first.append((time.perf_counter() - t) * 1000)
        size = len(page.items)
        if page.next:
            t = time.perf_counter()
            await ops.query(db, **filters, after=page.next)
            second.append((time.perf_counter() - t) * 1000)
    return statistics.median(first), statistics.median(second) if second else float("nan"), size


async def counts(db: Any, terminal: bool, runs: int) -> float:
    """Median ms of ``queue_counts`` (the console's and ``durable queues``' saturation counts)."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        await db.pool.fetch(Q.queue_counts, None, terminal)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


async def main(dsn: str, rows: int, runs: int) -> list[tuple[str, float, float, int | None]]:
    out: list[tuple[str, float, float, int | None]] = []
    async with asyncio_loop():
        server = srv.Server(dsn)
        target = await trio_asyncio.aio_as_trio(server.recreate_database)("bench_ops_queries")
        async with fresh(target, SCHEMA, max_size=2) as db:
            await db.pool.fetchval(q(B.seed_ops_dataset), rows)
            await db.pool.execute(q(B.vacuum_instances))
            for label, filters in CASES:
                out.append((label, *await measure(db, filters, runs)))
            for label, terminal in (
                ("queue counts (durable queues)", False),
                ("queue counts with terminal (--all)", True),
            ):
                out.append((label, await counts(db, terminal, runs), float("nan"), None))
            await drop_schema(db.pool, SCHEMA)
        await trio_asyncio.aio_as_trio(server.drop_database)("bench_ops_queries")
    return out


@click.command()
@click.option("--dsn", default=None, help="Server (default: the bench's embedded one).")
@click.option("--rows", default=1_000_000, show_default=True)
@click.option("--runs", default=5, show_default=True)
def command(dsn: str | None, rows: int, runs: int) -> None:
    """First and next page (50 rows) of each operator-query filter on a large table."""
    target = dsn or srv.start_embedded(Path(srv.default_data_dir()))
    results = trio.run(main, target, rows, runs)
    table = Table(title=f"operator queries, {rows:,} instances, page of 50, median of {runs}")
    for col in ("filter", "first page ms", "next page ms", "rows"):
        table.add_column(col, justify="left" if col == "filter" else "right")
    for label, first, second, size in results:
        next_page = "—" if second != second else f"{second:.2f}"
        table.add_row(label, f"{first:.2f}", next_page, "" if size is None else str(size))
    Console().print(table)


if __name__ == "__main__":
    command()
