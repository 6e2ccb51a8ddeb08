"""Drive the engine one statement at a time: pick, run a step, commit its outcome."""

from __future__ import annotations

from typing import Any

import trio

import durable
from durable.runtime.claim import Claim, Committed, Encoded, claims_from_rows
from durable.runtime.executor import run_claim
from durable.runtime.flusher import Flusher
from durable.sql import Q, Query


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


TAIL_MARK = Query("test_tail_mark", "select pg_current_xact_id()::text", "A new transaction id (test).")
TAIL_PAST = Query(
    "test_tail_past",
    "select pg_snapshot_xmin(pg_current_snapshot()) > $1::text::xid8",
    "Whether every transaction older than transaction $1 has ended (test).",
)


async def tail_settled(db: durable.Database, timeout: float = 90.0) -> None:
    """Until every transaction of the server that began before this call has ended, so that db.tail (and
    ``durable tail``) returns every event committed before it. The tail returns only rows of transactions older
    than every transaction still running on the whole server (ops.sql: tail_history). Each xdist worker has
    a server of its own (conftest.pg_dsn) unless DURABLE_TEST_DSN names one, which the workers then share: a
    transaction still open there (a process an earlier test killed or stopped, another worker's test holding
    a row lock) hid this test's committed events. ``timeout`` only guards against a hang: the longest such
    transactions of the suite (test_streams_durability's row locks held across a server's start and kill, a
    SIGSTOPped sim worker's for 1.5 leases) last seconds, tens under load."""
    mark = await db.pool.fetchval(TAIL_MARK)  # a transaction of its own, committed: newer than every event so far

    async def past() -> bool:
        return bool(await db.pool.fetchval(TAIL_PAST, mark))

    await wait_for(past, timeout)


async def listening(db: durable.Database, channel: str) -> bool:
    """Some session LISTENs on ``channel`` (its last statement was the LISTEN asyncpg sends)."""
    q = durable.sql.Query("listening", "select count(*) from pg_stat_activity where query = $1", "")
    return bool(await db.pool.fetchval(q, f'LISTEN "{channel}"'))


async def until_idle(db: durable.Database, rt: durable.Runtime, queue: str, *, listen: bool) -> None:
    """Wait until the runtime's scheduler of ``queue`` has sent its first pick and, with ``listen``, the
    runtime LISTENs for hints: the state a fixed 0.1-0.3 s sleep stood for, which a loaded box can miss
    (a local insert before the first pick is handed off or picked by it; a hint before the LISTEN is lost)."""

    async def ready() -> bool:
        scheduler = rt.schedulers.get(queue)
        if scheduler is None or scheduler.picks < 1:
            return False
        return not listen or await listening(db, db.channel)

    await wait_for(ready)


def first(obj: Any, *names: str) -> Any:
    """The first of ``obj``'s attributes ``names`` that is set (a coroutine's, generator's or async
    generator's frame or awaited object)."""
    return next((getattr(obj, a) for a in names if getattr(obj, a, None) is not None), None)


def task_stacks() -> str:
    """Every trio task of this run with where it waits, through the asyncpg coroutines that
    ``durable._pg._drive`` runs in trio tasks, then the asyncio tasks of trio-asyncio's loop."""
    import asyncio

    lines: list[str] = []

    def frames(coro: Any, indent: str) -> None:
        while coro is not None:
            frame = first(coro, "cr_frame", "gi_frame", "ag_frame")
            if frame is None:
                lines.append(f"{indent}{coro!r}")
                return
            lines.append(f"{indent}{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
            if frame.f_code.co_name == "_drive":
                lines.append(f"{indent}  driving:")
                frames(frame.f_locals.get("coro"), indent + "    ")
            coro = first(coro, "cr_await", "gi_yieldfrom", "ag_await")

    def walk(task: trio.lowlevel.Task, depth: int) -> None:
        lines.append(f"{'  ' * depth}task {task.name}")
        frames(task.coro, "  " * depth + "  ")
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child, depth + 1)

    walk(trio.lowlevel.current_root_task(), 0)
    try:
        import trio_asyncio

        loop = trio_asyncio.current_loop.get()
        for t in asyncio.all_tasks(loop) if loop is not None else ():
            lines.append(f"asyncio {t!r}")
            lines.extend(f"  {f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}" for f in t.get_stack())
    except Exception as exc:  # a diagnostic: never the reason a test fails
        lines.append(f"(asyncio tasks unavailable: {exc!r})")
    return "\n".join(lines)


async def watchdog(seconds: float, what: str) -> None:
    """Start in a test's nursery: after ``seconds`` print every task's stack to stderr and fail the test
    (a hang shows where it waits, not only pytest-timeout's view of the event loop's epoll)."""
    import sys

    await trio.sleep(seconds)
    print(f"watchdog: {what} still running after {seconds} s\n{task_stacks()}", file=sys.stderr)
    raise AssertionError(f"{what} still running after {seconds} s (task stacks on stderr)")


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
