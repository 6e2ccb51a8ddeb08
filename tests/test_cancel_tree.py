"""Cancellation that reaches everything (issue 17, items 5 and 7), on real PostgreSQL: ``db.cancel`` cancels
the instance's live descendants and each cancelled child counts once in its parent's join; a running step is
cancelled through its cancel scope at the worker's next heartbeat and ``Machine.on_cancel`` runs once; a
cancel racing a step's outcome ends the instance once, either way; ``db.cancel_many`` / ``db.retry_many``
page through filters in batches; ``durable cancel|retry --status ...`` count, ask, or refuse."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio

import durable
from durable import Await, Child, Done, Machine, Next, Spawn, step
from durable.errors import InvalidArgument, NoSuchInstance, TreeTooLarge
from durable.runtime.claim import Encoded
from durable.sql import Q, Query
from tests.helpers import commit, pick, row, wait_for

pytestmark = pytest.mark.trio

TERMINAL = ("done", "failed", "cancelled")


class Leaf(Machine, name="tree.leaf", queue="tree"):
    """Idle: awaits a signal that never comes."""

    @step
    async def start(self, ctx: durable.Context) -> Any:
        return Await("go")


class Busy(Machine, name="tree.busy", queue="tree"):
    """Running: its step waits forever (until its cancel scope is cancelled)."""

    running: ClassVar[set[int]] = set()
    compensated: ClassVar[list[int]] = []
    beats: ClassVar[Callable[[], int] | None] = None  # the runtime's heartbeat count, when a test watches it
    beats_at_cancel: ClassVar[list[int]] = []

    @step
    async def start(self, ctx: durable.Context) -> Any:
        Busy.running.add(ctx.id)
        await trio.sleep_forever()
        return Done("never")

    async def on_cancel(self, ctx: durable.Context) -> None:
        Busy.compensated.append(ctx.id)
        if Busy.beats is not None:
            Busy.beats_at_cancel.append(Busy.beats())


class Mid(Machine, name="tree.mid", queue="tree"):
    @step
    async def start(self, ctx: durable.Context) -> Any:
        return Spawn("joined", [Child(Leaf, {}), Child(Busy, {})])

    @step
    async def joined(self, ctx: durable.Context) -> Any:
        return Done("mid joined")


class Root(Machine, name="tree.root", queue="tree"):
    @step
    async def start(self, ctx: durable.Context) -> Any:
        return Spawn("joined", [Child(Mid, {}), Child(Mid, {}), Child(Leaf, {}), Child(Busy, {})])

    @step
    async def joined(self, ctx: durable.Context) -> Any:
        return Done("root joined")


class Brittle(Machine, name="tree.brittle", queue="tree"):
    """on_cancel raises: recorded, never looped."""

    calls: ClassVar[int] = 0

    @step
    async def start(self, ctx: durable.Context) -> Any:
        await trio.sleep_forever()

    async def on_cancel(self, ctx: durable.Context) -> None:
        Brittle.calls += 1
        raise RuntimeError("compensation broke")


class Stubborn(Machine, name="tree.stubborn", queue="tree"):
    """on_cancel never returns: cut off after on_cancel_timeout."""

    on_cancel_timeout: ClassVar[float] = 0.2

    @step
    async def start(self, ctx: durable.Context) -> Any:
        await trio.sleep_forever()

    async def on_cancel(self, ctx: durable.Context) -> None:
        await trio.sleep_forever()


class Quick(Machine, name="tree.quick", queue="quick"):
    compensated: ClassVar[list[int]] = []

    @step
    async def start(self, ctx: durable.Context) -> Any:
        return Next("finish", {"n": 1})

    @step
    async def finish(self, ctx: durable.Context) -> Any:
        return Done("finished")

    async def on_cancel(self, ctx: durable.Context) -> None:
        Quick.compensated.append(ctx.id)


MACHINES = [Leaf, Busy, Mid, Root, Brittle, Stubborn, Quick]
HEARTBEAT = 0.1


@pytest.fixture(autouse=True)
def _reset() -> None:
    Busy.running, Busy.compensated = set(), []
    Brittle.calls = 0
    Quick.compensated = []


@asynccontextmanager
async def running(db: durable.Database, queues: tuple[str, ...] = ("tree",)) -> AsyncIterator[durable.Runtime]:
    for m in MACHINES:
        if (m.name, m.version) not in db.registry:
            db.registry.add(m)
    async with trio.open_nursery() as nursery:
        rt = await nursery.start(
            durable.Runtime(db, queues={q: 20 for q in queues}, lease=10, heartbeat=HEARTBEAT, drain_timeout=5).run
        )
        yield rt
        nursery.cancel_scope.cancel()


TREE = Query(
    "tree",
    """
    with recursive t as (select * from instances where id = $1
                         union all select c.* from instances c join t on c.parent_id = t.id)
    select id, parent_id, machine, status::text as status, children_pending, joined, cancel_requested
    from t order by id""",
    "",
)


def sql(text: str) -> Query:
    return Query("test", text, "")


async def tree_rows(db: durable.Database, root: int) -> list[dict[str, Any]]:
    rows = await db.pool.fetch(TREE, root)
    return [dict(r) for r in rows]


async def until(predicate: Any, seconds: float = 20.0) -> None:
    await wait_for(predicate, timeout=seconds)


async def events(db: durable.Database, iid: int) -> list[durable.Event]:
    return await db.history(iid)


# -- the tree -----------------------------------------------------------------------------------------
async def test_cancel_reaches_children_and_grandchildren_idle_and_running(db: durable.Database) -> None:
    async with running(db):
        root = await db.insert(Root, {})
        assert root is not None

        async def settled() -> bool:  # the root, 2 mids awaiting children, 3 leaves awaiting, 3 busy running
            rows = await tree_rows(db, root)
            return (
                len(rows) == 9
                and len(Busy.running) == 3
                and all(
                    r["status"]
                    == (
                        "executing"
                        if r["machine"] == "tree.busy"
                        else "awaiting_signal"
                        if r["machine"] == "tree.leaf"
                        else "awaiting_children"
                    )
                    for r in rows
                )
            )

        await until(settled)
        assert await db.cancel(root, "customer left") == "cancelled"
        # the idle ones at once, in the same statement; the running ones marked, left to their runtime (whose
        # next heartbeat, every 0.1 s, may have ended one already: the history below shows each was marked)
        rows = {r["id"]: r for r in await tree_rows(db, root)}
        for r in rows.values():
            if r["machine"] == "tree.busy":
                assert (r["status"], r["cancel_requested"]) == ("executing", True) or r["status"] == "cancelled", r
            else:
                assert (r["status"], r["cancel_requested"]) == ("cancelled", False), r

        # the running steps at their worker's next heartbeat: cancelled through their scopes
        async def all_ended() -> bool:
            return all(r["status"] in TERMINAL for r in await tree_rows(db, root))

        await until(all_ended)
        await trio.sleep(3 * HEARTBEAT)  # nothing runs on after the tree ended (checked below)
    rows = {r["id"]: r for r in await tree_rows(db, root)}
    assert {r["status"] for r in rows.values()} == {"cancelled"}
    assert sorted(Busy.compensated) == sorted(Busy.running)  # on_cancel once per running step
    for r in rows.values():
        kids = [k for k in rows.values() if k["parent_id"] == r["id"]]
        # every child counted once in its parent's join: the barrier is exactly 0, each child joined
        assert r["children_pending"] == 0, r
        assert all(k["joined"] for k in kids)
        joined = [e for e in await events(db, r["id"]) if e.event == "joined"]
        assert sum(e.detail["children"] for e in joined) == len(kids), (r, joined)
    # who cancelled what: the root by the operator, each descendant by the root
    for iid, r in rows.items():
        cancelled = [e for e in await events(db, iid) if e.event == "cancelled"]
        assert len(cancelled) == 1, (r, cancelled)
        assert cancelled[0].detail["reason"] == "customer left"
        assert cancelled[0].detail["by"] == ("operator" if iid == root else root)
        assert cancelled[0].detail["requested"] == (r["machine"] == "tree.busy")
        assert cancelled[0].status == ("executing" if r["machine"] == "tree.busy" else "cancelled")  # as it left it
        if r["machine"] == "tree.busy":
            outcome = [e for e in await events(db, iid) if e.event == "cancel"]
            assert len(outcome) == 1 and outcome[0].status == "cancelled"
            assert outcome[0].detail["interrupted"] is True and outcome[0].detail["on_cancel"] == "ok"


async def test_a_running_step_is_cancelled_within_a_heartbeat_and_on_cancel_runs_once(db: durable.Database) -> None:
    async with running(db) as rt:
        iid = await db.insert(Busy, {})
        assert iid is not None
        await until(lambda: _true(iid in Busy.running))
        Busy.beats, Busy.beats_at_cancel = (lambda: rt.heartbeats), []
        assert await db.cancel(iid, "stop it", by="ops-team") == "executing"
        beats = rt.heartbeats  # counted from the cancel's commit: a cancel slow to commit is not the runtime's
        ended = await _wait_status(db, iid, "cancelled")
        # the step is interrupted within the heartbeat period of the cancel's commit: at most the beat under way
        # and the next one (counted when on_cancel runs: the commit after it may take longer than a period
        # under load)
        assert len(Busy.beats_at_cancel) == 1 and Busy.beats_at_cancel[0] - beats <= 2, (beats, Busy.beats_at_cancel)
        Busy.beats = None
    assert ended["last_error"] == "cancelled"
    assert Busy.compensated == [iid]
    history = await events(db, iid)
    assert [e.event for e in history] == ["inserted", "cancelled", "cancel"]
    assert history[1].detail == {"reason": "stop it", "requested": True, "by": "ops-team"}
    assert history[2].detail["interrupted"] is True and history[2].detail["on_cancel"] == "ok"


async def _true(value: bool) -> bool:
    return value


async def _wait_status(db: durable.Database, iid: int, *statuses: str, seconds: float = 20.0) -> dict[str, Any]:
    async def ok() -> bool:
        return (await row(db, iid))["status"] in statuses

    await until(ok, seconds)
    return await row(db, iid)


async def test_on_cancel_errors_and_timeouts_are_recorded_never_looped(db: durable.Database) -> None:
    async with running(db):
        brittle = await db.insert(Brittle, {})
        stubborn = await db.insert(Stubborn, {})
        assert brittle is not None and stubborn is not None
        await _wait_status(db, brittle, "executing")
        await _wait_status(db, stubborn, "executing")
        await db.cancel(brittle)
        await db.cancel(stubborn)
        await _wait_status(db, brittle, "cancelled")
        await _wait_status(db, stubborn, "cancelled")
    assert Brittle.calls == 1
    (b,) = [e for e in await events(db, brittle) if e.event == "cancel"]
    assert b.detail["on_cancel"] == "RuntimeError: compensation broke"
    (s,) = [e for e in await events(db, stubborn) if e.event == "cancel"]
    assert s.detail["on_cancel"] == "timed out after 0.2s"


async def test_a_claim_picked_with_a_cancel_pending_runs_on_cancel_not_its_step(db: durable.Database) -> None:
    db.registry.add(Quick)
    iid = await db.insert(Quick, {})
    assert iid is not None
    (claim,) = await pick(db, "quick")
    assert await db.cancel(iid) == "executing"
    # the worker dies: its claim goes back with the cancel still pending
    await db.pool.fetch(Q.release, [claim.id], [claim.lease_token], [1], "w1", None)
    assert (await row(db, iid))["cancel_requested"]
    async with running(db, ("quick",)):
        await _wait_status(db, iid, "cancelled")
    assert Quick.compensated == [iid]
    assert [e.event for e in await events(db, iid)] == ["inserted", "cancelled", "released", "cancel"]
    last = (await events(db, iid))[-1]
    assert last.detail["interrupted"] is False and last.detail["on_cancel"] == "ok"
    assert (await row(db, iid))["step"] == "start"  # no step ran


# -- a cancel racing a step's outcome ------------------------------------------------------------------
async def test_outcome_then_cancel_ends_done_once(db: durable.Database) -> None:
    db.registry.add(Quick)
    iid = await db.insert(Quick, {}, step="finish")
    assert iid is not None
    (claim,) = await pick(db, "quick")
    done = await commit(db, claim, Encoded("done", result='"finished"'))
    assert done.status == "done"
    assert await db.cancel(iid) == "done"  # terminal: left alone
    history = await events(db, iid)
    assert [e.event for e in history] == ["inserted", "done"]
    assert (await row(db, iid))["result"] == '"finished"'  # (json text)


async def test_cancel_then_outcome_ends_cancelled_once(db: durable.Database) -> None:
    db.registry.add(Quick)
    iid = await db.insert(Quick, {}, step="finish")
    assert iid is not None
    (claim,) = await pick(db, "quick")
    assert await db.cancel(iid) == "executing"
    late = await commit(db, claim, Encoded("done", result='"finished"'))
    assert late.status == "cancelled" and not late.fenced
    inst = await row(db, iid)
    assert inst["status"] == "cancelled" and inst["result"] is None
    history = await events(db, iid)
    assert [(e.event, e.status) for e in history] == [
        ("inserted", "runnable"),
        ("cancelled", "executing"),
        ("done", "cancelled"),
    ]
    assert await db.cancel(iid) == "cancelled"  # again: nothing more happens
    assert len(await events(db, iid)) == 3


async def test_cancel_racing_outcomes_ends_each_instance_once(db: durable.Database) -> None:
    db.registry.add(Quick)
    ids = [await db.insert(Quick, {}, step="finish") for _ in range(30)]
    claims = {c.id: c for c in await pick(db, "quick", n=30)}
    assert sorted(claims) == sorted(ids)

    async def finish(iid: int) -> None:
        await commit(db, claims[iid], Encoded("done", result='"finished"'))

    async with trio.open_nursery() as nursery:
        for i, iid in enumerate(ids):  # both orders of start, run at once
            assert iid is not None
            if i % 2:
                nursery.start_soon(finish, iid)
                nursery.start_soon(db.cancel, iid)
            else:
                nursery.start_soon(db.cancel, iid)
                nursery.start_soon(finish, iid)
    for iid in ids:
        assert iid is not None
        inst = await row(db, iid)
        history = await events(db, iid)
        ends = [e for e in history if e.status in TERMINAL]
        assert len(ends) == 1, history  # ended exactly once
        if inst["status"] == "done":  # the outcome first: the cancel found it terminal and wrote nothing
            assert [e.event for e in history] == ["inserted", "done"]
        else:  # the cancel first: requested, and the outcome ended it cancelled (its result dropped)
            assert inst["status"] == "cancelled" and inst["result"] is None
            assert [e.event for e in history] == ["inserted", "cancelled", "done"]


async def test_children_committed_under_a_cancel_are_cancelled_too(db: durable.Database) -> None:
    """A spawn commits while the cancel waits for the parent's lock: the cancel's walk could not see the
    new children (its snapshot is older), so it runs again and reaches them (`raced`)."""
    db.registry.add(Quick)
    parent = await db.insert(Quick, {})
    assert parent is not None
    (claim,) = await pick(db, "quick")
    assert claim.id == parent
    locked, go = trio.Event(), trio.Event()
    result: list[str] = []
    holder: list[int] = []  # the backend of the spawn's transaction

    async def spawn_commits() -> None:  # the spawn's commit, by hand, held open until `go`
        async with db.pool.transaction() as conn:
            holder.append(await conn.fetchval(sql("select pg_backend_pid()")))
            await conn.execute(
                sql(
                    "update instances set status = 'awaiting_children', children_pending = 2, "
                    "lease_token = null, worker_id = null where id = $1"
                ),
                parent,
            )
            await conn.execute(
                sql(
                    "insert into instances (machine, step, queue, parent_id) values "
                    "('tree.quick', 'start', 'nobody', $1), ('tree.quick', 'start', 'nobody', $1)"
                ),
                parent,
            )
            locked.set()
            await go.wait()

    async def cancel() -> None:
        result.append(await db.cancel(parent))

    async def blocked() -> bool:  # the cancel waits for the parent's row lock, held by the spawn's transaction
        # (any ungranted lock of the server was another test's wait too: then the spawn committed first)
        return bool(
            await db.pool.fetchval(
                sql("select count(*) from pg_stat_activity where $1::int = any(pg_blocking_pids(pid))"), holder[0]
            )
        )

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(spawn_commits)
            await locked.wait()
            nursery.start_soon(cancel)
            await until(blocked)
            go.set()
    assert result == ["cancelled"]
    kids = await db.pool.fetch(sql("select status::text as status, joined from instances where parent_id = $1"), parent)
    assert [(k["status"], k["joined"]) for k in kids] == [("cancelled", True), ("cancelled", True)]
    assert (await row(db, parent))["children_pending"] == 0


# -- hostile trees ------------------------------------------------------------------------------------
async def chain(db: durable.Database, depth: int) -> list[int]:
    """A chain root -> ... of ``depth`` idle instances, each awaiting its one child (the last a signal)."""
    ids: list[int] = []
    parent = None
    for i in range(depth):
        last = i == depth - 1
        iid = await db.pool.fetchval(
            sql(
                "insert into instances (machine, step, queue, parent_id, status, children_pending) "
                "values ('tree.leaf', 'start', 'nobody', $1, $2::status, $3) returning id"
            ),
            parent,
            "awaiting_signal" if last else "awaiting_children",
            0 if last else 1,
        )
        ids.append(iid)
        parent = iid
    return ids


async def fan(db: durable.Database, width: int, parent: int | None = None) -> tuple[int, list[int]]:
    root = await db.pool.fetchval(
        sql(
            "insert into instances (machine, step, queue, parent_id, status, children_pending) "
            "values ('tree.root', 'joined', 'nobody', $1, 'awaiting_children', $2) returning id"
        ),
        parent,
        width,
    )
    rows = await db.pool.fetch(
        sql(
            "insert into instances (machine, step, queue, parent_id) "
            "select 'tree.leaf', 'start', 'nobody', $1 from generate_series(1, $2) returning id"
        ),
        root,
        width,
    )
    return root, [r["id"] for r in rows]


async def test_a_deep_chain_is_cancelled_whole_and_a_tree_past_the_limit_is_refused(db: durable.Database) -> None:
    ids = await chain(db, 60)
    with pytest.raises(TreeTooLarge, match="more than 59 instances"):
        await db.cancel(ids[0], limit=59)
    statuses = await db.pool.fetch(sql("select distinct status::text from instances"))
    assert {r["status"] for r in statuses} == {"awaiting_children", "awaiting_signal"}  # nothing changed
    assert await db.cancel(ids[0], limit=60) == "cancelled"
    rows = await tree_rows(db, ids[0])
    assert len(rows) == 60 and {r["status"] for r in rows} == {"cancelled"}
    assert all(r["children_pending"] == 0 for r in rows)
    with pytest.raises(InvalidArgument):
        await db.cancel(ids[0], limit=0)


async def test_a_wide_tree_counts_each_child_once(db: durable.Database) -> None:
    top, (mid,) = await fan(db, 1)
    await db.pool.execute(
        sql("update instances set status = 'awaiting_children', children_pending = 1500 where id = $1"), mid
    )
    kids = await db.pool.fetch(
        sql(
            "insert into instances (machine, step, queue, parent_id) "
            "select 'tree.leaf', 'start', 'nobody', $1 from generate_series(1, 1500) returning id"
        ),
        mid,
    )
    # one child first: its parent's barrier drops by one, and a second cancel does not drop it again
    first = kids[0]["id"]
    assert await db.cancel(first) == "cancelled"
    assert await db.cancel(first) == "cancelled"
    assert (await row(db, mid))["children_pending"] == 1499
    # the middle of the tree: its 1,499 live children in one statement, each counted once; its own parent
    # (outside the cancelled tree) is released
    assert await db.cancel(mid) == "cancelled"
    assert (await row(db, mid))["children_pending"] == 0
    top_row = await row(db, top)
    assert top_row["children_pending"] == 0 and top_row["status"] == "runnable"
    joined = [e for e in await events(db, top) if e.event == "joined"]
    assert [e.detail for e in joined] == [{"children": 1}]
    assert (
        await db.pool.fetchval(
            sql("select count(*) from instances where parent_id = $1 and status <> 'cancelled'"), mid
        )
        == 0
    )


async def test_cancelling_a_terminal_or_missing_instance_changes_nothing(db: durable.Database) -> None:
    done = await db.pool.fetchval(
        sql(
            "insert into instances (machine, step, queue, status) "
            "values ('tree.leaf', 'start', 'nobody', 'done') returning id"
        )
    )
    assert await db.cancel(done) == "done"
    assert await events(db, done) == []
    with pytest.raises(NoSuchInstance):
        await db.cancel(10**12)
    with pytest.raises(InvalidArgument):
        await db.cancel(done, by="")


# -- bulk -----------------------------------------------------------------------------------------------
async def idle(db: durable.Database, n: int, machine: str = "bulk.a") -> list[int]:
    rows = await db.pool.fetch(
        sql(
            "insert into instances (machine, step, queue) select $1, 'start', 'nobody' "
            "from generate_series(1, $2) returning id"
        ),
        machine,
        n,
    )
    return [r["id"] for r in rows]


async def test_cancel_many_and_retry_many_page_through_more_rows_than_a_batch(db: durable.Database) -> None:
    mine = await idle(db, 25)
    others = await idle(db, 5, "bulk.b")
    done = await db.cancel_many("cleanup", machine="bulk.a", status="runnable", batch=10)
    assert (done.matched, done.changed, done.requested, done.skipped) == (25, 25, 0, 0)
    assert (
        await db.pool.fetchval(sql("select count(*) from instances where id = any($1) and status = 'cancelled'"), mine)
        == 25
    )
    assert (
        await db.pool.fetchval(sql("select count(*) from instances where id = any($1) and status = 'runnable'"), others)
        == 5
    )
    event = (await events(db, mine[-1]))[-1]
    assert event.event == "cancelled" and event.detail == {"reason": "cleanup", "requested": False, "by": "operator"}
    # again: matched by machine only, all terminal now
    again = await db.cancel_many(machine="bulk.a", batch=7)
    assert (again.matched, again.changed, again.skipped) == (25, 0, 25)
    retried = await db.retry_many(machine="bulk.a", status="cancelled", batch=4)
    assert (retried.matched, retried.changed, retried.skipped) == (25, 25, 0)
    assert (
        await db.pool.fetchval(sql("select count(*) from instances where id = any($1) and status = 'runnable'"), mine)
        == 25
    )
    assert (await events(db, mine[0]))[-1].detail == {"from": "cancelled"}
    nothing = await db.retry_many(machine="bulk.a", status="failed")
    assert (nothing.matched, nothing.changed) == (0, 0)
    assert (await db.cancel_many(machine="no.such.machine")).matched == 0


async def test_bulk_filters_are_checked(db: durable.Database) -> None:
    with pytest.raises(InvalidArgument, match="at least one filter"):
        await db.cancel_many()
    with pytest.raises(InvalidArgument, match="at least one filter"):
        await db.retry_many(status=None)
    with pytest.raises(InvalidArgument, match="order"):
        await db.cancel_many(machine="x", order="-id")
    with pytest.raises(InvalidArgument, match="batch"):
        await db.retry_many(machine="x", batch=0)
    with pytest.raises(InvalidArgument, match="unknown status"):
        await db.cancel_many(status="sleeping")
    with pytest.raises(InvalidArgument, match="parent id"):
        await db.cancel_many(parent_id=2**70)
    with pytest.raises(TypeError):
        await db.cancel_many(colour="red")


async def test_cancel_many_counts_a_tree_once_and_leaves_a_too_large_tree(db: durable.Database) -> None:
    root, kids = await fan(db, 30)
    big, _ = await fan(db, 50)
    # a root and its children all matched, across batches: each instance cancelled (and joined) once
    report = await db.cancel_many(ids=[root, *kids], batch=8)
    assert (report.matched, report.changed, report.skipped) == (31, 31, 23)
    assert (await row(db, root))["children_pending"] == 0
    assert all(e.detail["children"] == 30 for e in await events(db, root) if e.event == "joined")
    # a tree past the limit is left whole and named; the others go on
    await fan(db, 10)
    report = await db.cancel_many(machine="tree.root", status="active", limit=40)
    assert report.too_large == (big,)
    assert (report.matched, report.changed, report.skipped) == (2, 11, 1)
    assert (
        await db.pool.fetchval(sql("select count(*) from instances where parent_id = $1 and status = 'runnable'"), big)
        == 50
    )


# -- the command ------------------------------------------------------------------------------------------
DURABLE = str(Path(sys.executable).parent / "durable")
ROOT = Path(__file__).resolve().parent.parent


class CLI:
    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn, self.schema = dsn, schema
        self.env = {**os.environ, "COLUMNS": "200", "DURABLE_DSN": "", "DURABLE_SCHEMA": ""}

    def argv(self, *args: str) -> list[str]:
        return [DURABLE, args[0], "--dsn", self.dsn, "--schema", self.schema, *args[1:]]

    def __call__(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            env=self.env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def on_terminal(self, *args: str, answer: str) -> tuple[int, str]:
        """Run with a terminal as stdin (and stderr), answering the confirmation."""
        main, other = pty.openpty()
        proc = subprocess.Popen(
            self.argv(*args), stdin=other, stdout=subprocess.PIPE, stderr=other, env=self.env, cwd=ROOT, text=True
        )
        os.close(other)
        seen = b""
        while b"?" not in seen:
            chunk = os.read(main, 1024)
            assert chunk, seen
            seen += chunk
        os.write(main, answer.encode() + b"\n")
        out, _ = proc.communicate(timeout=60)
        try:
            while chunk := os.read(main, 1024):
                seen += chunk
        except OSError:
            pass
        os.close(main)
        return proc.returncode, seen.decode(errors="replace") + out


async def test_cli_bulk_cancel_and_retry_count_ask_and_refuse(
    db: durable.Database, pg_dsn: str, schema_name: str
) -> None:
    await idle(db, 12, "cli.a")
    await idle(db, 3, "cli.b")
    await trio.to_thread.run_sync(cli_bulk, CLI(pg_dsn, schema_name))


def cli_bulk(cli: CLI) -> None:
    # no terminal, no --yes: one error line with the count, exit 2, nothing changed
    refused = cli("cancel", "--status", "runnable", "--machine", "cli.a", code=2)
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("error: 12 instances match")
    assert "--yes" in refused.stderr
    assert json.loads(cli("ls", "--machine", "cli.a", "--status", "runnable", "--json").stdout)["items"]
    # a terminal: asked, and "n" changes nothing
    code, text = cli.on_terminal("cancel", "--status", "runnable", "--machine", "cli.a", answer="n")
    assert code == 1 and "12 instances match" in text and "nothing changed" in text
    # a terminal: asked, and "y" cancels them
    code, text = cli.on_terminal("cancel", "--status", "runnable", "--machine", "cli.a", answer="y")
    assert code == 0 and "cancelled 12" in text, text
    # --yes: no question; --json: the counts
    out = json.loads(cli("retry", "--status", "cancelled", "--machine", "cli.a", "--yes", "--json").stdout)
    assert out == {"matched": 12, "changed": 12, "requested": 0, "skipped": 0, "too_large": []}
    yes = cli("cancel", "--machine", "cli.b", "--yes")
    assert "3 instances match" in yes.stderr and "cancelled 3" in yes.stdout
    # filters that match nothing: said, exit 0, nothing asked
    assert "no instances match" in cli("retry", "--status", "failed", "--machine", "cli.a").stdout
    # an ID still works, alone
    one = json.loads(cli("ls", "--machine", "cli.a", "--json").stdout)["items"][0]["id"]
    assert cli("cancel", str(one)).stdout.strip() == f"{one}: runnable -> cancelled"
    assert cli("retry", str(one)).stdout.strip() == f"{one}: cancelled -> runnable"
    # an ID and filters, or neither, or a bad filter: one error line, exit 2
    for args in (
        ("cancel", str(one), "--status", "runnable"),
        ("cancel",),
        ("retry", "--yes"),
        ("retry", "--status", "sleeping", "--yes"),
        ("cancel", "--state", "[", "--yes"),
    ):
        bad = cli(*args, code=2)
        assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error:"), (args, bad.stderr)


# -- spans --------------------------------------------------------------------------------------------------
SPANS = """
import json, sys
import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

import durable
from tests.test_cancel_tree import Busy


async def main(dsn, schema):
    async with durable.connect(dsn, schema=schema, migrate=False) as db:
        async with trio.open_nursery() as nursery:
            await nursery.start(durable.Runtime(db, machines=[Busy], queues={"tree": 2}, lease=10, heartbeat=0.1).run)
            iid = await db.insert(Busy, {})
            with trio.fail_after(20):
                while iid not in Busy.running:
                    await trio.sleep(0.02)
                await db.cancel(iid, "refund", by="support")
                while (await db.get(iid)).status != "cancelled":
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    return iid


iid = trio.run(main, *sys.argv[1:3])
provider.force_flush()
spans = [{"name": s.name, "attributes": dict(s.attributes or {})} for s in exporter.get_finished_spans()]
print(json.dumps({"iid": iid, "spans": spans}))
"""


async def test_spans_record_who_cancelled_what(db: durable.Database, pg_dsn: str, schema_name: str) -> None:
    proc = await trio.run_process(
        [sys.executable, "-c", SPANS, pg_dsn, schema_name],
        capture_stdout=True,
        capture_stderr=True,
        cwd=str(ROOT),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    iid, spans = out["iid"], out["spans"]
    (cancel,) = [s["attributes"] for s in spans if s["name"] == "durable cancel"]
    assert cancel["durable.cancel.by"] == "support" and cancel["durable.cancel.reason"] == "refund"
    assert cancel["durable.instance.id"] == iid
    assert (cancel["durable.cancel.cancelled"], cancel["durable.cancel.requested"]) == (0, 1)
    (step_span,) = [s["attributes"] for s in spans if s["name"] == "step tree.busy.start"]
    assert step_span["durable.outcome"] == "cancel" and step_span["durable.on_cancel"] == "ok"
    assert "interrupted" in step_span["durable.cancel"]


class Ticker(Machine, name="tree.ticker", queue="tree"):
    """A child that keeps stepping (short steps, each a checkpoint): its outcomes race the cancel."""

    @step
    async def start(self, ctx: durable.Context) -> Any:
        await trio.sleep(0.001)
        return Next("start", {"n": (ctx.state or {}).get("n", 0) + 1})


class Fleet(Machine, name="tree.fleet", queue="tree"):
    @step
    async def start(self, ctx: durable.Context) -> Any:
        return Spawn("joined", [Child(Ticker, {"n": 0}) for _ in range(24)] + [Child(Leaf, {}) for _ in range(8)])

    @step
    async def joined(self, ctx: durable.Context) -> Any:
        return Done("joined")


async def test_a_tree_cancelled_while_its_children_keep_committing_joins_each_once(db: durable.Database) -> None:
    for m in (Ticker, Fleet):
        db.registry.add(m)
    async with running(db) as rt:
        fleet = await db.insert(Fleet, {})
        assert fleet is not None

        async def busy() -> bool:  # every ticker has committed steps, the leaves wait
            rows = await tree_rows(db, fleet)
            return len(rows) == 33 and rt.statistics()["committed"] > 100

        await until(busy)
        await db.cancel(fleet, "shutting down")

        async def all_ended() -> bool:
            return all(r["status"] in TERMINAL for r in await tree_rows(db, fleet))

        await until(all_ended)
    rows = await tree_rows(db, fleet)
    assert {r["status"] for r in rows} == {"cancelled"}
    assert all(r["joined"] for r in rows if r["id"] != fleet)
    parent = await row(db, fleet)
    assert parent["children_pending"] == 0 and parent["result"] is None
    assert "done" not in [e.event for e in await events(db, fleet)]  # the join step never ran
    joined = [e for e in await events(db, fleet) if e.event == "joined"]
    assert sum(e.detail["children"] for e in joined) == 32


async def test_cancel_many_marks_running_steps_and_they_end_within_a_heartbeat(db: durable.Database) -> None:
    async with running(db):
        ids = [await db.insert(Busy, {}) for _ in range(5)]
        await until(lambda: _true(len(Busy.running) == 5))
        report = await db.cancel_many("drain", machine="tree.busy", batch=2)
        assert (report.matched, report.changed, report.requested, report.skipped) == (5, 0, 5, 0)
        for iid in ids:
            assert iid is not None
            await _wait_status(db, iid, "cancelled")
    assert sorted(Busy.compensated) == sorted(ids)


async def test_a_parent_cycle_written_by_hand_does_not_loop_the_walk(db: durable.Database) -> None:
    a, b = await idle(db, 2, "tree.leaf")
    await db.pool.execute(sql("update instances set parent_id = $2 where id = $1"), a, b)
    await db.pool.execute(sql("update instances set parent_id = $2 where id = $1"), b, a)
    assert await db.cancel(a, limit=10) == "cancelled"
    assert [(await row(db, i))["status"] for i in (a, b)] == ["cancelled", "cancelled"]
