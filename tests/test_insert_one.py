"""``insert_instance`` (a lone row's insert, scalar parameters) leaves exactly what ``insert_instances`` leaves for
the same row as a batch of one: the instance row, its history row, its NOTIFY hint and the statement's answer.
Each case goes through both statements with the same fixed ``now`` and the results are compared column by
column (the ids, lease tokens and unique keys differ by construction and are compared by shape). ``db.insert``
and ``insert_many`` of one spec send ``insert_instance``; a larger batch sends ``insert_instances``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import trio

import durable
from durable.inserts import InsertColumns
from durable.sql import Q, Query

pytestmark = pytest.mark.trio

NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)


@durable.job(queue="one_jobs", name="one_noop")
async def noop(args: Any, ctx: durable.Context) -> None:
    return None


INSTANCE = Query("t_one_instance", "select * from instances where id = $1", "")
HISTORY = Query(
    "t_one_history",
    "select event, machine, step, attempt, status::text as status, worker_id, lease_token, detail, at "
    "from history where instance_id = $1 order by id",
    "",
)
# positions of insert_instances' parameters that are arrays (one element per row); insert_instance takes them
# as scalars, every other parameter is the same
ARRAYS = (*range(13), 14, 21)


def arguments(db: durable.Database, spec: durable.Insert, key: str | None, handoff: bool) -> list[Any]:
    """insert_instances' parameters for ``spec`` as a batch of one (its unique key replaced by ``key``)."""
    cols = InsertColumns()
    cols.add(spec, db.registry, "test")
    cols.unique_key[0] = key
    return [
        *cols.rows(),
        NOW,
        cols.delay,
        db.channel,
        db.token,
        "one_jobs" if handoff else None,
        "worker-1" if handoff else None,
        30.0 if handoff else None,
        1 if handoff else 0,
        cols.attributes_json,
    ]


def shape(answer: list[Any], instance: dict[str, Any] | None, history: list[Any]) -> dict[str, Any]:
    """What both statements must agree on: everything but the id, the lease token's value and the key."""
    [r] = answer
    inserted = r["id"] in r["inserted"]
    out: dict[str, Any] = {
        "answer": (r["ord"], r["lease_token"] is not None, r["state"], inserted, r["notified"]),
        "history": [{**dict(h), "lease_token": h["lease_token"] is not None, "detail": h["detail"]} for h in history],
    }
    if instance is not None:
        out["instance"] = {
            k: (v is not None if k == "lease_token" else v)
            for k, v in instance.items()
            if k not in ("id", "unique_key", "unique_guard")
        }
        out["guarded"] = instance["unique_guard"] is not None
    return out


async def both(
    db: durable.Database, spec: durable.Insert, *, handoff: bool = False, key: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``spec`` through insert_instances, then through insert_instance (keys ``key``-batch / ``key``-one)."""
    shapes = []
    for q in (Q.insert_instances, Q.insert_instance):
        suffix = "batch" if q is Q.insert_instances else "one"
        args = arguments(db, spec, None if key is None else f"{key}-{suffix}", handoff)
        if q is Q.insert_instance:
            args = [a[0] if i in ARRAYS else a for i, a in enumerate(args)]
        answer = await db.pool.fetch(q, *args)
        iid = answer[0]["id"]
        instance = await db.pool.fetchrow(INSTANCE, iid)
        history = await db.pool.fetch(HISTORY, iid)
        shapes.append(shape(answer, None if instance is None else dict(instance), history))
    return shapes[0], shapes[1]


# (label, spec, an idle runtime of queue one_jobs offered a handoff, the status the row gets)
CASES: list[tuple[str, durable.Insert, bool, str]] = [
    ("plain", durable.Insert(noop, {"x": 1}), False, "runnable"),
    ("no state", durable.Insert(noop), False, "runnable"),
    ("handed off", durable.Insert(noop, {"x": 2}), True, "executing"),
    (
        "priority and attributes, handed off",
        durable.Insert(noop, {"x": 3}, priority=5, attributes={"a": "b"}),
        True,
        "executing",
    ),
    ("partition key: no handoff", durable.Insert(noop, {"x": 3}, partition_key="p"), True, "runnable"),
    ("delayed: no handoff", durable.Insert(noop, {"x": 4}, schedule_in=30), True, "runnable"),
    (
        "scheduled: no handoff",
        durable.Insert(noop, {"x": 5}, schedule_at=datetime(2027, 1, 1, tzinfo=UTC)),
        True,
        "runnable",
    ),
    ("another queue: no handoff", durable.Insert(noop, {"x": 6}, queue="one_other"), True, "runnable"),
    (
        "by name, step and version",
        durable.Insert("one_noop", {"x": 7}, step="perform", version=3, queue="one_jobs"),
        True,
        "executing",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_a_lone_row_is_inserted_as_a_batch_of_one_is(db: durable.Database, case: Any) -> None:
    _, spec, handoff, status = case
    db.registry.add(noop)
    batch, one = await both(db, spec, handoff=handoff)
    assert one == batch
    assert one["instance"]["status"] == status
    assert one["answer"][1] is (status == "executing")  # a lease token in the answer: handed off


async def test_unique_keys_free_taken_and_scoped_alike(db: durable.Database) -> None:
    db.registry.add(noop)
    free = await both(db, durable.Insert(noop, {"k": 1}, unique_key="ignored"), key="free")
    assert free[0] == free[1] and free[1]["guarded"]
    # both keys now held: a second insert of each is skipped (no row, no history, no hint)
    taken = await both(db, durable.Insert(noop, {"k": 2}, unique_key="ignored"), key="free")
    assert taken[0] == taken[1]
    assert taken[1]["answer"][3] is False and taken[1]["history"] == [] and "instance" not in taken[1]
    assert taken[1]["answer"][4] == 0  # no hint for a skipped row
    scoped = await both(db, durable.Insert(noop, {"k": 3}, unique_key="ignored", unique_scope=["executing"]), key="s")
    assert scoped[0] == scoped[1] and not scoped[1]["guarded"]  # runnable is outside its scope


async def test_both_statements_send_the_same_hint(db: durable.Database) -> None:
    db.registry.add(noop)
    async with db.pool.listen(db.channel) as hints:
        await both(db, durable.Insert(noop, {"h": 1}))
        with trio.fail_after(10):
            got = [await hints.receive(), await hints.receive()]
    assert got == [f"{db.token}|one_jobs"] * 2


async def test_db_insert_sends_the_lone_row_statement_and_a_batch_the_batch_one(db: durable.Database) -> None:
    db.registry.add(noop)
    db.pool.statement_counts.clear()
    iid = await db.insert(noop, {"x": 1})
    ids = await db.insert_many([durable.Insert(noop, {"x": 2})])
    more = await db.insert_many([durable.Insert(noop, {"x": i}) for i in range(3)])
    assert dict(db.pool.statement_counts) == {"insert_instance": 2, "insert_instances": 1}
    assert iid is not None and all(ids) and all(more)
    assert (await db.get(iid)).state == {"x": 1}
    # a duplicate unique key: None from both
    assert await db.insert(noop, {}, unique_key="dup") is not None
    assert await db.insert(noop, {}, unique_key="dup") is None
    assert await db.insert_many([durable.Insert(noop, {}, unique_key="dup")]) == [None]
