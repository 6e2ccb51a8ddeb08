"""Scale-out (issue 20, item 4): 1, 2, ... worker processes on one PostgreSQL server draining one backlog.

For each worker count: a fresh schema, ``jobs`` one-step jobs inserted, then that many
``bench.scale_worker`` processes armed (connected, runtime not started), released at once, and stopped when
the backlog is drained. Reported per count: jobs/s (from the release to the last commit of any worker),
the PostgreSQL server's CPU per job (all its backends, from /proc) and the workers' CPU per job, each
worker's share of the jobs, and the cores in use (CPU seconds over wall seconds): where the curve bends
is where those reach the machine's cores.

    python -m durable.bench.scale [--dsn DSN] [--jobs 100000] [--workers 1,2] [--json out.json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import trio

from . import workloads
from .cpu import server_cpu
from .durable_bench import Tuning, fresh, insert_all, q
from .sql import B
from .subproc import ROOT, ProcessFailed, tail


class Armed:
    """One armed worker process."""

    def __init__(self, proc: trio.Process, err: Any) -> None:
        self.proc = proc
        self.err = err
        self.buf = b""

    async def line(self) -> str:
        assert self.proc.stdout is not None
        while b"\n" not in self.buf:
            chunk = await self.proc.stdout.receive_some(65536)
            if not chunk:
                self.err.seek(0)
                raise ProcessFailed(f"scale worker exited: {tail(self.err.read().decode(errors='replace'))}")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\n", 1)
        return raw.decode(errors="replace")

    async def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(text.encode() + b"\n")


async def drain_with(
    dsn: str, schema: str, workers: int, jobs: int, tuning: Tuning, postmaster: int | None, limit: float = 900
) -> dict[str, Any]:
    """Insert ``jobs`` one-step jobs, then drain them with ``workers`` processes released at once."""
    async with fresh(dsn, schema) as db:
        await insert_all(db, "onestep", jobs)
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        opts = {"dsn": dsn, "schema": schema, **tuning.worker_options()}
        armed: list[Armed] = []
        try:
            for _ in range(workers):
                err = tempfile.TemporaryFile()
                proc = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "durable.bench.scale_worker", json.dumps(opts)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err.fileno(),
                    cwd=str(ROOT),
                    env=env,
                )
                armed.append(Armed(proc, err))
            with trio.fail_after(120):
                for w in armed:
                    while await w.line() != "armed":
                        pass
            load = os.getloadavg()[0]
            pg0 = server_cpu(postmaster)
            start = time.time()
            for w in armed:
                await w.send("go")
            with trio.fail_after(limit):
                while int(await db.pool.fetchval(q(B.count_unfinished), workloads.ONE_STEP_QUEUE)) > 0:
                    await trio.sleep(0.05)
            pg1 = server_cpu(postmaster)
            results = []
            for w in armed:
                await w.send("stop")
            with trio.fail_after(60):
                for w in armed:
                    while not (line := await w.line()).startswith("{"):
                        pass
                    results.append(json.loads(line))
                    await w.proc.wait()
        finally:
            for w in armed:
                if w.proc.returncode is None:
                    w.proc.kill()
                    with trio.CancelScope(shield=True):
                        await w.proc.wait()
                w.err.close()
    steps = sum(r["steps"] for r in results)
    if steps < jobs:
        raise RuntimeError(f"scale: {steps} of {jobs} jobs ran")
    seconds = max(r["last"] for r in results) - start
    worker_cpu = sum(r["cpu_s"] for r in results)
    pg_cpu = None if pg0 is None or pg1 is None else pg1 - pg0
    return {
        "workers": workers,
        "jobs": jobs,
        "seconds": round(seconds, 3),
        "per_s": round(jobs / seconds, 1),
        "share": [r["steps"] for r in results],
        "worker_cpu_us_per_job": round(worker_cpu / jobs * 1e6, 1),
        "pg_cpu_us_per_job": None if pg_cpu is None else round(pg_cpu / jobs * 1e6, 1),
        "cores_used": None if pg_cpu is None else round((worker_cpu + pg_cpu) / seconds, 2),
        "pg_cores_used": None if pg_cpu is None else round(pg_cpu / seconds, 2),
        "loadavg": round(load, 2),
        "picks": sum(r["statement_counts"].get("pick", 0) for r in results),
    }


def on_paper(points: list[dict[str, Any]], cores: int, workers: tuple[int, ...] = (4,)) -> list[dict[str, Any]]:
    """What ``workers`` processes would drain, from the CPU per job measured with the most workers: a worker
    is one Python thread, so at most one core each (``1e6 / worker µs`` jobs/s); the primary serves at most
    ``cores / PostgreSQL µs`` jobs/s. Each worker on its own machine: the lower of the two; all on this
    machine: ``cores`` over the whole CPU per job."""
    last = points[-1]
    pg, eng = last["pg_cpu_us_per_job"], last["worker_cpu_us_per_job"]
    if pg is None or not eng:
        return []
    out = []
    for n in workers:
        workers_bound = n * 1e6 / eng
        primary_bound = cores * 1e6 / pg
        out.append(
            {
                "workers": n,
                "workers_bound_per_s": round(workers_bound),
                "primary_bound_per_s": round(primary_bound),
                "each_on_its_own_machine_per_s": round(min(workers_bound, primary_bound)),
                "primary_cores_needed": round(workers_bound * pg / 1e6, 2),
                "all_on_this_machine_per_s": round(cores * 1e6 / (pg + eng)),
            }
        )
    return out


async def scale(
    dsn: str, jobs: int, workers: tuple[int, ...], tuning: Tuning | None = None, postmaster: int | None = None
) -> dict[str, Any]:
    tuning = tuning or Tuning()
    points = []
    for n in workers:
        points.append(await drain_with(dsn, f"b_scale_{n}", n, jobs, tuning, postmaster))
        print(json.dumps(points[-1]), file=sys.stderr, flush=True)
    cores = os.cpu_count() or 1
    return {"jobs": jobs, "cores": cores, "points": points, "on_paper": on_paper(points, cores)}


async def main(argv: list[str]) -> None:
    import argparse
    from pathlib import Path

    import trio_asyncio

    from durable._pg import asyncio_loop

    from . import server as srv

    parser = argparse.ArgumentParser(prog="python -m durable.bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    counts = tuple(int(x) for x in args.workers.split(","))
    if args.jobs < 100 or not counts or min(counts) < 1 or max(counts) > 16:
        parser.error("--jobs >= 100 and --workers between 1 and 16")
    dsn = args.dsn
    if dsn is None:
        folder = Path(args.data_dir) if args.data_dir else srv.default_data_dir()
        dsn = await trio.to_thread.run_sync(srv.start_embedded, folder)
    async with asyncio_loop():
        server = srv.Server(dsn)
        postmaster = await trio_asyncio.aio_as_trio(server.postmaster)()
        target = await trio_asyncio.aio_as_trio(server.recreate_database)("bench_scale")
        result = await scale(target, args.jobs, counts, postmaster=postmaster)
        await trio_asyncio.aio_as_trio(server.drop_database)("bench_scale")
    result["loadavg_at_end"] = list(os.getloadavg())
    if args.json:
        await trio.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    for p in result["points"]:
        print(
            f"{p['workers']} worker(s): {p['per_s']:>9,.0f} jobs/s  PG {p['pg_cpu_us_per_job']} us/job  "
            f"workers {p['worker_cpu_us_per_job']} us/job  cores used {p['cores_used']} "
            f"(PG {p['pg_cores_used']})  share {p['share']}  load {p['loadavg']}"
        )
    for o in result["on_paper"]:
        print(f"on paper, {o}")


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
