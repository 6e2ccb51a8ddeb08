"""Uniqueness (key + occupied statuses) and partition keys (one executing step per key)."""

from __future__ import annotations

import itertools

import pytest
import trio

import durable
from durable import Done, Insert, Machine, step
from durable.sql import Q, Query

from .helpers import pick, row, wait_for
from .helpers import step as run_step

pytestmark = pytest.mark.trio

SPANS: list[tuple[str, float, float]] = []


class Charge(Machine, queue="u"):
    @step
    async def go(self, ctx):
        return Done(ctx.state)


class Keyed(Machine, queue="p"):
    @step
    async def go(self, ctx):
        start = trio.current_time()
        await trio.sleep(0.01)
        SPANS.append((ctx.partition_key, start, trio.current_time()))
        return Done(ctx.state)


async def occupied(db: durable.Database, key: str) -> int:
    q = Query("t_occ", "select count(*) from instances where unique_guard = $1", "")
    return int(await db.pool.fetchval(q, key))


async def test_duplicate_in_batch_and_against_existing(db: durable.Database) -> None:
    db.registry.add(Charge)
    ids = await db.insert_many(
        [
            Insert(Charge, {"n": 1}, unique_key="order:1"),
            Insert(Charge, {"n": 2}, unique_key="order:1"),
            Insert(Charge, {"n": 3}, unique_key="order:2"),
            Insert(Charge, {"n": 4}),
        ]
    )
    assert ids[0] is not None and ids[1] is None and ids[2] is not None and ids[3] is not None
    assert await db.insert(Charge, {"n": 5}, unique_key="order:2") is None
    assert await occupied(db, "order:1") == 1


async def test_concurrent_insert_many_never_makes_two_occupied_rows(db: durable.Database, pg_dsn: str) -> None:
    keys = [f"k{i}" for i in range(30)]

    async def writer(offset: int) -> list[int | None]:
        async with durable.connect(pg_dsn, schema=db.schema, migrate=False, machines=[Charge]) as other:
            rotated = keys[offset:] + keys[:offset]
            return await other.insert_many([Insert(Charge, {"k": k}, unique_key=k) for k in rotated])

    results: list[list[int | None]] = []
    async with trio.open_nursery() as n:
        for w in range(4):
            n.start_soon(lambda w=w: _collect(results, writer(w * 7)))
    assert sum(1 for r in results for i in r if i is not None) == len(keys)
    counts = await db.pool.fetch(
        Query("t_c", "select unique_key, count(*) as n from instances group by unique_key having count(*) > 1", "")
    )
    assert counts == []


async def _collect(into: list, coro) -> None:  # type: ignore[no-untyped-def]
    into.append(await coro)


async def test_leaving_the_scope_frees_the_key(db: durable.Database) -> None:
    db.registry.add(Charge)
    first = await db.insert(Charge, {}, unique_key="once")
    assert await db.insert(Charge, {}, unique_key="once") is None
    await run_step(db, (await pick(db, "u"))[0])  # done: outside the default scope
    assert (await row(db, first))["status"] == "done"
    assert await db.insert(Charge, {}, unique_key="once") is not None


async def test_scope_including_done_keeps_the_key(db: durable.Database) -> None:
    db.registry.add(Charge)
    scope = ["runnable", "executing", "awaiting_signal", "awaiting_children", "done"]
    assert await db.insert(Charge, {}, unique_key="forever", unique_scope=scope) is not None
    await run_step(db, (await pick(db, "u"))[0])
    assert await db.insert(Charge, {}, unique_key="forever", unique_scope=scope) is None


async def test_pick_takes_one_row_per_partition_key(db: durable.Database) -> None:
    db.registry.add(Keyed)
    await db.insert_many(
        [Insert(Keyed, {"i": i}, partition_key="acct:1") for i in range(5)]
        + [Insert(Keyed, {"i": i}, partition_key="acct:2") for i in range(2)]
    )
    claims = await pick(db, "p", 10)
    assert sorted(c.partition_key for c in claims) == ["acct:1", "acct:2"]
    assert await pick(db, "p", 10, worker="w2") == []  # both keys are executing


async def test_database_refuses_a_second_executing_row_per_key(db: durable.Database) -> None:
    db.registry.add(Keyed)
    a, b = await db.insert_many([Insert(Keyed, {}, partition_key="k"), Insert(Keyed, {}, partition_key="k")])
    await pick(db, "p", 1)
    sneak = Query("t_sneak", "update instances set status = 'executing' where id = $1", "")
    with pytest.raises(Exception, match="instances_partition_active"):
        await db.pool.execute(sneak, b)
    assert a is not None


async def test_fifty_on_one_key_never_overlap_and_keys_run_in_parallel(db: durable.Database) -> None:
    SPANS.clear()
    db.registry.add(Keyed)
    specs = [Insert(Keyed, {"i": i}, partition_key="hot") for i in range(50)]
    specs += [Insert(Keyed, {"i": i}, partition_key=f"cold{i}") for i in range(20)]
    ids = await db.insert_many(specs)
    async with trio.open_nursery() as n:
        for w in range(2):  # two runtimes compete for the same key
            await n.start(durable.Runtime(db, queues={"p": 8}, worker_id=f"w{w}").run)

        async def all_done() -> bool:
            q = Query("t_done", "select count(*) from instances where status = 'done'", "")
            return int(await db.pool.fetchval(q)) == len(ids)

        await wait_for(all_done, timeout=60)
        n.cancel_scope.cancel()
    hot = sorted((s, e) for k, s, e in SPANS if k == "hot")
    assert len(hot) == 50
    for (_, end), (start, _) in itertools.pairwise(hot):
        assert start >= end, "two steps of one partition key overlapped"
    cold = sorted((s, e) for k, s, e in SPANS if k != "hot")
    overlapping = sum(1 for (s1, e1), (s2, _) in itertools.pairwise(cold) if s2 < e1)
    assert overlapping > 0, "different keys should run in parallel"
    assert Q.pick.name == "pick"


async def test_a_dead_worker_frees_its_partition_keys(db: durable.Database) -> None:
    db.registry.add(Keyed)
    first, second = await db.insert_many(
        [Insert(Keyed, {"i": 1}, partition_key="acct:9"), Insert(Keyed, {"i": 2}, partition_key="acct:9")]
    )
    dead = await pick(db, "p", 10, worker="dead", lease=0.1)
    assert [c.id for c in dead] == [first]
    assert await pick(db, "p", 10, worker="alive") == []  # the key is held
    await trio.sleep(0.2)
    await db.pool.fetch(Q.reap, None, 100)  # the worker died: its lease expired
    claims = await pick(db, "p", 10, worker="alive")
    assert [c.id for c in claims] == [first]  # the key is free again; order within the key kept
    await run_step(db, claims[0], worker="alive")
    assert [c.id for c in await pick(db, "p", 10, worker="alive")] == [second]
