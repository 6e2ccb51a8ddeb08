"""A scenario written in Python and run under pytest-trio on its mock clock: a custom workload (its own
machine, driver and model check) through the simulator's gate, faults and invariants."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing
from durable.sim.core import Run, SimConfig, SimDatabase, Violation, sim_step
from durable.sim.harness import simulate_async
from durable.sim.plan import Fault
from durable.sim.workloads import Action, Final, decode

import durable
from durable import Done, Machine, Next

pytestmark = pytest.mark.trio


class Countdown(Machine, queue="sim", name="test.countdown"):
    class State(durable.State):
        left: int
        seen: int = 0

    @sim_step
    async def tick(self, ctx: durable.Context) -> Next | Done:
        await trio.sleep(2.0)
        ctx.state.seen += 1
        ctx.state.left -= 1
        return Done({"seen": ctx.state.seen}) if ctx.state.left == 0 else Next("tick", ctx.state)


class Countdowns:
    name = "countdowns"
    machines: list[type[Machine]] = [Countdown]

    def __init__(self) -> None:
        self.ids: dict[int, int] = {}

    async def setup(self, db: SimDatabase) -> None:
        return None

    def schedule(
        self, rng: random.Random, count: int, horizon: float, scale: float = 1.0
    ) -> list[tuple[float, Action]]:
        actions: list[tuple[float, Action]] = []
        for _ in range(count):
            n = rng.randint(1, 4)

            async def insert(db: SimDatabase, n: int = n) -> None:
                iid = await db.insert(Countdown, {"left": n})
                assert iid is not None
                self.ids[iid] = n

            actions.append((round(rng.uniform(0, horizon / 4), 2), insert))
        return actions

    def check(self, run: Run, final: Final) -> list[Violation]:
        rows = final.by_id()
        return [
            Violation("state_matches_model", f"countdown {iid}: {decode(rows[iid]['result'])}")
            for iid, n in self.ids.items()
            if decode(rows[iid]["result"]) != {"seen": n}
        ]


async def test_python_scenario_runs_on_the_pytest_trio_mock_clock(
    pg_dsn: str, autojump_clock: trio.testing.MockClock
) -> None:
    load = Countdowns()
    plan = [
        Fault("crash", slot=1, nth=1),
        Fault("step_error", instance=2, nth=1),
        Fault("zombie", slot=2, nth=1, seconds=90.0),
    ]
    started = trio.current_time()
    result = await simulate_async(
        SimConfig(seed=5, workers=2, instances=5), plan, dsn=pg_dsn, clock=autojump_clock, loads=[load]
    )
    assert result.ok, result.violations
    assert result.statuses == {"done": 5}
    assert len(load.ids) == 5
    assert result.faults.get("crash") == 1 and result.faults.get("step_error") == 1
    assert result.steps > sum(load.ids.values())  # the crash and the injected error re-ran steps
    assert trio.current_time() - started >= SimConfig().chaos_seconds  # virtual time, no real waiting
