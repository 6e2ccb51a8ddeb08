"""``durable serve``'s LISTEN on the HTTP front (durable/serve/front.py, ``Front._listen``): the front hands
the trio side's hub only the notifications it wants (a reader waits on the stream, or the subscription
dispatcher is active), and after a lost LISTEN connection it listens again and wakes every reader."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import partial

import asyncpg
import httpx
import pytest
import trio
import trio.testing

import durable
from durable._pg import aio
from durable.migrate import drop_schema
from durable.serve.hub import Handover, Hub, stream_id
from durable.serve.server import Server, serve
from durable.serve.streams import Settings
from durable.sql import Query
from durable.streams.store import Store

pytestmark = pytest.mark.trio


async def test_the_hub_wants_a_notification_only_when_a_reader_waits_or_a_watcher_is_interested() -> None:
    hub = Hub()
    assert not hub.wants(7)  # nobody: the front drops it
    event = hub.subscribe(7)
    assert hub.wants(7) and not hub.wants(8)
    hub.notify(7)
    assert event.is_set() and not hub.wants(7)  # the reader was woken; it subscribes again to wait again
    active = [False]
    seen: list[int] = []
    hub.watch(seen.append, interest=lambda: active[0])
    assert not hub.wants(8)
    active[0] = True
    assert hub.wants(8)
    hub.notify(8)
    assert seen == [8]


def counted(token: trio.lowlevel.TrioToken) -> tuple[list[int], Callable[[Callable[[], None]], None]]:
    """A ``run_sync_soon`` on ``token`` that counts its calls (in the returned list's one element)."""
    calls = [0]

    def schedule(fn: Callable[[], None]) -> None:
        calls[0] += 1
        token.run_sync_soon(fn)

    return calls, schedule


async def test_a_notify_storm_queues_one_callback_in_trio_and_wakes_each_stream_once() -> None:
    hub = Hub()
    seen: list[int] = []
    hub.watch(seen.append)
    readers = [hub.subscribe(i) for i in range(3)]
    calls, schedule = counted(trio.lowlevel.current_trio_token())
    handover = Handover(hub, schedule)
    for n in range(30_000):  # before trio runs any callback (the old hand-over queued 30,000)
        handover.notify(n % 3)
    assert calls == [1] and not any(r.is_set() for r in readers)
    await trio.testing.wait_all_tasks_blocked()
    assert seen == [0, 1, 2] and all(r.is_set() for r in readers)
    handover.notify(1)  # delivered: the next one schedules again
    await trio.testing.wait_all_tasks_blocked()
    assert calls == [2] and seen == [0, 1, 2, 1]


async def test_a_notify_storm_from_another_thread_loses_no_stream() -> None:
    hub = Hub()
    seen: set[int] = set()
    hub.watch(seen.add)
    calls, schedule = counted(trio.lowlevel.current_trio_token())
    handover = Handover(hub, schedule)

    def storm() -> None:
        for n in range(30_000):
            handover.notify(n % 50)

    await trio.to_thread.run_sync(storm)  # trio delivers while the thread notifies
    await trio.testing.wait_all_tasks_blocked()
    assert seen == set(range(50))
    assert calls[0] < 3_000  # one callback per delivery, not per NOTIFY (switches of the GIL bound them)
    readers = [hub.subscribe(i) for i in range(50)]
    handover.notify_all()
    await trio.testing.wait_all_tasks_blocked()
    assert all(r.is_set() for r in readers)


async def listeners(dsn: str, channel: str) -> list[int]:
    """The backends LISTENing on ``channel`` (their last statement was the LISTEN)."""
    con = await aio(asyncpg.connect)(dsn)
    try:
        query = "select pid from pg_stat_activity where query ilike $1 and pid <> pg_backend_pid()"
        rows = await aio(con.fetch)(query, f"%listen%{channel}%")
    finally:
        await aio(con.close)()
    return [r["pid"] for r in rows]


async def terminate(dsn: str, pid: int) -> bool:
    """Terminate backend ``pid``."""
    con = await aio(asyncpg.connect)(dsn)
    try:
        return bool(await aio(con.fetchval)("select pg_terminate_backend($1)", pid))
    finally:
        await aio(con.close)()


async def test_a_reader_is_woken_after_the_fronts_listen_connection_is_lost(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The LISTEN connection of the front is terminated while a long-poll reader waits: the front listens
    again on a fresh connection, and the NOTIFY of an append made after that reaches the trio side's hub
    and wakes the reader (it answers with the data well before the long-poll timeout). The reader alone
    would not show it: it re-reads every second without a notification, so the NOTIFY's hand-over is
    watched (the hub's and the hand-over's own methods, wrapped, run unchanged)."""
    subscribed: list[tuple[Hub, int]] = []  # (the trio side's hub, the stream) of each reader's subscribe
    woken_all: list[Hub] = []  # the hub's notify_all: what the front does on the trio side after each LISTEN
    handed: list[int] = []  # a NOTIFY the front's LISTEN connection received for a stream a reader waits on
    real_subscribe, real_notify_all, real_hand = Hub.subscribe, Hub.notify_all, Handover.notify

    def subscribe(self: Hub, sid: int) -> trio.Event:
        subscribed.append((self, sid))
        return real_subscribe(self, sid)

    def notify_all(self: Hub) -> None:
        woken_all.append(self)
        real_notify_all(self)

    def hand(self: Handover, sid: int) -> None:
        handed.append(sid)
        real_hand(self, sid)

    monkeypatch.setattr(Hub, "subscribe", subscribe)
    monkeypatch.setattr(Hub, "notify_all", notify_all)
    monkeypatch.setattr(Handover, "notify", hand)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    channel = f"ds_{schema}"
    async with durable.connect(pg_dsn, schema=schema) as db:
        try:
            async with trio.open_nursery() as nursery:
                server: Server = await nursery.start(partial(serve, pg_dsn, schema, port=0, settings=Settings()))
                async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
                    created = await http.put("/l/a", headers={"content-type": "text/plain"})
                    assert created.status_code == 201
                    with trio.fail_after(20):
                        while not (before := await listeners(pg_dsn, channel)) or not woken_all:
                            await trio.sleep(0.05)
                    assert len(before) == 1, before
                    answer: list[httpx.Response] = []

                    async def reader() -> None:  # from the tail the stream was created with
                        tail = created.headers["stream-next-offset"]
                        answer.append(await http.get("/l/a", params={"offset": tail, "live": "long-poll"}))

                    nursery.start_soon(reader)
                    with trio.fail_after(20):  # the reader waits on the trio side
                        while not subscribed:
                            await trio.sleep(0.01)
                    hub, sid = subscribed[0]
                    listens = len(woken_all)
                    assert await terminate(pg_dsn, before[0])
                    with trio.fail_after(20):  # listening again, on another backend, and the hub told so
                        while (after := await listeners(pg_dsn, channel)) in ([], before) or len(woken_all) == listens:
                            await trio.sleep(0.05)
                    with trio.fail_after(20):  # woken by that, the reader waits again
                        while not hub.wants(sid):
                            await trio.sleep(0.01)
                    handed_before = len(handed)
                    assert (
                        await http.post("/l/a", content=b"hello", headers={"content-type": "text/plain"})
                    ).is_success
                    with trio.fail_after(20):  # the append's NOTIFY, over the new LISTEN connection
                        while sid not in handed[handed_before:]:
                            await trio.sleep(0.01)
                    with trio.fail_after(20):  # far below the 30 s long-poll timeout
                        while not answer:
                            await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
            assert answer[0].status_code == 200 and answer[0].content == b"hello", answer[0]
            assert after and after != before
        finally:
            with trio.CancelScope(shield=True):
                await drop_schema(db.pool, schema)


NOTIFY_TWO = Query("t_notify_two", "select pg_notify($1, $2), pg_notify($1, $3)", "")


async def test_a_payload_that_is_not_a_stream_id_is_ignored_and_the_next_one_still_arrives(
    db: durable.Database,
) -> None:
    """Anyone who can connect may NOTIFY the channel. A payload ``str.isdigit`` admits but ``int`` refuses
    ("\u00b2") raised out of the hub's LISTEN loop: it dropped the connection, with the notifications
    behind it (the "7" here never reached the watcher), and listened again a second later."""
    assert [stream_id(p) for p in ("42", "\u00b2", "\u0663", "1" * 5000, "", "-1", "9" * 19)] == [
        42,
        None,
        None,
        None,
        None,
        None,
        int("9" * 19),
    ]
    hub = Hub()
    seen: list[int] = []
    hub.watch(seen.append)
    channel = Store(db.pool).channel
    async with hub.listening(db.pool, channel):
        await db.pool.fetch(NOTIFY_TWO, channel, "\u00b2", "7")
        with trio.fail_after(20):
            while not seen:
                await trio.sleep(0.01)
    assert seen == [7]
