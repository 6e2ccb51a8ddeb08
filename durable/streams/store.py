"""The stream store: Durable Streams semantics over PostgreSQL (tables of migration 0002).

Every append is one transaction that locks the stream row, validates (closed, content type, producer,
Stream-Seq), writes the message, moves the tail and saves the producer state: an acknowledged append is
durable, a failed one leaves nothing, and appends to one stream commit in offset order. The HTTP server
(durable.serve) and engine steps (durable.streams.engine) both write through here; neither needs the
other. This module never imports the web stack.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio

from .._pg import Conn, Pinned, Pool, Record, lost_is_unavailable
from ..errors import DatabaseUnavailable
from ..sql import Q, Query
from .errors import BadRequest, Conflict, FencedAppend, StreamGone, StreamNotFound
from .offsets import format_offset
from .text import load_json

JSON = "application/json"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_JS_INT = 2**53 - 1


def channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which appends, closes and deletes of a schema are announced."""
    return f"ds_{schema}"[:63]


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``."""
    return (content_type or "").split(";")[0].strip().lower()


def is_json(content_type: str | None) -> bool:
    """Whether ``content_type`` is JSON mode (application/json, parameters ignored)."""
    return media_type(content_type) == JSON


def json_values(body: bytes, *, allow_empty: bool) -> list[str]:
    """The messages of a JSON-mode body, each compact JSON text: an array is flattened one level.
    NUL in a string is kept (stored escaped, as ``\\u0000``); a lone surrogate is rejected (400)."""
    try:
        value = load_json(body, allow_nul=True)
    except ValueError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None
    items = value if isinstance(value, list) else [value]
    if not items and not allow_empty:
        raise BadRequest("empty JSON arrays are not allowed")
    try:
        return [json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in items]
    except RecursionError:  # the encoder's depth limit can be a little below the parser's
        raise BadRequest("invalid JSON: nested too deeply") from None


def json_message(items: list[str]) -> bytes:
    """One stored JSON-mode message: the values of one append, comma-joined."""
    return ",".join(items).encode("utf-8")


def json_array(messages: list[bytes]) -> bytes:
    """Stored JSON-mode messages as the JSON array a read returns."""
    return b"[" + b",".join(m for m in messages if m) + b"]"


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """One stream's row: path, content type, TTL or expiry, tail position, closed, fork origin."""

    id: int
    path: str
    content_type: str
    ttl_seconds: int | None
    expires_at: str | None
    tail: int
    closed: bool
    forked_from: int | None
    fork_offset: int | None
    soft_deleted: bool

    @property
    def next_offset(self) -> str:
        """The offset after the stream's last message."""
        return format_offset(self.tail)

    @property
    def json(self) -> bool:
        """Whether the stream is in JSON mode."""
        return is_json(self.content_type)

    @classmethod
    def of(cls, row: Record) -> StreamInfo:
        """The info of a ``stream_get`` row."""
        return cls(
            row["id"],
            row["path"],
            row["content_type"],
            row["ttl_seconds"],
            row["expires_at"],
            row["tail"],
            row["closed"],
            row["forked_from"],
            row["fork_offset"],
            row["soft_deleted"],
        )


@dataclass(frozen=True, slots=True)
class Producer:
    """Idempotent producer headers of one request."""

    id: str
    epoch: int
    seq: int
    # engine producers continue their seq across epochs (a re-executed step repeats its seqs)
    spans_epochs: bool = False


@dataclass(frozen=True, slots=True)
class CreateSpec:
    """A PUT's request: content type, TTL or expiry, closed, initial body, fork source and offset."""

    content_type: str | None = None
    ttl_seconds: int | None = None
    expires_at: str | None = None
    expires_at_ts: datetime | None = None
    closed: bool = False
    body: bytes = b""
    forked_from: str | None = None
    fork_offset: int | None = None
    fork_sub_offset: int = 0


@dataclass(frozen=True, slots=True)
class Created:
    """The stream a create left (``new``: this request made it; False: it existed, same config)."""

    stream: StreamInfo
    new: bool


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Outcome of an append or close. ``status``: accepted | duplicate."""

    status: str
    next_offset: str
    closed: bool
    producer: Producer | None = None
    last_seq: int | None = None  # highest accepted producer seq (for the Producer-Seq header)


@dataclass(frozen=True, slots=True)
class Page:
    """A read: the stored messages (end position, bytes) and where the next read starts."""

    stream: StreamInfo
    messages: list[tuple[int, bytes]]
    next_position: int
    up_to_date: bool

    @property
    def next_offset(self) -> str:
        """The offset to read from next."""
        return format_offset(self.next_position)

    @property
    def closed_at_tail(self) -> bool:
        """Whether this page reached the end of a closed stream (nothing more will come)."""
        return self.stream.closed and self.up_to_date and self.next_position == self.stream.tail

    def body(self) -> bytes:
        """The page's messages as the response body (a JSON array in JSON mode, else the bytes)."""
        datas = [d for _, d in self.messages]
        return json_array(datas) if self.stream.json else b"".join(datas)


class Store:
    """Durable Streams on one durable schema. ``max_read_bytes`` bounds a catch-up chunk."""

    def __init__(self, pool: Pool, *, max_read_bytes: int = 1 << 20, max_read_rows: int = 2048) -> None:
        self.pool = pool
        self.channel = channel(pool.schema)
        self.max_read_bytes = max_read_bytes
        self.max_read_rows = max_read_rows
        self._pinned: Pinned | None = None
        self._group: GroupCommit | None = None

    @asynccontextmanager
    async def pinned(self, connections: int, *, group_commit: bool = False) -> AsyncIterator[None]:
        """Run this store's statements on ``connections`` connections held for it while the block runs
        (:meth:`Pool.pinned`): a statement then costs one round trip. ``group_commit``: concurrent
        appends share one statement and one commit (:class:`GroupCommit`)."""
        async with self.pool.pinned(connections) as pinned:
            self._pinned = pinned
            try:
                if group_commit:
                    async with anyio.create_task_group() as tasks:
                        group = self._group = GroupCommit(self)
                        tasks.start_soon(group.run)
                        try:
                            yield
                        finally:
                            self._group = None
                            with anyio.CancelScope(shield=True):  # appends written by their callers: short
                                await group.idle()
                            tasks.cancel_scope.cancel()
                else:
                    yield
            finally:
                self._pinned = None

    async def _one(self, method: str, q: Query, *args: Any) -> Any:
        """One statement, shielded from cancellation (it is short, and a cut would break the connection)."""
        with anyio.CancelScope(shield=True), lost_is_unavailable():
            return await getattr(self._pinned or self.pool, method)(q, *args)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Conn]:
        """A transaction that cancellation cannot interrupt: a cancelled caller (a client that went
        away) waits the few milliseconds the statements take, so no connection is left mid-protocol."""
        with anyio.CancelScope(shield=True), lost_is_unavailable():
            async with (self._pinned or self.pool).transaction() as conn:
                yield conn

    def transaction(self) -> AbstractAsyncContextManager[Conn]:
        """A shielded transaction on the store's connections (for the subscription store)."""
        return self._transaction()

    async def one(self, method: str, q: Query, *args: Any) -> Any:
        """One shielded statement (``method``: fetch, fetchrow, fetchval or execute)."""
        return await self._one(method, q, *args)

    # -- lookups ------------------------------------------------------------------------------------
    async def _live(self, conn: Conn, path: str, *, lock: bool) -> Record:
        """The stream row, locked when asked; expired streams are removed first (404), soft-deleted
        ones raise 410."""
        row = await conn.fetchrow(Q.stream_lock if lock else Q.stream_get, path)
        if row is None:
            raise StreamNotFound("stream not found")
        if row["expired"] and not row["soft_deleted"]:
            await self._expire(conn, row)
            if row["ref_count"] == 0:
                raise StreamNotFound("stream not found")
            raise StreamGone("stream is gone")
        if row["soft_deleted"]:
            raise StreamGone("stream is gone")
        return row

    async def _expire(self, conn: Conn, row: Record) -> None:
        """An expired stream: soft-deleted while forks read it, else deleted."""
        if row["ref_count"] > 0:
            await conn.fetch(Q.stream_soft_delete, row["id"], self.channel)
        else:
            await self._delete_cascade(conn, row["id"])

    async def get(self, path: str) -> StreamInfo:
        """Metadata of a live stream (HEAD): raises StreamNotFound / StreamGone. One round trip unless
        the stream has just expired (then it is removed in a transaction)."""
        row = await self._one("fetchrow", Q.stream_get, path)
        if row is not None and not row["expired"] and not row["soft_deleted"]:
            return StreamInfo.of(row)
        async with self._transaction() as conn:
            return StreamInfo.of(await self._live(conn, path, lock=False))

    # -- create -------------------------------------------------------------------------------------
    async def create(self, path: str, spec: CreateSpec) -> Created:
        """Create a stream (or a fork); the same config again is idempotent, a different one 409."""
        for _ in range(3):
            async with self._transaction() as conn:
                existing = await conn.fetchrow(Q.stream_lock, path)
                if existing is not None and existing["expired"] and not existing["soft_deleted"]:
                    await self._expire(conn, existing)
                    existing = await conn.fetchrow(Q.stream_lock, path)
                if existing is not None:
                    if existing["soft_deleted"]:
                        raise Conflict("stream was deleted but still has active forks")
                    self._check_same_config(existing, spec)
                    return Created(StreamInfo.of(existing), new=False)
                created = await self._insert(conn, path, spec)
                if created is not None:
                    return Created(created, new=True)
            # lost a race with a concurrent create of the same path: compare with the winner
        raise Conflict("stream is being created concurrently")

    def _check_same_config(self, row: Record, spec: CreateSpec) -> None:
        same_type = (spec.content_type is None and spec.forked_from is not None) or (
            media_type(spec.content_type or DEFAULT_CONTENT_TYPE) == media_type(row["content_type"])
        )
        same = (
            same_type
            and spec.ttl_seconds == row["ttl_seconds"]
            and spec.expires_at == row["expires_at"]
            and spec.closed == row["closed"]
            and spec.forked_from == row["forked_from_path"]
            and (spec.fork_offset is None or spec.fork_offset == row["fork_offset"])
            and spec.fork_sub_offset == row["fork_sub_offset"]
        )
        if not same:
            raise Conflict("stream already exists with a different configuration")

    async def _insert(self, conn: Conn, path: str, spec: CreateSpec) -> StreamInfo | None:
        content_type = spec.content_type
        ttl, expires_at, expires_ts = spec.ttl_seconds, spec.expires_at, spec.expires_at_ts
        source_id: int | None = None
        fork_offset: int | None = None
        prefix: bytes | None = None
        if spec.forked_from is not None:
            source = await conn.fetchrow(Q.stream_lock, spec.forked_from)
            if source is None or (source["expired"] and not source["soft_deleted"]):
                raise StreamNotFound("source stream not found")
            if source["soft_deleted"]:
                raise Conflict("source stream was deleted but still has active forks")
            if content_type is not None and media_type(content_type) != media_type(source["content_type"]):
                raise Conflict("content type differs from the source stream's")
            content_type = source["content_type"]
            fork_offset = source["tail"] if spec.fork_offset is None else spec.fork_offset
            if fork_offset > source["tail"]:
                raise BadRequest("fork offset beyond the source stream's tail")
            if spec.fork_sub_offset:
                prefix = await self._sub_offset_prefix(
                    conn, source["id"], fork_offset, spec.fork_sub_offset, is_json(content_type)
                )
            if ttl is None and expires_at is None:
                ttl, expires_at = source["ttl_seconds"], source["expires_at"]
                expires_ts = source["expires_at_ts"]
            source_id = source["id"]
        content_type = content_type or DEFAULT_CONTENT_TYPE
        initial: bytes | None = None
        if spec.body:
            if is_json(content_type):
                items = json_values(spec.body, allow_empty=True)
                initial = json_message(items) if items else None
            else:
                initial = spec.body
        start = fork_offset or 0
        sid = await conn.fetchval(
            Q.stream_insert,
            path,
            content_type,
            ttl,
            expires_at,
            expires_ts,
            False,
            source_id,
            fork_offset,
            spec.fork_sub_offset,
            spec.forked_from,
            spec.fork_offset is not None,
            start,
        )
        if sid is None:
            return None
        if source_id is not None:
            await conn.execute(Q.stream_add_ref, source_id)
        tail = start
        for data in (prefix, initial):
            if data:
                tail += len(data)
                await conn.fetch(
                    Q.stream_append_txn, sid, tail, data, False, None, None, None, None, False, self.channel
                )
        if spec.closed:
            await conn.fetch(Q.stream_close_txn, sid, None, None, None, False, self.channel)
        row = await conn.fetchrow(Q.stream_get, path)
        assert row is not None
        return StreamInfo.of(row)

    async def _sub_offset_prefix(self, conn: Conn, source_id: int, at: int, sub: int, json_mode: bool) -> bytes:
        """The first ``sub`` bytes (JSON: values) of the source's message after position ``at``."""
        ranges = await self._ranges(conn, source_id, at)
        rows = await conn.fetch(Q.stream_read, *ranges, 1, 1)
        if not rows:
            raise BadRequest("invalid fork sub-offset: no data past the fork offset")
        data = bytes(rows[0]["data"])
        if json_mode:
            try:
                values = json.loads(b"[" + data + b"]")
            except RecursionError:  # stored at the parser's depth limit: one level more here
                raise BadRequest("invalid fork sub-offset: the message is nested too deeply to split") from None
            if sub > len(values):
                raise BadRequest("invalid fork sub-offset: beyond the message")
            return json_message([json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in values[:sub]])
        if sub > len(data):
            raise BadRequest("invalid fork sub-offset: beyond the message")
        return data[:sub]

    # -- append / close -----------------------------------------------------------------------------
    async def append(
        self,
        path: str,
        body: bytes,
        *,
        content_type: str | None,
        producer: Producer | None = None,
        stream_seq: str | None = None,
        close: bool = False,
        expected_lease: tuple[int, int] | None = None,
    ) -> AppendResult:
        """Append ``body`` (non-empty) in one statement; ``close`` closes atomically with it.
        ``expected_lease`` = (instance id, lease token): fenced unless that claim is still current."""
        data: bytes | None = body
        json_error: str | None = None
        if is_json(content_type):
            try:
                data = json_message(json_values(body, allow_empty=False))
            except BadRequest as exc:
                data, json_error = None, ("empty_json" if "empty" in exc.message else "invalid_json")
        return await self._write(path, data, content_type, close, producer, stream_seq, json_error, expected_lease)

    async def close(self, path: str, *, producer: Producer | None = None) -> AppendResult:
        """Close without data (idempotent); with producer headers it takes part in sequencing."""
        return await self._write(path, None, None, True, producer, None, None, None)

    async def _write(
        self,
        path: str,
        data: bytes | None,
        content_type: str | None,
        close: bool,
        producer: Producer | None,
        stream_seq: str | None,
        json_error: str | None,
        lease: tuple[int, int] | None,
    ) -> AppendResult:
        p = producer
        args = AppendArgs(
            path,
            data,
            content_type,
            close,
            p.id if p else None,
            p.epoch if p else None,
            p.seq if p else None,
            p.spans_epochs if p else False,
            stream_seq,
            json_error,
            lease[0] if lease else None,
            lease[1] if lease else None,
        )
        if self._group is not None:
            row = await self._group.append(args)
        else:
            row = await self._one("fetchrow", Q.stream_append, *args.single(self.channel))  # one transaction
        assert row is not None
        verdict, tail = row["verdict"], row["tail"]
        offset = format_offset(tail) if tail is not None else ""
        match verdict:
            case "accepted":
                return AppendResult("accepted", offset, row["closed"], p, row["last_seq"])
            case "duplicate":
                return AppendResult("duplicate", offset, False, p, row["last_seq"])
            case "closed_duplicate":
                return AppendResult("duplicate", offset, True, p, row["last_seq"])
            case "already_closed":
                return AppendResult("duplicate", offset, True)
            case "not_found":
                raise StreamNotFound("stream not found")
            case "gone":
                raise StreamGone("stream is gone")
            case "expired":
                async with self._transaction() as conn:
                    await self._live(conn, path, lock=True)  # removes it and raises
                raise StreamNotFound("stream not found")
            case "fenced_lease":
                assert lease is not None
                raise FencedAppend(
                    f"instance {lease[0]} no longer holds lease {lease[1]}",
                    row["current_epoch"],
                    instance_id=lease[0],
                    lease_token=lease[1],
                )
            case "closed":
                raise Conflict("stream is closed", {"Stream-Closed": "true", "Stream-Next-Offset": offset})
            case "content_type":
                raise Conflict("content type does not match the stream's")
            case "stale_epoch":
                raise FencedAppend("stale producer epoch", row["current_epoch"])
            case "new_epoch_seq":
                raise BadRequest("a new producer epoch must start at sequence 0")
            case "seq_gap":
                assert p is not None
                raise _gap(row["expected_seq"], p.seq)
            case "stream_seq":
                raise Conflict("Stream-Seq regression")
            case "invalid_json":
                raise BadRequest("invalid JSON")
            case "empty_json":
                raise BadRequest("empty JSON arrays are not allowed")
        raise AssertionError(f"unknown append verdict {verdict!r}")

    # -- delete -------------------------------------------------------------------------------------
    async def delete(self, path: str) -> None:
        """Delete: soft while forks read through the stream, else at once (cascading to sources)."""
        async with self._transaction() as conn:
            row = await self._live(conn, path, lock=True)
            if row["ref_count"] > 0:
                await conn.fetch(Q.stream_soft_delete, row["id"], self.channel)
            else:
                await self._delete_cascade(conn, row["id"])

    async def _delete_cascade(self, conn: Conn, stream_id: int) -> None:
        gone = await conn.fetchrow(Q.stream_delete, stream_id, self.channel)
        source = gone["forked_from"] if gone is not None else None
        while source is not None:
            await conn.fetchrow(Q.stream_lock_id, source)
            ref = await conn.fetchrow(Q.stream_drop_ref, source)
            if ref is None or ref["ref_count"] > 0 or not ref["soft_deleted"]:
                return
            gone = await conn.fetchrow(Q.stream_delete, source, self.channel)
            source = gone["forked_from"] if gone is not None else None

    # -- read ---------------------------------------------------------------------------------------
    async def _ranges(self, conn: Conn, stream_id: int, after: int) -> tuple[list[int], list[int], list[int]]:
        return self._ranges_of(await conn.fetch(Q.stream_chain, stream_id), after)

    @staticmethod
    def _ranges_of(chain: list[Record], after: int) -> tuple[list[int], list[int], list[int]]:
        """Position ranges (stream, lo, hi] that make up a read after ``after``: the fork's own data
        and, below its fork offset, its sources' data (never a source's appends after the fork)."""
        sids: list[int] = []
        los: list[int] = []
        his: list[int] = []
        cap = 2**62
        for link in chain:
            if after < cap:
                sids.append(link["id"])
                los.append(after)
                his.append(cap)
            if link["fork_offset"] is None:
                break
            cap = min(cap, link["fork_offset"])
        return sids, los, his

    async def read(self, path: str, after: int | None, *, touch: bool = True) -> Page:
        """Messages after position ``after`` (None = the tail, for ``offset=now``), one chunk."""
        info = await self.get(path)
        if touch:
            await self.touch(info)
        return await self.read_info(info, after)

    async def read_info(self, info: StreamInfo, after: int | None) -> Page:
        """The page of stream ``info`` after position ``after`` (across its fork chain), bounded in rows
        and bytes."""
        if after is None or after >= info.tail:
            return Page(info, [], info.tail, True)
        if info.forked_from is None:
            ranges: tuple[list[int], list[int], list[int]] = ([info.id], [after], [2**62])
        else:
            ranges = self._ranges_of(await self._one("fetch", Q.stream_chain, info.id), after)
        rows = await self._one("fetch", Q.stream_read, *ranges, self.max_read_rows, self.max_read_bytes)
        messages = [(r["end_pos"], bytes(r["data"])) for r in rows if r["end_pos"] <= info.tail]
        if not messages:
            return Page(info, [], info.tail, True)
        last = messages[-1][0]
        return Page(info, messages, last, last >= info.tail)

    async def touch(self, info: StreamInfo) -> None:
        """Renew a TTL stream's expiry (a read keeps it alive)."""
        if info.ttl_seconds is not None:
            await self._one("execute", Q.stream_touch, info.id)


@dataclass(frozen=True, slots=True)
class AppendArgs:
    """The parameters of one ``ds_append`` (see ``stream_append`` in durable/sql/streams.sql)."""

    path: str
    data: bytes | None
    content_type: str | None
    close: bool
    producer: str | None
    epoch: int | None
    seq: int | None
    spans_epochs: bool
    stream_seq: str | None
    json_error: str | None
    lease_instance: int | None
    lease_token: int | None

    def single(self, channel: str) -> tuple[Any, ...]:
        """The arguments of ``stream_append``, in order."""
        return (
            self.path,
            self.data,
            self.content_type,
            self.close,
            self.producer,
            self.epoch,
            self.seq,
            self.spans_epochs,
            self.stream_seq,
            self.json_error,
            channel,
            self.lease_instance,
            self.lease_token,
        )

    @property
    def size(self) -> int:
        """Bytes this append carries (body and path), for batching limits."""
        return len(self.data or b"") + len(self.path)


class _Waiter:
    """One append waiting in a :class:`GroupCommit`: its row (or error) once its batch has committed.
    ``done`` is made only for an append that waits for the lane's task (one written by its own caller
    needs no event)."""

    __slots__ = ("args", "done", "error", "row")

    def __init__(self, args: AppendArgs, *, queued: bool = True) -> None:
        self.args = args
        self.done: anyio.Event | None = anyio.Event() if queued else None
        self.row: Record | None = None
        self.error: BaseException | None = None

    def settle(self) -> None:
        """Its batch is written (``row`` or ``error`` is set): wake the append."""
        if self.done is not None:
            self.done.set()


class _Lane:
    """One writer of a :class:`GroupCommit`: its queue of waiting appends, the event that wakes its task,
    and whether a batch of it is being written (by its task or by an append's own caller)."""

    __slots__ = ("busy", "queue", "wake")

    def __init__(self) -> None:
        self.queue: list[_Waiter] = []
        self.wake = anyio.Event()
        self.busy = False


class GroupCommit:
    """Group commit for appends (``durable serve``): appends that arrive while a batch is being written
    wait, then go together as the next batch: one ``stream_append_many`` statement, which runs
    ``ds_append`` for each of them in arrival order, and one commit. An append is answered only after
    its batch committed (acknowledged = committed, as for a single append), with its own verdict (each
    ``ds_append`` validates, fences and sequences its append exactly as alone). A lone append is sent at
    once (no timer): with one writer the batches are of one. A batch whose statement fails (a deadlock
    with another server's batch, a value PostgreSQL refuses) has committed nothing: its appends are then
    written one by one, so each gets its own answer; a lost server fails every append of the batch
    (DatabaseUnavailable, as a single append's). Bounded: at most ``MAX_BATCH`` appends or
    ``MAX_BATCH_BYTES`` bytes per statement (one append larger than that goes alone).

    ``lanes`` batches are written at once, each on its own connection: a stream's appends always take
    the same lane (by a hash of its path), so they keep their arrival order, and two lanes never lock the
    same stream (no deadlock between them). An append waits for at most the batch in flight on its lane.

    An append that finds its lane idle (no batch in flight, none queued) is written by its own caller at
    once, as a batch of one: no hand-over to the lane's task and back (a turn of each task and an event
    each way). Appends that arrive meanwhile queue as before; the lane's task writes them when that
    write ends. The lanes' tasks end only after such writes (:meth:`idle`)."""

    MAX_BATCH = 256
    MAX_BATCH_BYTES = 4 << 20

    def __init__(self, store: Store, lanes: int = 2) -> None:
        if not 1 <= lanes <= 16:
            raise ValueError(f"group commit lanes must be 1..16, not {lanes}")
        self.store = store
        self._lanes = [_Lane() for _ in range(lanes)]
        self.batches = 0  # statements sent (for tests and the bench)
        self.appends = 0
        self._direct = 0  # appends being written by their own callers (see append)
        self._idle: anyio.Event | None = None

    async def append(self, args: AppendArgs) -> Record:
        """Queue one append and wait (shielded: a client that went away still gets its append written,
        as before group commit) for its batch; its ``ds_append`` row."""
        lane = self._lanes[zlib.crc32(args.path.encode("utf-8", "surrogatepass")) % len(self._lanes)]
        if not lane.busy and not lane.queue:  # an idle lane: this append is its batch, written here
            waiter = _Waiter(args, queued=False)
            lane.busy = True
            self._direct += 1
            try:
                with anyio.CancelScope(shield=True):
                    await self._write([waiter])
            finally:
                lane.busy = False
                self._direct -= 1
                if lane.queue:
                    lane.wake.set()  # the appends queued meanwhile go next
                if not self._direct and self._idle is not None:
                    self._idle.set()
        else:
            waiter = _Waiter(args)
            lane.queue.append(waiter)
            lane.wake.set()
            assert waiter.done is not None
            with anyio.CancelScope(shield=True):
                await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        assert waiter.row is not None
        return waiter.row

    async def idle(self) -> None:
        """Until no append is being written by its own caller (before the store's connections go back)."""
        while self._direct:
            self._idle = anyio.Event()
            await self._idle.wait()

    @classmethod
    def _take(cls, queue: list[_Waiter]) -> list[_Waiter]:
        batch: list[_Waiter] = []
        size = 0
        for waiter in queue:
            if batch and (len(batch) >= cls.MAX_BATCH or size + waiter.args.size > cls.MAX_BATCH_BYTES):
                break
            batch.append(waiter)
            size += waiter.args.size
        del queue[: len(batch)]
        return batch

    async def run(self) -> None:
        """The lanes' writers, until cancelled."""
        async with anyio.create_task_group() as tasks:
            for lane in self._lanes:
                tasks.start_soon(self._run_lane, lane)

    async def _run_lane(self, lane: _Lane) -> None:
        """One batch at a time (the appends of a batch in flight are finished first: the write is shielded)."""
        while True:
            if not lane.queue or lane.busy:  # nothing queued, or an append's caller is writing (it wakes us)
                lane.wake = anyio.Event()
                await lane.wake.wait()
                continue
            batch = self._take(lane.queue)
            lane.busy = True
            try:
                with anyio.CancelScope(shield=True):
                    await self._write(batch)
            finally:
                lane.busy = False

    async def _write(self, batch: list[_Waiter]) -> None:
        self.batches += 1
        self.appends += len(batch)
        store = self.store
        try:
            if len(batch) == 1:
                rows = [await store._one("fetchrow", Q.stream_append, *batch[0].args.single(store.channel))]
            else:
                a = [w.args for w in batch]
                found = await store._one(
                    "fetch",
                    Q.stream_append_many,
                    [x.path for x in a],
                    [x.data for x in a],
                    [x.content_type for x in a],
                    [x.close for x in a],
                    [x.producer for x in a],
                    [x.epoch for x in a],
                    [x.seq for x in a],
                    [x.spans_epochs for x in a],
                    [x.stream_seq for x in a],
                    [x.json_error for x in a],
                    store.channel,
                    [x.lease_instance for x in a],
                    [x.lease_token for x in a],
                )
                by_ord = {r["ord"]: r for r in found}
                rows = [by_ord.get(i + 1) for i in range(len(batch))]
        except DatabaseUnavailable as exc:
            for waiter in batch:
                waiter.error = exc
                waiter.settle()
            return
        except Exception:
            if len(batch) == 1:  # its own error (a value PostgreSQL refused)
                rows = [None]
            else:  # nothing of the batch committed: each append alone, with its own answer
                await self._one_by_one(batch)
                return
        for waiter, row in zip(batch, rows, strict=True):
            if row is None:
                await self._one_by_one([waiter])
            else:
                waiter.row = row
                waiter.settle()

    async def _one_by_one(self, batch: list[_Waiter]) -> None:
        for waiter in batch:
            try:
                waiter.row = await self.store._one("fetchrow", Q.stream_append, *waiter.args.single(self.store.channel))
            except Exception as exc:
                waiter.error = exc
            waiter.settle()


def _gap(expected: int, received: int) -> Conflict:
    return Conflict(
        "producer sequence gap",
        {
            "Producer-Expected-Seq": str(expected),
            "Producer-Received-Seq": str(received),
        },
    )
