"""Hostile machines: user code and values the engine must bound (issue 14). Not part of `mixed`:
`durable sim --workload hostile`.

* `Crasher` crashes its worker (Runtime.kill, like a segfault in user code) on every attempt of its first
  step: only ``max_attempts`` stops it, without its step or ``handle`` ever finishing.
* `Poisoned` returns a state the database refuses (a CHECK constraint installed by the workload); ``handle``
  sees the refusal (``OutcomeRejected``) and goes on with a clean state.
* `Overdue` returns ``Retry(delay=1e12)`` (31,700 years); the engine refuses it before the database and
  ``handle`` goes on.
* `Keyed` pairs share a unique key whose scope is ``executing`` only, with a long step: one holds the key
  while the other waits its turn, and the queue's other rows go on.
* `Slow` runs one step for longer than the lease (its heartbeats keep it) and `Filler` keeps the queue busy.

Model: crashers end failed (attempts exhausted), their step never run at attempt max_attempts or later;
poisoned, overdue and keyed instances end done with the outcome their ``handle`` (or step) chose; keyed
holders never overlap."""

from __future__ import annotations

import itertools
import random
from typing import Any

import trio

import durable
from durable import Done, Machine, Next, Retry
from durable.errors import OutcomeRejected
from durable.outcomes import Outcome
from durable.sql import Q

from ..core import Run, SimDatabase, StepRecord, Violation, sim_step
from . import Action, Final, decode

QUEUE = "sim"
KEYED_WORK = 40.0  # virtual seconds a keyed step holds its unique key (past the queue progress bound)


class Crasher(Machine, queue=QUEUE, name="sim.crasher", max_attempts=3):
    @sim_step
    async def boom(self, ctx: durable.Context) -> Done:
        assert ctx.db is not None
        run = ctx.db.run  # type: ignore[attr-defined]
        await trio.sleep(1.0)
        if run.kill_worker is not None:
            run.kill_worker(ctx.worker_id)
        await trio.sleep_forever()  # the kill cancels this step with its worker
        raise AssertionError("unreachable")


class Poisoned(Machine, queue=QUEUE, name="sim.poisoned"):
    class State(durable.State):
        t: str = "fresh"
        refused: int = 0

    @sim_step
    async def start(self, ctx: durable.Context) -> Next:
        await trio.sleep(0.5)
        return Next("end", {"t": "poison", "refused": ctx.state.refused})

    @sim_step
    async def end(self, ctx: durable.Context) -> Done:
        return Done({"t": ctx.state.t, "refused": ctx.state.refused})

    async def handle(self, error: BaseException, ctx: durable.Context) -> Outcome:
        if isinstance(error, OutcomeRejected):
            return Next("end", {"t": "clean", "refused": ctx.state.refused + 1})
        return await super().handle(error, ctx)


class Overdue(Machine, queue=QUEUE, name="sim.overdue"):
    @sim_step
    async def start(self, ctx: durable.Context) -> Retry:
        await trio.sleep(0.5)
        return Retry(delay=1e12)  # past durable.MAX_DELAY: refused before it reaches the database

    async def handle(self, error: BaseException, ctx: durable.Context) -> Outcome:
        return Done({"refused": type(error).__name__})


class Keyed(Machine, queue=QUEUE, name="sim.keyed"):
    class State(durable.State):
        key: str

    @sim_step
    async def hold(self, ctx: durable.Context) -> Done:
        await trio.sleep(KEYED_WORK)
        return Done({"key": ctx.state.key})


class Slow(Machine, queue=QUEUE, name="sim.slow"):
    @sim_step
    async def crawl(self, ctx: durable.Context) -> Done:
        await trio.sleep(45.0)  # longer than the 30 s lease: only heartbeats keep it
        return Done("crawled")


class Filler(Machine, queue=QUEUE, name="sim.filler"):
    class State(durable.State):
        left: int

    @sim_step
    async def tick(self, ctx: durable.Context) -> Next | Done:
        await trio.sleep(1.0)
        if ctx.state.left <= 1:
            return Done("filled")
        return Next("tick", {"left": ctx.state.left - 1})


class Hostile:
    name = "hostile"
    machines: list[type[Machine]] = [Crasher, Poisoned, Overdue, Keyed, Slow, Filler]

    def __init__(self) -> None:
        self.kinds: dict[int, str] = {}  # instance id -> machine kind
        self.keys: dict[int, str] = {}

    async def setup(self, db: SimDatabase) -> None:
        await db.pool.execute(Q.sim_forbid_poison)

    def schedule(
        self, rng: random.Random, count: int, horizon: float, scale: float = 1.0
    ) -> list[tuple[float, Action]]:
        actions: list[tuple[float, Action]] = []
        counter = itertools.count()

        def later(kind: str, machine: type[Machine], state: dict[str, Any], at: float, **opts: Any) -> None:
            async def insert(db: SimDatabase) -> None:
                iid = await db.insert(machine, state, **opts)
                assert iid is not None
                self.kinds[iid] = kind
                if kind == "keyed":
                    self.keys[iid] = state["key"]

            actions.append((round(at, 2), insert))

        later("crasher", Crasher, {}, rng.uniform(0, horizon / 4))
        for _ in range(max(1, count // 4)):
            later("poisoned", Poisoned, {}, rng.uniform(0, horizon / 2))
            later("overdue", Overdue, {}, rng.uniform(0, horizon / 2))
        key = f"key-{next(counter)}"
        start = rng.uniform(0, horizon / 4)
        for k in range(2):  # the second waits for the first to leave `executing`
            later("keyed", Keyed, {"key": key}, start + k * 0.5, unique_key=key, unique_scope=["executing"])
        later("slow", Slow, {}, rng.uniform(0, horizon / 4))
        for _ in range(max(2, count // 2)):  # work that must not stall meanwhile
            later("filler", Filler, {"left": rng.randint(2, 6)}, rng.uniform(0, horizon * 0.75))
        return actions

    def check(self, run: Run, final: Final) -> list[Violation]:
        out: list[Violation] = []
        rows = final.by_id()
        for iid, kind in sorted(self.kinds.items()):
            row = rows[iid]
            status, result = row["status"], decode(row["result"])
            if kind == "crasher":  # a step_error fault may end it first, through handle()'s last attempt
                ok = status == "failed" and any(
                    s in (row["last_error"] or "") for s in ("attempts exhausted", "InjectedError")
                )
                want = "failed, attempts exhausted"
            elif kind == "poisoned":
                ok = status == "done" and result == {"t": "clean", "refused": 1}
                want = "done {'t': 'clean', 'refused': 1} (handle() saw the refusal once)"
            elif kind == "overdue":  # (or a step_error fault's exception, handled the same way)
                ok = status == "done" and result in ({"refused": "OutcomeError"}, {"refused": "InjectedError"})
                want = "done {'refused': 'OutcomeError'}"
            elif kind == "keyed":
                ok, want = status == "done" and result == {"key": self.keys[iid]}, f"done {{'key': {self.keys[iid]!r}}}"
            elif kind == "slow":
                ok, want = status == "done" and result == "crawled", "done 'crawled'"
            else:
                ok, want = status == "done" and result == "filled", "done 'filled'"
            if not ok:
                out.append(
                    Violation(
                        "state_matches_model",
                        f"{kind} {iid}: {status} {result} {row['last_error'] or ''}, model says {want}",
                    )
                )
        out += self._keys_serial(run, final)
        return out

    def _keys_serial(self, run: Run, final: Final) -> list[Violation]:
        """Committed executions of instances sharing a unique key scoped to `executing` never overlap."""
        committed = {(h["instance_id"], h["lease_token"]) for h in final.history if h["event"] == "done"}
        recs: list[StepRecord] = sorted(
            (
                r
                for r in run.steps
                if r.instance in self.keys and r.end is not None and (r.instance, r.token) in committed
            ),
            key=lambda r: r.start,
        )
        out = []
        for a, b in itertools.pairwise(recs):
            assert a.end is not None
            if self.keys[a.instance] == self.keys[b.instance] and b.start < a.end:
                out.append(
                    Violation(
                        "state_matches_model",
                        f"keyed {a.instance} and {b.instance} held unique key {self.keys[a.instance]} "
                        f"at once: [{a.start:.1f}, {a.end:.1f}] and from {b.start:.1f}",
                    )
                )
        return out
