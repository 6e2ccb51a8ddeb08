"""Running one simulation: a fresh schema, worker slots with their gates, the driver's actors, the
phases (chaos -> heal -> liveness) and the final checks.

    dst   (default) trio MockClock + one call at a time through the gate: same seed, same log.
    chaos real time and real concurrency (faults still drawn from the seed; interleaving not reproducible).
"""

from __future__ import annotations

import functools
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import trio
import trio.testing
import trio_asyncio
from trio._core import _run as trio_run_module

from durable import Registry, Runtime, VirtualClock
from durable._pg import Pool, asyncio_loop
from durable.client import pool_migrate
from durable.clock import DatabaseClock
from durable.embedded import resolve_dsn
from durable.migrate import drop_schema
from durable.outcomes import TERMINAL
from durable.sql import Q

from . import invariants
from .bugs import Prepare
from .core import INVARIANTS, Run, SimConfig, SimDatabase, Violation
from .gate import Serializer, Slot, SlotGate, deterministic_scheduling, seeded_clock
from .plan import Fault, draw_plan
from .processes import Workers
from .workloads import Final, Workload, workloads

Progress = Callable[[str, float], None]
QUEUE = "sim"


@dataclass(slots=True)
class Result:
    config: SimConfig
    plan: list[Fault]
    violations: list[Violation]
    log_hash: str
    operations: int
    last_events: list[str]
    statuses: dict[str, int]
    steps: int
    reexecutions: int
    faults: dict[str, int]
    fenced: int
    virtual_seconds: float
    real_seconds: float
    calls: int
    log: list[str] = field(repr=False, default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def invariants(self) -> dict[str, bool]:
        failed = {v.invariant for v in self.violations}
        return {name: name not in failed for name in INVARIANTS}

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.config.seed, "config": {
                "workload": self.config.workload, "instances": self.config.instances,
                "workers": self.config.workers, "faults": list(self.config.faults),
                "mode": self.config.mode, "lease": self.config.lease, "chain": self.config.chain,
                "chaos_seconds": self.config.chaos_seconds, "heal_bound": self.config.heal_bound},
            "command": self.config.command(),
            "plan": [f.to_json() for f in self.plan],
            "violated": sorted({v.invariant for v in self.violations}),
            "violations": [{"invariant": v.invariant, "detail": v.detail} for v in self.violations],
            "log_hash": self.log_hash, "statuses": self.statuses, "faults": self.faults,
            "last_events": self.last_events, "operation_log": self.log,
        }


def plan_for(config: SimConfig) -> list[Fault]:
    """The fault plan the seed draws for this configuration."""
    return draw_plan(random.Random(f"{config.seed}:plan"), list(config.faults), workers=config.workers,
                     instances=config.instances * 2, lease=config.lease)


def simulate(config: SimConfig, plan: list[Fault] | None = None, *, dsn: str | None = None,
             progress: Progress | None = None, keep_schema: bool = False,
             prepare: Prepare | None = None, loads: list[Workload] | None = None) -> Result:
    """Run one simulation to the end (blocking; starts its own trio run). ``prepare`` runs on the
    fresh schema before the workers start (planted bugs use it); ``loads`` replaces the named workload
    (a scenario written in Python)."""
    target = resolve_dsn(dsn)
    started = time.perf_counter()
    if config.mode == "dst":
        clock = seeded_clock(config.seed)
        result = trio.run(_dst, config, plan, target, clock, progress, keep_schema, prepare, loads,
                          clock=clock)
    else:
        result = trio.run(_simulate, config, plan, target, None, progress, keep_schema, prepare, loads)
    result.real_seconds = time.perf_counter() - started
    return result


async def simulate_async(config: SimConfig, plan: list[Fault] | None = None, *, dsn: str,
                         clock: trio.testing.MockClock | None, prepare: Prepare | None = None,
                         loads: list[Workload] | None = None, keep_schema: bool = False) -> Result:
    """The same from inside a trio run (pytest-trio: pass the ``mock_clock`` / ``autojump_clock``
    fixture for dst; None runs in real time, like chaos mode)."""
    started = time.perf_counter()
    if clock is None:
        result = await _simulate(config, plan, dsn, None, None, keep_schema, prepare, loads)
    else:
        clock.autojump_threshold = math.inf
        result = await _dst(config, plan, dsn, clock, None, keep_schema, prepare, loads)
    result.real_seconds = time.perf_counter() - started
    return result


async def _dst(config: SimConfig, plan: list[Fault] | None, dsn: str, clock: trio.testing.MockClock,
               progress: Progress | None, keep_schema: bool, prepare: Prepare | None,
               loads: list[Workload] | None) -> Result:
    deterministic_scheduling(True)
    trio_run_module._r.seed(config.seed)
    try:
        return await _simulate(config, plan, dsn, clock, progress, keep_schema, prepare, loads)
    finally:
        deterministic_scheduling(False)


async def _no_reset(conn: asyncpg.Connection) -> None:
    return None


async def open_slot_db(run: Run, serializer: Serializer, slot: Slot, dsn: str, schema: str,
                       machines: list[Any], admin: Pool | None, watch: Pool | None) -> SimDatabase:
    app = f"sim-{schema}-{slot.name}"[:63]
    raw = await trio_asyncio.aio_as_trio(asyncpg.create_pool)(
        dsn, min_size=1, max_size=3, max_inactive_connection_lifetime=0, statement_cache_size=256,
        reset=_no_reset,  # the engine keeps no session state: skip a round trip per call
        server_settings={"search_path": f"{schema},public", "application_name": app})
    pool = Pool(raw, dsn, schema)
    pool.gate = SlotGate(run, serializer, slot, admin, watch, app)
    clock = VirtualClock() if run.config.mode == "dst" else DatabaseClock()
    db = SimDatabase(pool, clock=clock, registry=Registry(machines))
    db.run = run
    db.slot_name = slot.name
    return db


async def _simulate(config: SimConfig, plan: list[Fault] | None, dsn: str,
                    clock: trio.testing.MockClock | None, progress: Progress | None, keep_schema: bool,
                    prepare: Prepare | None, loads: list[Workload] | None) -> Result:
    plan = plan_for(config) if plan is None else plan
    run = Run(config, plan)
    scale = run.scale
    loads = workloads(config.workload) if loads is None else loads
    machines = [m for w in loads for m in w.machines]
    schema = f"sim_{config.seed}_{uuid.uuid4().hex[:8]}"
    lease = config.lease * scale
    async with asyncio_loop():
        admin = await Pool.open(dsn, schema, min_size=1, max_size=2)
        watch = await Pool.open(dsn, schema, min_size=1, max_size=1)
        serializer = Serializer(run, clock)
        dbs: list[SimDatabase] = []
        try:
            await pool_migrate(admin)
            await admin.execute(Q.sim_freeze_tables)
            await admin.execute(Q.sim_create_ledger)
            if prepare is not None:
                await prepare(admin)
            client_slot = Slot(0, "driver")
            client = await open_slot_db(run, serializer, client_slot, dsn, schema, machines, None, None)
            dbs.append(client)
            for w in loads:
                await w.setup(client)
            actions = []
            per = max(1, config.instances // len(loads))
            for w in loads:
                actions += w.schedule(run.workload_rng, per, config.chaos_seconds * scale, scale)
            actions.sort(key=lambda a: a[0])
            slots = [Slot(i, f"w{i}") for i in range(1, config.workers + 1)]
            await serializer.settle()
            run.phase = "chaos"
            t0 = trio.current_time()
            if clock is not None:
                clock.autojump_threshold = 0

            async def supervise(slot: Slot) -> None:
                while run.phase != "done":  # a worker that crashed restarts after half a lease
                    slot.incarnation += 1
                    db = await serializer.frozen(lambda: open_slot_db(run, serializer, slot, dsn, schema,
                                                                      machines, admin, watch))
                    dbs.append(db)
                    rt = Runtime(db, machines=machines, queues={QUEUE: 4}, lease=lease, chain=config.chain,
                                 heartbeat=lease / 3, reap_every=lease / 2, poll_min=1.0 * scale,
                                 poll_max=8.0 * scale, drain_timeout=lease, worker_id=slot.worker_id,
                                 clock=db.clock,
                                 on_error=functools.partial(note_error, run, slot.worker_id))
                    slot.runtime = rt
                    run.log.add(f"{slot.worker_id} start")
                    try:
                        async with trio.open_nursery() as nursery:
                            await nursery.start(rt.run)
                            if run.phase == "done":
                                rt.stop()
                            await rt.wait_stopped()
                    except Exception as exc:  # an engine bug: the runtime must survive its faults
                        run.violate("workers_survive", f"{slot.worker_id} died: {type(exc).__name__}: {exc}")
                        rt.killed = True
                    finally:
                        dbs.remove(db)
                        db.pool.raw.terminate()  # a dead process's connections die with it
                    run.log.add(f"{slot.worker_id} {'crashed' if rt.killed else 'stopped'}")
                    if run.phase == "done":
                        return
                    await trio.sleep(lease / 2 if rt.killed else 1.0 * scale)  # crashed, or drained

            procs = Workers(run, dsn, schema, lease, config.workers, watch) if config.processes else None
            async with trio.open_nursery() as nursery:
                if procs is not None:
                    nursery.start_soon(procs.supervise, plan)
                else:
                    for slot in slots:
                        nursery.start_soon(supervise, slot)
                for at, act in actions:
                    await trio.sleep_until(t0 + at)
                    await act(client)
                await trio.sleep_until(t0 + config.chaos_seconds * scale)
                run.phase = "heal"
                run.log.add("phase heal")
                if progress:
                    progress("heal", 0.5)
                early = await history(client)
                deadline = trio.current_time() + config.heal_bound * scale
                while trio.current_time() < deadline:
                    await trio.sleep(10 * scale)
                    rows = await client.pool.fetch(Q.sim_instances_all)
                    if all(r["status"] in TERMINAL for r in rows):
                        break
                run.phase = "done"
                run.log.add("phase liveness")
                if procs is not None:
                    await procs.stop()
                for slot in slots:
                    if slot.runtime is not None:
                        slot.runtime.stop()
                nursery.cancel_scope.deadline = trio.current_time() + lease * 4
            if nursery.cancel_scope.cancelled_caught:
                run.violate("workers_survive", "a worker did not stop within four leases of being asked")
            if procs is not None:
                run.steps = procs.records()
            if clock is not None:
                clock.autojump_threshold = math.inf
            final = Final(
                instances=[dict(r) for r in await admin.fetch(Q.sim_instances_all)],
                signals=[dict(r) for r in await admin.fetch(Q.sim_signals_all)],
                history=[dict(r) for r in await admin.fetch(Q.sim_history_all)],
                ledger=[dict(r) for r in await admin.fetch(Q.sim_ledger_all)],
            )
        finally:
            with trio.CancelScope(shield=True):
                for db in dbs:
                    db.pool.raw.terminate()
                if not keep_schema:
                    await drop_schema(admin, schema)
                await watch.close()
                await admin.close()
    violations = list(run.violations)
    violations += invariants.check_all(run, final, early)
    for w in loads:
        violations += w.check(run, final)
    statuses = Counter(i["status"] for i in final.instances)
    outcomes = sum(1 for h in final.history if h["event"] in invariants.OUTCOMES)
    return Result(
        config=config, plan=plan, violations=violations, log_hash=run.log.hexdigest(),
        operations=len(run.log.lines), last_events=list(run.log.last), statuses=dict(sorted(statuses.items())),
        steps=len(run.steps), reexecutions=max(0, len(run.steps) - outcomes),
        faults=dict(sorted(run.faults_fired.items())),
        fenced=sum(1 for h in final.history if h["event"] == "fenced"),
        virtual_seconds=trio.current_time() - t0, real_seconds=0.0, calls=serializer.calls, log=run.log.lines,
    )


def note_error(run: Run, worker_id: str, message: str) -> None:
    run.log.note(f"{worker_id}: {message[:160]}")


async def history(db: SimDatabase) -> list[dict[str, Any]]:
    return [dict(r) for r in await db.pool.fetch(Q.sim_history_all)]
