"""Operator actions on live instances: retry a failed child after its parent joined, cancel instances
that wait or run. Not part of `mixed`: `durable sim --workload ops`.

Model: a retried child ends done and leaves its (already released) parent alone; a cancelled instance
ends cancelled."""

from __future__ import annotations

import random

import trio

import durable
from durable import Await, Child, Done, Machine, Spawn, Stop

from ..core import Run, SimDatabase, Violation, sim_step
from . import Action, Final, decode

QUEUE = "sim"


class Part(Machine, queue=QUEUE, name="sim.part"):
    class State(durable.State):
        broken: bool = False

    @sim_step
    async def make(self, ctx: durable.Context) -> Done | Stop:
        assert ctx.db is not None
        await trio.sleep(1.0)
        retried = any(e.event == "retried" for e in await ctx.db.history(ctx.id))
        if ctx.state.broken and not retried:
            return Stop("broken part")
        return Done("made")


class Assembly(Machine, queue=QUEUE, name="sim.assembly"):
    class State(durable.State):
        parts: int
        broken: int

    @sim_step
    async def order(self, ctx: durable.Context) -> Spawn:
        kids = [Child(Part, {"broken": j < ctx.state.broken}) for j in range(ctx.state.parts)]
        return Spawn("assemble", kids, ctx.state)

    @sim_step
    async def assemble(self, ctx: durable.Context) -> Done:
        return Done(sorted(c.status for c in ctx.children))


class Idle(Machine, queue=QUEUE, name="sim.idle"):
    @sim_step
    async def wait(self, ctx: durable.Context) -> Await:
        await trio.sleep(2.0)
        return Await("never")


class Ops:
    name = "ops"
    machines: list[type[Machine]] = [Assembly, Part, Idle]

    def __init__(self) -> None:
        self.assemblies: dict[int, tuple[int, int]] = {}
        self.cancelled: dict[int, str] = {}
        self.retried: set[int] = set()

    async def setup(self, db: SimDatabase) -> None:
        return None

    def schedule(self, rng: random.Random, count: int, horizon: float,
                 scale: float = 1.0) -> list[tuple[float, Action]]:
        actions: list[tuple[float, Action]] = []
        for _ in range(max(1, count // 2)):
            at = round(rng.uniform(0, horizon / 4), 2)
            parts = rng.randint(1, 3)
            broken = rng.randint(0, parts)
            box: dict[str, int] = {}

            async def insert(db: SimDatabase, parts: int = parts, broken: int = broken,
                             box: dict[str, int] = box) -> None:
                iid = await db.insert(Assembly, {"parts": parts, "broken": broken})
                assert iid is not None
                box["id"] = iid
                self.assemblies[iid] = (parts, broken)

            async def repair(db: SimDatabase, box: dict[str, int] = box) -> None:
                parent = await db.get(box["id"])
                if parent.status != "done":  # retry parts of a parent that already joined only
                    return
                for child in parent.children:
                    if child["status"] == "failed" and await db.retry(child["id"]) == "runnable":
                        self.retried.add(child["id"])

            actions += [(at, insert), (round(at + horizon / 2, 2), repair)]
        for _ in range(max(1, count // 3)):
            at = round(rng.uniform(0, horizon / 4), 2)
            box2: dict[str, int] = {}

            async def idle(db: SimDatabase, box: dict[str, int] = box2) -> None:
                iid = await db.insert(Idle, {})
                assert iid is not None
                box["id"] = iid

            async def cancel(db: SimDatabase, box: dict[str, int] = box2) -> None:
                self.cancelled[box["id"]] = await db.cancel(box["id"], "operator")

            actions += [(at, idle), (round(at + rng.uniform(0, horizon / 4), 2), cancel)]
        return actions

    def check(self, run: Run, final: Final) -> list[Violation]:
        out: list[Violation] = []
        rows = final.by_id()
        kids: dict[int, list[dict[str, object]]] = {}
        for i in final.instances:
            if i["parent_id"] in self.assemblies:
                kids.setdefault(i["parent_id"], []).append(i)
        for iid, (parts, broken) in self.assemblies.items():
            row = rows[iid]
            want = sorted(["done"] * (parts - broken) + ["failed"] * broken)
            if row["status"] != "done" or decode(row["result"]) != want:
                out.append(Violation("state_matches_model",
                                     f"assembly {iid}: {row['status']} {decode(row['result'])}, model done {want}"))
            late = [k["id"] for k in kids.get(iid, []) if k["id"] in self.retried and k["status"] != "done"]
            if late:
                out.append(Violation("state_matches_model",
                                     f"assembly {iid}: parts {late} not done after the operator retried them"))
        for iid, after in self.cancelled.items():
            if after in ("cancelled", "executing") and rows[iid]["status"] != "cancelled":
                out.append(Violation("state_matches_model",
                                     f"idle {iid}: cancel said {after}, ended {rows[iid]['status']}"))
        return out
