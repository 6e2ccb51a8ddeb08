"""The lost wake-up of issue 15, as a deterministic script on real PostgreSQL (no simulator): a signal
delivery that holds the target's row lock while a step's `Await` outcome commits. The park's statement takes
its snapshot before the delivery commits, waits on the row lock, then goes on with that snapshot: its inbox
check cannot see the signal, only the locked row's new `signal_seq` can. `complete` must park it runnable.
The mutant `park_seq_unchecked` (sim/bugs.py: the inbox check alone) loses the signal here, and the
simulator's `signal_lock` fault makes the same interleaving happen from a seed (test_sim_planted.py)."""

from __future__ import annotations

import asyncpg
import pytest
import trio
from durable.sim.bugs import planted

import durable
from durable import Await, Done, Machine, step
from durable._pg import Pool, aio
from durable.sql import Q

from .helpers import pick, row, wait_for
from .helpers import step as run_step

pytestmark = pytest.mark.trio


class Parker(Machine, queue="wakeup", name="wakeup.parker"):
    @step
    async def wait(self, ctx: durable.Context) -> Await | Done:
        if ctx.signals_named("go"):
            return Done("woken")
        return Await("go")


async def park_while_a_delivery_holds_the_lock(db: durable.Database, pg_dsn: str) -> dict[str, object]:
    db.registry.add(Parker)
    iid = await db.insert(Parker, {})
    assert iid is not None
    [claim] = await pick(db, "wakeup")  # the step sees an empty inbox, signal_seq 0
    side = await Pool.open(pg_dsn, db.schema, min_size=2, max_size=2)
    try:
        raw: asyncpg.Connection = await aio(side.raw.acquire)()
        tx = raw.transaction()
        await aio(tx.start)()
        # the delivery: signal stored, target row locked and rewritten (signal_seq + 1), not committed yet
        delivered = await aio(raw.fetchrow)(Q.deliver_signal.text, iid, "go", "{}", None, None, None)
        assert delivered["signal_id"] is not None

        async def blocked() -> bool:
            return bool(await side.fetch(Q.sim_blocked_by, [raw.get_server_pid()]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_step, db, claim)  # Await("go"): its complete waits on the row lock
            await wait_for(blocked, timeout=10)
            await aio(tx.commit)()  # the park goes on with the snapshot it took before this commit
        await aio(side.raw.release)(raw)
    finally:
        await side.close()
    return await row(db, iid)


async def test_a_delivery_committing_while_the_park_waits_on_its_lock_wakes_it(
    db: durable.Database, pg_dsn: str
) -> None:
    parked = await park_while_a_delivery_holds_the_lock(db, pg_dsn)
    assert parked["status"] == "runnable", "the signal arrived during the step: the park must not wait for it"
    [claim] = await pick(db, "wakeup")
    _, committed = await run_step(db, claim)
    assert committed.status == "done"


async def test_the_inbox_check_alone_loses_that_wake_up(db: durable.Database, pg_dsn: str) -> None:
    """The mutant's half: the same script on `complete` without the signal_seq check parks the instance with
    the signal in its inbox (what the test above guards against)."""
    with planted("park_seq_unchecked"):
        parked = await park_while_a_delivery_holds_the_lock(db, pg_dsn)
    assert parked["status"] == "awaiting_signal"
    inbox = await db.pool.fetch(Q.get_inbox, parked["id"])
    assert [s["name"] for s in inbox] == ["go"]
