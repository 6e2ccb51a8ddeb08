"""Lease loss (issue 14, items 4 and 5).

A worker that loses a claim's lease (its event loop blocked past the lease, or the row reaped and handed
on) cancels that step at its next checkpoint, commits nothing for it and records ``lease_lost``; a step
that holds the event loop over a third of the lease is reported with its machine and step. A runtime
that starts where a dead one left claims (its own worker id, or a registry row of this host whose process
is gone) releases them at once instead of waiting out their leases; a live worker's claims are untouched.

Run as a module, this file is a worker process: ``python -m tests.test_lease_loss DSN SCHEMA WORKER QUEUE``.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

import durable
from durable import Done, Machine, step
from durable.sql import Q, Query

from .helpers import row, wait_for, wait_status

pytestmark = pytest.mark.trio

ROOT = Path(__file__).resolve().parent.parent
A, B = "ll-a", "ll-b"
LEASE = 1.0


@dataclass(frozen=True)
class Run:
    worker: str
    instance: int
    attempt: int
    token: int
    start: float
    end: float


RUNS: list[Run] = []  # finished step runs, from both threads (time.monotonic: one clock per process)
AFTER: list[int] = []  # side effects a step made after its event loop came back
GO = trio.Event()  # A's step may block the loop now
B_COMMITTED = threading.Event()  # B committed its run of the blocked instance
CANCELLED: list[tuple[int, int]] = []  # (instance, heartbeats of the watched runtime at that moment)
WATCHED: dict[str, Any] = {}


class Blocker(Machine, queue="ll_block", name="ll_blocker"):
    @step
    async def work(self, ctx: durable.Context) -> Done:
        start = time.monotonic()
        if ctx.state.get("block") and ctx.worker_id == A:
            await GO.wait()
            B_COMMITTED.wait(30)  # time.sleep-like: holds the event loop until B has taken over and committed
            await trio.lowlevel.checkpoint()  # the first checkpoint after the loop came back: the step must end here
            AFTER.append(ctx.id)
        RUNS.append(Run(ctx.worker_id, ctx.id, ctx.attempt, ctx.lease_token, start, time.monotonic()))
        return Done({"by": ctx.worker_id})


class Hang(Machine, queue="ll_hang", name="ll_hang"):
    """Attempt 0 hangs until cancelled; attempt 1 ends at once."""

    @step
    async def work(self, ctx: durable.Context) -> Done:
        if ctx.attempt == 0:
            try:
                await trio.sleep_forever()
            finally:
                rt = WATCHED.get("runtime")
                CANCELLED.append((ctx.id, rt.heartbeats if rt is not None else -1))
        return Done(ctx.attempt)


@pytest.fixture(autouse=True)
def _reset() -> None:
    global GO
    RUNS.clear()
    AFTER.clear()
    CANCELLED.clear()
    WATCHED.clear()
    GO = trio.Event()
    B_COMMITTED.clear()


HISTORY_OUTCOMES = Query(
    "t_ll_outcomes",
    """
select instance_id, worker_id, lease_token, event from history
where event in ('next', 'retry', 'await', 'spawn', 'done', 'stop', 'cancel')
""",
    "Committed outcomes (test).",
)
EXPIRE = Query(
    "t_ll_expire",
    """
update instances set lease_expires_at = now() - interval '1 second' where id = $1 and status = 'executing'
""",
    "Expire a lease from a side connection (test).",
)
WORKER = Query("t_ll_worker", "select id, host, pid, stopped_at from workers where id = $1", "A registry row (test).")


def events(history: list[Any]) -> list[str]:
    return [e.event for e in history]


# -- item 4: a lost lease cancels the step -----------------------------------------------------------
async def run_b(dsn: str, schema: str, x: int, stop: threading.Event, started: threading.Event) -> None:
    """Runtime B, in a thread of its own (its own trio loop), so it runs while A's loop is blocked."""

    def on_step(claim: Any, _encoded: Any, result: Any) -> None:
        if claim.id == x and not result.fenced:
            B_COMMITTED.set()

    async with durable.connect(dsn, schema=schema, machines=[Blocker], migrate=False) as db:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                durable.Runtime(
                    db, queues={"ll_block": 1}, worker_id=B, lease=LEASE, reap_every=0.1, on_step=on_step
                ).run
            )
            started.set()
            await trio.to_thread.run_sync(stop.wait, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()


def run_b_thread(*args: Any) -> None:
    failed = args[-1]
    try:
        trio.run(run_b, *args[:-1])
    except BaseException as exc:  # reported by the test
        failed.append(exc)
        args[-2].set()  # started: let the test see the failure


async def test_a_step_that_blocks_the_loop_past_its_lease_is_cancelled(
    db: durable.Database, pg_dsn: str, schema_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A's step holds the event loop (a time.sleep-like wait) past its 1 s lease; B reaps the row, runs the
    partition key's step and commits. When A's loop comes back, A cancels its step at the first checkpoint
    (no side effect after it), commits nothing, records lease_lost, and reports the blocking step."""
    caplog.set_level(logging.WARNING, logger="durable.runtime")
    db.registry.add(Blocker)
    stop_b, b_started = threading.Event(), threading.Event()
    b_failed: list[BaseException] = []
    b_thread: threading.Thread | None = None
    try:
        async with trio.open_nursery() as nursery:
            rt_a = durable.Runtime(db, queues={"ll_block": 1}, worker_id=A, lease=LEASE, reap_every=60)
            await nursery.start(rt_a.run)
            x = await db.insert(Blocker, {"block": True}, partition_key="k")
            y = await db.insert(Blocker, {}, partition_key="k")
            assert x is not None and y is not None
            r = await wait_status(db, x, "executing")
            assert r["worker_id"] == A
            # a plain thread with a fresh context: not trio's worker thread, not this loop's trio-asyncio loop
            b_thread = threading.Thread(
                target=contextvars.Context().run,
                args=(run_b_thread, pg_dsn, schema_name, x, stop_b, b_started, b_failed),
            )
            b_thread.start()
            with trio.fail_after(30):
                await trio.to_thread.run_sync(b_started.wait)
            assert not b_failed, b_failed
            GO.set()  # A's step now holds the loop until B has committed x
            await wait_status(db, x, "done")
            await wait_status(db, y, "done")

            async def lost() -> bool:
                return "lease_lost" in events(await db.history(x))

            await wait_for(lost)
            stats = rt_a.statistics()
            nursery.cancel_scope.cancel()
    finally:
        stop_b.set()
        if b_thread is not None:
            await trio.to_thread.run_sync(b_thread.join, 30)
    assert not b_failed, b_failed
    assert AFTER == []  # the stale step went no further than its first checkpoint
    hx = await db.history(x)
    assert [(e.event, e.worker_id) for e in hx if e.event in ("reaped", "done", "lease_lost")] == [
        ("reaped", A),
        ("done", B),
        ("lease_lost", A),
    ]
    (lost_row,) = [e for e in hx if e.event == "lease_lost"]
    assert lost_row.attempt == 0 and lost_row.status == "done"
    assert lost_row.detail["released"] is False and lost_row.detail["started"] is True
    assert durable.codec.decode((await row(db, x))["result"]) == {"by": B}
    assert stats["lease_lost"] == 1 and stats["blocked_steps"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "durable.runtime"]
    blocked = [m for m in warnings if "blocked the event loop" in m]
    assert len(blocked) == 1 and "ll_blocker.work" in blocked[0] and A in blocked[0], warnings
    assert any("lost the lease" in m and "ll_blocker.work" in m for m in warnings), warnings
    # no two runs of key k that both committed overlap
    committed = {(r["worker_id"], r["lease_token"]) for r in await db.pool.fetch(HISTORY_OUTCOMES)}
    runs = sorted((r for r in RUNS if (r.worker, r.token) in committed), key=lambda r: r.start)
    assert {r.instance for r in runs} == {x, y}
    for before, after in itertools.pairwise(runs):
        assert before.end <= after.start, (before, after)


async def test_a_step_whose_row_is_reaped_is_cancelled_by_the_next_heartbeat(db: durable.Database) -> None:
    """The step awaits (it does not block); its row is reaped from a side connection. The next heartbeat
    finds the claim gone and cancels the step: no outcome, lease_lost in the history, the re-run goes on."""
    db.registry.add(Hang)
    async with trio.open_nursery() as nursery:
        # prefetch 0: no pick while the step runs, so the heartbeat (not a pick of the row under a new token)
        # is what finds the claim gone
        rt = durable.Runtime(
            db, queues={"ll_hang": 1}, prefetch=0, worker_id="ll-hb", lease=30, heartbeat=0.2, reap_every=60
        )
        WATCHED["runtime"] = rt
        await nursery.start(rt.run)
        iid = await db.insert(Hang)
        assert iid is not None
        await wait_status(db, iid, "executing")
        assert (await db.pool.execute(EXPIRE, iid)).endswith("1")
        assert [r["id"] for r in await db.pool.fetch(Q.reap, None, 10)] == [iid]
        reaped_at = rt.heartbeats

        async def cancelled() -> bool:
            return bool(CANCELLED)

        await wait_for(cancelled, timeout=15)
        (_, cancelled_at) = CANCELLED[0]
        # within a heartbeat period: the beat in flight at the reap may have extended it; the next finds it gone
        assert cancelled_at - reaped_at <= 2, (reaped_at, cancelled_at)
        r = await wait_status(db, iid, "done")

        async def recorded() -> bool:
            return "lease_lost" in events(await db.history(iid))

        await wait_for(recorded)
        stats = rt.statistics()
        nursery.cancel_scope.cancel()
    assert durable.codec.decode(r["result"]) == 1 and r["attempt"] == 1
    history = await db.history(iid)
    assert sorted(events(history)) == sorted(["inserted", "reaped", "lease_lost", "done"])
    (lost,) = [e for e in history if e.event == "lease_lost"]
    assert lost.worker_id == "ll-hb" and lost.attempt == 0 and lost.detail["released"] is False
    assert "gone" in lost.detail["reason"]
    assert stats["lease_lost"] == 1 and stats["blocked_steps"] == 0


# -- item 5: a dead worker's claims are released when a runtime starts -------------------------------
def spawn(pg_dsn: str, schema: str, worker_id: str, queue: str) -> subprocess.Popen[bytes]:
    """A worker process running Hang on ``queue`` with a 60 s lease."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.test_lease_loss", pg_dsn, schema, worker_id, queue],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def claimed_by(db: durable.Database, iid: int, worker_id: str, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    async def claimed() -> bool:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else proc.returncode
        r = await row(db, iid)
        return bool(r["status"] == "executing" and r["worker_id"] == worker_id)

    await wait_for(claimed, timeout=60)
    return await row(db, iid)


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


async def test_a_runtime_restarted_with_the_same_worker_id_releases_its_dead_predecessors_claims(
    db: durable.Database, pg_dsn: str, schema_name: str
) -> None:
    db.registry.add(Hang)
    iid = await db.insert(Hang, queue="ll_same")
    assert iid is not None
    proc = spawn(pg_dsn, schema_name, "ll-same", "ll_same")
    try:
        await claimed_by(db, iid, "ll-same", proc)
    finally:
        kill(proc)  # SIGKILL: nothing released, the lease (60 s) still runs
    async with trio.open_nursery() as nursery:
        rt = durable.Runtime(db, queues={"ll_same": 1}, worker_id="ll-same", lease=60, reap_every=60)
        await nursery.start(rt.run)
        r = await wait_status(db, iid, "done", timeout=15)  # long before the 60 s lease
        stats = rt.statistics()
        nursery.cancel_scope.cancel()
    assert r["attempt"] == 1 and durable.codec.decode(r["result"]) == 1
    history = await db.history(iid)
    assert events(history) == ["inserted", "reaped", "done"]
    reaped = history[1]
    assert reaped.worker_id == "ll-same" and reaped.attempt == 0
    assert reaped.detail["dead_worker"] == "ll-same" and f"process {proc.pid}" in reaped.detail["reason"]
    assert stats["freed_at_start"] == 1 and stats["reaped"] == 0


async def test_a_runtime_killed_in_this_process_leaves_claims_its_successor_releases(db: durable.Database) -> None:
    """The same, with the predecessor a runtime of this very process (its pid is alive: it is ours)."""
    db.registry.add(Hang)
    async with trio.open_nursery() as nursery:
        first = durable.Runtime(db, queues={"ll_hang": 1}, worker_id="ll-again", lease=60, reap_every=60)
        await nursery.start(first.run)
        iid = await db.insert(Hang)
        assert iid is not None
        await wait_status(db, iid, "executing")
        first.kill()
    assert (await row(db, iid))["status"] == "executing"
    async with trio.open_nursery() as nursery:
        await nursery.start(
            durable.Runtime(db, queues={"ll_hang": 1}, worker_id="ll-again", lease=60, reap_every=60).run
        )
        r = await wait_status(db, iid, "done", timeout=15)
        nursery.cancel_scope.cancel()
    assert r["attempt"] == 1
    assert events(await db.history(iid)) == ["inserted", "reaped", "done"]


async def test_registry_entries_of_this_host_with_a_dead_process_are_released_at_start(
    db: durable.Database, pg_dsn: str, schema_name: str
) -> None:
    """Three claims: one of a worker process killed with SIGKILL, one of a worker process still alive, one
    of a runtime of this process still running. A new runtime releases only the first."""
    db.registry.add(Hang)
    dead_i = await db.insert(Hang, queue="ll_dead")
    live_i = await db.insert(Hang, queue="ll_live")
    peer_i = await db.insert(Hang, queue="ll_peer")
    assert dead_i is not None and live_i is not None and peer_i is not None
    dead = spawn(pg_dsn, schema_name, "ll-dead", "ll_dead")
    live = spawn(pg_dsn, schema_name, "ll-live", "ll_live")
    try:
        async with trio.open_nursery() as nursery:
            try:
                await claimed_by(db, dead_i, "ll-dead", dead)
                live_row = await claimed_by(db, live_i, "ll-live", live)
                peer = durable.Runtime(
                    db, queues={"ll_peer": 1}, worker_id="ll-peer", lease=60, reap_every=60, drain_timeout=0.1
                )
                await nursery.start(peer.run)
                peer_row = await wait_status(db, peer_i, "executing")
            finally:
                kill(dead)  # SIGKILL: its claim stays, its registry row says nothing
            assert (await db.pool.fetchrow(WORKER, "ll-dead"))["pid"] == dead.pid
            rt = durable.Runtime(
                db, queues={"ll_dead": 1, "ll_live": 1, "ll_peer": 1}, worker_id="ll-new", lease=60, reap_every=60
            )
            await nursery.start(rt.run)
            r = await wait_status(db, dead_i, "done", timeout=15)
            stats = rt.statistics()
            # the live ones: still executing under the same claim
            for iid, before in ((live_i, live_row), (peer_i, peer_row)):
                now = await row(db, iid)
                assert (now["status"], now["worker_id"], now["lease_token"]) == (
                    "executing",
                    before["worker_id"],
                    before["lease_token"],
                )
            nursery.cancel_scope.cancel()
    finally:
        kill(live)
    assert r["attempt"] == 1
    history = await db.history(dead_i)
    assert events(history) == ["inserted", "reaped", "done"]
    assert history[1].detail["dead_worker"] == "ll-dead" and "is gone" in history[1].detail["reason"]
    assert stats["freed_at_start"] == 1
    assert (await db.pool.fetchrow(WORKER, "ll-dead"))["stopped_at"] is not None
    assert (await db.pool.fetchrow(WORKER, "ll-live"))["stopped_at"] is None
    assert events(await db.history(live_i)) == ["inserted"]
    assert events(await db.history(peer_i)) == ["inserted", "released"]  # by its own drain, at the end


async def test_a_runtime_of_an_abandoned_trio_run_does_not_count_as_running(
    db: durable.Database, pg_dsn: str, schema_name: str
) -> None:
    """A trio run that ends without unwinding its tasks (an exception raised out of ``trio.run``, as a test
    timeout's signal handler does) leaves its runtimes in the process's registry of running worker ids. A
    later runtime of the same id in the same thread must still free that dead one's claims at once: the
    stale entry made a later simulation in the same pytest process report restart_frees_claims."""
    db.registry.add(Hang)
    with trio.fail_after(120):
        proc = await trio.run_process(
            [sys.executable, "-m", "tests.test_lease_loss", "abandon", pg_dsn, schema_name],
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    iid, freed = (int(x) for x in proc.stdout.split())
    assert freed == 1
    history = await db.history(iid)
    assert events(history)[:2] == ["inserted", "reaped"]
    assert history[1].detail["dead_worker"] == "ll-abandoned" and "(this one)" in history[1].detail["reason"]


# -- the worker process ------------------------------------------------------------------------------
async def worker(dsn: str, schema: str, worker_id: str, queue: str) -> None:
    async with durable.connect(dsn, schema=schema, machines=[Hang], migrate=False) as db:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                durable.Runtime(db, queues={queue: 1}, worker_id=worker_id, lease=60, reap_every=60).run
            )
            await trio.sleep_forever()


class _Abandon(BaseException):
    pass


class AbandoningClock(trio.abc.Clock):
    """Real time; once ``abandon`` is set, the run loop's next idle wait raises out of ``trio.run``
    without unwinding a task (trio reports a TrioInternalError)."""

    abandon = False

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return time.perf_counter()

    def deadline_to_sleep_time(self, deadline: float) -> float:
        if self.abandon:
            raise _Abandon
        return deadline - time.perf_counter()


def abandon_then_restart(dsn: str, schema: str) -> None:
    """Run a runtime whose step hangs, abandon its trio run, then start one of the same id in a new run
    in this thread; print the instance id and how many claims the second one freed at start."""
    clock = AbandoningClock()
    iid: list[int] = []

    async def first() -> None:
        async with durable.connect(dsn, schema=schema, machines=[Hang], migrate=False) as db:
            async with trio.open_nursery() as nursery:
                rt = durable.Runtime(db, queues={"ll_abandon": 1}, worker_id="ll-abandoned", lease=60, reap_every=60)
                await nursery.start(rt.run)
                got = await db.insert(Hang, queue="ll_abandon")
                assert got is not None
                iid.append(got)
                await wait_status(db, got, "executing")
                clock.abandon = True
                await trio.sleep_forever()

    async def second() -> int:
        async with durable.connect(dsn, schema=schema, machines=[Hang], migrate=False) as db:
            async with trio.open_nursery() as nursery:
                rt = durable.Runtime(
                    db, queues={"ll_abandon": 1}, worker_id="ll-abandoned", lease=60, reap_every=60, drain_timeout=0.1
                )
                await nursery.start(rt.run)
                nursery.cancel_scope.cancel()
                return int(rt.statistics()["freed_at_start"])

    kept: list[BaseException] = []  # its traceback keeps the abandoned tasks from being collected (and closed,
    try:  # which would run their finally blocks), as pytest keeps a failed test's
        trio.run(first, clock=clock)
    except trio.TrioInternalError as exc:
        assert isinstance(exc.__cause__, _Abandon), exc
        kept.append(exc)
    print(iid[0], trio.run(second))


if __name__ == "__main__":
    os.environ.setdefault("DURABLE_TRACING", "off")
    if sys.argv[1] == "abandon":
        abandon_then_restart(*sys.argv[2:4])
    else:
        trio.run(worker, *sys.argv[1:5])
