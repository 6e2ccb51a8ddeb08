"""Generated workloads (`durable sim --workload fuzz`): every instance runs a script drawn from the seed, one
operation per step, so the outcome sequences cover every kind: next (with a delay when the engine has one),
retry, await (one name or several), an await that times out (at the same step, ``ctx.timed_out``, or at
its ``timeout_step``), spawn (children with scripts of their own) and a join, done, stop, cancel; steps
that raise a planned number of times; poison values (a NUL in the state, a delay of 31,700 years, a state
past the size limit or not JSON at all) that the engine refuses and ``handle()`` goes past; a step longer
than the lease. Inserts get random
options: partition key, priority, a schedule, a unique key (scoped to its four live statuses, so a second
insert is skipped, or to ``executing`` only, so the holders take turns). The driver sends each await its
signal and cancels some parents, children and running steps.

Model: each instance's fate follows from its script: done with the trail of what its operations did (a
join records its children's statuses, themselves predicted), failed for a stop, cancelled for a cancel,
or cancelled when the driver's cancel answered ``cancelled`` or ``executing`` (its children then end as
their scripts say or cancelled). Not part of `mixed`."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import trio

import durable
from durable import Cancel, Child, Done, Machine, Next, NotDeliverable, Retry, Spawn, Stop
from durable.errors import OutcomeError, StateError
from durable.outcomes import Await, Outcome

from ..core import SIM_VALUE_BYTES, Run, SimDatabase, Violation, sim_step
from . import Action, Final, decode

QUEUE = "sim"
NEXT_DELAY = "delay" in getattr(Next, "__dataclass_fields__", {})  # the engine's durable timer, when it has one
MULTI_AWAIT = "timeout" in getattr(Await, "__dataclass_fields__", {})  # an await of several names
ENDS = {"done": "done", "stop": "failed", "cancel": "cancelled"}
REFUSED = ("poison", "overdue", "oversized", "unserializable")  # outcomes the engine refuses: handle() goes on


class Flaky(Exception):
    pass


class Fuzz(Machine, queue=QUEUE, name="sim.fuzz"):
    backoff_base = 0.5

    class State(durable.State):
        ops: list[dict[str, Any]]
        pc: int = 0
        trail: list[str] = []

    @sim_step
    async def act(self, ctx: durable.Context) -> Outcome:
        s = ctx.state
        op = s.ops[s.pc]
        kind = op["op"]
        await trio.sleep(0.5)
        if kind in ENDS:
            return (
                Done(s.trail)
                if kind == "done"
                else Stop("scripted stop")
                if kind == "stop"
                else Cancel("scripted cancel")
            )
        if kind == "retry" and ctx.attempt < op["n"]:
            return Retry(delay=op["delay"], error="scripted retry")
        if kind == "raise" and ctx.attempt < op["n"]:
            raise Flaky(f"scripted failure {ctx.attempt + 1} of {op['n']}")
        if kind == "await":
            came = [n for n in op["names"] if ctx.signals_named(n)]
            if not came:
                return Await(op["names"] if len(op["names"]) > 1 else op["names"][0])
            return self.went_on(s, f"await:{came[0]}")
        if kind == "await_timeout":  # nobody sends it: the timeout wakes the step (or its timeout_step)
            if ctx.timed_out:
                return self.went_on(s, "timed_out")
            return Await(op["names"], s, timeout=op["timeout"], timeout_step="expired" if op["step"] else None)
        if kind == "spawn":
            return Spawn("join", [Child(Fuzz, {"ops": c}) for c in op["children"]], s)
        if kind == "poison":  # refused by the engine before the database: handle() goes on
            return Next("act", {"ops": s.ops, "pc": s.pc, "trail": [*s.trail, "a\x00b"]})
        if kind == "oversized":
            return Next("act", {"ops": s.ops, "pc": s.pc, "trail": [*s.trail, "x" * SIM_VALUE_BYTES]})
        if kind == "unserializable":
            return Next("act", {"ops": s.ops, "pc": s.pc, "trail": [*s.trail, {1j}]})
        if kind == "overdue":
            return Retry(delay=1e12)
        if kind == "slow":
            await trio.sleep(op["seconds"])  # past the lease: only heartbeats keep the claim
        if kind == "next" and op.get("delay"):
            return self.went_on(s, kind, delay=op["delay"])
        return self.went_on(s, {"raise": "raised"}.get(kind, kind))

    @sim_step
    async def expired(self, ctx: durable.Context) -> Next:
        return self.went_on(ctx.state, "expired" if ctx.timed_out else "expired?")

    @sim_step
    async def join(self, ctx: durable.Context) -> Next:
        return self.went_on(ctx.state, "spawn:" + ",".join(sorted(c.status for c in ctx.children)))

    @staticmethod
    def went_on(s: Any, what: str, delay: float | None = None) -> Next:
        s.trail.append(what)
        s.pc += 1
        return Next("act", s, delay=delay) if delay else Next("act", s)

    async def handle(self, error: BaseException, ctx: durable.Context) -> Outcome:
        s = ctx.state
        kind = s.ops[s.pc]["op"]
        if kind in REFUSED and isinstance(error, StateError | OutcomeError):
            return self.went_on(s, kind)
        return await super().handle(error, ctx)  # scripted and injected exceptions: retry with backoff


def script(rng: random.Random, depth: int) -> list[dict[str, Any]]:
    """A random operation sequence ending in done, stop or cancel. Children neither await (the driver could
    not know their ids in time) nor spawn (one level)."""
    kinds = ["next", "next", "retry", "raise", "poison", "overdue", "slow", "oversized", "unserializable"]
    if MULTI_AWAIT:
        kinds.append("await_timeout")
    if depth == 0:
        kinds += ["await", "await", "spawn"]
    ops: list[dict[str, Any]] = []
    for pc in range(rng.randint(0, 4)):
        kind = rng.choice(kinds)
        op: dict[str, Any] = {"op": kind}
        if kind == "next" and NEXT_DELAY:
            op["delay"] = rng.choice([0.0, 0.0, 2.0, 6.0])
        elif kind == "retry":
            op.update(n=rng.randint(1, 2), delay=rng.choice([0.0, 1.0]))
        elif kind == "raise":
            op["n"] = rng.randint(1, 2)
        elif kind == "await":
            names = [f"s{pc}{c}" for c in "ab"[: rng.randint(1, 2 if MULTI_AWAIT else 1)]]
            op.update(names=names, send=rng.choice(names))
        elif kind == "await_timeout":
            op.update(
                names=[f"t{pc}{c}" for c in "ab"[: rng.randint(1, 2)]],
                timeout=rng.choice([1.0, 5.0, 20.0]),
                step=rng.random() < 0.5,
            )
        elif kind == "spawn":
            op["children"] = [script(rng, depth + 1) for _ in range(rng.randint(1, 2))]
        elif kind == "slow":
            op["seconds"] = 40.0
        ops.append(op)
    ops.append({"op": rng.choice(["done", "done", "done", "stop", "cancel"])})
    return ops


class FuzzWorkload:
    name = "fuzz"
    machines: list[type[Machine]] = [Fuzz]

    def __init__(self) -> None:
        self.tops: dict[int, list[dict[str, Any]]] = {}  # top-level instance id -> its script
        self.cancels: dict[int, str] = {}  # instance id -> what the driver's cancel answered

    async def setup(self, db: SimDatabase) -> None:
        return None

    def schedule(
        self, rng: random.Random, count: int, horizon: float, scale: float = 1.0
    ) -> list[tuple[float, Action]]:
        actions: list[tuple[float, Action]] = []
        for _ in range(max(2, count)):
            at = round(rng.uniform(0, horizon / 2), 2)
            ops = script(rng, 0)
            scope = rng.choice([None, ["executing"]])
            opts: dict[str, Any] = {
                "priority": rng.randint(0, 3),
                "partition_key": rng.choice([None, None, None, "p1", "p2"]),
                "schedule_in": rng.choice([None, None, 3.0 * scale, 10.0 * scale]),
                "unique_key": rng.choice([None, None, None, "u1", "u2"]),
            }
            if opts["unique_key"] is not None and scope is not None:
                opts["unique_scope"] = scope
            box: dict[str, int] = {}

            async def insert(
                db: SimDatabase, ops: list[dict[str, Any]] = ops, opts: dict[str, Any] = opts, box: dict[str, int] = box
            ) -> None:
                iid = await db.insert(Fuzz, {"ops": ops}, **opts)
                if iid is not None:  # None: its unique key was occupied (the model skips it too)
                    box["id"] = iid
                    self.tops[iid] = ops

            actions.append((at, insert))
            for op in ops:
                if op["op"] == "await":

                    async def signal(db: SimDatabase, box: dict[str, int] = box, name: str = op["send"]) -> None:
                        if "id" in box:
                            try:
                                await db.signal(box["id"], name, {}, dedup_key=name)
                            except NotDeliverable:
                                pass

                    actions.append((round(at + rng.uniform(0, horizon / 2), 2), signal))
            roll = rng.random()
            if roll < 0.15 or (roll < 0.3 and any(op["op"] == "spawn" for op in ops)):
                child = roll >= 0.15

                async def cancel(db: SimDatabase, box: dict[str, int] = box, child: bool = child) -> None:
                    if "id" not in box:
                        return
                    target = box["id"]
                    if child:  # its first child, if spawned by now
                        kids = sorted(c["id"] for c in (await db.get(target)).children)
                        if not kids:
                            return
                        target = kids[0]
                    self.cancels[target] = await db.cancel(target, "driver")

                actions.append((round(at + rng.uniform(0, horizon / 2), 2), cancel))
        return actions

    def fate(self, iid: int, ops: list[dict[str, Any]], kids: dict[int, list[dict[str, Any]]]) -> tuple[str, Any]:
        """What the model says instance ``iid`` (running ``ops``) ends as: (status, result)."""
        if self.cancels.get(iid) in ("cancelled", "executing"):
            return "cancelled", None
        trail: list[str] = []
        spawned: list[str] = []
        children = iter(kids.get(iid, []))
        for op in ops:
            kind = op["op"]
            if kind in ENDS:
                return ENDS[kind], trail if kind == "done" else None
            if kind == "await":
                trail.append(f"await:{op['send']}")
            elif kind == "await_timeout":
                trail.append("expired" if op["step"] else "timed_out")
            elif kind == "spawn":
                for _ in op["children"]:
                    child = next(children)
                    spawned.append(self.fate(child["id"], decode(child["state"])["ops"], kids)[0])
                trail.append("spawn:" + ",".join(sorted(spawned)))
            else:
                trail.append({"raise": "raised"}.get(kind, kind))
        raise AssertionError(f"script of {iid} has no end")

    def check(self, run: Run, final: Final) -> list[Violation]:
        out: list[Violation] = []
        rows = final.by_id()
        kids: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for i in final.instances:
            if i["parent_id"] is not None:
                kids[i["parent_id"]].append(i)
        for parent in kids.values():  # children in spawn order: ids are given in insertion order
            parent.sort(key=lambda c: c["id"])
        for iid, ops in sorted(self.tops.items()):
            row = rows[iid]
            try:
                status, result = self.fate(iid, ops, kids)
            except StopIteration:
                out.append(Violation("state_matches_model", f"fuzz {iid}: fewer children than its script spawns"))
                continue
            got = decode(row["result"]) if row["status"] == "done" else None
            if row["status"] != status or got != result:
                out.append(
                    Violation(
                        "state_matches_model",
                        f"fuzz {iid}: {row['status']} {got} {row['last_error'] or ''}, model says "
                        f"{status} {result} (script {[op['op'] for op in ops]})",
                    )
                )
            # a cancel of the parent may reach its live children too (a cascading cancel)
            cascade = self.cancels.get(iid) in ("cancelled", "executing")
            for child in kids.get(iid, []):
                want, _ = self.fate(child["id"], decode(child["state"])["ops"], kids)
                if child["status"] != want and not (cascade and child["status"] == "cancelled"):
                    out.append(
                        Violation(
                            "state_matches_model",
                            f"fuzz child {child['id']} of {iid}: {child['status']} "
                            f"{child['last_error'] or ''}, model says {want}",
                        )
                    )
        return out
