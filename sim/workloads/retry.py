"""Retry pipeline: stages that fail transiently a planned number of times (exceptions through
``handle``, exponential backoff) and doomed pipelines whose last stage fails permanently (Stop)."""

from __future__ import annotations

import random

import durable
from durable import Done, Machine, Next, Retry, Stop
from durable.machine import describe
from durable.outcomes import Outcome

from ..core import Run, SimDatabase, Violation, sim_step
from . import Action, Final, decode

QUEUE = "sim"


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


class Pipeline(Machine, queue=QUEUE, name="sim.pipeline", max_attempts=200):
    backoff_base = 0.5

    class State(durable.State):
        stages: int
        fails: list[int]
        doomed: bool = False
        stage: int = 0
        acc: int = 0

    @sim_step
    async def stage(self, ctx: durable.Context) -> Next | Done:
        s = ctx.state
        if s.doomed and s.stage == s.stages - 1:
            raise Permanent(f"stage {s.stage} cannot succeed")
        if ctx.attempt < s.fails[s.stage]:
            raise Transient(f"stage {s.stage} attempt {ctx.attempt}")
        s.acc += s.stage + 1
        s.stage += 1
        if s.stage == s.stages:
            return Done({"acc": s.acc})
        return Next("stage", s)

    async def handle(self, error: BaseException, ctx: durable.Context) -> Outcome:
        if isinstance(error, Permanent):
            return Stop(describe(error))
        return Retry(delay=self.backoff(min(ctx.attempt, 4)), error=describe(error))


class RetryWorkload:
    name = "retry"
    machines: list[type[Machine]] = [Pipeline]

    def __init__(self) -> None:
        self.pipelines: dict[int, tuple[int, bool]] = {}

    async def setup(self, db: SimDatabase) -> None:
        return None

    def schedule(
        self, rng: random.Random, count: int, horizon: float, scale: float = 1.0
    ) -> list[tuple[float, Action]]:
        actions: list[tuple[float, Action]] = []
        for _ in range(max(1, count // 2)):
            at = round(rng.uniform(0, horizon / 2), 2)
            stages = rng.randint(1, 4)
            fails = [rng.choice([0, 0, 1, 2, 3]) for _ in range(stages)]
            doomed = rng.random() < 0.2

            async def insert(
                db: SimDatabase, stages: int = stages, fails: list[int] = fails, doomed: bool = doomed
            ) -> None:
                iid = await db.insert(Pipeline, {"stages": stages, "fails": fails, "doomed": doomed})
                assert iid is not None
                self.pipelines[iid] = (stages, doomed)

            actions.append((at, insert))
        return actions

    def check(self, run: Run, final: Final) -> list[Violation]:
        out: list[Violation] = []
        rows = final.by_id()
        for iid, (stages, doomed) in self.pipelines.items():
            row = rows[iid]
            if doomed:
                ok = row["status"] == "failed" and "Permanent" in (row["last_error"] or "")
                want = "failed (Permanent)"
            else:
                ok = row["status"] == "done" and decode(row["result"]) == {"acc": stages * (stages + 1) // 2}
                want = f"done {{'acc': {stages * (stages + 1) // 2}}}"
            if not ok:
                out.append(
                    Violation(
                        "state_matches_model",
                        f"pipeline {iid}: {row['status']} {decode(row['result'])} "
                        f"{row['last_error'] or ''}, model says {want}",
                    )
                )
        return out
