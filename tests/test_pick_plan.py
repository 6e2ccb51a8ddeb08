"""The pick's plan does not grow with the executing set (issue 14, item 10).

The pick runs on connections that keep a cached (generic) plan. Its busy-partition-key skip used to be
planned, generically, as a hashed SubPlan over every executing row (2,000 executing rows read to pick a
few). It must probe instances_partition_active per candidate instead, so that a pick with 10,000
executing rows does the same work as one with none. Compared by plan shape and rows read, never by time
(bench: the picker stage's ``executing`` case times it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import durable
from durable._pg import PostgresError, aio
from durable.sql import MIGRATIONS, Q, Query

pytestmark = pytest.mark.trio

QUEUE = "plan"
BACKLOG = 1000
DEMAND = 50

SEED_RUNNABLE = Query(
    "t_seed_runnable",
    """
insert into instances (machine, version, step, state, queue, partition_key, eligible_at)
select 'plan_m', 1, 'go', '{}', $2, 'key-' || md5(($3::int + i)::text), now() - interval '1 hour'
from generate_series(1, $1::int) i""",
    "",
)
SEED_EXECUTING = Query(
    "t_seed_executing",
    """
insert into instances (machine, version, step, status, state, queue, partition_key, worker_id, lease_token,
                       lease_expires_at, eligible_at)
select 'plan_m', 1, 'go', 'executing', '{}', $2, 'busy-' || i, 'elsewhere', nextval('lease_tokens'),
       now() + interval '1 hour', now() - interval '1 hour'
from generate_series(1, $1::int) i""",
    "",
)
SEED_UNKEYED = Query(
    "t_seed_unkeyed",
    """
insert into instances (machine, version, step, state, queue, eligible_at)
select 'plan_m', 1, 'go', '{}', $2, now() - interval '1 hour' from generate_series(1, $1::int) i""",
    "",
)
DROP_EXECUTING = Query("t_drop_executing", "delete from instances where status = 'executing'", "")
NO_AUTOVACUUM = Query("t_no_autovacuum", "alter table instances set (autovacuum_enabled = false)", "")
ANALYZE = Query("t_analyze", "analyze instances", "")  # no vacuum: no page is all-visible
FINISH = Query(
    "t_finish",
    "update instances set status = 'done', worker_id = null, lease_token = null, lease_expires_at = null "
    "where id = any($1::bigint[])",
    "",
)


async def generic_pick_plan(db: durable.Database, analyze: bool = True, demand: int = DEMAND) -> dict[str, Any]:
    """EXPLAIN ANALYZE of one pick of ``demand`` rows under a generic plan (rolled back), after fresh
    statistics unless not ``analyze``."""

    async def explain() -> Any:
        async with db.pool.raw.acquire() as con:
            if analyze:
                await con.execute("vacuum analyze instances")
            tx = con.transaction()
            await tx.start()
            try:
                await con.execute("set local plan_cache_mode = force_generic_plan")
                await con.execute(f"prepare t_pick as {Q.pick.text}")
                return json.loads(
                    await con.fetchval(
                        f"explain (analyze, format json) execute t_pick('{QUEUE}', {demand}, 'w', 60, null, null, null)"
                    )
                )
            finally:
                await tx.rollback()
                await con.execute("deallocate t_pick")

    return (await aio(explain)())[0]["Plan"]  # type: ignore[no-any-return]


def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from nodes(child)


def candidate(plan: dict[str, Any]) -> dict[str, Any]:
    return next(n for n in nodes(plan) if n.get("Subplan Name") == "CTE candidate")


def shape(node: dict[str, Any]) -> tuple[Any, ...]:
    """Node types, relations, indexes and subplan kinds, recursively: what a plan does, not its numbers
    (a node's subplans in any order: the planner orders a filter's clauses by their estimated cost)."""
    name = node.get("Subplan Name") or ""
    return (
        node["Node Type"],
        node.get("Relation Name"),
        node.get("Index Name"),
        name.startswith("CTE") and name,
        node.get("Parent Relationship"),
        "hashed SubPlan" in node.get("Filter", ""),
        tuple(sorted((shape(c) for c in node.get("Plans", [])), key=repr)),
    )


def rows_read(node: dict[str, Any]) -> int:
    """Rows every node of the subtree produced, over all its loops."""
    return sum(int(n["Actual Rows"] * n["Actual Loops"]) for n in nodes(node))


async def test_the_generic_pick_probes_busy_keys_instead_of_hashing_the_executing_set(db: durable.Database) -> None:
    await db.pool.execute(SEED_RUNNABLE, BACKLOG, QUEUE, 0)
    await db.pool.execute(SEED_EXECUTING, 2000, QUEUE)
    plan = await generic_pick_plan(db)
    text = json.dumps(plan)
    assert "hashed SubPlan" not in text, text
    probes = [n for n in nodes(candidate(plan)) if n.get("Index Name") == "instances_partition_active"]
    assert len(probes) == 1, text
    probe = probes[0]
    assert probe["Parent Relationship"] == "SubPlan" and probe["Actual Loops"] == DEMAND
    assert probe["Actual Rows"] == 0  # no candidate's key is busy: nothing of the executing set is read
    assert not [n for n in nodes(plan) if n.get("Index Name") == "instances_lease"], text


async def test_a_pick_with_10000_executing_rows_does_the_work_of_one_with_none(db: durable.Database) -> None:
    await db.pool.execute(SEED_RUNNABLE, BACKLOG, QUEUE, 0)
    idle = await generic_pick_plan(db)
    await db.pool.execute(SEED_EXECUTING, 10_000, QUEUE)
    busy = await generic_pick_plan(db)
    await db.pool.execute(DROP_EXECUTING)
    assert shape(candidate(busy)) == shape(candidate(idle))
    assert rows_read(candidate(busy)) == rows_read(candidate(idle))
    # nothing anywhere in the statement reads the executing set: no node produces more rows than the
    # backlog it picks from (a scan of the table would produce 11,000)
    assert max(n["Actual Rows"] * n["Actual Loops"] for n in nodes(busy)) <= BACKLOG, json.dumps(busy)


async def test_the_probe_keeps_to_the_partition_index_when_statistics_say_nothing_executes(
    db: durable.Database, pg_dsn: str, schema_name: str
) -> None:
    """Statistics taken while nothing executed (an idle night) make every executing-row index look empty.
    instances_lease (all executing rows) then looked as cheap a probe as instances_partition_active, the
    tie settled by btree descent cost: once claims had given the partition index a level (its dead
    entries pile up, the lease index's do not), a plan that scanned the whole lease index per candidate
    (dead entries included) was chosen, 50 scans per pick. The probe's status range (schema v13) proves
    only the partition index's predicate. The plan is made on a new connection, which reads the index's
    current height: a backend that cached the btree metapage while the index was one page kept seeing
    height 0, and this test passed by that luck before 797b003 (its plan ran on such a connection)."""
    await db.pool.execute(NO_AUTOVACUUM)
    await db.pool.execute(SEED_RUNNABLE, 20_000, QUEUE, 0)
    await db.pool.execute(ANALYZE)
    for n in range(120):  # picks whose claims end done, the backlog topped up: dead entries pile up
        rows = await db.pool.fetch(Q.pick, QUEUE, DEMAND, "w", 60.0, None, None, None)
        await db.pool.execute(FINISH, [r["id"] for r in rows])
        await db.pool.execute(SEED_RUNNABLE, DEMAND, QUEUE, 20_000 + n * DEMAND)
    async with durable.connect(pg_dsn, schema=schema_name, migrate=False, min_size=1, max_size=1) as fresh:
        plan = await generic_pick_plan(fresh, analyze=False)
    probes = [
        n
        for n in nodes(candidate(plan))
        if n.get("Parent Relationship") == "SubPlan"
        and n.get("Relation Name") == "instances"
        and n.get("Index Name") != "instances_unique"
    ]
    assert [n.get("Index Name") for n in probes] == ["instances_partition_active"], json.dumps(plan)


async def test_a_large_pick_on_a_table_never_analyzed_reads_each_claim_a_few_times(db: durable.Database) -> None:
    """A fresh backlog nobody analyzed yet (statistics of an empty table: every estimate one row): a pick of
    1,000 ordered its lease tokens by joining `free` back to `candidate`, planned as a nested loop, 1,000,000
    row comparisons (730 ms a pick, the first 60 % of the bench's 100k drain at a quarter of its speed until
    autovacuum analyzed the table). No node of the plan may produce more rows than the backlog."""
    await db.pool.execute(NO_AUTOVACUUM)
    backlog, demand = 2000, 1000
    await db.pool.execute(SEED_UNKEYED, backlog, QUEUE)
    plan = await generic_pick_plan(db, analyze=False, demand=demand)
    assert plan["Actual Rows"] == demand
    worst = max(nodes(plan), key=lambda n: n["Actual Rows"] * n["Actual Loops"])
    assert worst["Actual Rows"] * worst["Actual Loops"] <= backlog, json.dumps(worst)[:2000]


V12_PARTITION_INDEX = Query(
    "t_v12_partition_index",
    """
drop index instances_partition_active;
create unique index instances_partition_active on instances (partition_key)
  where status = 'executing' and partition_key is not null""",
    "",
)
PARTITION_PREDICATE = Query(
    "t_partition_predicate",
    "select pg_get_expr(indpred, indrelid) from pg_index where indexrelid = 'instances_partition_active'::regclass",
    "",
)
SNEAK = Query("t_sneak_claim", "update instances set status = 'executing' where status = 'runnable'", "")


async def test_schema_13_rebuilds_the_partition_index_of_a_live_table_and_it_still_refuses_a_second_claim(
    db: durable.Database,
) -> None:
    """A v12 schema with an executing row of a key (and a runnable one of the same key) upgrades: the index
    gets the range predicate the pick's probe proves, under its old name, and the second row of the key
    still cannot be claimed behind the pick's back."""
    await db.pool.execute(V12_PARTITION_INDEX)
    await db.pool.execute(SEED_RUNNABLE, 2, QUEUE, 0)
    await db.pool.execute(Query("t_same_key", "update instances set partition_key = 'k'", ""))
    assert len(await db.pool.fetch(Q.pick, QUEUE, DEMAND, "w", 60.0, None, None, None)) == 1
    (v13,) = [m for m in MIGRATIONS if m.version == 13]  # its text alone: later migrations need not re-apply
    await db.pool.execute(Query("t_migration_0013", v13.text, v13.name))
    assert "'executing'::status" in (predicate := await db.pool.fetchval(PARTITION_PREDICATE))
    assert "status >=" in predicate and "status <=" in predicate, predicate
    with pytest.raises(PostgresError, match="instances_partition_active"):
        await db.pool.execute(SNEAK)
