"""Checkout: await a payment signal sent by another actor (a Payer machine, and the driver directly,
early and in duplicates), wait on a durable timer (``Next(delay=)``), spawn shipment children, join.
Unrelated `note` signals must survive.
Some checkouts insert their Payer from their own first step (through the worker's Database): an idle
scheduler of that worker takes it in the insert itself (handoff); a re-run step inserts another Payer,
whose payment the dedup key drops.

Every await has a timeout (``timeout_step="expire"``): an abandoned checkout (no payment is ever sent)
must expire, and a paid one must never (its timeout lies past the run, so a lost payment shows as an
expiry). The driver cancels some checkouts (a cancel tree: its shipments end too, each counted once).

Model: a paid checkout ends done with every shipment shipped, and its ship step committed no earlier than
its timer's wake time; an abandoned one ends done ``expired`` without children; a cancelled one (the
cancel answered ``cancelled`` or ``executing``) ends cancelled with every shipment ended."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

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
        hold: float = 0.0  # the durable timer between payment and shipping
        wait: float = 1e4  # the await's timeout

    @sim_step
    async def start(self, ctx: durable.Context) -> Next:
        if ctx.state.payer:
            assert ctx.db is not None
            await ctx.db.insert(Payer, {"target": ctx.id, "amount": 10})
        return Next("pay")  # with run-ahead (--chain) the pay step runs on the claim `next` kept

    @sim_step
    async def pay(self, ctx: durable.Context) -> Await | Next:
        payments = ctx.signals_named("payment")
        if not payments:
            await trio.sleep(ctx.state.work)  # a signal may land while the step runs (pre-arrival)
            return Await("payment", ctx.state, timeout=ctx.state.wait, timeout_step="expire")
        ctx.state.paid = [s.id for s in payments]
        # with run-ahead (--chain) a delayed next must not run on the kept claim before its wake time
        return Next("ship", ctx.state, delay=ctx.state.hold) if ctx.state.hold else Next("ship", ctx.state)

    @sim_step
    async def ship(self, ctx: durable.Context) -> Spawn:
        kids = [
            Child(Ship, {"order": ctx.state.order, "item": j, "work": ctx.state.work}) for j in range(ctx.state.items)
        ]
        return Spawn("join", kids, ctx.state)

    @sim_step
    async def expire(self, ctx: durable.Context) -> Done:
        return Done({"order": ctx.state.order, "expired": ctx.timed_out})

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
            sid = await ctx.db.signal(
                ctx.state.target, "payment", {"amount": ctx.state.amount}, dedup_key=f"pay-{ctx.state.target}"
            )
        except NotDeliverable:
            sid = None
        return Done({"signal": sid})


class CheckoutWorkload:
    name = "checkout"
    machines: list[type[Machine]] = [Checkout, Ship, Payer]

    def __init__(self) -> None:
        self.orders: dict[int, int] = {}  # checkout id -> items
        self.abandoned: set[int] = set()  # checkouts no payment is ever sent to
        self.cancels: dict[int, str] = {}  # checkout id -> what the driver's cancel answered
        self.holds: dict[int, float] = {}  # checkout id -> its timer's delay (seconds)

    async def setup(self, db: SimDatabase) -> None:
        return None

    def schedule(
        self, rng: random.Random, count: int, horizon: float, scale: float = 1.0
    ) -> list[tuple[float, Action]]:
        actions: list[tuple[float, Action]] = []
        for k in range(max(1, count // 2)):
            at = round(rng.uniform(0, horizon / 2), 2)
            items = rng.randint(1, 3)
            work = round(rng.uniform(2.0, 8.0), 1) * scale
            box: dict[str, int] = {}

            # early: before the checkout first runs; concurrent: a payer starts with the checkout, so its
            # signal tends to land while the pay step runs (the pre-arrival race); in_step: the checkout's
            # first step inserts its payer
            # abandoned: nobody pays, so the await's timeout ends it
            how = rng.choice(["payer", "direct", "payer+direct", "early", "concurrent", "in_step", "abandoned"])
            hold = rng.choice([0.0, 0.0, round(rng.uniform(1.0, 12.0), 1) * scale])
            state: dict[str, Any] = {
                "order": k,
                "items": items,
                "work": work,
                "payer": how == "in_step",
                "hold": hold,
                "wait": round(rng.uniform(3.0, 30.0), 1) * scale if how == "abandoned" else 1e4,
            }

            async def insert(
                db: SimDatabase,
                items: int = items,
                state: dict[str, Any] = state,
                box: dict[str, int] = box,
                abandoned: bool = how == "abandoned",
            ) -> None:
                iid = await db.insert(Checkout, state)
                assert iid is not None
                box["id"] = iid
                self.orders[iid] = items
                self.holds[iid] = state["hold"]
                if abandoned:
                    self.abandoned.add(iid)

            actions.append((at, insert))
            pay_at = at + (
                0.0
                if how == "early"
                else round(rng.uniform(0, 10), 2)
                if how == "concurrent"
                else round(rng.uniform(0, horizon / 2), 2)
            )
            if "payer" in how or how == "concurrent":

                async def payer(db: SimDatabase, box: dict[str, int] = box) -> None:
                    await db.insert(Payer, {"target": box["id"], "amount": 10})

                actions.append((pay_at, payer))
            if how in ("direct", "payer+direct", "early"):
                dup = rng.random() < 0.5

                async def direct(db: SimDatabase, box: dict[str, int] = box, dup: bool = dup) -> None:
                    for key in [f"pay-{box['id']}"] * (2 if dup else 1):
                        await send(db, box["id"], "payment", key)

                actions.append((pay_at + 0.01, direct))
            if rng.random() < 0.5:

                async def note(db: SimDatabase, box: dict[str, int] = box) -> None:
                    await send(db, box["id"], "note", None)

                actions.append((round(rng.uniform(at, horizon), 2), note))
            if rng.random() < 0.3:  # a cancel tree: at any time, or while the shipments should be running

                async def cancel(db: SimDatabase, box: dict[str, int] = box) -> None:
                    self.cancels[box["id"]] = await db.cancel(box["id"], "driver")

                shipping = pay_at + hold + work
                when = rng.choice([rng.uniform(at + 0.5, horizon), rng.uniform(shipping, shipping + 2 * work)])
                actions.append((round(max(at + 0.5, when), 2), cancel))
        return actions

    def check(self, run: Run, final: Final) -> list[Violation]:
        out: list[Violation] = []
        rows = final.by_id()
        consumed: set[int] = set()
        # read the history once: each instance's first row saying cancelled, and its done row
        cancelled_at: dict[int, int] = {}
        shipped: dict[int, int] = {}
        for h in final.history:
            if h["status"] == "cancelled":
                cancelled_at.setdefault(h["instance_id"], h["id"])
            if h["event"] == "done":
                shipped[h["instance_id"]] = h["id"]
        children: dict[int, list[dict[str, Any]]] = {}
        for i in final.instances:
            if i["parent_id"] in self.orders:
                children.setdefault(i["parent_id"], []).append(i)
        for iid, items in self.orders.items():
            row = rows[iid]
            state = decode(row["state"])
            consumed.update(state.get("paid", []))
            result = decode(row["result"])
            kids = children.get(iid, [])
            if self.cancels.get(iid) in ("cancelled", "executing"):
                # every shipment ends: cancelled, or done before the checkout's cancel committed
                cut = cancelled_at.get(iid)
                live = [
                    f"{k['id']} {k['status']}"
                    for k in kids
                    if k["status"] != "cancelled"
                    and not (k["status"] == "done" and cut is not None and shipped.get(k["id"], cut) < cut)
                ]
                if row["status"] != "cancelled" or live:
                    out.append(
                        Violation(
                            "state_matches_model",
                            f"checkout {iid}: {row['status']}, shipments not cancelled {live}, model "
                            f"says cancelled (the driver's cancel answered {self.cancels[iid]!r})",
                        )
                    )
                continue
            want = (
                {"order": state["order"], "expired": True}
                if iid in self.abandoned
                else {"order": state["order"], "shipped": items, "children": items}
            )
            if row["status"] != "done" or result != want or (iid in self.abandoned and kids):
                out.append(
                    Violation(
                        "state_matches_model",
                        f"checkout {iid}: {row['status']} {result} with {len(kids)} shipments, model says done {want}",
                    )
                )
        out += self.timers_kept(final)
        # every stored signal to a checkout: consumed by its pay step (recorded in state) or still queued
        inbox = {s["id"] for s in final.signals}
        for h in final.history:
            if h["event"] != "signal" or h["instance_id"] not in self.orders:
                continue
            sid = decode(h["detail"])["signal_id"]
            if sid not in inbox and sid not in consumed:
                name = decode(h["detail"])["name"]
                out.append(
                    Violation(
                        "signals_accounted",
                        f"signal {sid} ({name!r}) to checkout {h['instance_id']} vanished: "
                        "neither consumed by its await nor in the inbox",
                    )
                )
        return out

    def timers_kept(self, final: Final) -> list[Violation]:
        """A paid checkout's timer: its pay step's next (into runnable) is shown waking ``hold`` seconds after
        it committed (history detail ``wake_at``), and no ship step committed before then (both times from
        one clock: the virtual one, or the database's)."""
        out: list[Violation] = []
        wake: dict[int, datetime] = {}
        for h in final.history:
            iid = h["instance_id"]
            if iid not in self.orders:
                continue
            # a pay whose outcome met a cancel (cancel_requested while it ran) ended the checkout instead:
            # no timer was set (checkout seed 300 of the 1,000-seed run)
            if h["event"] == "next" and h["step"] == "pay" and h["status"] == "runnable":
                hold = self.holds.get(iid, 0.0)
                wake[iid] = h["at"] + timedelta(seconds=hold)
                shown = (decode(h["detail"] or "null") or {}).get("wake_at")
                if hold and (
                    shown is None or abs(datetime.fromisoformat(shown) - wake[iid]) > timedelta(milliseconds=1)
                ):
                    out.append(
                        Violation(
                            "timers_kept",
                            f"checkout {iid}: its {hold:g} s timer committed at {h['at']} shows wake time {shown}",
                        )
                    )
            elif h["event"] == "spawn" and h["step"] == "ship" and iid in wake:
                if h["at"] < wake[iid] - timedelta(milliseconds=1):
                    out.append(
                        Violation(
                            "timers_kept",
                            f"checkout {iid}: ship committed at {h['at']}, before its timer's wake time {wake[iid]}",
                        )
                    )
        return out


async def send(db: SimDatabase, target: int, name: str, dedup_key: str | None) -> None:
    try:
        sid = await db.signal(target, name, {"from": "driver"}, dedup_key=dedup_key)
    except NotDeliverable:
        sid = None
    db.run.sent.append((target, name, sid))
