"""``durable demo``: a checkout workload run by the embedded runtime, printing what happened.

Each checkout reserves stock, parks until a payment signal arrives (sent by a payment actor: some before
the checkout parks, some twice with the same dedup key, a few declined), spawns shipment children
(carriers time out now and then: retried with backoff), joins them and finishes.

Every instance the demo makes carries a unique key starting with ``durable-demo:``. A ``--schema`` holding
any other instance is refused (exit 2) unless ``--force``, which drops it; otherwise nothing is dropped: a
missing schema is made (and marked ``COMMENT ON SCHEMA ... IS 'durable demo'``) and an earlier demo run's
instances are deleted, so the demo starts afresh beside whatever else the schema holds.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter

import click
import trio
from rich.console import Console
from rich.table import Table

import durable
from durable import Await, Child, Done, Machine, Next, Spawn, Stop, step
from durable.cli import DEFAULT_SCHEMA, dsn_option, json_option, run, schema_option_with, telemetry
from durable.cli_progress import Ticker
from durable.errors import NotDeliverable, SchemaError
from durable.migrate import drop_schema
from durable.outcomes import Outcome
from durable.sql import Query

DEMO_MARK = "durable demo"  # the comment on a schema the demo made: it may drop it again

COUNT_BY_STATUS = Query(
    "demo_count_by_status",
    "select status::text as status, count(*) as n from instances where machine = $1 group by 1",
    "Instances of machine $1 by status (demo report).",
)
COUNT_EVENTS = Query(
    "demo_count_events", "select event, count(*) as n from history group by 1", "History events by kind."
)
SURVEY_SCHEMA = Query(
    "demo_survey_schema",
    """select n.oid is not null as present,
       coalesce(obj_description(n.oid, 'pg_namespace'), '') as comment,
       (select count(*) from pg_class c where c.relnamespace = n.oid) as relations,
       exists (select 1 from pg_tables t where t.schemaname = $1::text and t.tablename = 'instances') as durable
from (select $1::text as name) as s left join pg_namespace n on n.nspname = s.name""",
    "Schema $1: whether it exists, its comment, how many relations it holds, whether it has an instances table.",
)
COUNT_INSTANCES = Query(
    "demo_count_instances",
    "select count(*) from (select from instances limit 10001) as i",
    "Instances in the pool's schema (first in its search_path; run only when it has the table), up to 10,001.",
)
DEMO_KEY = "durable-demo:"  # the unique-key prefix of every instance the demo inserts or spawns
FOREIGN_INSTANCES = Query(
    "demo_foreign_instances",
    "select count(*) from (select from instances where unique_key is null or left(unique_key, 13) <> $1::text"
    " limit 10001) as i",
    "Instances in the pool's schema whose unique key does not start with $1 (the demo's prefix), up to 10,001.",
)
CLEAR_DEMO = Query(
    "demo_clear",
    """with gone as (delete from instances where left(unique_key, 13) = $1::text returning id)
delete from history h using gone where h.instance_id = gone.id""",
    "Delete the instances whose unique key starts with $1 (an earlier demo run's) and their history.",
)
MARK_DDL = Query(
    "demo_mark_ddl",
    "select format('comment on schema %I is %L', $1::text, $2::text)",
    "The COMMENT ON SCHEMA statement marking schema $1 with text $2, names quoted by the server.",
)


class Shipment(Machine, queue="shipping", max_attempts=8):
    """Books a carrier; the carrier times out on some first attempts (an exception through handle)."""

    backoff_base = 0.05

    @step
    async def book(self, ctx: durable.Context) -> Outcome:
        """Book the parcel's carrier (a flaky carrier times out on the first attempt)."""
        await trio.sleep(0.002)
        if ctx.state["flaky"] and ctx.attempt == 0:
            raise TimeoutError(f"carrier {ctx.state['carrier']} did not answer")
        return Done({"carrier": ctx.state["carrier"], "parcel": ctx.state["parcel"]})


class Checkout(Machine, queue="checkout", version=1, initial="reserve"):
    """An order: reserve, wait for the payment signal, ship each item as a child, then close."""

    class State(durable.State):
        """The order, its item count and the amount paid."""

        order: int
        items: int
        amount: int = 0

    @step
    async def reserve(self, ctx: durable.Context) -> Outcome:
        """Reserve the items; then wait for the payment."""
        return Next("await_payment", ctx.state)

    @step
    async def await_payment(self, ctx: durable.Context) -> Outcome:
        """Park until a payment signal; a declined one fails the order, a paid one spawns the shipments."""
        paid = ctx.signal("payment")
        if paid is None:
            return Await("payment", ctx.state)
        if paid.payload["status"] == "declined":
            return Stop(f"payment declined for order {ctx.state.order}")
        ctx.state.amount = paid.payload["amount"]
        rng = random.Random(ctx.state.order)
        parcels = [
            Child(
                Shipment,
                {"parcel": i, "carrier": rng.choice(["dhl", "ups", "post"]), "flaky": rng.random() < 0.2},
                unique_key=f"{DEMO_KEY}{ctx.id}:parcel:{i}",
            )
            for i in range(ctx.state.items)
        ]
        return Spawn("close", parcels, ctx.state)

    @step
    async def close(self, ctx: durable.Context) -> Outcome:
        """Every shipment has ended: the order is done, with the carriers that shipped."""
        return Done(
            {
                "order": ctx.state.order,
                "amount": ctx.state.amount,
                "parcels": sorted(c.result["carrier"] for c in ctx.children if c.result),
            }
        )


async def pay(db: durable.Database, ids: list[int], rng: random.Random, sent: Counter[str]) -> None:
    """The payment actor: pays every order once, some twice (same dedup key), declines a few."""
    for order, iid in enumerate(ids):
        status = "declined" if rng.random() < 0.05 else "ok"
        payload = {"status": status, "amount": 10 + order % 90}
        for _ in range(2 if rng.random() < 0.1 else 1):
            try:
                stored = await db.signal(iid, "payment", payload, dedup_key=f"pay-{order}")
            except NotDeliverable:  # a repeat after a declined payment already ended the order (a busy box)
                sent["duplicate"] += 1
                continue
            sent["stored" if stored else "duplicate"] += 1
        await trio.sleep(rng.random() * 0.002)


async def prepare_schema(db: durable.Database, schema: str, force: bool) -> None:
    """Make ``schema`` ready for the demo without destroying what is not the demo's. Every instance the demo
    makes carries a unique key starting with ``durable-demo:``; a schema holding any other instance raises
    SchemaError unless ``force`` (then the schema is dropped and made again). Otherwise nothing is dropped:
    the schema is made (and marked) when missing, migrated, and an earlier demo run's instances are deleted
    — streams, workers and everything else in it stay."""
    survey = await db.pool.fetchrow(SURVEY_SCHEMA, schema)
    assert survey is not None
    if survey["durable"]:
        held = await db.pool.fetchval(FOREIGN_INSTANCES, DEMO_KEY)
        if held and not force:
            count = "more than 10,000" if held > 10_000 else str(held)
            raise SchemaError(
                f"schema {schema!r} holds {count} instances that durable demo did not make: "
                "choose another --schema, or add --force to drop it with everything in it"
            )
    if force:
        await drop_schema(db.pool, schema)
    new = force or not survey["present"] or survey["relations"] == 0
    await db.migrate()
    await db.pool.execute(CLEAR_DEMO, DEMO_KEY)
    if new or survey["comment"] == DEMO_MARK:
        await db.pool.execute(Query("demo_mark", await db.pool.fetchval(MARK_DDL, schema, DEMO_MARK), ""))


async def demo(
    dsn: str | None,
    schema: str,
    instances: int,
    seed: int,
    console: Console,
    force: bool = False,
    as_json: bool = False,
) -> None:
    """Run the demo: ``instances`` checkouts (random from ``seed``) through a local runtime, payments sent
    as signals, then the report."""
    rng = random.Random(seed)
    run = f"{seed}-{time.time_ns()}"  # a demo's unique keys are its own: a second demo never collides
    started = time.perf_counter()
    async with durable.connect(dsn, schema=schema, migrate=False, machines=[Checkout, Shipment]) as db:
        await prepare_schema(db, schema, force)
        console.print(
            f"[bold]durable demo[/]: {instances} checkouts on "
            f"{'the embedded PostgreSQL' if not dsn else 'your PostgreSQL'}, schema [cyan]{schema}[/]"
        )
        sent: Counter[str] = Counter()
        async with trio.open_nursery() as nursery:
            runtime = durable.Runtime(db, queues={"checkout": 20, "shipping": 20})
            await nursery.start(runtime.run)
            ids = await db.insert_many(
                [
                    durable.Insert(Checkout, {"order": i, "items": 1 + i % 3}, unique_key=f"{DEMO_KEY}{run}:order:{i}")
                    for i in range(instances)
                ]
            )
            order_ids = [i for i in ids if i is not None]
            nursery.start_soon(pay, db, order_ids, rng, sent)
            with Ticker("checkouts finished", instances, console=console) as progress:
                while True:
                    counts = await status_counts(db, "Checkout")
                    finished = counts.get("done", 0) + counts.get("failed", 0)
                    progress.update(finished)
                    if finished >= instances:
                        break
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        elapsed = time.perf_counter() - started
        await report(db, console, runtime, sent, order_ids, elapsed, schema, as_json, dsn)


async def status_counts(db: durable.Database, machine: str) -> dict[str, int]:
    """How many instances of ``machine`` are in each status."""
    return {r["status"]: r["n"] for r in await db.pool.fetch(COUNT_BY_STATUS, machine)}


async def report(
    db: durable.Database,
    console: Console,
    runtime: durable.Runtime,
    sent: Counter[str],
    ids: list[int],
    elapsed: float,
    schema: str = DEFAULT_SCHEMA,
    as_json: bool = False,
    dsn: str | None = None,
) -> None:
    """Print what the demo did (a table; with ``as_json``, one JSON object)."""
    table = Table(title="What happened", show_header=True)
    table.add_column("")
    table.add_column("count", justify="right")
    by_status = {
        machine: dict(sorted((await status_counts(db, machine)).items())) for machine in ("Checkout", "Shipment")
    }
    for machine, counts in by_status.items():
        for status, n in counts.items():
            table.add_row(f"{machine} {status}", str(n))
    events = {r["event"]: r["n"] for r in await db.pool.fetch(COUNT_EVENTS)}
    steps = sum(events.get(k, 0) for k in ("next", "retry", "await", "spawn", "done", "stop", "cancel"))
    story = ids[0]
    if as_json:
        from durable.cli_ops import emit_json

        emit_json(
            {
                "schema": schema,
                "instances": by_status,
                "steps": steps,
                "retries": events.get("retry", 0),
                "signals": {"stored": sent["stored"], "duplicate": sent["duplicate"]},
                "joins": events.get("joined", 0),
                "batches": runtime.flusher.batches,
                "elapsed": round(elapsed, 3),
                "story": story,
            }
        )
        return
    table.add_row("steps executed", str(steps))
    table.add_row("retries (carrier timeouts)", str(events.get("retry", 0)))
    table.add_row("signals stored / duplicates dropped", f"{sent['stored']} / {sent['duplicate']}")
    table.add_row("child -> parent joins", str(events.get("joined", 0)))
    table.add_row("outcome batches (group commit)", str(runtime.flusher.batches))
    table.add_row("elapsed", f"{elapsed:.2f} s")
    table.add_row("steps/s", f"{steps / elapsed:.0f}")
    console.print(table)
    console.print(f"\n[bold]The story of checkout {story}[/] (db.history):")
    for e in await db.history(story):
        extra = {k: v for k, v in (e.detail or {}).items() if k in ("next", "signal", "name", "children", "error")}
        console.print(f"  {e.at:%H:%M:%S}  {e.event:<8} {e.step:<14} -> {e.status:<17} {extra or ''}")
    # the flags `durable console` needs to find this data: none when it runs where the console looks
    flag = "" if schema == (os.environ.get("DURABLE_SCHEMA") or DEFAULT_SCHEMA) else f" --schema {schema}"
    if dsn and dsn != os.environ.get("DURABLE_DSN"):
        from durable._pg import redact

        flag = f" --dsn '{redact(dsn)}'{flag}"
    console.print(
        f"\nNext: [cyan]durable console{flag}[/] (its queues and instances; --web in a browser), "
        f"[cyan]durable show{flag} {story}[/], and the README for the API.",
        soft_wrap=True,
    )


@click.command()
@dsn_option
@schema_option_with(
    "Schema for the demo: an earlier demo run's instances are deleted; one holding other "
    "instances is refused unless --force."
)
@click.option("--instances", "-n", default=300, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--seed", default=7, show_default=True, help="Seed for the payment actor.")
@click.option("--force", is_flag=True, help="Drop --schema even when it holds instances the demo did not make.")
@json_option
def command(dsn: str | None, schema: str, instances: int, seed: int, force: bool, as_json: bool) -> None:
    """Run a sample checkout workload (signals, children, retries) and print what happened; `durable console`
    and `durable ls` then show it (both read the same default schema)."""
    console = Console(stderr=as_json)  # --json: the JSON report alone on stdout
    with telemetry(service_name="durable-demo"):  # the standard OTEL_* variables export its traces
        run(lambda: demo(dsn, schema, instances, seed, console, force, as_json))
