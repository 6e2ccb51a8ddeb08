"""Where the SQL ceiling's time goes: the ceiling (pick + complete, batch 200, one loop) on the
stock schema and with groups of secondary indexes dropped, alternated over several rounds because
the machine is shared and noisy. A development experiment for PERFORMANCE.md, not a product
setting: the dropped indexes serve the console, ``tail`` and retention.

    python -m durable.bench.ablation [--dsn DSN] [--jobs 20000] [--rounds 3]
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import click
import trio
import trio_asyncio

from durable._pg import asyncio_loop
from durable.migrate import drop_schema
from durable.sql import Q

from . import server as srv
from . import workloads
from .durable_bench import done_batch, fresh, q
from .sql import B

VARIANTS: dict[str, tuple[str, ...]] = {
    "stock schema": (),
    "history: only its primary key": ("history_tail", "history_instance", "history_at"),
    "instances: no console/ops indexes": (
        "instances_queue_status",
        "instances_machine",
        "instances_state",
        "instances_terminal",
    ),
}
# variants that rebuild indexes rather than drop them: (indexes dropped, DDL run after)
_NOT_EXECUTING = "where status <> 'executing'"
REBUILT: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "console indexes skip executing rows": (
        ("instances_queue_status", "instances_machine", "instances_state"),
        (
            f"create index instances_queue_status on instances (queue, status) {_NOT_EXECUTING}",
            f"create index instances_machine on instances (machine, version, status) {_NOT_EXECUTING}",
            f"create index instances_state on instances using gin (state jsonb_path_ops) {_NOT_EXECUTING}",
        ),
    ),
    "history: primary key (xid, id)": (
        ("history_tail",),
        (
            "alter table history drop constraint history_pkey",
            "alter table history add constraint history_pkey primary key (xid, id)",
        ),
    ),
    "state GIN with fastupdate off": (
        ("instances_state",),
        ("create index instances_state on instances using gin (state jsonb_path_ops) with (fastupdate = off)",),
    ),
}
REBUILT["both: skip executing + history key"] = (
    REBUILT["console indexes skip executing rows"][0] + REBUILT["history: primary key (xid, id)"][0],
    REBUILT["console indexes skip executing rows"][1] + REBUILT["history: primary key (xid, id)"][1],
)


async def one(dsn: str, drop: tuple[str, ...], ddl: tuple[str, ...], n: int, batch: int) -> float:
    schema = "b_ablation"
    async with fresh(dsn, schema, max_size=2) as db:
        pool = db.pool
        for index in drop:
            await pool.execute(_ddl(await pool.fetchval(q(B.drop_index_ddl), index)))
        for text in ddl:
            await pool.execute(_ddl(text))
        await pool.fetchval(q(B.seed_runnable), n, workloads.noop.name, "perform", workloads.ONE_STEP_QUEUE)
        await pool.execute(q(B.vacuum_instances))
        from durable.runtime.flusher import Flusher

        flusher = Flusher(pool, "bench-ablation", db.clock)
        done = 0
        start = time.perf_counter()
        while True:
            rows = await pool.fetch(Q.pick, workloads.ONE_STEP_QUEUE, batch, "bench-ablation", 60.0, None, None, None)
            if not rows:
                break
            await flusher._execute(done_batch(rows))
            done += len(rows)
        seconds = time.perf_counter() - start
        await drop_schema(pool, schema)
    return done / seconds


def _ddl(text: str) -> Any:
    from durable.sql import Query

    return Query("drop_index", text, "ablation: drop one index")


async def main(dsn: str, n: int, rounds: int, batch: int) -> dict[str, list[float]]:
    variants = {name: (drop, ()) for name, drop in VARIANTS.items()} | REBUILT
    out: dict[str, list[float]] = {name: [] for name in variants}
    async with asyncio_loop():
        server = srv.Server(dsn)
        target = await trio_asyncio.aio_as_trio(server.recreate_database)("bench_ablation")
        for _ in range(rounds):
            for name, (drop, ddl) in variants.items():
                out[name].append(await one(target, drop, ddl, n, batch))
        await trio_asyncio.aio_as_trio(server.drop_database)("bench_ablation")
    return out


@click.command()
@click.option("--dsn", default=None, help="Server (default: the bench's embedded one).")
@click.option("--jobs", default=20_000, show_default=True)
@click.option("--rounds", default=3, show_default=True)
@click.option("--batch", default=200, show_default=True)
def command(dsn: str | None, jobs: int, rounds: int, batch: int) -> None:
    """Ceiling jobs/s with groups of indexes dropped (median of the rounds)."""
    target = dsn or srv.start_embedded(Path(srv.default_data_dir()))
    results = trio.run(main, target, jobs, rounds, batch)
    base = statistics.median(results["stock schema"])
    for name, values in results.items():
        med = statistics.median(values)
        click.echo(
            f"{name:40s} median {med:8,.0f} jobs/s  ({med / base:.2f}x)  rounds: "
            + ", ".join(f"{v:,.0f}" for v in values)
        )


if __name__ == "__main__":
    command()
