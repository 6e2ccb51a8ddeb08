"""Named values (issue 18, item 3): bytes a step stores under a name (``ctx.values.put``), read only when asked
for (``ctx.values.get``, ``db.values.mget``), deleted with their instance (gc included), fenced by the step's
lease, shown (name, size, sha256) by durable show; hostile names, sizes and races are refused with errors that
name the problem and change nothing."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import durable
from durable import Done, Machine, Next, step
from durable.errors import Fenced, ValueExists
from durable.sql import Q, Query
from durable.values import MAX_MGET, StepValues, ValueRef

ROOT = Path(__file__).resolve().parent.parent
DURABLE = str(Path(sys.executable).parent / "durable")
MIB = 1024 * 1024


class Idle(Machine, name="values.idle", queue="values-idle"):
    @step
    async def start(self, ctx: durable.Context) -> Done:
        return Done(None)


async def claimed(db: durable.Database, queue: str = "values-idle") -> tuple[int, int]:
    """Insert an instance and claim it with the pick (as a runtime would): (id, lease token)."""
    iid = await db.insert(Idle, queue=queue)
    rows = await db.pool.fetch(Q.pick, queue, 1, "w-values", 60.0, None, None, None)
    assert rows and rows[0]["id"] == iid
    return iid, rows[0]["lease_token"]


async def stored(db: durable.Database) -> int:
    return int(await db.pool.fetchval(Query("test_count_values", "select count(*) from instance_values", "")))


@pytest.mark.trio
async def test_put_get_list_mget_and_override(db: durable.Database) -> None:
    iid, token = await claimed(db)
    values = StepValues(db, iid, token)
    pdf = b"%PDF-1.7\x00\xff" * 1000
    ref = await values.put("invoice.pdf", pdf)
    assert ref == ValueRef(iid, "invoice.pdf", len(pdf), hashlib.sha256(pdf).hexdigest())
    assert await values.get("invoice.pdf") == pdf and await values.get("missing") is None
    assert await db.values.get(iid, "invoice.pdf") == pdf
    # the same bytes again: an idempotent re-put (a retried step), the same ref
    assert await values.put("invoice.pdf", bytearray(pdf)) == ref
    # other bytes without override: refused, the stored value kept
    with pytest.raises(ValueExists, match=r"already holds a value named 'invoice.pdf'") as caught:
        await values.put("invoice.pdf", b"other")
    assert (caught.value.instance_id, caught.value.name, caught.value.sha256) == (iid, "invoice.pdf", ref.sha256)
    assert await values.get("invoice.pdf") == pdf
    empty = await values.put("empty", b"")
    assert (empty.size, empty.sha256) == (0, hashlib.sha256(b"").hexdigest())
    listed = await values.list()
    assert [(v.name, v.size, v.sha256, v.lease_token) for v in listed] == [
        ("empty", 0, empty.sha256, token),
        ("invoice.pdf", len(pdf), ref.sha256, token),
    ]
    assert listed[1].ref == ref
    # override replaces; the old ref no longer reads (its content is gone), the new one does
    new = await values.put("invoice.pdf", b"v2", override=True)
    assert await db.values.mget([ref, new, empty, ref]) == [None, b"v2", b"", None]
    assert await db.values.mget([]) == []


@pytest.mark.trio
async def test_hostile_values_are_refused_and_change_nothing(db: durable.Database, monkeypatch: Any) -> None:
    iid, token = await claimed(db)
    values = StepValues(db, iid, token)
    for name, error, message in (
        ("a\x00b", durable.InvalidArgument, r"value name contains a NUL character"),
        ("", durable.InvalidArgument, r"value name must not be empty"),
        ("n" * 2000, durable.InvalidArgument, r"value name is 2000 bytes long; the limit is 1024"),
        (42, TypeError, r"value name must be a str, not int 42"),
    ):
        with pytest.raises(error, match=message):
            await values.put(name, b"x")
    with pytest.raises(TypeError, match=r"value 'text' must be bytes, not str"):
        await values.put("text", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"override must be a bool"):
        await values.put("x", b"x", override="yes")  # type: ignore[arg-type]
    db.max_value_bytes = 1024
    with pytest.raises(durable.ValueTooLarge, match=r"value 'big' is 1025 bytes; the limit is 1024 bytes"):
        await values.put("big", b"x" * 1025)
    assert await stored(db) == 0
    # the count limit: a new name past it is refused, replacing a held name is not
    monkeypatch.setattr("durable.values.MAX_VALUES", 2)
    await values.put("a", b"1")
    await values.put("b", b"2")
    with pytest.raises(durable.InvalidArgument, match=r"holds 2 named values; the limit is .*MAX_VALUES \(2\)"):
        await values.put("c", b"3")
    await values.put("b", b"22", override=True)
    assert await stored(db) == 2
    with pytest.raises(durable.InvalidArgument, match=rf"mget of {MAX_MGET + 1} refs; the limit is {MAX_MGET}"):
        await db.values.mget([ValueRef(iid, "a", 1, "00")] * (MAX_MGET + 1))
    with pytest.raises(TypeError, match=r"mget: item #0 is tuple"):
        await db.values.mget([(iid, "a")])  # type: ignore[list-item]


@pytest.mark.trio
async def test_a_put_after_the_lease_is_lost_is_fenced(db: durable.Database) -> None:
    """The reaper takes the expired claim back: the zombie's put raises Fenced and writes nothing, before and
    after another claim takes the row; the live claim's put works."""
    iid, zombie = await claimed(db)
    await StepValues(db, iid, zombie).put("draft", b"from the first claim")
    far = await db.pool.fetchval(Query("test_far", "select now() + interval '1 hour'", ""))
    reaped = await db.pool.fetch(Q.reap, far, 100)
    assert [r["id"] for r in reaped] == [iid]
    with pytest.raises(Fenced, match=r"values.put\('draft'\) with lease token .* is fenced") as caught:
        await StepValues(db, iid, zombie).put("draft", b"zombie", override=True)
    assert (caught.value.instance_id, caught.value.lease_token) == (iid, zombie)
    rows = await db.pool.fetch(Q.pick, "values-idle", 1, "w-other", 60.0, None, None, None)
    live = rows[0]["lease_token"]
    with pytest.raises(Fenced):
        await StepValues(db, iid, zombie).put("late", b"zombie")
    assert await db.values.get(iid, "draft") == b"from the first claim"
    assert await db.values.get(iid, "late") is None
    await StepValues(db, iid, live).put("draft", b"live", override=True)
    assert [(v.name, v.lease_token) for v in await db.values.list(iid)] == [("draft", live)]
    # an instance that is not executing (ended, or never claimed) takes no put
    other = await db.insert(Idle)
    with pytest.raises(Fenced):
        await StepValues(db, other, live).put("x", b"x")


@pytest.mark.trio
async def test_a_put_holds_the_reaper_off_until_it_commits(db: durable.Database) -> None:
    """The fence is a row lock, not a read: while a put's transaction is open, the reaper (SKIP LOCKED) leaves
    the claim alone, so the put is made under a live lease; once it commits the reaper takes the claim, and a
    put after that finds it gone."""
    iid, token = await claimed(db)
    far = await db.pool.fetchval(Query("test_far", "select now() + interval '1 hour'", ""))
    async with db.pool.transaction() as conn:
        row = await conn.fetchrow(Q.value_put, iid, token, "pending", b"data", False, None, 10)
        assert row is not None and row["owned"]
        assert await db.pool.fetch(Q.reap, far, 100) == []  # skipped: the put holds the row
    assert [r["id"] for r in await db.pool.fetch(Q.reap, far, 100)] == [iid]
    assert await db.values.get(iid, "pending") == b"data"
    with pytest.raises(Fenced):
        await StepValues(db, iid, token).put("after", b"x")


@pytest.mark.trio
async def test_two_puts_of_one_name_race_and_one_wins(db: durable.Database) -> None:
    """Two tasks of one step put different bytes under one name at once (override=False): exactly one is
    stored, the other raises ValueExists; with override=True both succeed and one of them is kept whole."""
    iid, token = await claimed(db)
    values = StepValues(db, iid, token)
    for round_ in range(5):
        name = f"race{round_}"
        outcomes: dict[bytes, Any] = {}

        async def put(data: bytes, name: str = name, outcomes: dict[bytes, Any] = outcomes) -> None:
            try:
                outcomes[data] = await values.put(name, data)
            except ValueExists as exc:
                outcomes[data] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(put, b"A" * 1000)
            nursery.start_soon(put, b"B" * 1000)
        won = [d for d, o in outcomes.items() if isinstance(o, ValueRef)]
        lost = [d for d, o in outcomes.items() if isinstance(o, ValueExists)]
        assert len(won) == 1 and len(lost) == 1, outcomes
        assert await values.get(name) == won[0]

        async def override(data: bytes, name: str = name) -> None:
            await values.put(name, data, override=True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(override, b"C" * 1000)
            nursery.start_soon(override, b"D" * 1000)
        assert await values.get(name) in (b"C" * 1000, b"D" * 1000)


class Artifact(Machine, name="values.artifact", queue="values-run", initial="make"):
    """make stores a 1 MiB value; carry runs twice without reading it; read reads it once."""

    @step
    async def make(self, ctx: durable.Context) -> Next:
        await ctx.values.put("blob", bytes(range(256)) * 4096)
        return Next("carry", {"n": 0})

    @step
    async def carry(self, ctx: durable.Context) -> Next:
        n = ctx.state["n"] + 1
        return Next("carry" if n < 2 else "read", {"n": n})

    @step
    async def read(self, ctx: durable.Context) -> Done:
        blob = await ctx.values.get("blob")
        assert blob is not None
        return Done({"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()})


@pytest.mark.trio
async def test_values_are_hydrated_only_on_request(db: durable.Database) -> None:
    """Lazy hydration, measured by statement counts: the steps that do not ask read no value (no value_get or
    value_mget statement; the pick's text never names instance_values), the one step that asks costs one
    value_get, and the value round-trips intact."""
    for q in (Q.pick, Q.complete, Q.complete_simple, Q.heartbeat, Q.insert_instances, Q.insert_instance):
        assert "instance_values" not in re.sub(r"--[^\n]*", "", q.text), q.name
    n = 4
    ids = [await db.insert(Artifact) for _ in range(n)]
    db.pool.statement_counts.clear()
    async with trio.open_nursery() as nursery:
        await nursery.start(durable.Runtime(db, machines=[Artifact], queues={"values-run": 4}).run)
        with trio.fail_after(60):
            for iid in ids:
                while (await db.get(iid)).status not in ("done", "failed"):
                    await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    counts = dict(db.pool.statement_counts)
    blob = bytes(range(256)) * 4096
    for iid in ids:
        inst = await db.get(iid)
        assert inst.status == "done" and inst.result == {"size": MIB, "sha256": hashlib.sha256(blob).hexdigest()}
    steps = n * 4  # make, carry, carry, read
    assert counts["value_put"] == n and counts["value_get"] == n, counts
    assert counts.get("value_mget", 0) == 0 and counts.get("value_list", 0) == 0, counts
    assert counts["pick"] <= 2 * steps, counts  # the claims ran as usual (the values were never read by them)


@pytest.mark.trio
async def test_values_are_deleted_with_their_instance_by_gc(db: durable.Database) -> None:
    kept, token_kept = await claimed(db)
    gone, token_gone = await claimed(db)
    await StepValues(db, kept, token_kept).put("a", b"kept")
    await StepValues(db, gone, token_gone).put("a", b"gone")
    await StepValues(db, gone, token_gone).put("b", b"gone too")
    end = Query(
        "test_end", "update instances set status = 'done', updated_at = now() - interval '2 days' where id = $1", ""
    )
    await db.pool.execute(end, gone)
    assert await db.gc(older_than=86400) == 1
    assert await db.values.list(gone) == [] and await db.values.get(gone, "a") is None
    assert await db.values.get(kept, "a") == b"kept" and await stored(db) == 1


@pytest.mark.trio
async def test_durable_show_lists_values_without_their_bytes(
    db: durable.Database, pg_dsn: str, schema_name: str
) -> None:
    iid, token = await claimed(db)
    data = b"\x00secret bytes\xff" * 10
    await StepValues(db, iid, token).put("report.bin", data)
    env = {"COLUMNS": "200", "PATH": str(Path(sys.executable).parent)}
    run = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [DURABLE, "show", str(iid), "--dsn", pg_dsn, "--schema", schema_name, "--no-history"],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
        )
    )
    assert run.returncode == 0, run.stderr
    digest = hashlib.sha256(data).hexdigest()
    assert "values" in run.stdout and "report.bin" in run.stdout and digest in run.stdout
    assert f"{len(data):,}" in run.stdout and "secret" not in run.stdout
    out = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [DURABLE, "show", str(iid), "--dsn", pg_dsn, "--schema", schema_name, "--json"],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
        )
    )
    shown = json.loads(out.stdout)["values"]
    assert [(v["name"], v["size"], v["sha256"], v["lease_token"]) for v in shown] == [
        ("report.bin", len(data), digest, token)
    ]


class Zombie(Machine, name="values.zombie", queue="values-zombie"):
    """Attempt 0 outlives its lease (shielded from the runtime's cancel) and then tries to put: fenced."""

    seen: list[str] = []

    @step
    async def work(self, ctx: durable.Context) -> Done:
        if ctx.attempt == 0:
            with trio.CancelScope(shield=True):
                await trio.sleep(4.5)  # the 2 s lease passes: the claim is taken back and run again
                try:
                    await ctx.values.put("result", b"zombie", override=True)
                    Zombie.seen.append("stored")
                except Fenced:
                    Zombie.seen.append("fenced")
        else:
            await ctx.values.put("result", b"live", override=True)
        return Done(ctx.attempt)


@pytest.mark.trio
async def test_a_step_that_lost_its_lease_cannot_put(db: durable.Database) -> None:
    Zombie.seen.clear()
    iid = await db.insert(Zombie)
    async with trio.open_nursery() as nursery:
        # a lease never extended: attempt 1, from its pick to its commit, must fit in it (0.8 s left a loaded
        # box too little: a lost lease and an attempt 2)
        await nursery.start(
            durable.Runtime(
                db, machines=[Zombie], queues={"values-zombie": 2}, lease=2.0, heartbeat=60, reap_every=0.1
            ).run
        )
        with trio.fail_after(30):
            while not Zombie.seen or (await db.get(iid)).status != "done":
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert Zombie.seen == ["fenced"]
    assert (await db.get(iid)).result == 1
    assert await db.values.get(iid, "result") == b"live"
    events = [e.event for e in await db.history(iid)]
    assert "lease_lost" in events or "reaped" in events, events


def test_the_console_shows_values_by_name_size_and_digest() -> None:
    from durable.console.screens.instance import VALUES_SHOWN, named_values

    assert named_values([]) == []
    rows = [{"name": f"v{i}", "size": 3 * MIB, "sha256": "ab" * 32} for i in range(VALUES_SHOWN + 2)]
    ((label, text),) = named_values(rows)
    lines = text.plain.splitlines()
    assert label == f"values ({VALUES_SHOWN + 2})" and lines[0] == "v0  3.0 MiB  sha256 abababababababab…"
    assert len(lines) == VALUES_SHOWN + 1 and lines[-1] == "… and 2 more"


@pytest.mark.trio
async def test_the_benchmark_row_runs(pg_dsn: str) -> None:
    """The bench's named-values probe (python -m durable.bench --only picker) on a small scale: both kinds
    of pick claim their rows and the contrast (pick plus reading the values) reads every byte. No time is
    asserted (the figures are for the record, see PERFORMANCE.md)."""
    from durable.bench import durable_bench as d

    out = await d.picker_values(pg_dsn, backlog=20, picks=4, demand=10, size=64 * 1024)
    assert (out["backlog"], out["picks"], out["demand"], out["value_bytes"]) == (20, 4, 10, 64 * 1024)
    assert out["values_mean_ms"] > 0 and out["none_mean_ms"] > 0 and out["hydrated_mean_ms"] > 0


@pytest.mark.trio
async def test_an_explicit_claim_puts_values_fenced_by_its_token(db: durable.Database) -> None:
    """durable.Claim.values is ctx.values for code that is not a Machine: a put while the claim is held works,
    a put after the claim ended (here: completed) is fenced."""
    iid = await db.insert(Idle, queue="values-explicit")
    (claim,) = await db.claim("values-explicit", limit=1, lease=60)
    ref = await claim.values.put("artifact", b"made by a script")
    assert await claim.values.get("artifact") == b"made by a script"
    await claim.complete({"ref": ref.sha256})
    with pytest.raises(Fenced):
        await claim.values.put("late", b"after the claim ended")
    assert await db.values.mget([ref]) == [b"made by a script"]
    assert [v.name for v in await db.values.list(iid)] == ["artifact"]
