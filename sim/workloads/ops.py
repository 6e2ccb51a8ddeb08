"""Operator actions on live instances: retry a failed child after its parent joined, cancel instances
that wait or run, cancel a child of a parent that awaits its children, cancel such a parent. Not part of
`mixed`: `durable sim --workload ops`.

Some assemblies also spawn `Waiter` parts that await a `go` signal; a `Controller` actor (a machine, so it
runs under the faults too) waits for the spawn, then either cancels one waiter (idle: awaiting, or not yet
picked; or executing: cancel requested) and sends `go` to the others, or cancels the whole assembly while it
awaits its children and sends `go` to every waiter.

Model: a retried child ends done and leaves its (already released) parent alone; a cancelled instance
ends cancelled; a cancelled child counts in its parent's join like a failed one (the parent's result lists
it as cancelled); a cancelled parent's children still all end."""

from __future__ import annotations

import random

import trio

import durable
from durable import Await, Child, Done, Machine, Next, NotDeliverable, Spawn, Stop

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


class Waiter(Machine, queue=QUEUE, name="sim.waiter"):
    @sim_step
    async def wait(self, ctx: durable.Context) -> Await | Next:
        if ctx.signals_named("go"):  # it came before this (re-)run: an await would wait for another one
            return Next("finish")
        await trio.sleep(1.0)  # a cancel may land while this runs (requested) or while it awaits (idle)
        return Await("go", step="finish")

    @sim_step
    async def finish(self, ctx: durable.Context) -> Done:
        return Done("went")


class Assembly(Machine, queue=QUEUE, name="sim.assembly"):
    class State(durable.State):
        parts: int
        broken: int
        waiters: int = 0

    @sim_step
    async def order(self, ctx: durable.Context) -> Spawn:
        kids = [Child(Part, {"broken": j < ctx.state.broken}) for j in range(ctx.state.parts)]
        kids += [Child(Waiter, {}) for _ in range(ctx.state.waiters)]
        return Spawn("assemble", kids, ctx.state)

    @sim_step
    async def assemble(self, ctx: durable.Context) -> Done:
        return Done(sorted(c.status for c in ctx.children))


class Idle(Machine, queue=QUEUE, name="sim.idle"):
    @sim_step
    async def wait(self, ctx: durable.Context) -> Await:
        await trio.sleep(2.0)
        return Await("never")


class Controller(Machine, queue=QUEUE, name="sim.controller"):
    """The operator of one assembly with waiters: once they are spawned, cancel one of them (or the
    assembly itself) and let the others go. Re-runs are harmless: a cancel of an ended instance changes
    nothing and `go` carries a dedup key."""

    class State(durable.State):
        assembly: int
        cancel_parent: bool = False
        delay: float = 0.0  # after the spawn: 0 tends to meet the waiter running, more meets it awaiting
        looks: int = 0

    @sim_step
    async def watch(self, ctx: durable.Context) -> Next | Done:
        assert ctx.db is not None
        parent = await ctx.db.get(ctx.state.assembly)
        waiters = sorted(c["id"] for c in parent.children if c["machine"] == Waiter.name)
        if not waiters:  # not spawned yet
            await trio.sleep(3.0)
            ctx.state.looks += 1
            return Next("watch", ctx.state)
        await trio.sleep(ctx.state.delay)
        if ctx.state.cancel_parent:
            after = await ctx.db.cancel(ctx.state.assembly, "operator: the whole assembly")
            go = waiters
        else:
            after = await ctx.db.cancel(waiters[0], "operator: one waiting part")
            go = waiters[1:]
        for w in go:
            try:
                await ctx.db.signal(w, "go", {}, dedup_key=f"go-{w}")
            except NotDeliverable:
                pass
        return Done({"cancelled": ctx.state.assembly if ctx.state.cancel_parent else waiters[0], "after": after})


class Ops:
    name = "ops"
    machines: list[type[Machine]] = [Assembly, Part, Idle, Waiter, Controller]

    def __init__(self) -> None:
        self.assemblies: dict[int, tuple[int, int, int, bool]] = {}  # id -> parts, broken, waiters, cancelled
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
            waiters = rng.choice([0, 0, 1, 2])
            whole = waiters > 0 and rng.random() < 0.3  # the controller cancels the assembly itself
            delay = rng.choice([0.0, 2.0, 5.0]) * scale
            box: dict[str, int] = {}

            async def insert(db: SimDatabase, parts: int = parts, broken: int = broken, waiters: int = waiters,
                             whole: bool = whole, delay: float = delay, box: dict[str, int] = box) -> None:
                iid = await db.insert(Assembly, {"parts": parts, "broken": broken, "waiters": waiters})
                assert iid is not None
                box["id"] = iid
                self.assemblies[iid] = (parts, broken, waiters, whole)
                if waiters:
                    await db.insert(Controller, {"assembly": iid, "cancel_parent": whole, "delay": delay})

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
        for iid, (parts, broken, waiters, whole) in self.assemblies.items():
            row = rows[iid]
            if whole:  # cancelled while it awaited its children: no result, every child still ends
                if row["status"] != "cancelled":
                    out.append(Violation("state_matches_model",
                                         f"assembly {iid}: {row['status']}, model says cancelled (by its controller)"))
                continue
            want = sorted(["done"] * (parts - broken) + ["failed"] * broken
                          + (["cancelled"] + ["done"] * (waiters - 1) if waiters else []))
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
