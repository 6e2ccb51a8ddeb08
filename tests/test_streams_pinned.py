"""The streams store on pinned connections (``Pool.pinned``, as ``durable serve`` runs it): every
statement and every BEGIN, COMMIT and ROLLBACK passes the pool's gate (the simulator's hook), a fault
injected there leaves nothing behind, and the pinned connection is clean for the next user."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import trio

import durable
from durable.errors import DatabaseUnavailable
from durable.streams.errors import Conflict, StreamNotFound
from durable.streams.store import CreateSpec, Producer, Store

pytestmark = pytest.mark.trio
T = TypeVar("T")


class Recording:
    """A gate that records every call's name and fails the first call named ``fail`` (without running it)."""

    def __init__(self, fail: str | None = None) -> None:
        self.names: list[str] = []
        self.fail = fail

    async def call(self, name: str, run: Callable[[], Awaitable[T]]) -> T:
        self.names.append(name)
        if name == self.fail:
            self.fail = None
            raise DatabaseUnavailable(f"injected at {name}")
        return await run()


async def test_pinned_statements_and_transactions_pass_the_gate(db: durable.Database) -> None:
    store = Store(db.pool)
    gate = Recording()
    original, db.pool.gate = db.pool.gate, gate
    try:
        async with store.pinned(2):
            await store.create("/pinned/a", CreateSpec(content_type="text/plain"))
            await store.append("/pinned/a", b"hello", content_type="text/plain")
            page = await store.read("/pinned/a", 0)
    finally:
        db.pool.gate = original
    assert page.body() == b"hello"
    # the create's transaction: BEGIN, its statements, COMMIT; the append and the reads: one statement each
    assert gate.names[0] == "begin" and "stream_insert" in gate.names and "commit" in gate.names
    assert "stream_append" in gate.names and "stream_read" in gate.names


@pytest.mark.parametrize("fault", ["begin", "stream_insert", "commit"])
async def test_a_fault_at_the_gate_leaves_nothing_and_a_clean_connection(db: durable.Database, fault: str) -> None:
    store = Store(db.pool)
    gate = Recording(fail=fault)
    original, db.pool.gate = db.pool.gate, gate
    try:
        async with store.pinned(1):  # one connection: the next call reuses the one that saw the fault
            with pytest.raises(DatabaseUnavailable, match=f"injected at {fault}"):
                await store.create("/pinned/f", CreateSpec(content_type="text/plain"))
            with pytest.raises(StreamNotFound):  # the failed create left no stream
                await store.get("/pinned/f")
            # ...and no open transaction: a create on the same connection commits
            created = await store.create("/pinned/f", CreateSpec(content_type="text/plain"))
            assert created.new
    finally:
        db.pool.gate = original
    if fault == "commit":  # the COMMIT never ran: the check-in rolled the transaction back through the gate
        assert gate.names.count("rollback") >= 1
    assert (await Store(db.pool).get("/pinned/f")).tail == 0


async def test_pinned_connections_go_back_to_the_pool(db: durable.Database) -> None:
    store = Store(db.pool)

    def busy() -> int:
        return int(db.pool.raw.get_size() - db.pool.raw.get_idle_size())

    before = busy()
    async with store.pinned(3):
        await store.create("/pinned/g", CreateSpec())
        assert busy() == before + 3
    assert busy() == before
    with pytest.raises(ValueError, match="pinned connections must be 1..1000"):
        async with db.pool.pinned(0):
            pass


async def test_group_commit_batches_concurrent_appends_each_with_its_own_verdict(db: durable.Database) -> None:
    """Concurrent appends share statements (fewer statements than appends), each one gets its own
    answer (accepted with its offset, a producer's duplicate, a closed stream's 409), and the offsets of
    one stream tile it in the order its appends were acknowledged."""
    store = Store(db.pool)
    n = 40
    offsets: dict[int, str] = {}
    async with store.pinned(2, group_commit=True):
        await store.create("/gc/a", CreateSpec(content_type="text/plain"))
        await store.create("/gc/closed", CreateSpec(content_type="text/plain", closed=True))
        assert store._group is not None

        async def one(i: int) -> None:
            result = await store.append("/gc/a", b"%03d" % i, content_type="text/plain")
            offsets[i] = result.next_offset

        async def closed() -> None:
            with pytest.raises(Conflict, match="closed"):
                await store.append("/gc/closed", b"x", content_type="text/plain")

        async def missing() -> None:
            with pytest.raises(StreamNotFound):
                await store.append("/gc/missing", b"y", content_type="text/plain")

        producer = Producer("p", 0, 0)
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)
            nursery.start_soon(closed)
            nursery.start_soon(missing)
        first = await store.append("/gc/a", b"end", content_type="text/plain", producer=producer)
        again = await store.append("/gc/a", b"end", content_type="text/plain", producer=producer)
        assert (first.status, again.status) == ("accepted", "duplicate")
        group = store._group
        assert group.batches < group.appends, (group.batches, group.appends)
    page = await store.read("/gc/a", 0)
    body = page.body()
    assert len(body) == 3 * n + 3 and body.endswith(b"end")
    # every acknowledged offset is the end of that append's bytes
    for i, offset in offsets.items():
        end = int(offset.split("_")[-1])
        assert body[end - 3 : end] == b"%03d" % i


async def test_a_batch_postgresql_refuses_is_written_one_by_one(db: durable.Database) -> None:
    """One append of a batch carries a value PostgreSQL refuses (NUL in Stream-Seq): the batch's statement
    fails and commits nothing, so its appends are written one by one; the refused one gets its own error
    (a DataError: 400 on the server), every other one is accepted once."""
    import asyncpg

    store = Store(db.pool)
    errors: list[BaseException] = []
    async with store.pinned(1, group_commit=True):
        await store.create("/gc/b", CreateSpec(content_type="text/plain"))
        assert store._group is not None

        async def one(i: int) -> None:
            try:
                await store.append(
                    "/gc/b", b"%03d" % i, content_type="text/plain", stream_seq="bad\x00" if i == 5 else None
                )
            except asyncpg.exceptions.DataError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, i)
        assert store._group.batches < store._group.appends  # some appends did share a statement
    assert len(errors) == 1
    body = (await store.read("/gc/b", 0)).body()
    assert sorted(body[i : i + 3] for i in range(0, len(body), 3)) == [b"%03d" % i for i in range(20) if i != 5]


# the planted bug: the batch's appends run in reverse arrival order
REVERSED = (
    r"from unnest\((?P<args>.*?)\)\s+with ordinality as b\((?P<cols>[^)]*)\)",
    r"from (select * from unnest(\g<args>) with ordinality as b(\g<cols>) order by ord desc) b",
)


async def run_in_order(db: durable.Database, path: str) -> list[str]:
    """A producer's seqs 0..19 queued in that order go as one batch: the verdicts, in seq order."""
    from durable.streams.store import AppendArgs, _Waiter

    store = Store(db.pool)
    async with store.pinned(1, group_commit=True):
        await store.create(path, CreateSpec(content_type="text/plain"))
        group = store._group
        assert group is not None
        batch = [
            _Waiter(AppendArgs(path, b"%02d" % i, "text/plain", False, "p", 0, i, False, None, None, None, None))
            for i in range(20)
        ]
        await group._write(batch)
    return [w.row["verdict"] if w.row is not None else repr(w.error) for w in batch]


async def test_a_batch_runs_in_arrival_order(db: durable.Database) -> None:
    """A pipelining producer's appends in one batch keep their order: all 20 are accepted. With the
    planted bug (the batch run in reverse) all but seq 0 are refused as sequence gaps: the check can fail."""
    import re

    from durable.sql import Q

    assert await run_in_order(db, "/gc/order") == ["accepted"] * 20
    pattern, replacement = REVERSED
    text, n = re.subn(pattern, replacement, Q.stream_append_many.text, flags=re.S)
    assert n == 1
    with Q.replaced("stream_append_many", text):
        verdicts = await run_in_order(db, "/gc/order-mutant")
    assert verdicts[0] == "accepted" and verdicts.count("seq_gap") == 19
