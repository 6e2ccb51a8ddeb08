"""Durability beyond the black-box suite, against ``durable serve`` as a real process:

* a server SIGKILLed while appends are in flight loses no acknowledged byte and exposes no partial
  append (every record in the stream is whole, every acknowledged record is there exactly once and
  ends at the offset it was acknowledged with);
* concurrent writers get strictly increasing, distinct offsets that tile the stream;
* a reader resuming at any offset the server returned sees every later byte exactly once;
* the batching writer (durable.contrib.streams_client) survives a server kill without loss or duplicates.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess

import httpx
import pytest
import trio
import trio.lowlevel

from durable.contrib.streams_client import Backoff, StreamsClient
from durable.serve.cli import command as serve_command
from durable.serve.server import STOP_TIMEOUT, Server, StopTimeout, serve
from durable.sql import Q

from .locks import holding
from .test_streams_util import ServeProcess, drop, new_schema

pytestmark = pytest.mark.trio

OCTETS = {"content-type": "application/octet-stream"}


def record(writer: int, n: int, size: int) -> bytes:
    """A self-describing record: header, filler, trailer. A torn record cannot parse."""
    head = f"<{writer:02d}:{n:05d}:{size:07d}|".encode()
    return head + b"x" * (size - len(head) - 1) + b">"


def parse(data: bytes) -> list[tuple[int, int, int]]:
    """Records in stream order as (writer, n, end position); asserts every record is whole."""
    out, pos = [], 0
    while pos < len(data):
        assert data[pos : pos + 1] == b"<", f"garbage at {pos}"
        w, n, size = data[pos + 1 : pos + 20].split(b"|")[0].split(b":")
        end = pos + int(size)
        assert end <= len(data) and data[end - 1 : end] == b">", f"torn record at {pos}"
        out.append((int(w), int(n), end))
        pos = end
    return out


def port_of(server: ServeProcess) -> int:
    """The port ``server`` listens on."""
    return int(server.url.rsplit(":", 1)[1])


def position(offset: str) -> int:
    """Our offsets end with the byte position (only the test peeks: clients must not)."""
    return int(offset.split("_")[1])


async def read_all(http: httpx.AsyncClient, path: str, offset: str = "-1") -> tuple[bytes, list[str]]:
    """Catch-up read from ``offset`` to the tail, chunk by chunk; returns bytes and chunk offsets."""
    data, offsets = b"", []
    while True:
        r = await http.get(path, params={"offset": offset})
        assert r.status_code == 200, r.text
        data += r.content
        offset = r.headers["stream-next-offset"]
        offsets.append(offset)
        if r.headers.get("stream-up-to-date") == "true":
            return data, offsets


@pytest.fixture
def schema(pg_dsn: str):  # type: ignore[no-untyped-def]
    name = new_schema()
    yield name
    drop(pg_dsn, name)


async def start(pg_dsn: str, schema: str, port: int = 0) -> ServeProcess:
    """``durable serve`` on ``port``: 0 (the system picks a free one), or the port of the server it replaces, so
    that its clients keep their URL. A port found free beforehand (bind, close, pass it on) was open to any
    other process of the box until the server bound it."""
    server = ServeProcess(pg_dsn, schema, "--long-poll-timeout", "2", "--port", str(port))
    await trio.to_thread.run_sync(server.start)
    return server


async def test_sigkill_mid_append_loses_no_acknowledged_byte(pg_dsn: str, schema: str) -> None:
    server = await start(pg_dsn, schema)
    acked: dict[tuple[int, int], str] = {}
    cut: list[tuple[int, int]] = []
    sizes = [40, 300, 70_000, 900, 250_000]
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await http.put("/dur/kill", headers=OCTETS)).status_code == 201

            async def writer(w: int) -> None:
                for n in range(10_000):
                    body = record(w, n, sizes[(w + n) % len(sizes)])
                    try:
                        r = await http.post("/dur/kill", headers=OCTETS, content=body)
                    except httpx.TransportError:
                        cut.append((w, n))  # the server died under this request: unacknowledged
                        return
                    assert r.status_code == 204
                    acked[(w, n)] = r.headers["stream-next-offset"]

            async with trio.open_nursery() as nursery:
                for w in range(4):
                    nursery.start_soon(writer, w)
                while len(acked) < 60:
                    await trio.sleep(0.01)
                await trio.to_thread.run_sync(server.kill)  # appends are in flight right now
    finally:
        server.kill()

    server = await start(pg_dsn, schema)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            data, _ = await read_all(http, "/dur/kill")
    finally:
        server.stop()
    assert cut, "no append was in flight when the server was killed"
    records = parse(data)  # raises on any torn (partial) append
    ends = {(w, n): end for w, n, end in records}
    assert len(ends) == len(records), "a record is stored twice"
    for key, offset in acked.items():
        assert key in ends, f"acknowledged record {key} lost"
        assert ends[key] == position(offset), f"record {key} is not where it was acknowledged"
    per_writer: dict[int, list[int]] = {}
    for w, n, _ in records:
        per_writer.setdefault(w, []).append(n)
    for ns in per_writer.values():
        assert ns == sorted(ns) and ns == list(range(len(ns))), "a writer's records are out of order"


async def test_concurrent_writers_and_resuming_readers(pg_dsn: str, schema: str) -> None:
    server = await start(pg_dsn, schema)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await http.put("/dur/many", headers=OCTETS)).status_code == 201
            offsets: dict[int, list[str]] = {w: [] for w in range(6)}
            seen_live: list[str] = []

            async def writer(w: int) -> None:
                for n in range(40):
                    r = await http.post("/dur/many", headers=OCTETS, content=record(w, n, 50 + 37 * n))
                    assert r.status_code == 204
                    offsets[w].append(r.headers["stream-next-offset"])

            async def tail_reader(done: trio.Event) -> None:
                offset = "-1"
                data = b""
                while not done.is_set() or len(data) < total:
                    r = await http.get("/dur/many", params={"offset": offset, "live": "long-poll"})
                    if r.status_code == 200:
                        data += r.content
                        assert position(r.headers["stream-next-offset"]) == len(data)
                    nxt = r.headers["stream-next-offset"]
                    assert nxt >= offset or offset == "-1"
                    offset = nxt
                    seen_live.append(offset)
                parse(data)

            total = sum(50 + 37 * n for n in range(40)) * 6
            done = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(tail_reader, done)
                async with trio.open_nursery() as writers:
                    for w in offsets:
                        writers.start_soon(writer, w)
                done.set()

            for w, offs in offsets.items():
                assert offs == sorted(offs) and len(set(offs)) == len(offs), f"writer {w} not monotonic"
            every = [o for offs in offsets.values() for o in offs]
            assert len(set(every)) == len(every), "two appends got the same offset"
            full, _ = await read_all(http, "/dur/many")
            assert len(full) == total
            records = parse(full)
            assert sorted(end for *_, end in records) == sorted(position(o) for o in every)

            # resume at every offset any response returned: exactly the bytes after it, once
            for offset in sorted(set(every + seen_live))[::7]:
                rest, _ = await read_all(http, "/dur/many", offset)
                assert rest == full[position(offset) :]
    finally:
        server.stop()


async def test_batching_writer_is_exactly_once_across_a_server_kill(pg_dsn: str, schema: str) -> None:
    server = await start(pg_dsn, schema)
    items = [{"i": i} for i in range(400)]
    try:
        async with StreamsClient(server.url, backoff=Backoff(base=0.05, cap=0.5, attempts=80)) as c:
            await c.create("/dur/exactly", content_type="application/json")
            async with c.writer(
                "/dur/exactly",
                producer_id="w1",
                epoch=0,
                content_type="application/json",
                linger=0.002,
                max_batch_bytes=300,
            ) as w:

                async def produce() -> None:
                    for item in items:  # paced, so batches keep going out while the server dies
                        await w.append(item)
                        await trio.sleep(0.003)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(produce)
                    with trio.fail_after(30):
                        while not (w.seq > 5 and w.in_flight):
                            await trio.sleep(0.0005)
                    await trio.to_thread.run_sync(server.kill)  # a batch is in flight right now
                    server = await start(pg_dsn, schema, port_of(server))  # the writer's URL
            assert w.retries > 0, "the kill did not interrupt the writer"
            got = [m for chunk in [x async for x in c.read("/dur/exactly")] for m in chunk.json()]
        assert got == items
    finally:
        server.stop()


async def test_stopping_the_server_during_a_blocked_append_stores_it_whole_or_not_at_all(
    pg_dsn: str, schema: str
) -> None:
    """SIGTERM while an append waits on its stream's row lock: uvicorn's graceful shutdown (1 s) cuts the
    request off. The server still exits by itself (not the SIGKILL ``stop`` sends after 10 s), its
    statement does not outlive it (without a SIGTERM handler the process died on the spot, its statement
    stayed waiting on the lock and landed once the lock was released), the append is stored whole or not at
    all and never twice, an acknowledged append is stored, and the restarted server takes the next append
    at the tail. The cut-off append and a live read ended by the stop get a 503 (not a 500 with a logged
    traceback)."""
    server = await start(pg_dsn, schema)
    answer: list[httpx.Response | httpx.TransportError] = []
    reading: list[httpx.Response | httpx.TransportError] = []
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            assert (await http.put("/dur/stop", headers=OCTETS)).status_code == 201
            first = await http.post("/dur/stop", headers=OCTETS, content=record(0, 0, 100))
            assert first.status_code == 204
            async with holding(pg_dsn, "select 1 from streams for update", schema=schema) as held:

                async def append() -> None:
                    try:
                        answer.append(await http.post("/dur/stop", headers=OCTETS, content=record(0, 1, 100)))
                    except httpx.TransportError as exc:
                        answer.append(exc)

                async def live_read() -> None:  # long-polls at the tail until the server stops
                    params = {"offset": first.headers["stream-next-offset"], "live": "long-poll"}
                    while True:
                        try:
                            r = await http.get("/dur/stop", params=params)
                        except httpx.TransportError as exc:
                            reading.append(exc)
                            return
                        if r.status_code != 204:
                            reading.append(r)
                            return

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(append)
                    nursery.start_soon(live_read)
                    await held.until_waited_on(30)  # the append waits on the row lock
                    await trio.to_thread.run_sync(server.stop)
                left = await held.waiting()  # a statement of the server that outlived it
                await held.release()
                with trio.fail_after(30):  # (it would run now: let it end before the checks below)
                    while await held.busy(left):
                        await trio.sleep(0.02)
        assert server.proc is not None and server.proc.returncode == 0, "".join(server.log)  # not killed
    finally:
        server.kill()
    assert len(answer) == 1
    assert left == [], "".join(server.log)
    # a request cut off (the append, after the 1 s of grace) or ended (the live read, on the trio side) by
    # the stop is told so: 503 with Retry-After (or its connection closes), not a 500, and nothing is logged
    # as a server fault
    for cut in (answer[0], reading[0]):
        assert isinstance(cut, httpx.TransportError) or cut.status_code in (204, 503), (cut, server.log)
        assert not isinstance(cut, httpx.Response) or cut.status_code != 503 or cut.headers["retry-after"] == "1"
    assert "Traceback" not in "".join(server.log), "".join(server.log)
    server = await start(pg_dsn, schema)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            data, _ = await read_all(http, "/dur/stop")
            stored = [(w, n) for w, n, _ in parse(data)]
            acknowledged = isinstance(answer[0], httpx.Response) and answer[0].status_code == 204
            assert stored in ([(0, 0), (0, 1)], [(0, 0)]), stored  # whole or not at all, never twice
            assert not acknowledged or stored == [(0, 0), (0, 1)], (answer, stored)
            r = await http.post("/dur/stop", headers=OCTETS, content=record(0, 2, 100))
            assert r.status_code == 204
            data, _ = await read_all(http, "/dur/stop")
            assert [(w, n) for w, n, _ in parse(data)] == [*stored, (0, 2)]
            assert position(r.headers["stream-next-offset"]) == len(data)
    finally:
        server.stop()


@pytest.mark.parametrize("stack", ["uvicorn", "hypercorn"])
async def test_a_blocked_append_of_a_killed_server_is_not_stored(pg_dsn: str, schema: str, stack: str) -> None:
    """SIGKILL while an append waits on its stream's row lock (SIGKILL, a second signal and --stop-timeout
    all end the process without cancelling its statements): PostgreSQL notices that the server is gone
    (client_connection_check_interval, set on durable serve's connections) and ends the waiting statement,
    so once the lock is released the append is not stored and the stream's tail is where it was. Before,
    the statement waited for as long as the lock was held, then stored the append its client never heard
    about. Both HTTP stacks: appends go through the front's own pool under uvicorn, the trio side's under
    hypercorn."""
    server = ServeProcess(pg_dsn, schema, env={"DURABLE_SERVE_HTTP": stack})
    await trio.to_thread.run_sync(server.start)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            assert (await http.put("/dur/kill", headers=OCTETS)).status_code == 201
            first = await http.post("/dur/kill", headers=OCTETS, content=record(0, 0, 100))
            assert first.status_code == 204
            async with holding(pg_dsn, "select 1 from streams for update", schema=schema) as held:
                async with trio.open_nursery() as nursery:

                    async def append() -> None:
                        with contextlib.suppress(httpx.TransportError):
                            await http.post("/dur/kill", headers=OCTETS, content=record(0, 1, 100))

                    nursery.start_soon(append)
                    await held.until_waited_on(30)  # the append waits on the row lock
                    await trio.to_thread.run_sync(server.kill)
                await held.until_free(30)  # the server's statement ends without the lock being released
                await held.release()
    finally:
        server.kill()
    server = ServeProcess(pg_dsn, schema, env={"DURABLE_SERVE_HTTP": stack})
    await trio.to_thread.run_sync(server.start)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            data, _ = await read_all(http, "/dur/kill")
            assert [(w, n) for w, n, _ in parse(data)] == [(0, 0)]
            head = await http.head("/dur/kill")
            assert head.headers["stream-next-offset"] == first.headers["stream-next-offset"]
    finally:
        server.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_while_the_server_starts_stops_it(pg_dsn: str, schema: str, sig: signal.Signals) -> None:
    """SIGTERM or Ctrl-C while ``durable serve`` is still starting (here its migration waits on the lock of
    another migrator of the schema; a database slow to answer is the same) stops it: the signal is not held
    back until the server listens. It exits 0 by itself and leaves no statement waiting. Before, the signals
    were read only once the server listened, so it ignored both for as long as its start took (here:
    until the other migrator ended)."""
    server = ServeProcess(pg_dsn, schema)
    # a migrator of this schema holds the lock
    async with holding(pg_dsn, Q.lock_migrations.text, schema) as held:
        try:
            listening = await trio.to_thread.run_sync(server.launch)

            def alive() -> None:
                assert server.proc is not None and server.proc.poll() is None, "".join(server.log)

            await held.until_waited_on(60, alive)  # the server's migration waits on the lock
            assert server.proc is not None and not listening.is_set()
            server.proc.send_signal(sig)
            try:
                code = await trio.to_thread.run_sync(server.proc.wait, 30)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{sig.name} ignored while the server started:\n" + "".join(server.log)) from None
            assert code == 0, "".join(server.log)
            await held.until_free(10)  # its statement ended with it
            await held.release()
        finally:
            server.kill()


async def stop_blocked_delete(pg_dsn: str, schema: str, *extra: str, signals: int) -> tuple[ServeProcess, int]:
    """A server whose DELETE (answered on the trio side, its statement shielded) waits on the stream's row
    lock, which the test holds: send it ``signals`` SIGTERMs (the next once the previous was taken) and
    return it with its exit status (the lock is released only after the server exited)."""
    server = ServeProcess(pg_dsn, schema, *extra)
    await trio.to_thread.run_sync(server.start)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            assert (await http.put("/dur/held", headers=OCTETS)).status_code == 201
            async with holding(pg_dsn, "select 1 from streams for update", schema=schema) as held:
                async with trio.open_nursery() as nursery:

                    async def delete() -> None:
                        with contextlib.suppress(httpx.TransportError):
                            await http.delete("/dur/held")

                    nursery.start_soon(delete)
                    await held.until_waited_on(60)  # the DELETE waits on the row lock
                    assert server.proc is not None
                    for n in range(signals):
                        server.proc.send_signal(signal.SIGTERM)
                        with trio.fail_after(60):  # the server took it (it says so) before the next
                            while n < signals - 1 and sum("stopping" in line for line in server.log) <= n:
                                await trio.sleep(0.02)
                    try:
                        code = await trio.to_thread.run_sync(server.proc.wait, 60)
                    except subprocess.TimeoutExpired:
                        raise AssertionError("the server did not stop:\n" + "".join(server.log)) from None
                await held.release()
    finally:
        server.kill()
    return server, code


async def test_a_second_sigterm_stops_a_server_whose_stop_waits_on_the_database(pg_dsn: str, schema: str) -> None:
    """A graceful stop waits for the statements in flight; one waiting on a lock (here a DELETE behind a
    row lock another session holds) would hold it for as long as the lock is held. A second SIGTERM or
    Ctrl-C stops the server at once (exit 130). Before, the second signal was ignored: the server could not
    be stopped but by SIGKILL."""
    server, code = await stop_blocked_delete(pg_dsn, schema, signals=2)
    assert code == 130, "".join(server.log)
    assert "stopping now" in "".join(server.log)


async def test_a_stop_that_waits_on_the_database_ends_after_stop_timeout(pg_dsn: str, schema: str) -> None:
    """The same blocked stop after one SIGTERM ends by itself after ``--stop-timeout`` seconds: exit 1,
    one ``error:`` line. Before, it waited for as long as the lock was held."""
    server, code = await stop_blocked_delete(pg_dsn, schema, "--stop-timeout", "2", signals=1)
    assert code == 1, "".join(server.log)
    errors = [line for line in server.log if line.startswith("error:")]
    assert len(errors) == 1 and "did not stop within 2s" in errors[0], "".join(server.log)
    assert "Traceback" not in "".join(server.log), "".join(server.log)


class Served:
    """``serve()`` in this process under a cancel scope of its own (``scope.cancel()`` stops it): ``stopped``
    is set once it has ended, ``raised`` holds the exception it ended with."""

    def __init__(self, pg_dsn: str, schema: str, *, stop_timeout: float) -> None:
        self.pg_dsn, self.schema, self.stop_timeout = pg_dsn, schema, stop_timeout
        self.scope = trio.CancelScope()
        self.stopped = trio.Event()
        self.raised: list[BaseException] = []

    async def run(self, task_status: trio.TaskStatus[Server]) -> None:
        try:
            with self.scope:
                await serve(self.pg_dsn, self.schema, port=0, stop_timeout=self.stop_timeout, task_status=task_status)
        except Exception as exc:
            self.raised.append(exc)
        finally:
            self.stopped.set()


async def test_serve_ends_a_stop_that_waits_on_the_database_after_its_stop_timeout(pg_dsn: str, schema: str) -> None:
    """The library function: ``serve()`` cancelled while a DELETE (its statement shielded) waits on the
    stream's row lock ends after its ``stop_timeout`` by itself, with the lock still held: it closes its
    connections (PostgreSQL then ends the waiting statement) and raises StopTimeout. Before, only the CLI had
    a bound (it ends the process): the cancelled serve() waited for as long as the lock was held."""
    served = Served(pg_dsn, schema, stop_timeout=1)
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(served.run)
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            assert (await http.put("/dur/held", headers=OCTETS)).status_code == 201
            async with holding(pg_dsn, "select 1 from streams for update", schema=schema) as held:

                async def delete() -> None:
                    with contextlib.suppress(httpx.TransportError):
                        await http.delete("/dur/held")

                nursery.start_soon(delete)
                await held.until_waited_on(60)  # the DELETE waits on the row lock
                served.scope.cancel()
                with trio.move_on_after(60):
                    await served.stopped.wait()
                ended = served.stopped.is_set()
                if ended:
                    await held.until_free(30)  # its statement ends too, the lock still held
                await held.release()  # (without the bound, the stop ends only now)
                await served.stopped.wait()
    assert ended, "serve() did not stop while its statement waited on the lock"
    assert [type(e) for e in served.raised] == [StopTimeout], served.raised
    assert "did not stop within 1s" in str(served.raised[0])


async def test_the_cli_stop_timeout_defaults_to_serves_and_a_bad_one_is_refused(pg_dsn: str, schema: str) -> None:
    option = next(p for p in serve_command.params if p.name == "stop_timeout")
    assert option.default == STOP_TIMEOUT
    for bad in (0, -1, float("nan"), float("inf"), True, "5"):
        with pytest.raises(ValueError, match="stop_timeout must be a positive, finite number"):
            await serve(pg_dsn, schema, port=0, stop_timeout=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("stop_timeout", [1, 60])
async def test_serve_ends_a_stop_whose_front_waits_on_the_database_after_its_stop_timeout(
    pg_dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch, stop_timeout: int
) -> None:
    """The HTTP front's own connections are closed too when ``serve()``'s stop passes its ``stop_timeout``.
    Two appends to one stream wait on its row lock: the first is written by its own request, the second
    queued behind it for the group commit's lane. uvicorn cuts both requests off after its graceful second,
    which cancels the first's statement, and the lane then writes the second (shielded, as a batch is): it
    waits on the lock. Before, serve() closed only the trio side's connections: it ended after the 15 s
    it gives the front's thread with that statement still waiting, which would store the append once the
    lock was released, after its client had been cut off. With a stop_timeout longer than those 15 s the
    front closes its connections itself then (before, serve() returned with the front's thread and its
    statement left behind, and no StopTimeout)."""
    monkeypatch.setenv("DURABLE_SERVE_HTTP", "uvicorn")
    served = Served(pg_dsn, schema, stop_timeout=stop_timeout)
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(served.run)
        assert server.front_store is not None and server.front_store._group is not None
        lanes = server.front_store._group._lanes
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            assert (await http.put("/dur/held", headers=OCTETS)).status_code == 201
            async with holding(pg_dsn, "select 1 from streams for update", schema=schema) as held:

                async def append(n: int) -> None:
                    with contextlib.suppress(httpx.TransportError):
                        await http.post("/dur/held", headers=OCTETS, content=record(0, n, 100))

                nursery.start_soon(append, 0)
                await held.until_waited_on(60)  # the first append waits on the row lock
                nursery.start_soon(append, 1)
                with trio.fail_after(60):  # the second is queued behind it
                    while not any(lane.queue for lane in lanes):
                        await trio.sleep(0.02)
                served.scope.cancel()
                with trio.fail_after(120):
                    await served.stopped.wait()
                await held.until_free(10)  # no statement of it outlives it (the lock still held)
                await held.release()
    # past its stop_timeout it says so; within it (the front ended its own stop) it stopped as asked
    assert [type(e) for e in served.raised] == ([StopTimeout] if stop_timeout == 1 else []), served.raised
