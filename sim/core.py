"""What one simulated run shares: its config, operation log, records of step executions and leases,
the violations found so far, and the ``sim_step`` decorator the workloads' steps use."""

from __future__ import annotations

import functools
import hashlib
import os
import random
import sys
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

import durable
from durable.client import Database

from .plan import Fault

if TYPE_CHECKING:
    from durable.context import Context


TRACE = bool(os.environ.get("DURABLE_SIM_TRACE"))  # print the operation log as it grows
CHAOS_SCALE = 0.05  # chaos mode runs the same scenario 20x faster, in real time


@dataclass(frozen=True, slots=True)
class SimConfig:
    seed: int = 1
    workload: str = "mixed"
    instances: int = 12
    workers: int = 3
    faults: tuple[str, ...] = ()
    mode: str = "dst"
    lease: float = 30.0
    chaos_seconds: float = 80.0  # virtual seconds of the chaos phase (inserts and faults)
    heal_bound: float = 300.0  # virtual seconds the heal phase may take to make every instance terminal
    processes: bool = False
    chain: int = 0  # Runtime(chain=N): steps a claim may run ahead after `next`
    spans: bool = False  # dst: OpenTelemetry spans with ids from the seed, in the log

    def command(self, extra: str = "") -> str:
        """The exact command that reproduces this run."""
        from .plan import ALIASES

        faults = "all" if set(self.faults) == set(ALIASES["all"]) else ",".join(self.faults) or "none"
        parts = [
            f"durable sim --seed {self.seed} --workload {self.workload} --instances {self.instances}",
            f"--workers {self.workers} --faults {faults}",
        ]
        if self.mode != "dst":
            parts.append(f"--mode {self.mode}")
        if self.processes:
            parts.append("--processes")
        if self.chain:
            parts.append(f"--chain {self.chain}")
        if self.spans:
            parts.append("--spans")
        if self.chaos_seconds != 80.0:
            parts.append(f"--duration {self.chaos_seconds:g}")
        return " ".join(parts) + extra


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: str
    detail: str


INVARIANTS: dict[str, str] = {
    "terminal_after_heal": "every instance terminal after heal within the bound",
    "state_matches_model": "committed state equals the model's",
    "one_live_lease": "at most one live lease per instance",
    "no_fenced_outcome_visible": "no fenced outcome visible",
    "partition_serial": "no two steps of one partition key overlap",
    "child_decrements_once": "each child decrements its parent exactly once",
    "signals_accounted": "every sent signal consumed or still in the inbox",
    "money_conserved": "bank money conserved",
    "history_consistent": "history append-only and consistent",
    "workers_survive": "no worker dies of an unexpected exception",
    "release_fencing": "a release (drain, orphans, lost lease, dead worker) gives back only claims it holds",
    "queue_progress": "every due runnable row is picked within a bound while a worker has room",
    "bounded_attempts": "no step runs past max_attempts; no step loop that commits nothing",
    "timers_kept": "a durable timer's step never runs before its wake time",
    "cancel_accounted": "a cancel ends its instance; a cancelled child is counted once in its parent's join",
    "steps_exclusive": "no two executions of one instance overlap (a lost lease stops its step first)",
    "restart_frees_claims": "a restarted worker frees its dead predecessor's claims at once",
    "values_fenced": "a named value is written only under the instance's live lease",
}


@dataclass(slots=True)
class StepRecord:
    instance: int
    machine: str
    step: str
    attempt: int
    token: int
    worker: str
    partition_key: str | None
    start: float
    end: float | None = None
    outcome: str = "running"  # ok | raised | cancelled


class OpLog:
    """The operation log: deterministic lines only (virtual time, ids, tokens; never xids, wall time
    or pids). Same seed => same lines => same hash."""

    def __init__(self, tail: int = 60) -> None:
        self.lines: list[str] = []
        self._hash = hashlib.sha256()
        self.last: deque[str] = deque(maxlen=tail)

    def add(self, text: str) -> None:
        line = f"{trio.current_time():10.3f} {text}"
        self.lines.append(line)
        self._hash.update(line.encode() + b"\n")
        self.last.append(line)
        if TRACE:
            print(line, file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        """Context for a failure report only (may hold non-deterministic text): not hashed."""
        self.last.append(f"{trio.current_time():10.3f} ({text})")
        if TRACE:
            print(self.last[-1], file=sys.stderr, flush=True)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class Run:
    """The state of one simulated run, reachable from steps as ``ctx.db.run``."""

    def __init__(self, config: SimConfig, plan: list[Fault]) -> None:
        self.config = config
        self.plan = plan
        self.log = OpLog()
        self.workload_rng = random.Random(f"{config.seed}:workload")
        self.phase = "setup"
        self.scale = 1.0 if config.mode == "dst" else CHAOS_SCALE  # chaos: real seconds, compressed
        self.steps: list[StepRecord] = []
        self.executions: Counter[int] = Counter()  # instance id -> step executions so far
        self.faults_fired: Counter[str] = Counter()
        self.fired: list[str] = []
        self.violations: list[Violation] = []
        # lease model, from the results of pick / reap / release / complete: instance -> (token, worker)
        self.leases: dict[int, tuple[int, str]] = {}
        self.now: Callable[[], float] = trio.current_time  # worker processes use wall time
        self.sink: Callable[[StepRecord], None] | None = None  # worker processes write records out
        self.zombies: list[tuple[dict[int, set[int]], trio.Event]] = []  # paused workers' claims
        self.sent: list[tuple[int, str, int | None]] = []  # (target, name, signal id or None = dedup)
        self.calls: Counter[str] = Counter()  # statement -> calls so far, of every participant
        self.max_attempts: dict[str, int] = {}  # machine name -> max_attempts (the bounded attempts check)
        self.kill_worker: Callable[[str], None] | None = None  # crash the worker of this id (a step's doing)

    @property
    def faults_on(self) -> bool:
        return self.phase == "chaos"

    def violate(self, invariant: str, detail: str) -> None:
        self.log.add(f"VIOLATION {invariant}: {detail}")
        self.violations.append(Violation(invariant, detail))

    def fire(self, fault: Fault, note: str = "") -> None:
        self.faults_fired[fault.kind] += 1
        self.fired.append(fault.describe())
        self.log.add(f"FAULT {fault.describe()}{note}")

    def step_fault(self, instance: int, nth: int) -> list[Fault]:
        if not self.faults_on:
            return []
        return [f for f in self.plan if f.instance == instance and f.nth == nth]


SIM_VALUE_BYTES = 64 * 1024  # the simulator's size limit of one encoded state: an oversized one stays cheap


class SimDatabase(Database):
    """A worker's (or the driver's) Database, carrying the run for the steps."""

    run: Run
    slot_name: str


class InjectedError(Exception):
    """The exception a ``step_error`` fault raises inside a step."""


StepMethod = Callable[[Any, "Context"], Awaitable[Any]]


def sim_step(fn: StepMethod) -> StepMethod:
    """``@step`` plus the simulator's bookkeeping: record the execution interval (for the partition
    check) and apply the plan's step faults (exception, extra time)."""

    @functools.wraps(fn)
    async def wrapper(self: Any, ctx: Context) -> Any:
        db = ctx.db
        assert isinstance(db, SimDatabase)
        run = db.run
        run.executions[ctx.id] += 1
        nth = run.executions[ctx.id]
        rec = StepRecord(
            ctx.id, ctx.machine, ctx.step, ctx.attempt, ctx.lease_token, ctx.worker_id, ctx.partition_key, run.now()
        )
        run.steps.append(rec)
        run.log.add(f"{ctx.worker_id} step {ctx.machine}#{ctx.id}.{ctx.step} a{ctx.attempt} t{ctx.lease_token}")
        try:
            for fault in run.step_fault(ctx.id, nth):
                run.fire(fault)
                if fault.kind == "slow_step":
                    await trio.sleep(fault.seconds * run.scale)
                elif fault.kind == "step_error":
                    raise InjectedError(f"injected into {ctx.machine}#{ctx.id}.{ctx.step}")
            result = await fn(self, ctx)
            rec.outcome = "ok"
            return result
        except trio.Cancelled:
            rec.outcome = "cancelled"
            raise
        except Exception:
            rec.outcome = "raised"
            raise
        finally:
            rec.end = run.now()
            if run.sink is not None:
                run.sink(rec)

    return durable.step(wrapper)
