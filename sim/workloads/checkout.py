"""Checkout: await a payment signal sent by another actor (a Payer machine, and the driver directly,
early and in duplicates), spawn shipment children, join. Unrelated `note` signals must survive.
Some checkouts insert their Payer from their own first step (through the worker's Database): an idle
scheduler of that worker takes it in the insert itself (handoff); a re-run step inserts another Payer,
whose payment the dedup key drops."""

from __future__ import annotations

import random

import trio

import durable
from durable import Await, Child, Done, Machine, Next, NotDeliverable, Spawn

from ..core import Run, SimDatabase, Violation, sim_step
from . import Action, Final, decode

QUEUE = "sim"


class Ship(Machine, queue=QUEUE, name="sim.ship"):
    class State(durable.State):
        order: int
        item: int
        work: float = 1.0

    @sim_step
    async def go(self, ctx: durable.Context) -> Done:
        await trio.sleep(ctx.state.work)
        return Done({"order": ctx.state.order, "item": ctx.state.item})


class Checkout(Machine, queue=QUEUE, name="sim.checkout", initial="start"):
    class State(durable.State):
        order: int
        items: int
        work: float = 1.0
        paid: list[int] = []
        payer: bool = False  # insert the Payer from this step (a worker's insert: handoff)

    @sim_step
    async def start(self, ctx: durable.Context) -> Next:
        if ctx.state.payer:
            assert ctx.db is not None
            await ctx.db.insert(Payer, {"target": ctx.id, "amount": 10})
        return Next("pay")  # with run-ahead (--chain) the pay step runs on the claim `next` kept

    @sim_step
    async def pay(self, ctx: durable.Context) -> Await | Spawn:
        payments = ctx.signals_named("payment")
        if not payments:
            await trio.sleep(ctx.state.work)  # a signal may land while the step runs (pre-arrival)
            return Await("payment", ctx.state)
        ctx.state.paid = [s.id for s in payments]
        kids = [Child(Ship, {"order": ctx.state.order, "item": j, "work": ctx.state.work})
                for j in range(ctx.state.items)]
        return Spawn("join", kids, ctx.state)

    @sim_step
    async def join(self, ctx: durable.Context) -> Done:
        shipped = sum(1 for c in ctx.children if c.status == "done")
        return Done({"order": ctx.state.order, "shipped": shipped, "children": len(ctx.children)})


class Payer(Machine, queue=QUEUE, name="sim.payer"):
    class State(durable.State):
        target: int
        amount: int

    @sim_step
    async def send(self, ctx: durable.Context) -> Done:
        assert ctx.db is not None
        try:
            sid = await ctx.db.signal(ctx.state.target, "payment", {"amount": ctx.state.amount},
                                      dedup_key=f"pay-{ctx.state.target}")
        except NotDeliverable:
            sid = None
        return Done({"signal": sid})


class CheckoutWorkload:
    name = "checkout"
    machines: list[type[Machine]] = [Checkout, Ship, Payer]

    def __init__(self) -> None:
        self.orders: dict[int, int] = {}  # checkout id -> items

    async def setup(self, db: SimDatabase) -> None:
        return None

    def schedule(self, rng: random.Random, count: int, horizon: float,
                 scale: float = 1.0) -> list[tuple[float, Action]]:
        actions: list[tuple[float, Action]] = []
        for k in range(max(1, count // 2)):
            at = round(rng.uniform(0, horizon / 2), 2)
            items = rng.randint(1, 3)
            work = round(rng.uniform(2.0, 8.0), 1) * scale
            box: dict[str, int] = {}

            # early: before the checkout first runs; concurrent: a payer starts with the checkout, so its
            # signal tends to land while the pay step runs (the pre-arrival race); in_step: the checkout's
            # first step inserts its payer
            how = rng.choice(["payer", "direct", "payer+direct", "early", "concurrent", "in_step"])

            async def insert(db: SimDatabase, k: int = k, items: int = items, work: float = work,
                             box: dict[str, int] = box, in_step: bool = how == "in_step") -> None:
                iid = await db.insert(Checkout, {"order": k, "items": items, "work": work, "payer": in_step})
                assert iid is not None
                box["id"] = iid
                self.orders[iid] = items

            actions.append((at, insert))
            pay_at = at + (0.0 if how == "early" else round(rng.uniform(0, 10), 2) if how == "concurrent"
                           else round(rng.uniform(0, horizon / 2), 2))
            if "payer" in how or how == "concurrent":
                async def payer(db: SimDatabase, box: dict[str, int] = box) -> None:
                    await db.insert(Payer, {"target": box["id"], "amount": 10})
                actions.append((pay_at, payer))
            if how in ("direct", "payer+direct", "early"):
                dup = rng.random() < 0.5

                async def direct(db: SimDatabase, box: dict[str, int] = box, dup: bool = dup) -> None:
                    for key in ([f"pay-{box['id']}"] * (2 if dup else 1)):
                        await send(db, box["id"], "payment", key)
                actions.append((pay_at + 0.01, direct))
            if rng.random() < 0.5:
                async def note(db: SimDatabase, box: dict[str, int] = box) -> None:
                    await send(db, box["id"], "note", None)
                actions.append((round(rng.uniform(at, horizon), 2), note))
        return actions

    def check(self, run: Run, final: Final) -> list[Violation]:
        out: list[Violation] = []
        rows = final.by_id()
        consumed: set[int] = set()
        for iid, items in self.orders.items():
            row = rows[iid]
            state = decode(row["state"])
            consumed.update(state.get("paid", []))
            result = decode(row["result"])
            want = {"order": state["order"], "shipped": items, "children": items}
            if row["status"] != "done" or result != want:
                out.append(Violation("state_matches_model",
                                     f"checkout {iid}: {row['status']} {result}, model says done {want}"))
        # every stored signal to a checkout: consumed by its pay step (recorded in state) or still queued
        inbox = {s["id"] for s in final.signals}
        for h in final.history:
            if h["event"] != "signal" or h["instance_id"] not in self.orders:
                continue
            sid = decode(h["detail"])["signal_id"]
            if sid not in inbox and sid not in consumed:
                name = decode(h["detail"])["name"]
                out.append(Violation("signals_accounted",
                                     f"signal {sid} ({name!r}) to checkout {h['instance_id']} vanished: "
                                     "neither consumed by its await nor in the inbox"))
        return out


async def send(db: SimDatabase, target: int, name: str, dedup_key: str | None) -> None:
    try:
        sid = await db.signal(target, name, {"from": "driver"}, dedup_key=dedup_key)
    except NotDeliverable:
        sid = None
    db.run.sent.append((target, name, sid))
