"""Running one simulation: a fresh schema, worker slots with their gates, the driver's actors, the
phases (chaos -> heal -> liveness) and the final checks.

    dst   (default) trio MockClock + one call at a time through the gate: same seed, same log.
    chaos real time and real concurrency (faults still drawn from the seed; interleaving not reproducible).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import logging
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import trio
import trio.testing
import trio_asyncio
from trio._core import _run as trio_run_module

from durable import Registry, Runtime, VirtualClock
from durable._pg import Pool, asyncio_loop, keep_session
from durable.client import pool_migrate
from durable.clock import DatabaseClock
from durable.embedded import resolve_dsn
from durable.migrate import drop_schema
from durable.outcomes import TERMINAL
from durable.sql import Q

from . import invariants
from .bugs import Prepare
from .core import INVARIANTS, SIM_VALUE_BYTES, Run, SimConfig, SimDatabase, Violation
from .gate import Serializer, Slot, SlotGate, deterministic_scheduling, seeded_clock
from .plan import Fault, draw_plan
from .processes import Workers
from .workloads import Action, Final, Workload, workloads

Progress = Callable[[str, float], None]
QUEUE = "sim"
PROGRESS_TICK = 2.0  # virtual seconds between queue progress checks
PROGRESS_BOUND = 24.0  # virtual seconds a due row may wait unpicked while a worker has room (3 x poll_max)
VIRTUAL_EPOCH = VirtualClock().epoch


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
            "seed": self.config.seed,
            "config": {
                "workload": self.config.workload,
                "instances": self.config.instances,
                "workers": self.config.workers,
                "faults": list(self.config.faults),
                "mode": self.config.mode,
                "lease": self.config.lease,
                "chain": self.config.chain,
                "chaos_seconds": self.config.chaos_seconds,
                "heal_bound": self.config.heal_bound,
            },
            "command": self.config.command(),
            "plan": [f.to_json() for f in self.plan],
            "violated": sorted({v.invariant for v in self.violations}),
            "violations": [{"invariant": v.invariant, "detail": v.detail} for v in self.violations],
            "log_hash": self.log_hash,
            "statuses": self.statuses,
            "faults": self.faults,
            "last_events": self.last_events,
            "operation_log": self.log,
        }


def plan_for(config: SimConfig) -> list[Fault]:
    """The fault plan the seed draws for this configuration."""
    return draw_plan(
        random.Random(f"{config.seed}:plan"),
        list(config.faults),
        workers=config.workers,
        instances=config.instances * 2,
        lease=config.lease,
    )


def simulate(
    config: SimConfig,
    plan: list[Fault] | None = None,
    *,
    dsn: str | None = None,
    progress: Progress | None = None,
    keep_schema: bool = False,
    prepare: Prepare | None = None,
    loads: list[Workload] | None = None,
) -> Result:
    """Run one simulation to the end (blocking; starts its own trio run). ``prepare`` runs on the
    fresh schema before the workers start (planted bugs use it); ``loads`` replaces the named workload
    (a scenario written in Python)."""
    target = resolve_dsn(dsn)
    started = time.perf_counter()
    if config.mode == "dst":
        clock = seeded_clock(config.seed)
        result = trio.run(_dst, config, plan, target, clock, progress, keep_schema, prepare, loads, clock=clock)
    else:
        result = trio.run(_simulate, config, plan, target, None, progress, keep_schema, prepare, loads)
    result.real_seconds = time.perf_counter() - started
    return result


async def simulate_async(
    config: SimConfig,
    plan: list[Fault] | None = None,
    *,
    dsn: str,
    clock: trio.testing.MockClock | None,
    prepare: Prepare | None = None,
    loads: list[Workload] | None = None,
    keep_schema: bool = False,
) -> Result:
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


async def _dst(
    config: SimConfig,
    plan: list[Fault] | None,
    dsn: str,
    clock: trio.testing.MockClock,
    progress: Progress | None,
    keep_schema: bool,
    prepare: Prepare | None,
    loads: list[Workload] | None,
) -> Result:
    collect = None
    if config.spans:
        from . import spans

        collect = spans.install(config.seed)
    deterministic_scheduling(True)
    trio_run_module._r.seed(config.seed)
    try:
        result = await _simulate(config, plan, dsn, clock, progress, keep_schema, prepare, loads)
    finally:
        deterministic_scheduling(False)
    if collect is not None:  # the spans, in the order they ended, join the log and its hash
        result.log = [*result.log, *collect.lines]
        digest = hashlib.sha256()
        for line in result.log:
            digest.update(line.encode() + b"\n")
        result.log_hash = digest.hexdigest()
        result.operations = len(result.log)
    return result


async def open_slot_db(
    run: Run,
    serializer: Serializer,
    slot: Slot,
    dsn: str,
    schema: str,
    machines: list[Any],
    admin: Pool | None,
    watch: Pool | None,
) -> SimDatabase:
    app = f"sim-{schema}-{slot.name}"[:63]
    raw = await trio_asyncio.aio_as_trio(asyncpg.create_pool)(
        dsn,
        # no connection floor: asyncpg restores a floor (min_size) in a background task as soon as a killed
        # connection leaves the pool below it, a reconnect outside the gate whose real duration changed the
        # log of a seed (ops seed 2: three hashes with 0-30 ms added to it). Without one, a call that needs a
        # connection opens it in its own turn.
        min_size=0,
        max_size=3,
        max_inactive_connection_lifetime=0,
        statement_cache_size=256,
        reset=keep_session,  # the engine keeps no session state: skip a round trip per call
        server_settings={"search_path": f"{schema},public", "application_name": app},
    )
    pool = Pool(raw, dsn, schema)
    pool.gate = SlotGate(run, serializer, slot, admin, watch, app, raw)
    clock = VirtualClock() if run.config.mode == "dst" else DatabaseClock()
    db = SimDatabase(pool, clock=clock, registry=Registry(machines), max_value_bytes=SIM_VALUE_BYTES)
    db.run = run
    db.slot_name = slot.name
    slot.db = db
    return db


async def _simulate(
    config: SimConfig,
    plan: list[Fault] | None,
    dsn: str,
    clock: trio.testing.MockClock | None,
    progress: Progress | None,
    keep_schema: bool,
    prepare: Prepare | None,
    loads: list[Workload] | None,
) -> Result:
    sim = Simulation(
        config,
        plan_for(config) if plan is None else plan,
        dsn,
        clock,
        workloads(config.workload) if loads is None else loads,
    )
    with engine_log_to(sim.run_):
        return await sim.run(progress=progress, keep_schema=keep_schema, prepare=prepare)


class _RunLog(logging.Handler):
    """The engine's log lines (lost leases, blocked steps, dead workers) go to the run's failure context,
    not to the terminal."""

    def __init__(self, run: Run) -> None:
        super().__init__()
        self.run = run

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.run.log.note(record.getMessage()[:200])
        except RuntimeError:  # outside the run's trio context
            pass


@contextlib.contextmanager
def engine_log_to(run: Run) -> Iterator[None]:
    logger = logging.getLogger("durable")
    handler, propagate = _RunLog(run), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


class Simulation:
    """One run: setup on a fresh schema, the chaos / heal / liveness phases, the final checks."""

    def __init__(
        self,
        config: SimConfig,
        plan: list[Fault],
        dsn: str,
        clock: trio.testing.MockClock | None,
        loads: list[Workload],
    ) -> None:
        self.config = config
        self.plan = plan
        self.dsn = dsn
        self.clock = clock
        self.loads = loads
        self.run_ = Run(config, plan)
        self.scale = self.run_.scale
        self.lease = config.lease * self.scale
        self.machines = [m for w in loads for m in w.machines]
        self.run_.max_attempts = {m.name: m.max_attempts for m in self.machines}
        self.run_.kill_worker = self._kill_worker
        self.schema = f"sim_{config.seed}_{uuid.uuid4().hex[:8]}"
        self.serializer = Serializer(self.run_, clock)
        self.dbs: list[SimDatabase] = []
        self.slots = [Slot(i, f"w{i}") for i in range(1, config.workers + 1)]
        self.t0 = 0.0
        self.early: list[dict[str, Any]] = []

    async def run(self, *, progress: Progress | None, keep_schema: bool, prepare: Prepare | None) -> Result:
        async with asyncio_loop():
            self.admin = await Pool.open(self.dsn, self.schema, min_size=1, max_size=3)
            self.watch = await Pool.open(self.dsn, self.schema, min_size=1, max_size=1)
            self.serializer.watch = self.watch
            try:
                client = await self._setup(prepare)
                await self._phases(client, progress)
                final = await self._final()
            finally:
                with trio.CancelScope(shield=True):
                    await self.serializer.release_held()
                    for db in self.dbs:
                        db.pool.terminate()
                    if not keep_schema:
                        await drop_schema(self.admin, self.schema)
                    await self.watch.close()
                    await self.admin.close()
        return self._result(final)

    async def _open(self, slot: Slot, *, faults: bool) -> SimDatabase:
        db = await open_slot_db(
            self.run_,
            self.serializer,
            slot,
            self.dsn,
            self.schema,
            self.machines,
            self.admin if faults else None,
            self.watch if faults else None,
        )
        self.dbs.append(db)
        return db

    async def _setup(self, prepare: Prepare | None) -> SimDatabase:
        await pool_migrate(self.admin)
        await self.admin.execute(Q.sim_freeze_tables)
        await self.admin.execute(Q.sim_create_ledger)
        if prepare is not None:
            await prepare(self.admin)
        client = await self._open(Slot(0, "driver"), faults=True)  # its signals may be held (signal_lock)
        for w in self.loads:
            await w.setup(client)
        await self.serializer.settle()
        return client

    def _actions(self) -> list[tuple[float, Action]]:
        cfg, actions = self.config, []
        per = max(1, cfg.instances // len(self.loads))
        for w in self.loads:
            actions += w.schedule(self.run_.workload_rng, per, cfg.chaos_seconds * self.scale, self.scale)
        return sorted(actions, key=lambda a: a[0])

    async def _supervise(self, slot: Slot) -> None:
        """One worker slot: run an incarnation until it stops; a crashed (or drained) one restarts."""
        run, lease, scale = self.run_, self.lease, self.scale
        while run.phase != "done":
            slot.incarnation += 1
            db = await self.serializer.frozen(functools.partial(self._open, slot, faults=True))
            rt = Runtime(
                db,
                machines=self.machines,
                queues={QUEUE: 4},
                lease=lease,
                chain=self.config.chain,
                heartbeat=lease / 3,
                reap_every=lease / 2,
                poll_min=1.0 * scale,
                poll_max=8.0 * scale,
                drain_timeout=lease,
                worker_id=slot.worker_id,
                clock=db.clock,
                on_error=functools.partial(note_error, run, slot.worker_id),
            )
            slot.runtime = rt
            run.log.add(f"{slot.worker_id} start")
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(rt.run)
                    if run.phase == "done":
                        rt.stop()
                    await rt.wait_stopped()
            except Exception as exc:  # an engine bug: the runtime must survive its faults
                run.violate("workers_survive", f"{slot.worker_id} died: {leaf_errors(exc)}")
                rt.killed = True
            finally:
                self.dbs.remove(db)
                db.pool.terminate()  # a dead process's connections die with it
                if rt.killed:
                    slot.dead.add(slot.worker_id)
            run.log.add(f"{slot.worker_id} {'crashed' if rt.killed else 'stopped'}")
            if run.phase == "done":
                return
            await trio.sleep(lease / 2 if rt.killed else 1.0 * scale)

    def _kill_worker(self, worker_id: str) -> None:
        """A step crashes its own worker (the hostile workload's Crasher): Runtime.kill, like a segfault."""
        for slot in self.slots:
            if slot.runtime is not None and slot.worker_id == worker_id:
                self.run_.log.add(f"a step crashed worker {worker_id}")
                slot.runtime.kill()

    async def _watch_progress(self) -> None:
        """Queue progress (dst): every few virtual seconds, the due runnable rows a pick would take now (no
        busy partition key, no occupied unique key); one that stays so for ``PROGRESS_BOUND`` while some
        worker had room to pick it is a stall. A moment when no worker had room (all full, stopped, crashed or
        paused) restarts every row's count."""
        run, scale = self.run_, self.scale
        since: dict[int, float] = {}
        calm_since = trio.current_time()
        reported: set[int] = set()
        while run.phase in ("chaos", "heal"):
            await trio.sleep(PROGRESS_TICK * scale)
            now = trio.current_time()
            if not any(self._has_room(slot) for slot in self.slots):
                calm_since = now
            rows = await self.serializer.frozen(
                functools.partial(
                    self.admin.fetch, Q.sim_due_waiting, VIRTUAL_EPOCH + datetime.timedelta(seconds=now), QUEUE
                )
            )
            due = {r["id"]: r for r in rows}
            since = {iid: since.get(iid, now) for iid in due}
            for iid, first in since.items():
                waited = now - max(first, calm_since)
                if waited > PROGRESS_BOUND * scale and iid not in reported:
                    reported.add(iid)
                    r = due[iid]
                    run.violate(
                        "queue_progress",
                        f"instance {iid} ({r['machine']}.{r['step']}) due and runnable for {waited:.1f}s "
                        "unpicked while a worker had room",
                    )

    def _has_room(self, slot: Slot) -> bool:
        rt = slot.runtime
        if rt is None or rt.stopping or rt.killed or slot.paused is not None:
            return False
        return any(s.demand() > 0 for s in rt.schedulers.values())

    async def _phases(self, client: SimDatabase, progress: Progress | None) -> None:
        run, cfg = self.run_, self.config
        actions = self._actions()
        run.phase = "chaos"
        self.t0 = trio.current_time()
        if self.clock is not None:
            self.clock.autojump_threshold = 0
        procs = Workers(run, self.dsn, self.schema, self.lease, cfg.workers, self.watch) if cfg.processes else None
        async with trio.open_nursery() as nursery:
            if procs is not None:
                nursery.start_soon(procs.supervise, self.plan)
            else:
                for slot in self.slots:
                    nursery.start_soon(self._supervise, slot)
            if self.clock is not None:  # needs calls in commit order and the runtimes' own state
                nursery.start_soon(self._watch_progress)
            try:
                for at, act in actions:
                    await trio.sleep_until(self.t0 + at)
                    await act(client)
                await trio.sleep_until(self.t0 + cfg.chaos_seconds * self.scale)
                run.phase = "heal"
                run.log.add("phase heal")
                if progress:
                    progress("heal", 0.5)
                self.early = await history(client)
                deadline = trio.current_time() + cfg.heal_bound * self.scale
                while trio.current_time() < deadline:
                    await trio.sleep(10 * self.scale)
                    rows = await client.pool.fetch(Q.sim_instances_all)
                    if all(r["status"] in TERMINAL for r in rows):
                        break
            except BaseException:
                if procs is not None:  # no worker process may outlive a failed run, nor its files
                    with trio.CancelScope(shield=True):
                        await procs.stop()
                    procs.remove()
                raise
            run.phase = "done"
            run.log.add("phase liveness")
            if procs is not None:
                await procs.stop()
            for slot in self.slots:
                if slot.runtime is not None:
                    slot.runtime.stop()
            nursery.cancel_scope.deadline = trio.current_time() + self.lease * 4
        if nursery.cancel_scope.cancelled_caught:
            run.violate("workers_survive", "a worker did not stop within four leases of being asked")
        if procs is not None:
            try:
                run.steps = procs.records()
            finally:
                procs.remove()

    async def _final(self) -> Final:
        if self.clock is not None:
            self.clock.autojump_threshold = math.inf
        self.end = trio.current_time()
        admin = self.admin
        return Final(
            instances=[dict(r) for r in await admin.fetch(Q.sim_instances_all)],
            signals=[dict(r) for r in await admin.fetch(Q.sim_signals_all)],
            history=[dict(r) for r in await admin.fetch(Q.sim_history_all)],
            ledger=[dict(r) for r in await admin.fetch(Q.sim_ledger_all)],
        )

    def _result(self, final: Final) -> Result:
        run = self.run_
        violations = list(run.violations)
        violations += invariants.check_all(run, final, self.early)
        for w in self.loads:
            violations += w.check(run, final)
        statuses = Counter(i["status"] for i in final.instances)
        outcomes = sum(1 for h in final.history if h["event"] in invariants.OUTCOMES)
        return Result(
            config=self.config,
            plan=self.plan,
            violations=violations,
            log_hash=run.log.hexdigest(),
            operations=len(run.log.lines),
            last_events=list(run.log.last),
            statuses=dict(sorted(statuses.items())),
            steps=len(run.steps),
            reexecutions=max(0, len(run.steps) - outcomes),
            faults=dict(sorted(run.faults_fired.items())),
            fenced=sum(1 for h in final.history if h["event"] == "fenced"),
            virtual_seconds=self.end - self.t0,
            real_seconds=0.0,
            calls=self.serializer.calls,
            log=run.log.lines,
        )


def leaf_errors(exc: BaseException) -> str:
    """The innermost exceptions of a (nested) exception group, as `Type: message`."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(leaf_errors(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def note_error(run: Run, worker_id: str, message: str) -> None:
    run.log.note(f"{worker_id}: {message[:160]}")


async def history(db: SimDatabase) -> list[dict[str, Any]]:
    return [dict(r) for r in await db.pool.fetch(Q.sim_history_all)]
