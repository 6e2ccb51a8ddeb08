"""db.tail against real PostgreSQL: commit order with transactions that commit out of id order, resume
from an offset without loss or duplicate, -1/now, follow, filters, and malformed offsets."""

from __future__ import annotations

import random
from contextlib import aclosing
from typing import Any

import pytest
import trio

import durable
from durable.ops import InvalidArgument, TailEvent
from durable.sql import Q, Query

from .helpers import tail_settled

pytestmark = pytest.mark.trio


async def fresh(db: durable.Database, n: int = 1, machine: str = "m") -> list[int]:
    ids = await db.insert_many([durable.Insert(machine, {"i": i}, step="s") for i in range(n)])
    return [i for i in ids if i is not None]


async def cancel_in(conn: Any, ids: list[int]) -> None:
    """Cancel instances inside the caller's open transaction (each writes a 'cancelled' event)."""
    for iid in ids:
        await conn.fetchrow(Q.cancel_instance, [iid], "test", None, 100, "test")


async def drain(db: durable.Database, after: str, **kw: Any) -> list[TailEvent]:
    return [ev async for ev in db.tail(after=after, **kw)]


async def test_transactions_committing_in_reverse_id_order_are_not_skipped(db: durable.Database) -> None:
    before, early, late = await fresh(db, 3)
    await tail_settled(db)  # no older transaction of another test holds them back
    seen = await drain(db, "-1")
    assert [e.instance_id for e in seen] == [before, early, late]
    offset = seen[-1].offset

    async with db.pool.transaction() as slow:
        await cancel_in(slow, [early])  # smaller history id, commits last
        async with db.pool.transaction() as fast:
            await cancel_in(fast, [late])  # larger history id, commits first
        # `late` is committed and visible, but an earlier transaction is still open: a reader that
        # took it now would move its offset past `early` and lose it. The tail holds it back.
        assert await drain(db, offset) == []
        assert len(await drain(db, "-1")) == 3
    # both committed: the resumed reader gets both, once, in (transaction, id) order
    await tail_settled(db)
    resumed = await drain(db, offset)
    assert [(e.instance_id, e.event) for e in resumed] == [(early, "cancelled"), (late, "cancelled")]
    assert resumed[0].id < resumed[1].id
    assert await drain(db, resumed[-1].offset) == []
    # offsets sort like the events
    offsets = [e.offset for e in seen + resumed]
    assert offsets == sorted(offsets) and len(set(offsets)) == 5


async def test_a_reader_that_stops_and_resumes_sees_every_event_exactly_once(db: durable.Database) -> None:
    rng = random.Random(7)
    written: list[int] = []
    got: list[TailEvent] = []
    writers_done = trio.Event()

    async def writer(k: int) -> None:
        mine = await fresh(db, 18, machine=f"w{k}")
        for _ in range(6):
            async with db.pool.transaction() as conn:
                take = mine[: rng.randint(1, 3)]
                del mine[: len(take)]
                await cancel_in(conn, take)
                await trio.sleep(rng.random() * 0.02)  # hold the transaction open a little
                if rng.random() < 0.3:
                    await trio.sleep(0.03)  # sometimes long: commits after later ones
            await trio.sleep(rng.random() * 0.01)

    async def reader() -> None:
        offset = "-1"
        while True:
            # one session: follow for a few events, then stop; the next resumes from the last offset
            wanted, n = rng.randint(1, 7), 0
            with trio.move_on_after(0.2):
                async with aclosing(db.tail(after=offset, follow=True, poll=0.01)) as events:
                    async for ev in events:
                        got.append(ev)
                        offset = ev.offset
                        n += 1
                        if n >= wanted:
                            break
            if writers_done.is_set() and len(got) >= len(written):
                return

    # a guard against a hang: the tail also waits for every older transaction of the server (another test's)
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            async with trio.open_nursery() as writers:
                for k in range(6):
                    writers.start_soon(writer, k)
            # every history row written, by anyone
            await tail_settled(db)
            written.extend(e.id for e in await drain(db, "-1"))
            writers_done.set()
    ids = [e.id for e in got]
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    assert set(ids) == set(written), "an event was lost"
    assert len(written) >= 6 * 18 + 6 * 6
    offsets = [e.offset for e in got]
    assert offsets == sorted(offsets)


async def test_now_starts_at_the_end_and_follow_sees_new_events(db: durable.Database) -> None:
    await db.insert_many([durable.Insert("m", {}, step="s")] * 3)
    await tail_settled(db)
    assert len(await drain(db, "-1")) == 3
    assert await drain(db, "now") == []
    received: list[TailEvent] = []
    async with trio.open_nursery() as nursery:

        async def follow() -> None:
            async for ev in db.tail(after="now", follow=True, poll=0.02):
                received.append(ev)
                if len(received) == 2:
                    nursery.cancel_scope.cancel()

        polls = db.pool.statement_counts["tail_history"]
        nursery.start_soon(follow)
        with trio.fail_after(10):  # "now" is fixed once the follower has made its first read
            while db.pool.statement_counts["tail_history"] == polls:
                await trio.sleep(0.01)
        (iid,) = await fresh(db)
        await db.signal(iid, "ping", {"n": 1})
        # the follower sees them once every older transaction of the server has ended (another test's too)
        with trio.fail_after(90):
            await trio.sleep_forever()
    assert [(e.instance_id, e.event) for e in received] == [(iid, "inserted"), (iid, "signal")]
    assert received[1].detail["name"] == "ping"


async def test_filters_by_instance_and_machine(db: durable.Database) -> None:
    (a,), (b,) = await fresh(db, machine="alpha"), await fresh(db, machine="beta")
    await db.signal(a, "x")
    await db.signal(b, "y")
    await db.cancel(b)
    await tail_settled(db)
    assert [e.event for e in await drain(db, "-1", instance=b)] == ["inserted", "signal", "cancelled"]
    assert [(e.instance_id, e.event) for e in await drain(db, "-1", machine="alpha")] == [
        (a, "inserted"),
        (a, "signal"),
    ]
    everything = await drain(db, "-1")
    assert len(everything) == 5
    # a filtered reader's offset is a valid offset for an unfiltered reader
    first_b = (await drain(db, "-1", instance=b))[0]
    after_b = [e.id for e in everything if e.offset > first_b.offset]
    assert [e.id for e in await drain(db, first_b.offset)] == after_b


async def test_malformed_offsets_are_errors_that_name_them(db: durable.Database) -> None:
    for bad in ["", "42", "latest", "zz-00", "0000000000000001"]:
        with pytest.raises(InvalidArgument, match="malformed offset"):
            await drain(db, bad)
    with pytest.raises(InvalidArgument, match="instance id must be an integer"):
        await drain(db, "-1", instance="7")


CURRENT_XID = Query("test_current_xid", "select pg_current_xact_id()::text", "A fresh xid (test).")
BURNER = Query(
    "test_xid_burner",
    """
create table xid_burner (n int);
create function burn_xids(n int) returns void language plpgsql as $$
begin
  for i in 1..n loop
    begin
      insert into xid_burner values (i);  -- a write in a subtransaction takes a new (sub)xid
    exception when others then null;
    end;
  end loop;
end $$;
""",
    "Test helper: consume transaction ids.",
)
BURN = Query("test_burn_xids", "select burn_xids($1::int)", "Consume $1 transaction ids (test).")


async def test_offsets_order_numerically_across_a_digit_boundary(db: durable.Database) -> None:
    """Transaction ids 9xx and 1000 must tail in numeric order (text order would put '1000' first and
    skip the other event for good)."""
    (a,) = await fresh(db)
    xid_a = int(await db.pool.fetchval(CURRENT_XID))
    boundary = 10 ** len(str(xid_a))
    await db.pool.execute(BURNER)
    await db.pool.fetchval(BURN, boundary - xid_a)
    (b,) = await fresh(db)
    await tail_settled(db)
    events = [ev async for ev in db.tail(after="-1", batch=1)]
    assert [e.instance_id for e in events] == [a, b]
    xids = [int(e.offset.split("-")[0], 16) for e in events]
    assert len(str(xids[0])) < len(str(xids[1]))
