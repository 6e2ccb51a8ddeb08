"""Results and business keys (issue 17, items 1 and 6): ``db.result`` woken by the commit that ends an
instance (here and in other processes), ``insert(..., on_conflict=)``, addressing an instance by its
unique key (``get``/``signal``/``result(key=)``), and ``durable result`` / ``show key:`` /
``signal key:`` from the shell. Real PostgreSQL."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

import durable
from durable import Await, Cancel, Done, Machine, Stop, step

from .helpers import listening, pick, wait_for, wait_status
from .helpers import step as run_step

pytestmark = pytest.mark.trio

ROOT = Path(__file__).resolve().parent.parent
DURABLE = str(Path(sys.executable).parent / "durable")
LONG = 3600.0  # a waiter's own re-read interval in the wake-up tests: only a wake-up can end them in time


class Order(Machine, queue="orders"):
    """Waits for 'go'; its payload says how it ends."""

    @step
    async def wait(self, ctx):
        sig = ctx.signal("go")
        if sig is None:
            return Await("go", ctx.state)
        how = sig.payload.get("how", "done")
        if how == "fail":
            return Stop("payment declined")
        if how == "cancel":
            return Cancel("customer changed their mind")
        return Done({"paid": sig.payload.get("amount")})


@pytest.fixture
def odb(db: durable.Database) -> durable.Database:
    db.registry.add(Order)
    db.result_recheck = LONG
    return db


@pytest.fixture
async def second(pg_dsn: str, odb: durable.Database) -> AsyncIterator[durable.Database]:
    """Another Database on the same schema: its commits reach ``odb``'s waiters only by NOTIFY."""
    async with durable.connect(pg_dsn, schema=odb.schema, machines=[Order], migrate=False) as other:
        assert other.token != odb.token
        yield other


async def parked(db: durable.Database, **insert: object) -> int:
    """An Order parked on its await (one step run by hand)."""
    iid = await db.insert(Order, {}, **insert)  # type: ignore[arg-type]
    assert iid is not None
    await run_step(db, (await pick(db, "orders"))[0])
    await wait_status(db, iid, "awaiting_signal")
    return iid


async def finish(db: durable.Database, iid: int, **payload: object) -> None:
    await db.signal(iid, "go", payload)
    await run_step(db, (await pick(db, "orders"))[0])


# -- results of ended instances -------------------------------------------------------------------------
async def test_result_of_done_failed_and_cancelled(odb: durable.Database) -> None:
    db = odb
    done, failed, stopped, cancelled = [await parked(db) for _ in range(4)]
    await finish(db, done, amount=42)
    await finish(db, failed, how="fail")
    await finish(db, stopped, how="cancel")
    await db.cancel(cancelled, "operator said so")
    assert await db.result(done) == {"paid": 42}
    assert await db.result(done, timeout=0) == {"paid": 42}
    with pytest.raises(durable.InstanceFailed) as failure:
        await db.result(failed)
    assert failure.value.last_error == "payment declined" and failure.value.instance_id == failed
    assert isinstance(failure.value, durable.DurableError)
    with pytest.raises(durable.InstanceCancelled) as cancel:
        await db.result(stopped)
    assert cancel.value.last_error == "customer changed their mind"
    with pytest.raises(durable.InstanceCancelled) as cancel:
        await db.result(cancelled)
    assert cancel.value.last_error == "operator said so" and isinstance(cancel.value, durable.DurableError)


async def test_result_times_out_on_a_live_instance(odb: durable.Database) -> None:
    iid = await parked(odb)
    with pytest.raises(TimeoutError, match="still awaiting_signal"):
        await odb.result(iid, timeout=0.2)
    with pytest.raises(TimeoutError, match="has not ended"):
        await odb.result(iid, timeout=0)
    assert odb.watchers._users == 0 and not odb.watchers.listening  # the LISTEN connection went back


async def test_result_under_trio_fail_after(odb: durable.Database) -> None:
    iid = await parked(odb)
    with pytest.raises(trio.TooSlowError), trio.fail_after(0.3):
        await odb.result(iid)
    assert odb.watchers._users == 0 and not odb.watchers.listening
    # and it is still usable afterwards

    async def end() -> None:
        await odb.cancel(iid)

    with pytest.raises(durable.InstanceCancelled):
        await _wait_then_end(odb, iid, end)


async def test_bad_result_arguments(odb: durable.Database) -> None:
    iid = await parked(odb)
    with pytest.raises(durable.NoSuchInstance):
        await odb.result(iid + 10_000)
    with pytest.raises(durable.NoSuchInstance):
        await odb.result(iid + 10_000, timeout=0)
    for bad in (-1, -0.5, math.nan, math.inf, 1e12):
        with pytest.raises(ValueError, match="timeout"):
            await odb.result(iid, timeout=bad)
    for bad in ("5", True, [1]):
        with pytest.raises(TypeError, match="timeout"):
            await odb.result(iid, timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not neither"):
        await odb.result()
    with pytest.raises(TypeError, match="not both"):
        await odb.result(iid, key="k")
    with pytest.raises(TypeError, match="instance_id must be an int"):
        await odb.result("7")  # type: ignore[arg-type]
    with pytest.raises(durable.InvalidArgument, match="instance_id"):
        await odb.result(2**70)


# -- woken by the commit ----------------------------------------------------------------------------------
async def _wait_then_end(waiter: durable.Database, iid: int, end: object) -> object:
    """Start ``waiter.result(iid)``, wait until it has read the live row and sleeps, run ``end()``, and
    return the result: within a bound far below the waiter's own re-read interval (LONG)."""
    got: list[object] = []
    error: list[BaseException] = []

    async def wait() -> None:
        try:
            got.append(await waiter.result(iid))
        except durable.DurableError as exc:
            error.append(exc)

    with trio.fail_after(15):
        async with trio.open_nursery() as n:
            n.start_soon(wait)
            await wait_for(lambda: _async(waiter.watchers.waiting(iid) == 1), timeout=10)
            await end()  # type: ignore[operator]
    if error:
        raise error[0]
    return got[0]


async def _async(value: bool) -> bool:
    return value


async def test_woken_by_a_runtime_in_this_process(odb: durable.Database) -> None:
    iid = await parked(odb)
    async with trio.open_nursery() as n:
        rt = durable.Runtime(odb, queues=["orders"], poll_min=LONG, poll_max=LONG)
        await n.start(rt.run)

        async def end() -> None:
            await odb.signal(iid, "go", {"amount": 7})  # wakes the local runtime, which commits Done

        assert await _wait_then_end(odb, iid, end) == {"paid": 7}
        rt.stop()


async def test_woken_by_a_runtime_of_another_database(odb: durable.Database, second: durable.Database) -> None:
    """The runtime commits through another Database (as another process would): only its NOTIFY reaches
    the waiter."""
    iid = await parked(odb)
    async with trio.open_nursery() as n:
        rt = durable.Runtime(second, queues=["orders"], poll_min=LONG, poll_max=LONG)
        await n.start(rt.run)

        async def end() -> None:
            await second.signal(iid, "go", {"amount": 8})

        assert await _wait_then_end(odb, iid, end) == {"paid": 8}
        rt.stop()


async def test_woken_by_a_cancel_from_another_database(odb: durable.Database, second: durable.Database) -> None:
    iid = await parked(odb)

    async def end() -> None:
        assert await second.cancel(iid, "called off") == "cancelled"

    with pytest.raises(durable.InstanceCancelled, match="called off"):
        await _wait_then_end(odb, iid, end)


async def test_woken_by_a_local_cancel(odb: durable.Database) -> None:
    iid = await parked(odb)

    async def end() -> None:
        await odb.cancel(iid, "local")

    with pytest.raises(durable.InstanceCancelled, match="local"):
        await _wait_then_end(odb, iid, end)


async def test_woken_by_a_worker_process(odb: durable.Database, pg_dsn: str, tmp_path: Path) -> None:
    """A real `durable worker` subprocess commits the outcome; many waiters share one LISTEN connection."""
    (tmp_path / "orders_mod.py").write_text(
        textwrap.dedent("""
        from durable import Await, Done, Machine, step

        class Order(Machine, queue="orders"):
            @step
            async def wait(self, ctx):
                sig = ctx.signal("go")
                if sig is None:
                    return Await("go", ctx.state)
                return Done({"paid": sig.payload.get("amount")})
    """)
    )
    ids = [await parked(odb) for _ in range(3)]
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "DURABLE_DSN": "", "DURABLE_SCHEMA": ""}
    worker = await trio.lowlevel.open_process(
        [DURABLE, "worker", "orders_mod", "--dsn", pg_dsn, "--schema", odb.schema],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for(lambda: _workers(odb), timeout=30)
        results: dict[int, object] = {}

        async def wait(iid: int) -> None:
            results[iid] = await odb.result(iid)

        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                for iid in ids:
                    n.start_soon(wait, iid)
                await wait_for(lambda: _async(all(odb.watchers.waiting(i) for i in ids)), timeout=10)
                assert odb.watchers.listening  # one connection listens for all three
                for k, iid in enumerate(ids):
                    await odb.signal(iid, "go", {"amount": k})
        assert results == {iid: {"paid": k} for k, iid in enumerate(ids)}
    finally:
        worker.terminate()
        with trio.fail_after(30):
            await worker.wait()


async def _workers(db: durable.Database) -> bool:
    """A runtime has registered in the schema."""
    return bool(await db.pool.fetch(durable.sql.Q.workers_on_host, socket.gethostname()))


# -- business keys ---------------------------------------------------------------------------------------
async def test_on_conflict_modes(odb: durable.Database) -> None:
    db = odb
    first = await db.insert(Order, {}, unique_key="order:42")
    assert first is not None
    assert await db.insert(Order, {}, unique_key="order:42") is None  # the default: "none"
    assert await db.insert(Order, {}, unique_key="order:42", on_conflict="none") is None
    assert await db.insert(Order, {}, unique_key="order:42", on_conflict="existing") == first
    with pytest.raises(durable.UniqueKeyTaken) as taken:
        await db.insert(Order, {}, unique_key="order:42", on_conflict="raise")
    assert taken.value.key == "order:42" and taken.value.holder_id == first
    assert isinstance(taken.value, durable.DurableError)
    assert len((await db.query(unique_key="order:42")).items) == 1  # nothing else was inserted
    # once the holder has ended (out of its scope) the key is free again: a new instance
    await db.cancel(first)
    again = await db.insert(Order, {}, unique_key="order:42", on_conflict="existing")
    assert again is not None and again != first
    # bad values
    with pytest.raises(ValueError, match="on_conflict"):
        await db.insert(Order, {}, unique_key="order:43", on_conflict="replace")
    with pytest.raises(ValueError, match="without a unique_key"):
        await db.insert(Order, {}, on_conflict="existing")
    with pytest.raises(ValueError, match="NUL"):
        await db.insert(Order, {}, unique_key="order:\x00", on_conflict="existing")


async def test_two_inserts_racing_for_one_key(odb: durable.Database, second: durable.Database) -> None:
    """Many concurrent inserts of one key on two Databases: exactly one instance; 'existing' answers every
    caller with its id, 'raise' raises for all but the winner."""
    for round_ in range(5):
        key = f"race:{round_}"
        got: list[int | None] = []
        raised: list[durable.UniqueKeyTaken] = []

        async with trio.open_nursery() as n:
            for i in range(8):
                n.start_soon(_insert, odb if i % 2 else second, key, "existing" if i < 6 else "raise", got, raised)
        rows = (await odb.query(unique_key=key)).items
        assert len(rows) == 1
        holder = rows[0].id
        assert all(i == holder for i in got)
        assert all(e.holder_id == holder for e in raised)
        assert len(got) + len(raised) == 8 and len(got) >= 6


async def _insert(
    db: durable.Database, key: str, mode: str, got: list[int | None], raised: list[durable.UniqueKeyTaken]
) -> None:
    try:
        got.append(await db.insert(Order, {}, unique_key=key, on_conflict=mode))
    except durable.UniqueKeyTaken as exc:
        raised.append(exc)


async def test_get_signal_and_result_by_key(odb: durable.Database) -> None:
    db = odb
    iid = await parked(db, unique_key="order:7")
    assert (await db.get(key="order:7")).id == iid
    await db.signal(key="order:7", name="go", payload={"amount": 3})
    await run_step(db, (await pick(db, "orders"))[0])
    with trio.fail_after(10):
        assert await db.result(key="order:7") == {"paid": 3}
    # ended, nobody holds the key: the key still addresses the most recent instance that had it
    assert (await db.get(key="order:7")).id == iid
    # a new holder takes precedence over older, ended instances with the key
    newer = await parked(db, unique_key="order:7")
    assert newer != iid and (await db.get(key="order:7")).id == newer
    await db.cancel(newer)
    # neither holds it now: the most recent one
    assert (await db.get(key="order:7")).id == newer
    # an old instance still holding the key wins over a newer one that does not
    holder = await parked(db, unique_key="order:8")
    later = await db.insert(Order, {}, unique_key="order:8", unique_scope=["done"])
    assert later is not None and later > holder
    assert (await db.get(key="order:8")).id == holder
    # missing and bad keys
    with pytest.raises(durable.NoSuchInstance, match="order:9"):
        await db.get(key="order:9")
    with pytest.raises(durable.NoSuchInstance, match="order:9"):
        await db.signal(key="order:9", name="go")
    with pytest.raises(durable.NoSuchInstance, match="order:9"):
        await db.result(key="order:9")
    with pytest.raises(durable.InvalidArgument, match="NUL"):
        await db.get(key="a\x00b")
    with pytest.raises(durable.InvalidArgument, match="empty"):
        await db.get(key="")
    with pytest.raises(TypeError, match="must be a str"):
        await db.get(key=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not both"):
        await db.get(iid, key="order:7")
    with pytest.raises(TypeError, match="not neither"):
        await db.get()
    with pytest.raises(TypeError, match="not both"):
        await db.signal(iid, "go", key="order:7")
    with pytest.raises(TypeError, match="not neither"):
        await db.signal(name="go")
    with pytest.raises(durable.DefinitionError, match="signal name"):
        await db.signal(key="order:7")


# -- the CLI ---------------------------------------------------------------------------------------------
def cli(dsn: str, schema: str, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "DURABLE_DSN": "", "DURABLE_SCHEMA": ""}
    proc = subprocess.run(
        [DURABLE, args[0], "--dsn", dsn, "--schema", schema, *args[1:]],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


async def run_cli(dsn: str, schema: str, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(lambda: cli(dsn, schema, *args, code=code))


async def test_cli_result_show_and_signal_by_key(odb: durable.Database, pg_dsn: str) -> None:
    db, s = odb, odb.schema
    done = await parked(db, unique_key="order:1")
    failed = await parked(db, unique_key="order:2")
    live = await parked(db, unique_key="order:3")
    await finish(db, failed, how="fail")
    # signal and show by key
    out = (await run_cli(pg_dsn, s, "signal", "key:order:1", "go", "--payload", '{"amount": 5}')).stdout
    assert f"delivered to {done}" in out
    await run_step(db, (await pick(db, "orders"))[0])
    shown = json.loads((await run_cli(pg_dsn, s, "show", "key:order:1", "--json")).stdout)
    assert shown["id"] == done and shown["status"] == "done"
    assert f"instance  {done}" in (await run_cli(pg_dsn, s, "show", "key:order:1", "--no-history")).stdout
    # result: done, failed, not ended
    assert json.loads((await run_cli(pg_dsn, s, "result", str(done))).stdout) == {"paid": 5}
    assert json.loads((await run_cli(pg_dsn, s, "result", "key:order:1")).stdout) == {"paid": 5}
    assert json.loads((await run_cli(pg_dsn, s, "result", str(done), "--json")).stdout) == {
        "id": done,
        "status": "done",
        "result": {"paid": 5},
        "error": None,
        "ended": True,
    }
    err = (await run_cli(pg_dsn, s, "result", str(failed), code=1)).stderr
    assert err == f"error: instance {failed} failed: payment declined\n"
    assert json.loads((await run_cli(pg_dsn, s, "result", str(failed), "--json", code=1)).stdout)["status"] == "failed"
    err = (await run_cli(pg_dsn, s, "result", str(live), "--wait", "0.3", code=1)).stderr
    assert err == f"error: instance {live} is still awaiting_signal after 0.3s\n"
    assert "give --wait" in (await run_cli(pg_dsn, s, "result", str(live), code=1)).stderr
    # --wait: woken when another connection ends it
    async with trio.open_nursery() as n:
        proc: list[subprocess.CompletedProcess[str]] = []

        async def waiting() -> None:
            proc.append(await run_cli(pg_dsn, s, "result", "key:order:3", "--wait", "60"))

        n.start_soon(waiting)
        await wait_for(lambda: listening(db, db.watchers.channel), timeout=20)
        await finish(db, live, amount=9)
    assert json.loads(proc[0].stdout) == {"paid": 9}
    # bad input: one error line, exit 2
    for args in (
        ["result", "nope"],
        ["result", "key:"],
        ["result", str(done), "--wait", "-1"],
        ["result", str(done), "--wait", "nan"],
        ["result", "999999999"],
        ["result", "key:order:404"],
        ["show", "key:order:404"],
        ["signal", "key:order:404", "go"],
        ["show", "x1"],
    ):
        err = (await run_cli(pg_dsn, s, *args, code=2)).stderr
        assert err.startswith("error: ") and err.count("\n") == 1, (args, err)


async def test_cli_result_of_an_unreachable_database_exits_3() -> None:
    env = {**os.environ, "DURABLE_DSN": "", "DURABLE_SCHEMA": ""}
    proc = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [DURABLE, "result", "1", "--dsn", "postgresql://nobody@127.0.0.1:1/none"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    )
    assert proc.returncode == 3 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc


async def test_a_star_hint_wakes_every_waiter(odb: durable.Database, second: durable.Database) -> None:
    """More ended ids than a few NOTIFY payloads hold are announced as '*': every waiter re-reads."""
    a, b = await parked(odb), await parked(odb)
    results: dict[int, object] = {}

    async def wait(iid: int) -> None:
        results[iid] = await odb.result(iid)

    with trio.fail_after(15):
        async with trio.open_nursery() as n:
            n.start_soon(wait, a)
            n.start_soon(wait, b)
            await wait_for(lambda: _async(bool(odb.watchers.waiting(a) and odb.watchers.waiting(b))), timeout=10)
            await finish(second, a, amount=1)  # committed by hand: no wake-up, no hint
            await finish(second, b, amount=2)
            await second.pool.fetchval(durable.sql.Q.announce_ended, odb.watchers.channel, [f"{second.token}|*"])
    assert results == {a: {"paid": 1}, b: {"paid": 2}}


async def test_announce_payloads_are_chunked_then_collapse_to_a_star() -> None:
    from durable.results import MAX_PAYLOADS, PAYLOAD_BYTES, payloads

    ids = list(range(10**9, 10**9 + 3000))
    chunks = payloads("tok", ids)
    assert 1 < len(chunks) <= MAX_PAYLOADS and all(len(c.encode()) <= PAYLOAD_BYTES for c in chunks)
    assert sorted(int(i) for c in chunks for i in c.split("|")[1].split(",")) == ids
    assert payloads("tok", []) == []
    assert payloads("tok", range(10**9, 10**9 + 100_000)) == ["tok|*"]


async def test_many_waiters_share_one_listener_and_a_bulk_cancel_wakes_them_all(
    odb: durable.Database, second: durable.Database
) -> None:
    """200 waiters on one Database (a pool of 20): one LISTEN connection; a cancel_many through another
    Database ends them all, and its hint wakes every one (the re-read is an hour away)."""
    ids = [i for i in await odb.insert_many([durable.Insert(Order, {}) for _ in range(200)]) if i is not None]
    errors: list[BaseException] = []

    async def wait(iid: int) -> None:
        try:
            await odb.result(iid)
        except durable.InstanceCancelled as exc:
            errors.append(exc)

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            for iid in ids:
                n.start_soon(wait, iid)
            await wait_for(lambda: _async(all(odb.watchers.waiting(i) for i in ids)), timeout=40)
            assert odb.watchers._users == 200 and odb.watchers.listening
            bulk = await second.cancel_many("closing down", machine="Order")
            assert bulk.changed == 200
    assert len(errors) == 200 and {e.instance_id for e in errors} == set(ids)  # type: ignore[attr-defined]
    assert odb.watchers._users == 0 and not odb.watchers.listening


async def test_waiters_take_turns_reading_the_hints_and_outlive_a_lost_listen(
    odb: durable.Database, second: durable.Database
) -> None:
    """No task of its own reads the LISTEN's hints: a waiter does while it waits. The reader's instance ends
    first and the reading passes to another waiter; then the listening connection is killed: the waiters
    re-read once, the LISTEN is opened again, and hints still wake them (the re-read is an hour away)."""
    ids = [await parked(odb) for _ in range(3)]
    ended: list[int] = []
    w = odb.watchers
    listeners = durable.sql.Query("test_listeners", "select pid from pg_stat_activity where query = $1", "")
    terminate = durable.sql.Query("test_terminate", "select pg_terminate_backend($1)", "")
    listen_query = f'LISTEN "{w.channel}"'

    async def wait(iid: int) -> None:
        with pytest.raises(durable.InstanceCancelled):
            await odb.result(iid)
        ended.append(iid)

    async def all_wait(iids: list[int]) -> bool:
        return all(w.waiting(i) for i in iids)

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            for iid in ids:
                n.start_soon(wait, iid)
            await wait_for(lambda: all_wait(ids), timeout=10)
            reader = w._reader
            assert reader is not None and w.listening
            first = reader.instance_id
            await second.cancel(first, "the reader's own")
            await wait_for(lambda: _async(ended == [first]), timeout=10)
            rest = [i for i in ids if i != first]
            await wait_for(lambda: _async(w._reader is not None and w._reader.instance_id in rest), timeout=10)
            [old] = [r["pid"] for r in await odb.pool.fetch(listeners, listen_query)]
            assert await odb.pool.fetchval(terminate, old)

            async def listening_again() -> bool:
                pids = [r["pid"] for r in await odb.pool.fetch(listeners, listen_query)]
                return w.listening and bool(pids) and old not in pids and await all_wait(rest)

            await wait_for(listening_again, timeout=20)
            for iid in rest:
                await second.cancel(iid, "after the lost listen")
                await wait_for(lambda iid=iid: _async(iid in ended), timeout=10)
    assert sorted(ended) == sorted(ids) and not w.listening and w._reader is None
