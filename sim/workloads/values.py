"""Named values: steps put values under crashes, step errors and lost leases; a zombie's put is fenced.

Each keeper runs ``keep`` a few times. Every run puts round k's value (``r<k>``: bytes that do not depend on
the claim, so a re-run's put is the same value again) and then keeps its ``ctx.values`` handle, which holds
the claim's lease token. The next run of the instance first puts through the previous claim's handle: that
claim has ended (committed, reaped or lost), and another claim (this one) holds the instance, so the put is
a zombie's and must raise Fenced and write nothing. A final ``collect`` step reads every round's value back
(through ``db.values.mget``) into its result.

Model: the collected values are exactly ``<id>:<k>`` for every round (a zombie's put that got through
overwrites one with ``zombie``), and no zombie put returned. In dst mode the gate also checks every value_put
that wrote against its lease model (values_fenced).
"""

from __future__ import annotations

import random

import durable
from durable import Done, Machine, Next, Retry
from durable.errors import Fenced
from durable.machine import describe
from durable.outcomes import Outcome
from durable.values import StepValues, ValueRef

from ..core import Run, SimDatabase, Violation, sim_step
from . import Action, Final, decode

QUEUE = "sim"

# the last claim's ctx.values per instance (this process's steps only): the zombie handles
HANDLES: dict[int, StepValues] = {}


def expected(iid: int, rounds: int) -> list[str]:
    return [f"{iid}:{k}" for k in range(rounds)]


class Keeper(Machine, queue=QUEUE, name="sim.keeper", max_attempts=500):
    backoff_base = 0.5

    class State(durable.State):
        rounds: int
        done: int = 0

    @sim_step
    async def keep(self, ctx: durable.Context) -> Next:
        assert isinstance(ctx.db, SimDatabase)
        s = ctx.state
        stale = HANDLES.get(ctx.id)
        if stale is not None and stale.lease_token != ctx.lease_token and stale.db is ctx.db:
            target = f"r{max(s.done - 1, 0)}"
            try:
                await stale.put(target, b"zombie", override=True)
            except Fenced:
                pass
            else:
                ctx.db.run.violate(
                    "values_fenced",
                    f"instance {ctx.id}: a put under the ended claim "
                    f"t{stale.lease_token} wrote {target} while t{ctx.lease_token} holds it",
                )
        await ctx.values.put(f"r{s.done}", f"{ctx.id}:{s.done}".encode(), override=True)
        HANDLES[ctx.id] = ctx.values
        s.done += 1
        return Next("keep" if s.done < s.rounds else "collect", s)

    @sim_step
    async def collect(self, ctx: durable.Context) -> Done:
        assert ctx.db is not None
        infos = await ctx.values.list()
        refs: list[ValueRef] = [i.ref for i in sorted(infos, key=lambda i: int(i.name[1:]))]
        data = await ctx.db.values.mget(refs)
        return Done([d.decode() if d is not None else None for d in data])

    async def handle(self, error: BaseException, ctx: durable.Context) -> Outcome:
        return Retry(delay=self.backoff(min(ctx.attempt, 3)), error=describe(error))


class ValuesWorkload:
    name = "values"
    machines: list[type[Machine]] = [Keeper]

    def __init__(self) -> None:
        self.keepers: dict[int, int] = {}
        HANDLES.clear()

    async def setup(self, db: SimDatabase) -> None:
        return None

    def schedule(
        self, rng: random.Random, count: int, horizon: float, scale: float = 1.0
    ) -> list[tuple[float, Action]]:
        actions: list[tuple[float, Action]] = []
        for _ in range(max(1, count)):
            at = round(rng.uniform(0, horizon / 2), 2)
            rounds = rng.randint(2, 4)

            async def insert(db: SimDatabase, rounds: int = rounds) -> None:
                iid = await db.insert(Keeper, {"rounds": rounds})
                assert iid is not None
                self.keepers[iid] = rounds

            actions.append((at, insert))
        return actions

    def check(self, run: Run, final: Final) -> list[Violation]:
        out: list[Violation] = []
        rows = final.by_id()
        for iid, rounds in self.keepers.items():
            row = rows[iid]
            got = decode(row["result"])
            if row["status"] != "done" or got != expected(iid, rounds):
                out.append(
                    Violation(
                        "state_matches_model",
                        f"keeper {iid}: {row['status']} values {got}, model says {expected(iid, rounds)}",
                    )
                )
        return out
