"""Instance attributes (issue 18, item 4): small string->string metadata set at insert, filtered by equality
through their GIN index in db.query, db.tail, durable ls/cancel/tail --attr and the console, shown by db.get and
durable show, and carried on spans as ``durable.attr.<name>``; bad attributes are refused with errors that name
the problem, before anything is stored."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import durable
from durable import Child, Done, Machine, Spawn, Stop, step
from durable.client import InsertColumns
from durable.filters import InstanceFilter
from durable.limits import MAX_ATTRIBUTES
from durable.ops import query_statement
from durable.sql import Q, Query
from tests.helpers import tail_settled
from tests.test_cli_ops import CLI

ROOT = Path(__file__).resolve().parent.parent


class Tagged(Machine, name="attrs.tagged", queue="attrs"):
    @step
    async def start(self, ctx: durable.Context) -> Done:
        return Done({"ok": True})


class Spawner(Machine, name="attrs.spawner", queue="attrs"):
    @step
    async def start(self, ctx: durable.Context) -> Any:
        return Spawn("joined", [Child(Tagged, {}, attributes={"tenant": "acme"})])

    @step
    async def joined(self, ctx: durable.Context) -> Done:
        return Done(None)

    async def handle(self, error: BaseException, ctx: durable.Context) -> Stop:
        return Stop(f"{type(error).__name__}: {error}")


async def ids_of(db: durable.Database, **filters: Any) -> list[int]:
    out: list[int] = []
    after = None
    while True:
        page = await db.query(limit=7, after=after, **filters)
        out += [r.id for r in page]
        if page.next is None:
            return out
        after = page.next


@pytest.mark.trio
async def test_attributes_are_stored_shown_and_filtered_by_equality(db: durable.Database) -> None:
    acme_summer = [await db.insert(Tagged, attributes={"tenant": "acme", "campaign": "summer"}) for _ in range(5)]
    acme_winter = [await db.insert(Tagged, attributes={"tenant": "acme", "campaign": "winter"}) for _ in range(4)]
    globex = [await db.insert(Tagged, attributes={"tenant": "globex"}) for _ in range(3)]
    plain = [await db.insert(Tagged) for _ in range(2)]
    empty = await db.insert(Tagged, attributes={})  # no attributes at all
    many = await db.insert_many(
        [durable.Insert(Tagged, attributes={"tenant": "initech", "n": str(i)}) for i in range(3)]
    )

    inst = await db.get(acme_summer[0])
    assert inst.attributes == {"tenant": "acme", "campaign": "summer"}
    assert (await db.get(plain[0])).attributes is None and (await db.get(empty)).attributes is None
    assert (await db.get(many[2])).attributes == {"tenant": "initech", "n": "2"}

    assert await ids_of(db, attributes={"tenant": "acme"}) == acme_summer + acme_winter
    assert await ids_of(db, attributes={"tenant": "acme", "campaign": "winter"}) == acme_winter
    assert await ids_of(db, attributes={"campaign": "summer"}) == acme_summer
    assert await ids_of(db, attributes={"tenant": "globex"}, order="-id") == globex[::-1]
    assert await ids_of(db, attributes={"tenant": "acme", "campaign": "autumn"}) == []
    assert await ids_of(db, attributes={"tenant": "ACME"}) == []  # equality: case matters
    assert await ids_of(db, attributes={"tenant": "initech"}, status="runnable") == many
    assert len(await ids_of(db, attributes={})) == 18  # an empty filter is no filter
    page = await db.query(attributes={"tenant": "globex"})
    assert [r.attributes for r in page] == [{"tenant": "globex"}] * 3
    assert page.items[0].to_json()["attributes"] == {"tenant": "globex"}
    assert await durable.ops.count(db, attributes={"tenant": "acme"}) == 9

    # executing rows (left out of the index, as the v7 operator indexes) are found through the executing arm
    claimed = await db.pool.fetch(Q.pick, "attrs", 3, "w-attrs", 60.0, None, None, None)
    assert [r["attributes"] for r in claimed] == ['{"tenant": "acme", "campaign": "summer"}'] * 3
    assert await ids_of(db, attributes={"tenant": "acme"}) == acme_summer + acme_winter
    assert await ids_of(db, attributes={"tenant": "acme"}, status="executing") == acme_summer[:3]

    # the tail filters on the attributes of the event's instance
    await tail_settled(db)  # no older transaction of another test holds the events back
    events = [e async for e in db.tail(attributes={"tenant": "globex"})]
    assert [e.instance_id for e in events] == globex and {e.event for e in events} == {"inserted"}


async def plan(db: durable.Database, statement: Query, args: list[Any]) -> str:
    explain = Query("test_explain", "explain " + statement.text, "")
    async with db.pool.transaction() as conn:
        await conn.fetchval(Q.force_custom_plans)
        return "\n".join(r[0] for r in await conn.fetch(explain, *args))


@pytest.mark.trio
async def test_the_attribute_filter_uses_its_gin_index(db: durable.Database) -> None:
    """With many instances and a selective attribute (sequential scans left enabled: the planner's own
    choice), db.query and durable.ops.count are answered through instances_attributes."""
    specs = [
        durable.Insert(Tagged, {"n": i}, attributes={"tenant": f"t{i % 500}", "campaign": "c"}) for i in range(5000)
    ]
    for start in range(0, len(specs), 1000):
        await db.insert_many(specs[start : start + 1000])
    await db.pool.execute(Query("test_analyze", "analyze instances", ""))
    for order in ("id", "-id", "updated"):
        statement, args = query_statement(attributes={"tenant": "t7"}, order=order)
        text = await plan(db, statement, args)
        assert "instances_attributes" in text and "Seq Scan" not in text, (order, text)
    _, args = query_statement(attributes={"tenant": "t7"})
    text = await plan(db, Q.count_instances, args[:15])
    assert "instances_attributes" in text and "Seq Scan" not in text, text
    # without the filter the index is not used (the test is not vacuous)
    statement, args = query_statement(machine="attrs.tagged")
    assert "instances_attributes" not in await plan(db, statement, args)
    assert len(await ids_of(db, attributes={"tenant": "t7"})) == 10


@pytest.mark.parametrize(
    ("attributes", "error", "message"),
    [
        (
            {f"k{i}": "v" for i in range(MAX_ATTRIBUTES + 1)},
            durable.OutcomeError,
            rf"has {MAX_ATTRIBUTES + 1} attributes; the limit is {MAX_ATTRIBUTES}",
        ),
        ({"tenant": 42}, TypeError, r"attribute 'tenant' must be a str, not int 42"),
        ({"tenant": None}, TypeError, r"attribute 'tenant' must be a str, not NoneType"),
        ({7: "x"}, TypeError, r"attribute names must be str, not int 7"),
        ({"ten\x00ant": "x"}, durable.OutcomeError, r"contains a NUL character"),
        ({"tenant": "ac\x00me"}, durable.OutcomeError, r"attribute 'tenant' contains a NUL character"),
        ({"": "x"}, durable.OutcomeError, r"must not be empty"),
        ({"n" * 200: "x"}, durable.OutcomeError, r"is 200 bytes long; the limit is 128 bytes"),
        ({"tenant": "v" * 2000}, durable.OutcomeError, r"attribute 'tenant' is 2000 bytes long; the limit is 1024"),
        ({"tenant": "\ud800"}, durable.OutcomeError, r"not valid Unicode"),
        ([("tenant", "acme")], TypeError, r"attributes must be a dict of str to str, not list"),
        ("tenant=acme", TypeError, r"attributes must be a dict of str to str, not str"),
    ],
)
@pytest.mark.trio
async def test_bad_attributes_are_refused_before_anything_is_stored(
    db: durable.Database, attributes: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        await db.insert(Tagged, attributes=attributes)
    with pytest.raises(error, match=message):
        await db.insert_many([durable.Insert(Tagged), durable.Insert(Tagged, attributes=attributes)])
    assert (await db.query()).items == []
    if error is not TypeError or isinstance(attributes, dict):
        with pytest.raises((durable.InvalidArgument, TypeError), match=message):
            await db.query(attributes=attributes)


@pytest.mark.trio
async def test_a_spawned_child_takes_no_attributes(db: durable.Database) -> None:
    """Attributes are set by db.insert; a child spec carrying some is refused (OutcomeError), not silently
    stored without them."""
    cols = InsertColumns(attributes=False)
    with pytest.raises(durable.OutcomeError, match="a spawned child takes no attributes"):
        cols.add(Child(Tagged, {}, attributes={"tenant": "acme"}), db.registry, "child #0")
    cols.add(Child(Tagged, {}), db.registry, "child #0")  # without: fine
    iid = await db.insert(Spawner)
    async with trio.open_nursery() as nursery:
        await nursery.start(durable.Runtime(db, machines=[Spawner, Tagged], queues={"attrs": 2}).run)
        with trio.fail_after(20):
            while (inst := await db.get(iid)).status not in ("failed", "done"):
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert inst.status == "failed" and "a spawned child takes no attributes" in (inst.last_error or "")


def test_console_filter_parses_attributes() -> None:
    f = InstanceFilter.parse("queue:q attr:tenant=acme attr:campaign=summer=hot")
    assert f.attributes == (("tenant", "acme"), ("campaign", "summer=hot"))
    assert InstanceFilter.parse(f.text()) == f
    assert json.loads(f.args()[14]) == {"tenant": "acme", "campaign": "summer=hot"}
    assert InstanceFilter.parse("queue:q").args()[14] is None
    for bad, message in (
        ("attr:tenant", "attr takes name=value"),
        ("attr:=x", "attr takes name=value"),
        ("attr:" + "n" * 200 + "=x", "the limit is 128 bytes"),
    ):
        with pytest.raises(durable.InvalidArgument, match=message):
            InstanceFilter.parse(bad)


async def settled(dsn: str, schema: str) -> None:
    """tests/helpers.tail_settled on a connection of its own (for the CLI's tail)."""
    async with durable.connect(dsn, schema=schema, migrate=False) as db:
        await tail_settled(db)


def test_cli_ls_cancel_show_and_tail_take_attr(pg_dsn: str, schema_name: str) -> None:
    cli = CLI(pg_dsn, schema_name)

    async def setup() -> tuple[list[int], list[int]]:
        async with durable.connect(pg_dsn, schema=schema_name) as db:
            acme = [await db.insert(Tagged, attributes={"tenant": "acme", "campaign": "summer"}) for _ in range(3)]
            other = [await db.insert(Tagged, attributes={"tenant": "globex"}) for _ in range(2)]
            return [i for i in acme if i], [i for i in other if i]

    acme, other = trio.run(setup)
    try:
        out = cli.json("ls", "--attr", "tenant=acme")
        assert [r["id"] for r in out["items"]] == acme
        assert out["items"][0]["attributes"] == {"tenant": "acme", "campaign": "summer"}
        out = cli.json("ls", "--attr", "tenant=acme", "--attr", "campaign=winter")
        assert out["items"] == []
        assert str(acme[0]) in cli("ls", "--attr", "tenant=acme").stdout
        shown = cli("show", str(acme[0]), "--no-history").stdout
        assert "attributes" in shown and "tenant=acme campaign=summer" in shown
        assert cli.json("show", str(acme[0]))["attributes"] == {"tenant": "acme", "campaign": "summer"}
        trio.run(settled, pg_dsn, schema_name)
        lines = cli("tail", "--attr", "tenant=globex").stdout.splitlines()
        assert [int(line.split()[2]) for line in lines] == other
        for args, message in (
            (("ls", "--attr", "tenant"), "--attr takes NAME=VALUE"),
            (("ls", "--attr", "=acme"), "--attr takes NAME=VALUE"),
            (("ls", "--attr", "t=a", "--attr", "t=b"), "given twice with different values"),
            (("ls", "--attr", "a\x01" * 100 + "=x"), "the limit is 128 bytes"),
            (("tail", "--attr", "tenant"), "--attr takes NAME=VALUE"),
        ):
            proc = cli(*args, code=2)
            assert proc.stderr.startswith("error:") and message in proc.stderr and len(proc.stderr.splitlines()) == 1
        made = cli.json("insert", "attrs.tagged", "--step", "start", "--queue", "attrs", "--attr", "tenant=cli")
        assert cli.json("show", str(made["id"]))["attributes"] == {"tenant": "cli"}
        report = cli.json("cancel", "--attr", "tenant=globex", "--yes")
        assert (report["matched"], report["changed"]) == (2, 2)
        assert {r["status"] for r in cli.json("ls", "--attr", "tenant=globex")["items"]} == {"cancelled"}
        assert {r["status"] for r in cli.json("ls", "--attr", "tenant=acme")["items"]} == {"runnable"}
    finally:

        async def drop() -> None:
            from durable.migrate import drop_schema

            async with durable.connect(pg_dsn, schema=schema_name, migrate=False) as db:
                await drop_schema(db.pool, schema_name)

        trio.run(drop)


SPANS = """
import json, sys
import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

import durable
from tests.test_attributes import Tagged


async def main(dsn, schema):
    async with durable.connect(dsn, schema=schema, migrate=False) as db:
        iid = await db.insert(Tagged, attributes={"tenant": "acme", "campaign": "summer"})
        async with trio.open_nursery() as nursery:
            await nursery.start(durable.Runtime(db, machines=[Tagged], queues={"attrs": 2}).run)
            with trio.fail_after(20):
                while (await db.get(iid)).status != "done":
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    return iid


iid = trio.run(main, *sys.argv[1:3])
provider.force_flush()
spans = [{"name": s.name, "attributes": dict(s.attributes or {})} for s in exporter.get_finished_spans()]
print(json.dumps({"iid": iid, "spans": spans}))
"""


@pytest.mark.trio
async def test_spans_carry_the_attributes(db: durable.Database, pg_dsn: str, schema_name: str) -> None:
    proc = await trio.run_process(
        [sys.executable, "-c", SPANS, pg_dsn, schema_name],
        capture_stdout=True,
        capture_stderr=True,
        cwd=str(ROOT),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    (insert,) = [s["attributes"] for s in out["spans"] if s["name"] == "durable insert"]
    (run,) = [s["attributes"] for s in out["spans"] if s["name"] == "step attrs.tagged.start"]
    for span in (insert, run):
        assert (span["durable.attr.tenant"], span["durable.attr.campaign"]) == ("acme", "summer"), span
    assert run["durable.instance.id"] == out["iid"]
