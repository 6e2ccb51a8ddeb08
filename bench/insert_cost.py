"""What one ``db.insert`` costs, in CPU per call (robust to the machine's load, unlike wall time): the lone-row
statement ``insert_instance`` against the batch statement ``insert_instances`` for the same row, alternated.

* **client / server CPU per db.insert**: this process's CPU and the PostgreSQL server's (every backend) over
  ``calls`` inserts back to back, for each statement in turn (``insert_instances`` is reached by rewriting
  the call's scalars into one-element arrays), ``rounds`` times;
* **backend CPU per statement**: one backend's CPU (``/proc/<pid>/stat``) over ``calls`` executions through
  a plain connection with ``synchronous_commit = off``, so that the commit's WAL flush is left out; the
  commit-limit ``UPDATE`` (``pg_limit``'s) for comparison.

``python -m durable.bench.insert_cost [--dsn DSN] [--calls 2000] [--rounds 2]`` prints one JSON object (the
embedded benchmark server when no DSN is given). Issue 20, PERFORMANCE.md "Second round".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import trio

import durable
from durable._pg import aio
from durable.migrate import drop_schema
from durable.sql import Q, Query

from .cpu import own_cpu, postmaster_pid, server_cpu
from .server import default_data_dir, start_embedded
from .sql import B

_TICK = os.sysconf("SC_CLK_TCK")
ARRAYS = (*range(13), 14, 21)  # insert_instances' parameters that are one element per row


@durable.job(queue="ic_jobs", name="ic_noop")
async def noop(args: Any, ctx: durable.Context) -> None:
    return None


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


async def per_insert(db: durable.Database, calls: int, rounds: int, postmaster: int | None) -> dict[str, Any]:
    original = db.pool.fetch
    batch = False

    async def fetch(q: Query, *args: Any) -> Any:
        if batch and q is Q.insert_instance:
            q, args = Q.insert_instances, tuple([a] if i in ARRAYS else a for i, a in enumerate(args))
        return await original(q, *args)

    db.pool.fetch = fetch  # type: ignore[method-assign]
    out: dict[str, list[dict[str, float | None]]] = {"insert_instances": [], "insert_instance": []}
    try:
        for _ in range(rounds):
            for name in ("insert_instances", "insert_instance"):
                batch = name == "insert_instances"
                for _ in range(30):
                    await db.insert(noop, {"x": 1})
                c0, p0 = own_cpu(), server_cpu(postmaster)
                for _ in range(calls):
                    await db.insert(noop, {"x": 1})
                c1, p1 = own_cpu(), server_cpu(postmaster)
                out[name].append(
                    {
                        "client_us": round((c1 - c0) / calls * 1e6, 1),
                        "server_us": None if p0 is None or p1 is None else round((p1 - p0) / calls * 1e6, 1),
                    }
                )
    finally:
        db.pool.fetch = original  # type: ignore[method-assign]
    return out


async def per_statement(db: durable.Database, calls: int, rounds: int) -> dict[str, list[float]]:
    """Backend CPU per execution, synchronous_commit off, through one plain connection."""
    con = await aio(db.pool.raw.acquire)()
    try:
        run: Any = aio(con.fetch)
        execute: Any = aio(con.execute)
        await execute("set synchronous_commit = off")  # this session only: the connection is dropped after
        await execute(B.counter_table.text)
        await execute(B.counter_seed.text, 1)
        pid = (await run("select pg_backend_pid()"))[0][0]
        cols = [["ic_noop"], [1], ["perform"], ['{"x":1}'], ["ic_jobs"], [0], [None], [None], ["{}"]]
        batch_args: tuple[Any, ...] = (
            *cols,
            [None],
            [None],
            [None],
            [None],
            None,
            [None],
            db.channel,
            "bench",
            None,
            None,
            None,
            0,
            [None],
        )
        lone_args = tuple(a[0] if i in ARRAYS else a for i, a in enumerate(batch_args))
        cases: dict[str, tuple[str, tuple[Any, ...]]] = {
            "counter_bump": (B.counter_bump.text, (1,)),
            "insert_instances": (Q.insert_instances.text, batch_args),
            "insert_instance": (Q.insert_instance.text, lone_args),
        }
        out: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, (text, args) in cases.items():
                for _ in range(30):
                    await run(text, *args)
                before = backend_cpu(pid)
                for _ in range(calls):
                    await run(text, *args)
                out[name].append(round((backend_cpu(pid) - before) / calls * 1e6, 1))
        return out
    finally:
        con.terminate()  # its session setting goes with it
        await aio(db.pool.raw.release)(con)


async def main(dsn: str | None, calls: int, rounds: int) -> dict[str, Any]:
    embedded = not dsn
    folder = default_data_dir()
    dsn = dsn or start_embedded(folder)
    postmaster = postmaster_pid(str(folder)) if embedded else None  # server CPU: the local embedded server only
    async with durable.connect(dsn, schema="b_insert_cost", machines=[noop]) as db:
        try:
            return {
                "load_average": os.getloadavg(),
                "calls": calls,
                "per_insert": await per_insert(db, calls, rounds, postmaster),
                "backend_us_per_statement_async_commit": await per_statement(db, calls, rounds),
            }
        finally:
            await drop_schema(db.pool, "b_insert_cost")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    opts = parser.parse_args()
    json.dump(trio.run(main, opts.dsn, opts.calls, opts.rounds), sys.stdout)
    print()
