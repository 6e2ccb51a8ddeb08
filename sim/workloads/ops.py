"""Operator actions on live instances: retry a failed child after its parent joined, cancel instances
that wait or run, cancel a child of a parent that awaits its children, cancel such a parent. Not part of
`mixed`: `durable sim --workload ops`.

Some assemblies also spawn `Waiter` parts that await a `go` signal; a `Controller` actor (a machine, so it
runs under the faults too) waits for the spawn, then either cancels one waiter (idle: awaiting, or not yet
picked; or executing: cancel requested) and sends `go` to the others, or cancels the whole assembly while it
awaits its children and sends `go` to every waiter.

Some instances are not a Machine's at all: the driver inserts them by name on a queue no runtime runs and
drives them through the explicit pipeline (durable/claims.py): `run_once` with a machine filter takes them
step by step (`a` -> `b` -> done) and must never hand it a bystander of another machine on the same queue
(those are drained last by a `run_once` of their own). A zombie scenario claims one instance with a short
lease, lets it pass (the reaper returns the row), claims it again, then makes the first claim's late
`complete`: it must raise `Fenced` and change nothing; the live claim's result is the one that counts.

Model: a retried child ends done and leaves its (already released) parent alone; a cancelled instance
ends cancelled; a cancelled child counts in its parent's join like a failed one (the parent's result lists
it as cancelled); a cancelled parent's children still all end."""

from __future__ import annotations

import random
from typing import Any

import trio

import durable
from durable import Await, Child, Done, Fenced, Machine, Next, NotDeliverable, Spawn, Stop
from durable.claims import Pipeline

from ..core import Run, SimDatabase, Violation, sim_step
from . import Action, Final, decode

QUEUE = "sim"
EXPLICIT = "sim.explicit"  # the explicit pipeline's queue (no runtime runs it): its two machine names
JOB, BYSTANDER = "sim.explicit.job", "sim.explicit.bystander"
ZOMBIE_QUEUE = "sim.explicit.zombie"


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
        self.explicit: dict[int, str] = {}  # id -> JOB or BYSTANDER
        self.strays: list[str] = []  # claims run_once handed the handler against its machine filter
        self.zombie: dict[str, Any] = {}  # the zombie scenario: its instance, claims and what the late call did

    async def setup(self, db: SimDatabase) -> None:
        db._claims = Pipeline(db, worker_id="driver.explicit")  # a fixed worker id: runs replay exactly

    async def handle(self, claim: durable.Claim) -> Any:
        """run_once's handler for the explicit jobs: `a` -> `b` (n + 1) -> done."""
        if claim.machine != JOB:
            self.strays.append(f"{claim.machine}#{claim.id}.{claim.step}")
            await claim.release()
            return None
        if claim.step == "a":
            return Next("b", {"n": claim.state["n"] + 1})
        return Done({"n": claim.state["n"], "at": claim.step})

    async def finish_bystander(self, claim: durable.Claim) -> Any:
        return "bystander" if claim.machine == BYSTANDER else Stop(f"not a bystander: {claim.machine}")

    def schedule(
        self, rng: random.Random, count: int, horizon: float, scale: float = 1.0
    ) -> list[tuple[float, Action]]:
        actions: list[tuple[float, Action]] = []
        for _ in range(max(1, count // 2)):
            at = round(rng.uniform(0, horizon / 4), 2)
            parts = rng.randint(1, 3)
            broken = rng.randint(0, parts)
            waiters = rng.choice([0, 0, 1, 2])
            whole = waiters > 0 and rng.random() < 0.3  # the controller cancels the assembly itself
            delay = rng.choice([0.0, 2.0, 5.0]) * scale
            box: dict[str, int] = {}

            async def insert(
                db: SimDatabase,
                parts: int = parts,
                broken: int = broken,
                waiters: int = waiters,
                whole: bool = whole,
                delay: float = delay,
                box: dict[str, int] = box,
            ) -> None:
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
        return actions + self.explicit_actions(rng, count, horizon, scale)

    def explicit_actions(
        self, rng: random.Random, count: int, horizon: float, scale: float
    ) -> list[tuple[float, Action]]:
        """The explicit pipeline's part (drawn after the rest: the other actions stay as they were)."""
        actions: list[tuple[float, Action]] = []
        for _ in range(max(1, count // 3)):
            at = round(rng.uniform(0, horizon / 4), 2)
            bystander = rng.random() < 0.5

            async def insert(db: SimDatabase, bystander: bool = bystander) -> None:
                iid = await db.insert(JOB, {"n": 0}, queue=EXPLICIT, step="a")
                assert iid is not None
                self.explicit[iid] = JOB
                if bystander:
                    other = await db.insert(BYSTANDER, {}, queue=EXPLICIT, step="x")
                    assert other is not None
                    self.explicit[other] = BYSTANDER

            actions.append((at, insert))

        async def drive(db: SimDatabase) -> None:
            await db.run_once(EXPLICIT, self.handle, machine=JOB, limit=50, lease=30.0 * scale)

        async def drain_bystanders(db: SimDatabase) -> None:
            await db.run_once(EXPLICIT, self.finish_bystander, machine=BYSTANDER, limit=50, lease=30.0 * scale)

        for k in range(5):  # two would do (a, b): the rest make sure a late insert is driven too
            actions.append((round(horizon / 4 + 1 + k * horizon / 10, 2), drive))
        actions.append((round(horizon * 0.8, 2), drain_bystanders))

        lease = 4.0 * scale
        at = round(rng.uniform(0, horizon / 4), 2)
        z = self.zombie

        async def zombie_claims(db: SimDatabase) -> None:
            z["id"] = await db.insert(JOB, {"n": 0}, queue=ZOMBIE_QUEUE, step="a")
            (z["zombie"],) = await db.claim(ZOMBIE_QUEUE, limit=1, lease=lease)
            z["claimed_at"] = trio.current_time()

        async def live_claims(db: SimDatabase) -> None:  # the zombie's lease passed: reaped, claimed again
            # three leases after the zombie's claim itself, not after its planned time: the driver's actions
            # run one at a time, and a held lock (cancel_lock) can delay the claim past its plan (ops seed 51
            # of the 1,000-seed run claimed again 3.5 s into a 4 s lease)
            await trio.sleep_until(z.get("claimed_at", trio.current_time()) + 3 * lease)
            z["live"] = await db.claim(ZOMBIE_QUEUE, limit=1, lease=30.0 * scale)

        async def late_call(db: SimDatabase) -> None:
            try:
                await z["zombie"].complete("zombie")
                z["late"] = "committed"
            except Fenced:
                z["late"] = "fenced"
            for claim in z["live"]:
                await claim.complete("live")

        actions += [
            (at, zombie_claims),
            (round(at + 3 * lease, 2), live_claims),
            (round(at + 3 * lease + 1, 2), late_call),
        ]
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
                    out.append(
                        Violation(
                            "state_matches_model",
                            f"assembly {iid}: {row['status']}, model says cancelled (by its controller)",
                        )
                    )
                continue
            want = sorted(
                ["done"] * (parts - broken)
                + ["failed"] * broken
                + (["cancelled"] + ["done"] * (waiters - 1) if waiters else [])
            )
            if row["status"] != "done" or decode(row["result"]) != want:
                out.append(
                    Violation(
                        "state_matches_model",
                        f"assembly {iid}: {row['status']} {decode(row['result'])}, model done {want}",
                    )
                )
            late = [k["id"] for k in kids.get(iid, []) if k["id"] in self.retried and k["status"] != "done"]
            if late:
                out.append(
                    Violation(
                        "state_matches_model", f"assembly {iid}: parts {late} not done after the operator retried them"
                    )
                )
        for iid, kind in sorted(self.explicit.items()):
            model: Any = {"n": 1, "at": "b"} if kind == JOB else "bystander"
            if rows[iid]["status"] != "done" or decode(rows[iid]["result"]) != model:
                out.append(
                    Violation(
                        "state_matches_model",
                        f"explicit {kind} {iid}: {rows[iid]['status']} "
                        f"{decode(rows[iid]['result'])}, model done {model}",
                    )
                )
        if self.strays:
            out.append(Violation("state_matches_model", f"run_once's machine filter let through {self.strays[:5]}"))
        if self.zombie:
            z = self.zombie
            if z.get("late") != "fenced":
                out.append(
                    Violation(
                        "no_fenced_outcome_visible",
                        f"explicit instance {z.get('id')}: the zombie claim's late complete was "
                        f"{z.get('late', 'never made')}, not fenced",
                    )
                )
            if len(z.get("live", [])) != 1:
                out.append(
                    Violation(
                        "state_matches_model",
                        f"explicit instance {z.get('id')}: not claimed again after the zombie's lease passed",
                    )
                )
            if z.get("id") in rows and decode(rows[z["id"]]["result"]) != "live":
                out.append(
                    Violation(
                        "state_matches_model",
                        f"explicit instance {z['id']}: result {decode(rows[z['id']]['result'])}, model 'live'",
                    )
                )
        for iid, after in self.cancelled.items():
            if after in ("cancelled", "executing") and rows[iid]["status"] != "cancelled":
                out.append(
                    Violation("state_matches_model", f"idle {iid}: cancel said {after}, ended {rows[iid]['status']}")
                )
        return out
