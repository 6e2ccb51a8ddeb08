"""durable's own measurements: one-step drain, five-step drain, pickup latency, picker cost, and the
engine's SQL ceiling (pick + complete with no step code). Each runs in a fresh schema of the
``bench_durable`` database; drains run in a separate worker process (``bench.worker``)."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import trio
import trio_asyncio

import durable
from durable._pg import Pool
from durable.migrate import drop_schema
from durable.runtime.claim import Claim, Encoded
from durable.runtime.flusher import Flusher, _Pending
from durable.sql import Q, Query

from . import phases, workloads
from .cpu import own_cpu, server_cpu
from .profile import record_argv
from .sql import B, Statement
from .stats import latency_summary, percentile, rate
from .subproc import run_json

INSERT_BATCH = 10_000


def q(s: Statement) -> Query:
    """A bench statement as a durable Query (so durable's Pool runs and counts it)."""
    return Query(s.name, s.text, s.doc)


def explain(query: Query) -> Query:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of a named statement, same parameters (a constant prefix)."""
    return Query(f"explain_{query.name}", "explain (analyze, buffers) " + query.text, query.doc)


@dataclass
class Tuning:
    """The runtime settings of every durable drain (its documented fast knobs)."""

    # 1000/1000/1000: the best of a sweep of 100k-job drains on this machine (2026-12-06, schema v7):
    # 500/500/500 27.8k jobs/s, 1000/1000/500 29.1k, 500/1500/500 29.0k, 1000/1000/1000 31.4-31.8k,
    # 2000/2000/1000 32.6k, 1000/2000/1000 29.5k (PERFORMANCE.md, item 14)
    concurrency: int = 1000
    prefetch: int = 1000
    flush_max: int = 1000
    flush_linger: float = 0.0
    pool: int = 10

    def worker_options(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "pool": self.pool,
            "runtime": {"prefetch": self.prefetch, "flush_max": self.flush_max, "flush_linger": self.flush_linger},
        }


@asynccontextmanager
async def fresh(dsn: str, schema: str, max_size: int = 10) -> AsyncIterator[durable.Database]:
    """A freshly migrated durable schema (dropped first if a previous run left it)."""
    async with durable.connect(dsn, schema=schema, machines=workloads.MACHINES, migrate=False, max_size=max_size) as db:
        await drop_schema(db.pool, schema)
        await db.migrate()
        yield db


async def insert_all(db: durable.Database, workload: str, n: int) -> float:
    """Batch-insert ``n`` instances; returns rows/s."""
    start = time.perf_counter()
    for offset in range(0, n, INSERT_BATCH):
        await db.insert_many(workloads.specs(workload, min(INSERT_BATCH, n - offset)))
    return n / (time.perf_counter() - start)


def cost_model(counts: dict[str, int], steps: int) -> dict[str, Any]:
    """Statements per step and per pick from the worker's statement counts."""
    picks = counts.get("pick", 0)
    completes = counts.get("complete", 0) + counts.get("complete_simple", 0)  # the outcome commit's two forms
    return {
        "statements": counts,
        "picks": picks,
        "completes": completes,
        "steps_per_pick": round(steps / picks, 1) if picks else None,
        "outcomes_per_complete": round(steps / completes, 1) if completes else None,
        "statements_per_step": round(sum(counts.values()) / steps, 4) if steps else None,
    }


async def drain(
    dsn: str,
    workload: str,
    n: int,
    tuning: Tuning,
    schema: str,
    limit: float = 1800,
    profile_to: Path | None = None,
    postmaster: int | None = None,
) -> dict[str, Any]:
    """Insert ``n`` instances of ``workload`` then drain them with one worker process (sampled by
    py-spy into ``profile_to`` when given)."""
    async with fresh(dsn, schema) as db:
        insert_rate = await insert_all(db, workload, n)
    steps = n * workloads.STEPS_PER_INSTANCE[workload]
    spy: trio.Process | None = None

    async def attach(pid: int) -> None:
        nonlocal spy
        if profile_to is not None:
            spy = await trio.lowlevel.open_process(
                record_argv(pid, profile_to), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            await trio.sleep(0.3)  # let py-spy attach before the drain starts in earnest

    out = await run_json(
        "durable.bench.worker",
        {
            "dsn": dsn,
            "schema": schema,
            "workload": workload,
            "expect": steps,
            "timeout": limit,
            "postmaster": postmaster,
            **tuning.worker_options(),
        },
        limit=limit + 60,
        on_ready=attach,
    )
    if spy is not None:
        with trio.move_on_after(30):
            await spy.wait()
    if out["timed_out"]:
        raise RuntimeError(f"durable {workload}: {out['steps']} of {steps} steps before the timeout")
    return {
        "instances": n,
        "steps": steps,
        "seconds": round(out["seconds"], 3),
        "per_s": round(steps / out["seconds"], 1),
        "insert_rows_per_s": round(insert_rate),
        "tuning": asdict(tuning),
        "cost": cost_model(out["statement_counts"], steps),
        "cpu_us_per_step": round(out["cpu_s"] / steps * 1e6, 1),
        "pg_cpu_us_per_step": None if out["pg_cpu_s"] is None else round(out["pg_cpu_s"] / steps * 1e6, 1),
        "statistics": out["statistics"],
        "tenths_s": out.get("tenths_s"),
    }


# -- pickup latency ------------------------------------------------------------------------------
async def pickup_in_process(dsn: str, samples: int, schema: str = "b_pickup_local") -> dict[str, Any]:
    """Idle runtime in this process; one insert at a time, each waited for, random gaps."""
    workloads.latencies.clear()
    inserts: list[float] = []
    async with fresh(dsn, schema) as db:
        ran = trio.Event()

        def on_step(*_: Any) -> None:
            ran.set()

        rt = durable.Runtime(db, queues={workloads.PROBE_QUEUE: 10}, on_step=on_step)
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            await trio.sleep(0.2)
            for _ in range(samples):
                ran = trio.Event()
                start = time.perf_counter()
                await db.insert(workloads.probe, {"t": time.time()})
                inserts.append(time.perf_counter() - start)
                with trio.move_on_after(10):
                    await ran.wait()
                await trio.sleep(random.uniform(0.01, 0.05))
            nursery.cancel_scope.cancel()
    return {**latency_summary(list(workloads.latencies)), "insert": latency_summary(inserts)}


async def pickup_cross_process(
    dsn: str, samples: int, tuning: Tuning | None = None, schema: str = "b_pickup_remote"
) -> dict[str, Any]:
    """Idle runtime in a worker process; this process inserts one row at a time, random gaps. The worker
    records where each row's time goes (bench/phases.py: insert commit, NOTIFY to pick, pick, step start)."""
    inserts: list[float] = []
    marks: list[tuple[float, float, float]] = []  # (stamp, statement sent, commit returned) per insert
    async with fresh(dsn, schema) as db:

        async def produce(pid: int) -> None:
            await trio.sleep(0.5)  # the worker's LISTEN connection is up
            with phases.SendClock(db.pool) as clock:
                for _ in range(samples):
                    start = time.perf_counter()
                    stamped = time.time()
                    await db.insert(workloads.probe, {"t": stamped})
                    inserts.append(time.perf_counter() - start)
                    marks.append((stamped, clock.sent, time.time()))
                    await trio.sleep(random.uniform(0.02, 0.1))

        opts = {
            "dsn": dsn,
            "schema": schema,
            "workload": "probe",
            "expect": samples,
            "timeout": 300,
            "phases": True,
            **(tuning or Tuning(concurrency=10, prefetch=10)).worker_options(),
        }
        out = await run_json("durable.bench.worker", opts, limit=400, on_ready=produce)
    summary = {**latency_summary(out["latencies"]), "insert": latency_summary(inserts)}
    if out.get("phases"):
        summary["phases"] = phases.breakdown(marks, out["phases"])
    return summary


async def pickup_under_load(
    dsn: str,
    per_s: float,
    seconds: float,
    tuning: Tuning,
    schema: str = "b_pickup_load",
    postmaster: int | None = None,
    trace: bool = True,
    tick: float = 0.01,
) -> dict[str, Any]:
    """A worker process fed at ``per_s`` rows/s (a batch every ``tick`` seconds, 10 ms unless told) by this
    process; the latency of every row. While the producer runs: the box's CPU busy share (/proc/stat, every core, every
    process), this process's, the worker's and PostgreSQL's CPU. ``trace``: the worker records where each
    row's time goes (bench/phases.py), returned as ``phases``."""
    per_tick = max(1, round(per_s * tick))
    ticks = int(seconds / tick)
    inserts: list[float] = []  # each batch's insert, from the stamp its rows carry to the commit's return
    marks: list[tuple[float, float, float]] = []  # (stamp, statement sent, commit returned) per batch
    cpu: dict[str, Any] = {}
    async with fresh(dsn, schema) as db:
        behind = 0

        async def produce(pid: int) -> None:
            nonlocal behind
            box0, own0, pg0 = phases.cpu_times(), own_cpu(), server_cpu(postmaster)
            kinds0 = phases.server_cpu_by_kind(postmaster)
            pg_pids = phases.server_pids(postmaster)  # the sessions are open by now (worker and producer)
            waits0 = [phases.run_queue_wait(p) for p in (pg_pids, [pid], [os.getpid()])]
            wall0 = time.perf_counter()
            start = trio.current_time()
            with phases.SendClock(db.pool) as clock:
                for i in range(ticks):
                    specs = workloads.specs("probe", per_tick)
                    stamped = specs[0].state["t"]
                    await db.insert_many(specs)
                    done = time.time()
                    inserts.append(done - stamped)
                    marks.append((stamped, clock.sent, done))
                    wait = start + (i + 1) * tick - trio.current_time()
                    if wait > 0:
                        await trio.sleep(wait)
                    else:
                        behind += 1
            box1, own1, pg1 = phases.cpu_times(), own_cpu(), server_cpu(postmaster)
            kinds1 = phases.server_cpu_by_kind(postmaster)
            waits1 = [phases.run_queue_wait(p) for p in (pg_pids, [pid], [os.getpid()])]
            wall = time.perf_counter() - wall0
            cpu.update(
                {
                    "seconds": round(wall, 3),
                    "box_busy": phases.busy_fraction(box0, box1),
                    "producer_cores": round((own1 - own0) / wall, 3),
                    "postgres_cores": None if pg0 is None or pg1 is None else round((pg1 - pg0) / wall, 3),
                    "postgres_cores_by_kind": phases.cores_by_kind(kinds0, kinds1, wall),
                    "nproc": os.cpu_count(),
                    # seconds per second spent runnable but waiting for a core (PostgreSQL's processes
                    # summed, the worker's and this process's main thread): the CPU contention met
                    "run_queue_wait": dict(
                        zip(
                            ("postgres", "worker", "producer"),
                            (round(phases.waited(a, b) / wall, 3) for a, b in zip(waits0, waits1, strict=True)),
                            strict=True,
                        )
                    ),
                }
            )

        opts = {
            "dsn": dsn,
            "schema": schema,
            "workload": "probe",
            "expect": ticks * per_tick,
            "timeout": seconds * 10 + 60,
            "phases": trace,
            **tuning.worker_options(),
        }
        out = await run_json("durable.bench.worker", opts, limit=seconds * 10 + 120, on_ready=produce)
    if out.get("seconds"):
        cpu["worker_cores"] = round(out["cpu_s"] / out["seconds"], 3)
    summary: dict[str, Any] = dict(latency_summary(out["latencies"]))
    summary.update(
        {
            "offered_per_s": round(per_tick / tick),
            "rows_per_tick": per_tick,
            "tick_ms": round(tick * 1000, 1),
            "achieved_per_s": round(ticks * per_tick / cpu["seconds"]) if cpu.get("seconds") else None,
            "late_ticks": behind,
            "ticks": ticks,
            "insert": latency_summary(inserts),
            "cpu": cpu,
        }
    )
    if out.get("phases"):
        summary["phases"] = phases.breakdown(marks, out["phases"])
    return summary


# -- picker cost ---------------------------------------------------------------------------------
class _Rollback(Exception):
    pass


async def picker(dsn: str, backlog: int, picks: int, demand: int) -> dict[str, Any]:
    """Time ``pick`` of ``demand`` rows at a steady backlog of ``backlog`` runnable rows (each pick is
    committed and its rows replaced, untimed), after a VACUUM and a CHECKPOINT so the bulk load's
    writes stay out of the timed loop; the same through sessions with ``synchronous_commit = off``
    (what the commit's WAL flush costs a pick); then EXPLAIN (ANALYZE, BUFFERS) one pick."""
    queue = workloads.ONE_STEP_QUEUE
    schema = f"b_pick_{backlog}"
    async with fresh(dsn, schema) as db, session_pool(dsn, schema, 2, "synchronous_commit", "off") as fast:
        pool = db.pool
        for offset in range(0, backlog, 100_000):
            await pool.fetchval(
                q(B.seed_runnable), min(100_000, backlog - offset), workloads.noop.name, "perform", queue
            )
        await pool.execute(q(B.vacuum_instances))
        await pool.execute(q(B.checkpoint))
        timings: dict[str, list[float]] = {"sync": [], "async": []}
        for i in range(2 * picks):
            via, key = (pool, "sync") if i % 2 == 0 else (fast, "async")
            start = time.perf_counter()
            rows = await via.fetch(Q.pick, queue, demand, "bench-picker", 60.0, None, None, None)
            timings[key].append(time.perf_counter() - start)
            assert len(rows) == demand, f"pick returned {len(rows)} rows at backlog {backlog}"
            await pool.fetchval(q(B.seed_runnable), demand, workloads.noop.name, "perform", queue)
        plan: list[str] = []
        try:
            async with pool.transaction() as conn:
                plan = [
                    r[0]
                    for r in await conn.fetch(
                        explain(Q.pick),
                        queue,
                        demand,  # type: ignore[index]
                        "bench-picker",
                        60.0,
                        None,
                        None,
                        None,
                    )
                ]
                raise _Rollback
        except _Rollback:
            pass
        await drop_schema(pool, schema)
    ms = [t * 1000 for t in timings["sync"]]
    fast_ms = [t * 1000 for t in timings["async"]]
    return {
        "backlog": backlog,
        "picks": picks,
        "demand": demand,
        "mean_ms": round(sum(ms) / len(ms), 3),
        "p50_ms": round(percentile(ms, 50) or 0, 3),
        "p99_ms": round(percentile(ms, 99) or 0, 3),
        "async_commit_mean_ms": round(sum(fast_ms) / len(fast_ms), 3),
        "async_commit_p50_ms": round(percentile(fast_ms, 50) or 0, 3),
        "plan": plan,
    }


async def picker_values(dsn: str, backlog: int, picks: int, demand: int, size: int = 1024 * 1024) -> dict[str, Any]:
    """Issue 18 item 5: a claim of instances that carry a ``size``-byte named value costs what one of
    instances without does, because the pick never reads instance_values. Two schemas, each with
    ``backlog`` runnable rows, one whose every instance holds a named value; picks of ``demand`` rows
    alternate between them (each pick's rows are put back untimed, so both backlogs stay as they were).
    Returns both means and their ratio (values / none)."""
    queue = workloads.ONE_STEP_QUEUE
    blob = random.Random(18).randbytes(size)
    async with fresh(dsn, "b_pick_values") as with_values, fresh(dsn, "b_pick_plain") as plain:
        for db in (with_values, plain):
            await db.pool.fetchval(q(B.seed_runnable), backlog, workloads.noop.name, "perform", queue)
        attached = await with_values.pool.fetchval(q(B.attach_values), queue, blob)
        assert attached == backlog
        for db in (with_values, plain):
            await db.pool.execute(q(B.vacuum_instances))
        timings: dict[str, list[float]] = {"values": [], "none": []}
        for i in range(2 * picks):
            key, db = ("values", with_values) if i % 2 == 0 else ("none", plain)
            start = time.perf_counter()
            rows = await db.pool.fetch(Q.pick, queue, demand, "bench-picker", 60.0, None, None, None)
            timings[key].append(time.perf_counter() - start)
            assert len(rows) == demand, f"pick returned {len(rows)} rows"
            await db.pool.execute(q(B.unclaim_rows), [r["id"] for r in rows])
        # for contrast, what a claim that hydrated the values would cost: the pick plus reading them
        digest = hashlib.sha256(blob).hexdigest()
        hydrated: list[float] = []
        for _ in range(min(picks, 20)):
            start = time.perf_counter()
            rows = await with_values.pool.fetch(Q.pick, queue, demand, "bench-picker", 60.0, None, None, None)
            ids = [r["id"] for r in rows]
            data = await with_values.pool.fetch(Q.value_mget, ids, ["blob"] * len(ids), [digest] * len(ids))
            hydrated.append(time.perf_counter() - start)
            assert all(len(r["data"]) == size for r in data)
            await with_values.pool.execute(q(B.unclaim_rows), ids)
        for db, schema in ((with_values, "b_pick_values"), (plain, "b_pick_plain")):
            await drop_schema(db.pool, schema)
    means = {k: sum(v) / len(v) * 1000 for k, v in timings.items()}
    p50 = {k: percentile([t * 1000 for t in v], 50) or 0 for k, v in timings.items()}
    return {
        "backlog": backlog,
        "picks": picks,
        "demand": demand,
        "value_bytes": size,
        "values_mean_ms": round(means["values"], 3),
        "none_mean_ms": round(means["none"], 3),
        "values_p50_ms": round(p50["values"], 3),
        "none_p50_ms": round(p50["none"], 3),
        "ratio": round(means["values"] / means["none"], 3),
        "ratio_p50": round(p50["values"] / p50["none"], 3),
        "hydrated_mean_ms": round(sum(hydrated) / len(hydrated) * 1000, 3),
    }


@asynccontextmanager
async def session_pool(dsn: str, schema: str, size: int, setting: str, value: str) -> AsyncIterator[Pool]:
    """A durable Pool whose sessions run ``setting = value``. Measurements only:

    - ``plan_cache_mode = force_generic_plan``: the pick's cached plan from its first execution on (the
      engine's own pick connections use ``auto``, which switches to the generic plan after five executions
      when it does not look costlier);
    - ``synchronous_commit = off``: the picks of the ``async_pick`` ceiling variant. The engine does not do
      this, because a crash can rewind the lease-token sequence with the lost claims and hand the same
      tokens out again (PERFORMANCE.md, suggestion 4)."""
    raw = await trio_asyncio.aio_as_trio(asyncpg.create_pool)(
        dsn,
        min_size=1,
        max_size=size,
        statement_cache_size=256,
        server_settings={"search_path": f"{schema},public", setting: value},
    )
    pool = Pool(raw, dsn, schema)
    try:
        yield pool
    finally:
        await pool.close()


async def picker_executing(dsn: str, backlog: int, picks: int, demand: int, executing: int = 10_000) -> dict[str, Any]:
    """Time ``pick`` of ``demand`` rows from ``backlog`` runnable rows that each have a partition key of their
    own, first with no executing rows, then with ``executing`` executing rows (other workers' claims, other
    keys), then with none again: the pick's busy-key skip must not read the executing set (issue 14, item
    10: a generic plan hashed all of it once per pick). Each pick is timed through the engine's pool and
    through sessions forced to the generic plan, alternately; its rows are then marked done and replaced
    (untimed), so the executing set stays what the phase set up. ``ratio``: mean with / mean without."""
    queue = workloads.ONE_STEP_QUEUE
    schema = "b_pick_executing"
    machine = workloads.noop.name
    async with (
        fresh(dsn, schema) as db,
        session_pool(dsn, schema, 1, "plan_cache_mode", "force_generic_plan") as generic,
    ):
        pool = db.pool
        await pool.fetchval(q(B.seed_runnable_keyed), backlog, machine, "perform", queue, "key")
        timings: dict[str, list[float]] = {"engine": [], "generic": []}
        phases: dict[str, dict[str, list[float]]] = {}
        plan: list[str] = []
        for phase, busy in (("none", 0), ("busy", executing), ("none_again", 0)):
            if busy:
                await pool.fetchval(q(B.seed_executing), busy, machine, "perform", queue)
            elif phase != "none":
                await pool.execute(q(B.drop_executing))
            await pool.execute(q(B.vacuum_instances))
            await pool.execute(q(B.checkpoint))
            timings = {"engine": [], "generic": []}
            for i in range(2 * picks):
                via, key = (pool, "engine") if i % 2 == 0 else (generic, "generic")
                start = time.perf_counter()
                rows = await via.fetch(Q.pick, queue, demand, "bench-picker", 60.0, None, None, None)
                timings[key].append(time.perf_counter() - start)
                assert len(rows) == demand, f"pick returned {len(rows)} rows ({phase})"
                await pool.execute(q(B.finish_rows), [r["id"] for r in rows])
                await pool.fetchval(q(B.seed_runnable_keyed), demand, machine, "perform", queue, "key")
            phases[phase] = timings
            if busy:
                try:
                    async with generic.transaction() as conn:
                        plan = [
                            r[0]
                            for r in await conn.fetch(
                                explain(Q.pick),
                                queue,
                                demand,  # type: ignore[index]
                                "bench-picker",
                                60.0,
                                None,
                                None,
                                None,
                            )
                        ]
                        raise _Rollback
                except _Rollback:
                    pass
        await drop_schema(pool, schema)

    def mean_ms(values: list[float]) -> float:
        return round(sum(values) / len(values) * 1000, 3)

    out: dict[str, Any] = {"backlog": backlog, "executing": executing, "picks": picks, "demand": demand}
    for key in ("engine", "generic"):
        none = mean_ms(phases["none"][key] + phases["none_again"][key])
        busy_ms = mean_ms(phases["busy"][key])
        prefix = "" if key == "engine" else "generic_"
        out.update(
            {
                f"{prefix}none_mean_ms": none,
                f"{prefix}busy_mean_ms": busy_ms,
                f"{prefix}ratio": round(busy_ms / none, 3) if none else None,
            }
        )
    out["generic_busy_plan"] = plan
    return out


# -- the engine's SQL ceiling -------------------------------------------------------------------
def done_batch(rows: list[Any]) -> list[_Pending]:
    """Picked rows as the flusher's pending ``done`` outcomes (its own claim decoding and encoding)."""
    return [_Pending(Claim.from_row(r), Encoded("done", result="null")) for r in rows]


async def ceiling(dsn: str, batch: int, n: int, loops: int = 1, async_pick: bool = False) -> dict[str, Any]:
    """``pick`` + ``complete`` in a tight loop through durable's Pool: no step code, no tasks, no
    tracing, one statement at a time (``loops`` such loops at once, each on its own connection, shows
    what overlapping picks and commits buys). The outcomes go through the flusher's own statement
    builder (``Flusher._execute``), so the ceiling follows the engine's ``complete`` as it changes.
    ``async_pick`` sends the picks through sessions with ``synchronous_commit = off``."""
    queue = workloads.ONE_STEP_QUEUE
    schema = f"b_ceiling_{batch}_{loops}{'_a' if async_pick else ''}"
    async with (
        fresh(dsn, schema, max_size=loops + 1) as db,
        session_pool(dsn, schema, loops + 1, "synchronous_commit", "off") as fast,
    ):
        pickers = fast if async_pick else db.pool
        pool = db.pool
        for offset in range(0, n, 100_000):
            await pool.fetchval(q(B.seed_runnable), min(100_000, n - offset), workloads.noop.name, "perform", queue)
        await pool.execute(q(B.vacuum_instances))
        flusher = Flusher(pool, "bench-ceiling", db.clock)
        pool.statement_counts.clear()
        done = 0

        async def loop() -> None:
            nonlocal done
            while done < n:
                rows = await pickers.fetch(Q.pick, queue, batch, "bench-ceiling", 60.0, None, None, None)
                if not rows:
                    return
                await flusher._execute(done_batch(rows))
                done += len(rows)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(loops):
                nursery.start_soon(loop)
        seconds = time.perf_counter() - start
        counts = dict(pool.statement_counts)
        for name, k in fast.statement_counts.items():
            counts[name] = counts.get(name, 0) + k
        await drop_schema(pool, schema)
    return {
        "batch": batch,
        "loops": loops,
        "async_pick": async_pick,
        "jobs": done,
        "seconds": round(seconds, 3),
        "per_s": round(rate(done, seconds) or 0, 1),
        "statements": counts,
    }
