"""Streams: steps append tokens to a Durable Stream (producer = instance id, epoch = lease token) under
crashes and zombies; the stream must hold every token exactly once, in order.

Each speaker runs ``speak`` a few times (each run appends ``per`` tokens with deterministic seqs, then
moves on), and a final ``collect`` step reads the whole stream back into its result. A zombie's appends
are fenced and a re-executed step's appends are duplicates, so the collected stream equals the model.
"""

from __future__ import annotations

import random

import orjson

import durable
from durable import Done, Machine, Next, Retry
from durable.machine import describe
from durable.outcomes import Outcome
from durable.streams import Store, append

from ..core import Run, SimDatabase, Violation, sim_step
from . import Action, Final, decode

QUEUE = "sim"
JSON = "application/json"


def path_of(iid: int) -> str:
    return f"/sim/speaker/{iid}"


class Speaker(Machine, queue=QUEUE, name="sim.speaker", max_attempts=500):
    backoff_base = 0.5

    class State(durable.State):
        steps: int
        per: int
        done_steps: int = 0

    @sim_step
    async def speak(self, ctx: durable.Context) -> Next:
        s = ctx.state
        for i in range(s.per):
            await append(ctx, path_of(ctx.id), f"{s.done_steps}.{i}", seq=s.done_steps * s.per + i, content_type=JSON)
        s.done_steps += 1
        return Next("speak" if s.done_steps < s.steps else "collect", s)

    @sim_step
    async def collect(self, ctx: durable.Context) -> Done:
        assert ctx.db is not None
        page = await Store(ctx.db.pool).read(path_of(ctx.id), 0, touch=False)
        return Done(orjson.loads(page.body()) if page.messages else [])

    async def handle(self, error: BaseException, ctx: durable.Context) -> Outcome:
        # Fenced (a zombie's append) or an injected step fault: try again; a fenced retry is dropped
        return Retry(delay=self.backoff(min(ctx.attempt, 3)), error=describe(error))


class StreamsWorkload:
    name = "streams"
    machines: list[type[Machine]] = [Speaker]

    def __init__(self) -> None:
        self.speakers: dict[int, tuple[int, int]] = {}

    async def setup(self, db: SimDatabase) -> None:
        return None

    def schedule(
        self, rng: random.Random, count: int, horizon: float, scale: float = 1.0
    ) -> list[tuple[float, Action]]:
        actions: list[tuple[float, Action]] = []
        for _ in range(max(1, count // 2)):
            at = round(rng.uniform(0, horizon / 2), 2)
            steps, per = rng.randint(1, 3), rng.randint(1, 4)

            async def insert(db: SimDatabase, steps: int = steps, per: int = per) -> None:
                iid = await db.insert(Speaker, {"steps": steps, "per": per})
                assert iid is not None
                self.speakers[iid] = (steps, per)

            actions.append((at, insert))
        return actions

    def check(self, run: Run, final: Final) -> list[Violation]:
        out: list[Violation] = []
        rows = final.by_id()
        for iid, (steps, per) in self.speakers.items():
            row = rows[iid]
            want = [f"{j}.{i}" for j in range(steps) for i in range(per)]
            got = decode(row["result"])
            if row["status"] != "done" or got != want:
                out.append(
                    Violation("state_matches_model", f"speaker {iid}: {row['status']} stream {got}, model says {want}")
                )
        return out
