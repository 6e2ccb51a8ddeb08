"""Durable signals: before, during and after the await; dedup keys; name-scoped consumption."""

from __future__ import annotations

import pytest
import trio

import durable
from durable import Await, Done, Machine, Next, step

from .helpers import pick, row, until_idle, wait_status
from .helpers import step as run_step

pytestmark = pytest.mark.trio


class Payment(Machine, queue="pay"):
    @step
    async def wait(self, ctx):
        sig = ctx.signal("paid")
        if sig is None:
            return Await("paid", ctx.state)
        return Next("ship", {**ctx.state, "amount": sig.payload["amount"]})

    @step
    async def ship(self, ctx):
        return Done(ctx.state)


@pytest.fixture
def pdb(db: durable.Database) -> durable.Database:
    db.registry.add(Payment)
    return db


async def inbox(db: durable.Database, iid: int) -> list[tuple[str, object]]:
    return [(s["name"], durable.codec.decode(s["payload"])) for s in await db.pool.fetch(durable.sql.Q.get_inbox, iid)]


async def test_signal_after_the_await_wakes_and_is_consumed(pdb: durable.Database) -> None:
    db = pdb
    iid = await db.insert(Payment, {})
    await run_step(db, (await pick(db, "pay"))[0])
    assert (await row(db, iid))["status"] == "awaiting_signal"
    await db.signal(iid, "paid", {"amount": 5})
    r = await row(db, iid)
    assert r["status"] == "runnable" and r["awaits"] == "paid"  # awaits kept until consumed
    _, committed = await run_step(db, (await pick(db, "pay"))[0])
    r = await row(db, iid)
    assert committed.status == "runnable" and r["step"] == "ship" and r["awaits"] is None
    assert durable.codec.decode(r["state"]) == {"amount": 5}
    assert await inbox(db, iid) == []


async def test_signal_before_the_await_is_seen_at_once(pdb: durable.Database) -> None:
    db = pdb
    iid = await db.insert(Payment, {})
    await db.signal(iid, "paid", {"amount": 9})
    _, committed = await run_step(db, (await pick(db, "pay"))[0])
    assert committed.status == "runnable" and (await row(db, iid))["step"] == "ship"
    assert await inbox(db, iid) == []  # read by name + progressing: consumed


async def test_signal_during_the_step_is_not_lost(pdb: durable.Database) -> None:
    """Delivered while the step runs (after its pick, before its Await commits): the park must end
    runnable, or the instance would hang forever."""
    db = pdb
    iid = await db.insert(Payment, {})
    claim = (await pick(db, "pay"))[0]
    assert claim.signals == ()
    await db.signal(iid, "paid", {"amount": 1})  # the step did not see it
    _, committed = await run_step(db, claim)
    assert committed.status == "runnable"
    _, committed = await run_step(db, (await pick(db, "pay"))[0])
    assert (await row(db, iid))["step"] == "ship"


async def test_concurrent_deliveries_and_parks_never_lose_a_wakeup(pdb: durable.Database) -> None:
    """Race many parks against deliveries on separate connections: every instance ends runnable."""
    db = pdb
    ids = await db.insert_many([durable.Insert(Payment, {}) for _ in range(40)])
    claims = await pick(db, "pay", 40)
    assert len(claims) == 40
    async with trio.open_nursery() as n:
        for claim, iid in zip(sorted(claims, key=lambda c: c.id), sorted(ids), strict=True):
            n.start_soon(run_step, db, claim)
            n.start_soon(db.signal, iid, "paid", {"amount": 2})
    statuses = [(await row(db, i))["status"] for i in ids]
    assert statuses == ["runnable"] * 40


async def test_dedup_key_stores_a_signal_once(pdb: durable.Database) -> None:
    db = pdb
    iid = await db.insert(Payment, {})
    first = await db.signal(iid, "paid", {"amount": 1}, dedup_key="evt-1")
    again = await db.signal(iid, "paid", {"amount": 1}, dedup_key="evt-1")
    other = await db.signal(iid, "paid", {"amount": 2}, dedup_key="evt-2")
    assert first is not None and again is None and other is not None
    assert await inbox(db, iid) == [("paid", {"amount": 1}), ("paid", {"amount": 2})]


async def test_non_matching_signal_survives_until_its_own_await(pdb: durable.Database) -> None:
    db = pdb
    iid = await db.insert(Payment, {})
    await db.signal(iid, "refund", {"why": "later"})
    await run_step(db, (await pick(db, "pay"))[0])
    assert (await row(db, iid))["status"] == "awaiting_signal"  # refund does not match 'paid'
    await db.signal(iid, "paid", {"amount": 3})
    await run_step(db, (await pick(db, "pay"))[0])  # consumes 'paid' only
    assert await inbox(db, iid) == [("refund", {"why": "later"})]


async def test_signal_to_unknown_or_finished_instance_is_an_error(pdb: durable.Database) -> None:
    db = pdb
    with pytest.raises(durable.NoSuchInstance, match="no instance with id 999"):
        await db.signal(999, "paid")
    iid = await db.insert(Payment, {}, step="ship")
    await run_step(db, (await pick(db, "pay"))[0])
    with pytest.raises(durable.NotDeliverable, match="is done"):
        await db.signal(iid, "paid", {})


async def test_runtime_wakes_on_signal(pdb: durable.Database) -> None:
    db = pdb
    async with trio.open_nursery() as n:
        await n.start(durable.Runtime(db, queues={"pay": 2}, poll_max=5.0).run)
        iid = await db.insert(Payment, {})
        await wait_status(db, iid, "awaiting_signal")
        await db.signal(iid, "paid", {"amount": 4})
        r = await wait_status(db, iid, "done")
        assert durable.codec.decode(r["result"]) == {"amount": 4}
        n.cancel_scope.cancel()


async def test_signal_from_another_process_wakes_the_runtime(pdb: durable.Database, pg_dsn: str) -> None:
    """With 60 s polls, only the NOTIFY sent by deliver_signal explains the wake-up."""
    import sys
    import textwrap

    db = pdb
    iid = await db.insert(Payment, {})
    program = textwrap.dedent(f"""
        import trio, durable
        async def main():
            async with durable.connect({pg_dsn!r}, schema={db.schema!r}, migrate=False) as other:
                await other.signal({iid}, "paid", {{"amount": 8}})
        trio.run(main)
    """)
    rt = durable.Runtime(db, queues={"pay": 1}, poll_min=60, poll_max=60)
    async with trio.open_nursery() as n:
        await n.start(rt.run)
        await wait_status(db, iid, "awaiting_signal")
        await until_idle(db, rt, "pay", listen=True)  # its LISTEN is open: the hint cannot come before it
        await trio.run_process([sys.executable, "-c", program])
        await wait_status(db, iid, "done", timeout=20)
        n.cancel_scope.cancel()
