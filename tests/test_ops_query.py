"""db.query against real PostgreSQL: every filter alone and combined (AND), the sort orders, keyset
paging (complete, no duplicates, stable while rows are inserted), and errors that name the problem."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import trio

import durable
from durable import Child, Done, Machine, Spawn, Stop, step
from durable.ops import InvalidArgument, Row, query_statement
from durable.sql import Q, Query

pytestmark = pytest.mark.trio


class Parent(Machine, name="shop.parent", queue="work"):
    @step
    async def start(self, ctx: durable.Context) -> Any:
        return Spawn("joined", [Child("billing.invoice", {"child": i}, step="perform", queue="idle") for i in range(2)])

    @step
    async def joined(self, ctx: durable.Context) -> Any:
        return Done(len(ctx.children))


class Finisher(Machine, name="shop.finish", queue="work"):
    @step
    async def start(self, ctx: durable.Context) -> Any:
        return Done({"ok": True})


class Failer(Machine, name="billing.fail", queue="work"):
    @step
    async def start(self, ctx: durable.Context) -> Any:
        return Stop("card declined")


async def wait_until(check: Callable[[], Any], seconds: float = 10.0) -> None:
    """Poll the database until ``check()`` holds (a real runtime commits asynchronously)."""
    with trio.fail_after(seconds):
        while not await check():
            await trio.sleep(0.02)


async def populate(db: durable.Database) -> dict[str, Any]:
    """A mixed population: runnable rows in an unserved queue, done/failed/awaiting_children rows made by
    a real runtime, a cancelled row, keys, versions and nested states."""
    ids: dict[str, Any] = {}
    ids["idle"] = [
        await db.insert(
            "billing.invoice",
            {"order": i, "customer": {"tier": "gold" if i % 2 else "silver"}},
            step="perform",
            queue="idle",
            partition_key=f"order:{i}",
            unique_key=f"invoice:{i}",
            version=1 + i % 2,
        )
        for i in range(6)
    ]
    ids["mail"] = [await db.insert("mail.send", {"to": f"u{i}"}, step="perform", queue="mail") for i in range(3)]
    ids["finish"] = [await db.insert(Finisher, {"order": 100 + i}) for i in range(3)]
    ids["fail"] = [await db.insert(Failer, {"order": 200})]
    ids["parent"] = await db.insert(Parent, {"order": 300})
    ids["cancelled"] = await db.insert("mail.send", {"to": "gone"}, step="perform", queue="mail")
    assert await db.cancel(ids["cancelled"]) == "cancelled"
    async with trio.open_nursery() as nursery:
        await nursery.start(
            durable.Runtime(db, machines=[Parent, Finisher, Failer], queues={"work": 4}, drain_timeout=5).run
        )

        async def settled() -> bool:
            parent = await db.get(ids["parent"])
            ends = [await db.get(i) for i in ids["finish"] + ids["fail"]]
            return parent.status == "awaiting_children" and all(e.status in ("done", "failed") for e in ends)

        await wait_until(settled)
        nursery.cancel_scope.cancel()
    return ids


async def everything(db: durable.Database) -> list[Row]:
    rows: list[Row] = []
    after = None
    while True:
        page = await db.query(limit=7, after=after)
        rows.extend(page.items)
        if page.next is None:
            return rows
        after = page.next


async def all_pages(db: durable.Database, **filters: Any) -> list[Row]:
    rows: list[Row] = []
    after = None
    for _ in range(1000):
        page = await db.query(after=after, **filters)
        assert len(page.items) <= filters.get("limit", 50)
        rows.extend(page.items)
        if page.next is None:
            return rows
        after = page.next
    raise AssertionError("paging did not end")


async def test_each_filter_and_combinations_match_a_python_filter(db: durable.Database) -> None:
    ids = await populate(db)
    rows = await everything(db)
    assert len(rows) == len({r.id for r in rows}) == 17  # 6 + 3 + 3 + 1 + 1 + 1 + 2 children
    children = [r for r in rows if r.parent_id == ids["parent"]]
    assert len(children) == 2
    mid = sorted(rows, key=lambda r: r.id)[8]

    cases: list[tuple[dict[str, Any], Callable[[Row], bool]]] = [
        ({"ids": [ids["idle"][0], ids["fail"][0], 10**9]}, lambda r: r.id in (ids["idle"][0], ids["fail"][0])),
        ({"status": "failed"}, lambda r: r.status == "failed"),
        ({"status": {"done", "cancelled"}}, lambda r: r.status in ("done", "cancelled")),
        ({"status": "terminal"}, lambda r: r.status in ("done", "failed", "cancelled")),
        ({"status": "runnable,awaiting_children"}, lambda r: r.status in ("runnable", "awaiting_children")),
        ({"machine": "billing.invoice"}, lambda r: r.machine == "billing.invoice"),
        ({"machine_prefix": "billing."}, lambda r: r.machine.startswith("billing.")),
        ({"machine_prefix": "shop."}, lambda r: r.machine.startswith("shop.")),
        ({"version": 2}, lambda r: r.version == 2),
        ({"queue": "mail"}, lambda r: r.queue == "mail"),
        ({"partition_key": "order:3"}, lambda r: r.partition_key == "order:3"),
        ({"unique_key": "invoice:4"}, lambda r: r.unique_key == "invoice:4"),
        ({"parent_id": ids["parent"]}, lambda r: r.parent_id == ids["parent"]),
        ({"inserted_after": mid.inserted_at}, lambda r: r.inserted_at >= mid.inserted_at),
        ({"inserted_before": mid.inserted_at}, lambda r: r.inserted_at < mid.inserted_at),
        ({"updated_after": mid.updated_at}, lambda r: r.updated_at >= mid.updated_at),
        ({"updated_before": mid.updated_at}, lambda r: r.updated_at < mid.updated_at),
        ({"updated_after": timedelta(hours=1)}, lambda r: True),
        ({"inserted_before": timedelta(hours=1)}, lambda r: False),
        ({"state": {"order": 3}}, lambda r: isinstance(r.state, dict) and r.state.get("order") == 3),
        (
            {"state": '{"customer": {"tier": "gold"}}'},
            lambda r: isinstance(r.state, dict) and r.state.get("customer", {}).get("tier") == "gold",
        ),
        # combinations: AND semantics
        (
            {"machine_prefix": "billing.", "status": "runnable", "version": 2},
            lambda r: r.machine.startswith("billing.") and r.status == "runnable" and r.version == 2,
        ),
        (
            {"queue": "idle", "state": {"customer": {"tier": "silver"}}, "partition_key": "order:2"},
            lambda r: r.queue == "idle" and r.partition_key == "order:2",
        ),
        ({"queue": "idle", "state": {"customer": {"tier": "silver"}}, "partition_key": "order:3"}, lambda r: False),
        (
            {"status": "active", "queue": "work"},
            lambda r: r.queue == "work" and r.status != "done" and r.status != "failed",
        ),
        (
            {"parent_id": ids["parent"], "status": "runnable", "state": {"child": 1}},
            lambda r: r.parent_id == ids["parent"] and r.state == {"child": 1},
        ),
    ]
    for filters, keep in cases:
        expected = [r.id for r in rows if keep(r)]
        got = [r.id for r in await all_pages(db, limit=2, **filters)]
        assert got == expected, filters
    # the interesting cases are not vacuous
    assert len([r for r in rows if r.status == "failed"]) == 1
    assert len([r for r in rows if r.status == "done"]) == 3
    assert len([r for r in rows if r.status == "awaiting_children"]) == 1
    assert {r.state["child"] for r in children} == {0, 1}


async def test_orders_page_through_everything_once(db: durable.Database) -> None:
    await populate(db)
    rows = await everything(db)
    by_id = [r.id for r in sorted(rows, key=lambda r: r.id)]
    by_updated = [r.id for r in sorted(rows, key=lambda r: (r.updated_at, r.id))]
    assert [r.id for r in await all_pages(db, order="id", limit=3)] == by_id
    assert [r.id for r in await all_pages(db, order="-id", limit=3)] == by_id[::-1]
    assert [r.id for r in await all_pages(db, order="updated", limit=3)] == by_updated
    assert [r.id for r in await all_pages(db, order="-updated", limit=4)] == by_updated[::-1]
    # a filtered, time-ordered walk
    done = [r.id for r in sorted(rows, key=lambda r: (r.updated_at, r.id)) if r.status == "done"]
    assert [r.id for r in await all_pages(db, order="-updated", status="done", limit=1)] == done[::-1]
    last = await db.query(order="id", limit=len(rows))
    assert last.next is None and len(last) == len(rows)


async def test_paging_is_stable_while_rows_are_inserted(db: durable.Database) -> None:
    first = await db.insert_many(
        [durable.Insert("mail.send", {"n": i}, step="perform", queue="mail") for i in range(40)]
    )
    seen_up: list[int] = []
    seen_down: list[int] = []
    inserted: list[int | None] = []
    up = down = None
    pages = 0
    committed_before_last_up_page: list[int | None] = []
    while True:
        committed = list(inserted)
        # another client inserts between (and during) page reads
        async with trio.open_nursery() as nursery:

            async def more() -> None:
                inserted.extend(
                    await db.insert_many(
                        [durable.Insert("mail.send", {"late": True}, step="perform", queue="mail")] * 3
                    )
                )

            nursery.start_soon(more)
            p_up = await db.query(queue="mail", order="id", limit=5, after=up) if up != "end" else None
            p_down = await db.query(queue="mail", order="-id", limit=5, after=down) if down != "end" else None
        if p_up is not None:
            seen_up += [r.id for r in p_up]
            up = p_up.next or "end"
            if up == "end":
                committed_before_last_up_page = committed
        if p_down is not None:
            seen_down += [r.id for r in p_down]
            down = p_down.next or "end"
        pages += 1
        if up == "end" and down == "end":
            break
        assert pages < 200
    assert len(seen_up) == len(set(seen_up)) and seen_up == sorted(seen_up)
    assert len(seen_down) == len(set(seen_down)) and seen_down == sorted(seen_down, reverse=True)
    # every row that existed before the walk is seen exactly once in both directions
    assert set(first) <= set(seen_up) and set(first) <= set(seen_down)
    # a descending walk never sees rows inserted after it started (they sort before its first page)
    assert not set(seen_down) - set(first) - set(inserted[:3])
    # an ascending walk picks up every late row committed before its last page (they sort after it)
    assert len(committed_before_last_up_page) >= 3
    assert set(committed_before_last_up_page) <= set(seen_up)


# Forbids sequential scans in the test's transaction: a filter that no index can serve then shows a
# (disabled) Seq Scan in its plan instead of an index.
NO_SEQSCAN = Query("test_no_seqscan", "select set_config('enable_seqscan', 'off', true)", "")


async def plan_of(db: durable.Database, **filters: Any) -> str:
    statement, args = query_statement(**filters)
    explain = Query("test_explain", "explain " + statement.text, "")
    async with db.pool.transaction() as conn:
        await conn.fetchval(Q.force_custom_plans)
        await conn.fetchval(NO_SEQSCAN)
        return "\n".join(r[0] for r in await conn.fetch(explain, *args))


async def test_executing_rows_are_found_and_every_indexed_filter_keeps_its_index(db: durable.Database) -> None:
    """Schema v7 leaves executing rows out of the (queue, status), (machine, version, status) and state
    indexes. Each filter must still return them (the statements' executing arm) and still be served by
    its index, not by a scan of the table."""
    for i in range(12):
        await db.insert(
            "billing.invoice", {"order": i, "customer": i % 3}, step="perform", queue="idle", version=1 + i % 2
        )
    claimed = await db.pool.fetch(Q.pick, "idle", 4, "test-worker", 60.0, None, None, None)
    executing = {r["id"] for r in claimed}
    rows = await everything(db)
    assert len(executing) == 4 and {r.status for r in rows if r.id in executing} == {"executing"}
    one_executing = next(r for r in rows if r.id in executing)
    one_waiting = next(r for r in rows if r.id not in executing)

    cases: list[tuple[dict[str, Any], Callable[[Row], bool]]] = [
        ({"state": {"order": one_executing.state["order"]}}, lambda r: r.id == one_executing.id),
        ({"state": {"order": one_waiting.state["order"]}}, lambda r: r.id == one_waiting.id),
        ({"state": {"customer": 1}}, lambda r: r.state["customer"] == 1),
        ({"machine": "billing.invoice"}, lambda r: True),
        ({"machine_prefix": "billing."}, lambda r: True),
        ({"queue": "idle"}, lambda r: True),
        ({"version": 2}, lambda r: r.version == 2),
        ({"status": "executing"}, lambda r: r.id in executing),
        ({"status": "runnable,executing"}, lambda r: True),
        (
            {"machine": "billing.invoice", "version": 1, "status": "executing"},
            lambda r: r.id in executing and r.version == 1,
        ),
        ({"queue": "idle", "status": "runnable"}, lambda r: r.id not in executing),
    ]
    for filters, keep in cases:
        expected = [r.id for r in rows if keep(r)]
        assert expected, filters
        for order in ("id", "-id", "updated", "-updated"):
            got = [r.id for r in await all_pages(db, limit=3, order=order, **filters)]
            assert sorted(got) == expected, (filters, order)

    # each filter can be answered through its index (sequential scans are disabled, so a filter without a
    # usable index would show one)
    indexed: list[tuple[dict[str, Any], str]] = [
        ({"state": {"order": 3}}, "instances_state"),
        ({"state": {"order": 3}, "status": "failed"}, "Index Scan"),  # state or terminal: either serves
        ({"machine": "billing.invoice", "version": 2, "status": "failed"}, "instances_machine"),
        ({"queue": "idle", "status": "awaiting_signal"}, "instances_queue_status"),
        ({"status": "executing"}, "instances_lease"),
        ({"status": "failed", "order": "-updated"}, "instances_terminal"),
    ]
    for filters, index in indexed:
        plan = await plan_of(db, **filters)
        assert index in plan and "Seq Scan" not in plan, (filters, plan)
    # the always-true executing arm is what makes the partial state index usable without a status filter
    plan = await plan_of(db, state={"order": 3})
    assert "instances_lease" in plan, plan


async def test_bad_filters_raise_errors_that_name_the_problem(db: durable.Database) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"status": "finished"}, "unknown status 'finished'"),
        ({"status": ["done", "nope"]}, "unknown status 'nope'"),
        ({"state": "{order: 42"}, "state filter is not valid JSON"),
        ({"state": "42"}, "state filter must be a JSON object or array"),
        ({"order": "name"}, "unknown order 'name'"),
        ({"limit": 0}, "limit must be an integer"),
        ({"after": "garbage!"}, "malformed cursor"),
        ({"version": "2"}, "version must be an integer"),
        ({"machine": ""}, "machine must be a non-empty string"),
        ({"updated_after": "yesterday"}, "updated_after must be a datetime or a timedelta"),
    ]
    for filters, message in cases:
        with pytest.raises(InvalidArgument, match=message):
            await db.query(**filters)
    await db.insert_many([durable.Insert("mail.send", {}, step="perform")] * 3)
    page = await db.query(limit=1)
    assert page.next is not None
    with pytest.raises(InvalidArgument, match="belongs to order 'id', not 'updated'"):
        await db.query(order="updated", after=page.next)
    assert isinstance(InvalidArgument("x"), durable.DurableError)
