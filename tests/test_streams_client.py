"""durable.contrib.streams_client against ``durable serve`` (a real process): the batching exactly-once writer,
epoch fencing, offset checkpointing, long-poll and SSE tailing, and resuming after the server dies."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import aclosing

import pytest
import trio

from durable.contrib.streams_client import Backoff, Fenced, StreamsClient

from .test_streams_durability import port_of, start
from .test_streams_util import ServeProcess, drop, new_schema, serving

pytestmark = pytest.mark.trio
JSON = "application/json"


@pytest.fixture(scope="module")
def server(pg_dsn: str) -> Iterator[ServeProcess]:
    with serving(pg_dsn, "--long-poll-timeout", "2") as s:
        yield s


async def test_checkpointed_reader_resumes_exactly_after_what_it_consumed(server: ServeProcess) -> None:
    async with StreamsClient(server.url) as c:
        await c.create("/cl/ckpt", content_type=JSON)
        async with c.writer("/cl/ckpt", producer_id="p", content_type=JSON) as w:
            for i in range(30):
                await w.append({"i": i})
        saved: list[str] = []
        async with aclosing(c.read("/cl/ckpt", live="long-poll", checkpoint=saved.append)) as chunks:
            async for chunk in chunks:
                first = chunk.json()
                break  # the consumer stops after one chunk: its offset is checkpointed on close
        assert first == [{"i": i} for i in range(30)]
        assert saved == [chunk.offset]
        async with c.writer("/cl/ckpt", producer_id="p", epoch=1, content_type=JSON) as w:
            for i in range(30, 45):
                await w.append({"i": i})
        rest = [m async for ch in c.read("/cl/ckpt", offset=saved[-1]) for m in ch.json()]
        assert rest == [{"i": i} for i in range(30, 45)]


async def test_sse_reader_tails_until_the_stream_closes(server: ServeProcess) -> None:
    async with StreamsClient(server.url) as c:
        await c.create("/cl/sse", content_type="text/plain")
        got: list[bytes] = []
        offsets: list[str] = []

        async def tail() -> None:
            async for chunk in c.read("/cl/sse", live="sse", checkpoint=offsets.append):
                got.append(chunk.data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(tail)
            for i in range(20):
                await c.append("/cl/sse", f"line {i}\n".encode(), content_type="text/plain")
                if i % 5 == 0:
                    await trio.sleep(0.05)
            await c.append("/cl/sse", b"bye\n", content_type="text/plain", close=True)
        assert b"".join(got) == b"".join(f"line {i}\n".encode() for i in range(20)) + b"bye\n"
        assert offsets == sorted(offsets) and (await c.head("/cl/sse")).closed


async def test_stale_epoch_is_fenced_and_auto_claim_takes_over(server: ServeProcess) -> None:
    async with StreamsClient(server.url) as c:
        await c.create("/cl/fence", content_type=JSON)
        async with c.writer("/cl/fence", producer_id="svc", epoch=3, content_type=JSON) as w:
            await w.append("from epoch 3")
        with pytest.raises(Fenced) as fenced:
            async with c.writer("/cl/fence", producer_id="svc", epoch=2, content_type=JSON) as zombie:
                await zombie.append("from a zombie")
        assert fenced.value.current_epoch == 3
        async with c.writer("/cl/fence", producer_id="svc", epoch=0, content_type=JSON, auto_claim=True) as w:
            await w.append("claimed")
        assert w.epoch == 4
        got = [m async for ch in c.read("/cl/fence") for m in ch.json()]
        assert got == ["from epoch 3", "claimed"]


async def test_long_poll_reader_backs_off_and_resumes_after_server_restart(pg_dsn: str) -> None:
    schema = new_schema()
    srv = await start(pg_dsn, schema)
    try:
        async with StreamsClient(srv.url, backoff=Backoff(base=0.05, cap=0.5, attempts=60)) as c:
            await c.create("/cl/restart", content_type=JSON)
            await c.append("/cl/restart", b"[1,2]", content_type=JSON)
            got: list[int] = []
            two = trio.Event()

            async def tail() -> None:
                async for chunk in c.read("/cl/restart", live="long-poll"):
                    got.extend(chunk.json())
                    if len(got) >= 2:
                        two.set()
                    if len(got) >= 4:
                        return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(tail)
                await two.wait()
                await trio.to_thread.run_sync(srv.kill)  # the reader's long-poll dies with it
                srv = await start(pg_dsn, schema, port_of(srv))  # the reader's URL
                await c.append("/cl/restart", b"[3,4]", content_type=JSON)
            assert got == [1, 2, 3, 4]
    finally:
        srv.stop()
        await trio.to_thread.run_sync(drop, pg_dsn, schema)
