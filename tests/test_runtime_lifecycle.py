"""Runtime lifecycle: graceful drain on cancellation, worker registry, embedding in plain trio.run."""

from __future__ import annotations

import sys
import textwrap

import pytest
import trio

import durable
from durable import Done, Machine, step
from durable.sql import Query

from .helpers import until_idle, wait_for

pytestmark = pytest.mark.trio

RELEASE = trio.Event()
STARTED = trio.Event()


@pytest.fixture(autouse=True)
def _fresh_release() -> None:
    global RELEASE, STARTED
    RELEASE = trio.Event()
    STARTED = trio.Event()


class Blocking(Machine, queue="drain"):
    @step
    async def go(self, ctx):
        if ctx.state.get("block"):
            STARTED.set()
            await RELEASE.wait()
        return Done(ctx.attempt)


async def statuses(db: durable.Database) -> dict[str, int]:
    q = Query("t_st", "select status::text as s, count(*) as n from instances group by 1", "")
    return {r["s"]: r["n"] for r in await db.pool.fetch(q)}


async def test_cancel_releases_buffered_claims_at_once(db: durable.Database) -> None:
    db.registry.add(Blocking)
    await db.insert_many([durable.Insert(Blocking, {"block": True}) for _ in range(6)])
    rt = durable.Runtime(db, queues={"drain": 1}, prefetch=5, drain_timeout=0.5)
    async with trio.open_nursery() as n:
        await n.start(rt.run)

        async def claimed() -> bool:
            return (await statuses(db)).get("executing") == 6

        await wait_for(claimed)
        with trio.fail_after(30):
            await STARTED.wait()  # one step runs in the slot (claimed is not yet running)
        assert len(rt.schedulers["drain"].buffer) == 5
        n.cancel_scope.cancel()
    # right after the drain (0.5 s deadline), long before any 60 s lease could expire
    assert await statuses(db) == {"runnable": 6}
    attempts = sorted(r["attempt"] for r in await db.pool.fetch(Query("t_a", "select attempt from instances", "")))
    assert attempts == [0, 0, 0, 0, 0, 1]  # five buffered untouched; the interrupted step counts a try
    released = Query("t_h", "select count(*) from history where event = 'released'", "")
    assert await db.pool.fetchval(released) == 6


async def test_in_flight_step_finishes_within_the_drain_deadline(db: durable.Database) -> None:
    db.registry.add(Blocking)
    iid = await db.insert(Blocking, {"block": True})
    rt = durable.Runtime(db, queues={"drain": 1}, drain_timeout=10)
    async with trio.open_nursery() as n:
        await n.start(rt.run)

        with trio.fail_after(30):
            await STARTED.wait()  # running in its slot, not merely claimed (a claimed one is released)
        rt.stop()
        await trio.sleep(0.2)
        assert (await statuses(db)) == {"executing": 1}  # still running: given time to finish
        RELEASE.set()
    assert (await db.get(iid)).status == "done"
    worker = await db.pool.fetchrow(Query("t_w", "select stopped_at, gauges::text as g from workers", ""))
    assert worker["stopped_at"] is not None and '"done": 1' in worker["g"]


async def test_worker_registry_gauges(db: durable.Database) -> None:
    db.registry.add(Blocking)
    rt = durable.Runtime(db, queues={"drain": 3}, prefetch=2, heartbeat=0.1)
    async with trio.open_nursery() as n:
        await n.start(rt.run)
        q = Query("t_w", "select id, queues, gauges::text as g, stopped_at from workers", "")

        async def reported() -> bool:  # the first heartbeat wrote the gauges (0.3 s of sleep raced a loaded box)
            r = await db.pool.fetchrow(q)
            return r is not None and "concurrency" in r["g"]

        await wait_for(reported)
        row = await db.pool.fetchrow(q)
        assert row["id"] == rt.worker_id and list(row["queues"]) == ["drain"] and row["stopped_at"] is None
        gauges = durable.codec.decode(row["g"])
        assert gauges["drain"]["concurrency"] == 3 and gauges["drain"]["prefetch"] == 2
        n.cancel_scope.cancel()


async def test_plain_trio_run_embeds_the_runtime(pg_dsn: str, schema_name: str) -> None:
    """A user's plain trio.run program: durable opens the asyncio bridge itself."""
    program = textwrap.dedent(f"""
        import trio, durable

        @durable.job(queue="emb")
        async def hello(args, ctx):
            return "hi " + args["name"]

        async def main():
            async with durable.connect({pg_dsn!r}, schema={schema_name!r}) as db:
                async with trio.open_nursery() as n:
                    await n.start(durable.Runtime(db, machines=[hello]).run)
                    iid = await db.insert(hello, {{"name": "ada"}})
                    while (i := await db.get(iid)).status != "done":
                        await trio.sleep(0.02)
                    print(i.result)
                    n.cancel_scope.cancel()
                from durable.migrate import drop_schema
                await drop_schema(db.pool, {schema_name!r})

        trio.run(main)
    """)
    with trio.fail_after(60):
        out = await trio.run_process(
            [sys.executable, "-c", program], capture_stdout=True, capture_stderr=True, check=False
        )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().strip() == "hi ada"


async def test_insert_from_another_process_wakes_the_runtime(db: durable.Database, pg_dsn: str) -> None:
    """Polling every 60 s could not explain a pickup within the test's 20 s: the NOTIFY hint did it."""
    db.registry.add(Blocking)
    rt = durable.Runtime(db, queues={"drain": 1}, poll_min=60, poll_max=60)
    program = textwrap.dedent(f"""
        import trio, durable
        async def main():
            async with durable.connect({pg_dsn!r}, schema={db.schema!r}, migrate=False) as other:
                await other.insert("Blocking", {{}}, step="go", queue="drain")
        trio.run(main)
    """)
    async with trio.open_nursery() as n:
        await n.start(rt.run)
        await until_idle(db, rt, "drain", listen=True)  # it has polled once, sleeps for 60 s and LISTENs
        with trio.fail_after(20):
            await trio.run_process([sys.executable, "-c", program])

            async def done() -> bool:
                return (await statuses(db)).get("done") == 1

            await wait_for(done, timeout=20)
        n.cancel_scope.cancel()
