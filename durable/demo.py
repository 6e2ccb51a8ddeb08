"""``durable demo``: a checkout workload run by the embedded runtime, printing what happened.

Each checkout reserves stock, parks until a payment signal arrives (sent by a payment actor: some before
the checkout parks, some twice with the same dedup key, a few declined), spawns shipment children
(carriers time out now and then: retried with backoff), joins them and finishes.
"""

from __future__ import annotations

import random
import time
from collections import Counter

import click
import trio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import durable
from durable import Await, Child, Done, Machine, Next, Spawn, Stop, step
from durable.cli import dsn_option, run
from durable.migrate import drop_schema
from durable.sql import Query

COUNT_BY_STATUS = Query(
    "demo_count_by_status",
    "select status::text as status, count(*) as n from instances where machine = $1 group by 1",
    "Instances of machine $1 by status (demo report).",
)
COUNT_EVENTS = Query(
    "demo_count_events", "select event, count(*) as n from history group by 1", "History events by kind."
)


class Shipment(Machine, queue="shipping", max_attempts=8):
    """Books a carrier; the carrier times out on some first attempts (an exception through handle)."""

    backoff_base = 0.05

    @step
    async def book(self, ctx):
        await trio.sleep(0.002)
        if ctx.state["flaky"] and ctx.attempt == 0:
            raise TimeoutError(f"carrier {ctx.state['carrier']} did not answer")
        return Done({"carrier": ctx.state["carrier"], "parcel": ctx.state["parcel"]})


class Checkout(Machine, queue="checkout", version=1, initial="reserve"):
    class State(durable.State):
        order: int
        items: int
        amount: int = 0

    @step
    async def reserve(self, ctx):
        return Next("await_payment", ctx.state)

    @step
    async def await_payment(self, ctx):
        paid = ctx.signal("payment")
        if paid is None:
            return Await("payment", ctx.state)
        if paid.payload["status"] == "declined":
            return Stop(f"payment declined for order {ctx.state.order}")
        ctx.state.amount = paid.payload["amount"]
        rng = random.Random(ctx.state.order)
        parcels = [Child(Shipment, {"parcel": i, "carrier": rng.choice(["dhl", "ups", "post"]),
                                    "flaky": rng.random() < 0.2})
                   for i in range(ctx.state.items)]
        return Spawn("close", parcels, ctx.state)

    @step
    async def close(self, ctx):
        return Done({"order": ctx.state.order, "amount": ctx.state.amount,
                     "parcels": sorted(c.result["carrier"] for c in ctx.children if c.result)})


async def pay(db: durable.Database, ids: list[int], rng: random.Random, sent: Counter[str]) -> None:
    """The payment actor: pays every order once, some twice (same dedup key), declines a few."""
    for order, iid in enumerate(ids):
        status = "declined" if rng.random() < 0.05 else "ok"
        payload = {"status": status, "amount": 10 + order % 90}
        for _ in range(2 if rng.random() < 0.1 else 1):
            stored = await db.signal(iid, "payment", payload, dedup_key=f"pay-{order}")
            sent["stored" if stored else "duplicate"] += 1
        await trio.sleep(rng.random() * 0.002)


async def demo(dsn: str | None, schema: str, instances: int, seed: int, console: Console) -> None:
    rng = random.Random(seed)
    started = time.perf_counter()
    console.print(f"[bold]durable demo[/]: {instances} checkouts on "
                  f"{'the embedded PostgreSQL' if not dsn else 'your PostgreSQL'}, schema [cyan]{schema}[/]")
    async with durable.connect(dsn, schema=schema, migrate=False, machines=[Checkout, Shipment]) as db:
        await drop_schema(db.pool, schema)
        await db.migrate()
        sent: Counter[str] = Counter()
        async with trio.open_nursery() as nursery:
            runtime = durable.Runtime(db, queues={"checkout": 20, "shipping": 20})
            await nursery.start(runtime.run)
            ids = await db.insert_many(
                [durable.Insert(Checkout, {"order": i, "items": 1 + i % 3}) for i in range(instances)])
            order_ids = [i for i in ids if i is not None]
            nursery.start_soon(pay, db, order_ids, rng, sent)
            with Progress(TextColumn("checkouts finished"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=console, transient=True) as progress:
                task = progress.add_task("", total=instances)
                while True:
                    counts = await status_counts(db, "Checkout")
                    finished = counts.get("done", 0) + counts.get("failed", 0)
                    progress.update(task, completed=finished)
                    if finished >= instances:
                        break
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        elapsed = time.perf_counter() - started
        await report(db, console, runtime, sent, order_ids, elapsed)


async def status_counts(db: durable.Database, machine: str) -> dict[str, int]:
    return {r["status"]: r["n"] for r in await db.pool.fetch(COUNT_BY_STATUS, machine)}


async def report(db: durable.Database, console: Console, runtime: durable.Runtime, sent: Counter[str],
                 ids: list[int], elapsed: float) -> None:
    table = Table(title="What happened", show_header=True)
    table.add_column("")
    table.add_column("count", justify="right")
    for machine in ("Checkout", "Shipment"):
        for status, n in sorted((await status_counts(db, machine)).items()):
            table.add_row(f"{machine} {status}", str(n))
    events = {r["event"]: r["n"] for r in await db.pool.fetch(COUNT_EVENTS)}
    steps = sum(events.get(k, 0) for k in ("next", "retry", "await", "spawn", "done", "stop", "cancel"))
    table.add_row("steps executed", str(steps))
    table.add_row("retries (carrier timeouts)", str(events.get("retry", 0)))
    table.add_row("signals stored / duplicates dropped", f"{sent['stored']} / {sent['duplicate']}")
    table.add_row("child -> parent joins", str(events.get("joined", 0)))
    table.add_row("outcome batches (group commit)", str(runtime.flusher.batches))
    table.add_row("elapsed", f"{elapsed:.2f} s")
    table.add_row("steps/s", f"{steps / elapsed:.0f}")
    console.print(table)
    story = ids[0]
    console.print(f"\n[bold]The story of checkout {story}[/] (db.history):")
    for e in await db.history(story):
        extra = {k: v for k, v in (e.detail or {}).items() if k in ("next", "signal", "name", "children", "error")}
        console.print(f"  {e.at:%H:%M:%S}  {e.event:<8} {e.step:<14} -> {e.status:<17} {extra or ''}")
    console.print("\nNext: [cyan]durable demo --help[/], and the README for the API.")


@click.command()
@dsn_option
@click.option("--schema", default="demo", show_default=True, help="Schema to (re)create for the demo.")
@click.option("--instances", "-n", default=300, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--seed", default=7, show_default=True, help="Seed for the payment actor.")
def command(dsn: str | None, schema: str, instances: int, seed: int) -> None:
    """Run a sample checkout workload (signals, children, retries) and print what happened."""
    console = Console()
    run(lambda: demo(dsn, schema, instances, seed, console))
