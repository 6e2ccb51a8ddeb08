"""Drive the engine one statement at a time: pick, run a step, commit its outcome."""

from __future__ import annotations

from typing import Any

import trio

import durable
from durable.runtime.claim import Claim, Committed, Encoded, claims_from_rows
from durable.runtime.executor import run_claim
from durable.runtime.flusher import Flusher
from durable.sql import Q


async def pick(
    db: durable.Database, queue: str = "default", n: int = 10, *, worker: str = "w1", lease: float = 60.0
) -> list[Claim]:
    rows = await db.pool.fetch(Q.pick, queue, n, worker, lease, db.clock.now(), None, None)
    return claims_from_rows(rows)


async def commit(db: durable.Database, claim: Claim, outcome: Encoded, *, worker: str = "w1") -> Committed:
    flusher = Flusher(db.pool, worker, db.clock)
    return (await flusher.commit_now([(claim, outcome)]))[0]


async def step(db: durable.Database, claim: Claim, *, worker: str = "w1") -> tuple[Encoded, Committed]:
    """Run the claim's step through the real executor and commit its outcome."""
    encoded, _ = await run_claim(claim, db, worker)
    return encoded, await commit(db, claim, encoded, worker=worker)


async def row(db: durable.Database, iid: int) -> dict[str, Any]:
    r = await db.pool.fetchrow(Q.get_instance, iid)
    assert r is not None
    return dict(r)


async def wait_for(predicate: Any, timeout: float = 20.0, every: float = 0.02) -> None:
    """Poll an async predicate until true (fails the test on timeout)."""
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(every)


async def wait_status(db: durable.Database, iid: int, *statuses: str, timeout: float = 20.0) -> dict[str, Any]:
    async def ok() -> bool:
        return (await row(db, iid))["status"] in statuses

    await wait_for(ok, timeout)
    return await row(db, iid)


def native_asyncio() -> None:
    """Give asyncio code in the test process (Textual, Playwright, plain asyncpg) a plain asyncio loop: the
    test process imports trio-asyncio (the engine's tests), whose global policy would otherwise hand every
    new loop to its trio-backed implementation. The console itself never imports trio-asyncio
    (tests/test_import_hygiene.py), so it needs no such call."""
    import asyncio

    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
