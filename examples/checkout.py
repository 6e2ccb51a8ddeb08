"""A checkout that waits for a payment signal, then ships each item as a child instance: the README's
machine (same names, queues, state and signal), runnable from the command line.

Run it (from the repository root; no DSN = $DURABLE_DSN, else the embedded server):

    durable worker examples.checkout &          # serves checkout, shipping and email
    id=$(durable insert Checkout --module examples.checkout --state '{"order": 42, "items": 2}' -q)
    durable signal $id payment --payload '{"amount": 100}' --dedup evt-1
    durable wait $id                            # prints the result once the parcels have shipped
    durable show $id                            # state, children, the full history
    kill %1                                     # the worker drains and stops
"""

from __future__ import annotations

from typing import Any

import durable
from durable import Await, Child, Context, Done, Machine, Next, Retry, Spawn, Stop, step


class Shipment(Machine, queue="shipping", max_attempts=5):
    """Books one parcel with a carrier."""

    @step
    async def book(self, ctx: Context) -> Any:
        return Done({"order": ctx.state["order"], "parcel": ctx.state["parcel"]})


class Checkout(Machine, queue="checkout", version=1, initial="reserve"):
    class State(durable.State):
        order: int
        items: int = 1
        paid: int = 0

    @step
    async def reserve(self, ctx: Context) -> Any:
        if ctx.state.items < 1:
            return Stop(f"order {ctx.state.order} has no items")
        return Next("await_payment", ctx.state)

    @step
    async def await_payment(self, ctx: Context) -> Any:
        payment = ctx.signal("payment")
        if payment is None:
            return Await("payment", ctx.state)
        ctx.state.paid = int((payment.payload or {}).get("amount", 0))
        parcels = [Child(Shipment, {"order": ctx.state.order, "parcel": i}) for i in range(ctx.state.items)]
        return Spawn("finish", parcels, ctx.state)

    @step
    async def finish(self, ctx: Context) -> Any:
        shipped = [c.result for c in ctx.children if c.status == "done"]
        if len(shipped) < ctx.state.items:
            return Stop(f"{ctx.state.items - len(shipped)} parcel(s) could not be shipped")
        return Done({"order": ctx.state.order, "paid": ctx.state.paid, "parcels": len(shipped)})

    async def handle(self, error: Exception, ctx: Context) -> Any:
        if ctx.attempt < 5:
            return Retry(ctx.state, delay=2**ctx.attempt, error=str(error))
        return Stop(repr(error))


@durable.job(queue="email", max_attempts=10)
async def send_receipt(args: Any, ctx: Context) -> Any:
    """A one-step job: 'sends' a receipt."""
    return {"sent_to": args.get("email", "nobody@example.com")}
