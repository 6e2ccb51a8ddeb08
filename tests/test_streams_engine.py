"""Engine integration: steps append through ctx with (instance id, lease token) as (producer, epoch).

A zombie's appends are refused, a re-executed step's appends are de-duplicated, and a stream written
by a durable step is read by the official Python client (``durable-streams`` on PyPI) and the official
TypeScript client (npm ``@durable-streams/client``), which disconnect and resume from their last offset
without loss or duplicates. The same run exercises the
HTTP signal endpoint and the history stream (catch-up and long-poll).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import trio
from durable_streams import stream as official_stream

import durable
from durable import Await, Context, Done, Machine, Next, Retry, step, streams
from durable.sql import Q
from durable.streams import Fenced, Store

from .helpers import pick, wait_status
from .test_streams_util import ServeProcess, ts_read

pytestmark = pytest.mark.trio

FIRST = [f"tok{i}" for i in range(5)]
SECOND = [f"tok{i}" for i in range(5, 10)]
JSON = "application/json"


class Talker(Machine, queue="talk"):
    """Streams a reply in two parts around a signal; the first part crashes once mid-way."""

    @step
    async def speak(self, ctx):
        out = streams.Stream(ctx, f"/talk/{ctx.id}", start=0, content_type=JSON)
        for i, token in enumerate(FIRST):
            await out.append(token)
            if ctx.attempt == 0 and i == 2:
                raise RuntimeError("crash after three tokens")
        return Next("wait_more", {})

    @step
    async def wait_more(self, ctx):
        return Next("finish", {}) if ctx.signal("more") else Await("more", {})

    @step
    async def finish(self, ctx):
        for i, token in enumerate(SECOND):
            await streams.append(
                ctx, f"/talk/{ctx.id}", token, seq=len(FIRST) + i, content_type=JSON, close=i == len(SECOND) - 1
            )
        return Done({"tokens": len(FIRST) + len(SECOND)})

    async def handle(self, error, ctx):
        return Retry(delay=0, error=str(error))


def ctx_for(db: durable.Database, iid: int, token: int) -> Context:
    return Context(id=iid, machine="Talker", version=1, step="speak", attempt=0, state={}, lease_token=token, db=db)


async def test_zombie_is_fenced_and_reexecution_is_deduplicated(db: durable.Database) -> None:
    iid = await db.insert(Talker, {})
    assert iid is not None
    path = f"/talk/{iid}"
    [a] = await pick(db, "talk", lease=60)
    zombie = ctx_for(db, iid, a.lease_token)
    assert (await streams.append(zombie, path, "t0", seq=0, content_type=JSON)).status == "accepted"
    assert (await streams.append(zombie, path, "t1", seq=1, content_type=JSON)).status == "accepted"

    # the lease runs out: the reaper takes the claim back, the old worker is now a zombie
    reaped = await db.pool.fetch(Q.reap, datetime.now(UTC) + timedelta(hours=1), 10)
    assert [r["id"] for r in reaped] == [iid]
    with pytest.raises(Fenced):
        await streams.append(zombie, path, "late", seq=2, content_type=JSON)

    [b] = await pick(db, "talk", lease=60)
    assert b.lease_token > a.lease_token
    again = ctx_for(db, iid, b.lease_token)
    # the re-executed step repeats seq 0 and 1: duplicates; seq 2 is new
    assert (await streams.append(again, path, "t0", seq=0, content_type=JSON)).status == "duplicate"
    assert (await streams.append(again, path, "t1", seq=1, content_type=JSON)).status == "duplicate"
    assert (await streams.append(again, path, "t2", seq=2, content_type=JSON)).status == "accepted"
    with pytest.raises(Fenced):
        await streams.append(zombie, path, "late", seq=3, content_type=JSON)

    page = await Store(db.pool).read(path, 0)
    assert json.loads(page.body()) == ["t0", "t1", "t2"]


async def test_official_client_resumes_a_step_written_stream(db: durable.Database, pg_dsn: str) -> None:
    server = ServeProcess(pg_dsn, db.schema, "--long-poll-timeout", "5")
    await trio.to_thread.run_sync(server.start)
    try:
        async with trio.open_nursery() as nursery, httpx.AsyncClient(base_url=server.url) as http:
            await nursery.start(durable.Runtime(db, machines=[Talker], queues={"talk": 2}, lease=30).run)
            iid = await db.insert(Talker, {})
            assert iid is not None
            await wait_status(db, iid, "awaiting_signal")
            url = f"{server.url}/talk/{iid}"

            # official client, catch-up: the first part, written once although the step ran twice
            def read_part(offset: str | None) -> tuple[list[str], str]:
                with official_stream(url, offset=offset, live=False) as res:
                    items = [item for batch in res.iter_json_batches() for item in batch]
                    return items, res.offset

            first, resume_at = await trio.to_thread.run_sync(read_part, None)
            assert first == FIRST
            ts_first = await trio.to_thread.run_sync(ts_read, url, None)  # the TypeScript client too
            assert ts_first["items"] == FIRST and ts_first["closed"] is False

            # history tail: a long-poll from the current tail wakes on the signal's events
            hist = await http.get(f"/instances/{iid}/history")
            assert hist.status_code == 200
            events = [e["event"] for e in hist.json()]
            assert events[0] == "inserted" and "retry" in events and events[-1] == "await"
            tail = hist.headers["stream-next-offset"]

            async def long_poll() -> None:
                r = await http.get(f"/instances/{iid}/history", params={"offset": tail, "live": "long-poll"})
                assert r.status_code == 200
                assert "signal" in [e["event"] for e in r.json()]
                long_polled.set()

            long_polled = trio.Event()
            nursery.start_soon(long_poll)
            await trio.sleep(0.3)

            # signals over HTTP: a repeated idempotency key is stored once (a signal no step consumes,
            # so the first one is still in the inbox), then the one the instance waits for
            for expected in (201, 200):
                note = await http.post(
                    f"/instances/{iid}/signals/note", json={"n": 1}, headers={"Idempotency-Key": "note-1"}
                )
                assert note.status_code == expected and note.json()["duplicate"] is (expected == 200)
            sent = await http.post(
                f"/instances/{iid}/signals/more", json={"n": 1}, headers={"Idempotency-Key": "more-1"}
            )
            assert sent.status_code == 201 and sent.json()["duplicate"] is False
            with trio.fail_after(10):
                await long_polled.wait()
            await wait_status(db, iid, "done")

            # resume from the saved offset: exactly the second part, then the stream is closed
            rest, _ = await trio.to_thread.run_sync(read_part, resume_at)
            assert rest == SECOND
            ts_rest = await trio.to_thread.run_sync(ts_read, url, str(ts_first["offset"]))
            assert ts_rest["items"] == SECOND and ts_rest["closed"] is True
            head = await http.head(f"/talk/{iid}")
            assert head.headers["stream-closed"] == "true"
            missing = await http.post("/instances/999999/signals/more", json={})
            assert missing.status_code == 404
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(server.stop)
