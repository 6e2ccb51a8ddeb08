"""An HTTP client for Durable Streams (any server: ``durable serve``, the reference Node server, ...).

httpx underneath, anyio for sleeping and background flushing, so it runs under trio (and asyncio).

    async with StreamsClient("http://127.0.0.1:4437") as c:
        await c.create("/chat/1", content_type="application/json")
        async with c.writer("/chat/1", producer_id="svc-1", epoch=0) as w:   # batching + linger
            await w.append({"token": "Hel"})
            await w.append({"token": "lo"})
        async for chunk in c.read("/chat/1", offset="-1", live="sse", checkpoint=save_offset):
            print(chunk.json(), chunk.offset)

The writer sends each batch with Producer-Id/Epoch/Seq and retries it with the same seq after a
network error or 5xx, so a batch is stored exactly once. The reader resumes from the last offset it
handed out after an error (exponential backoff) and calls ``checkpoint(offset)`` once a chunk has been
consumed (when the next one is asked for, and at the end).
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from ..errors import DurableError, Fenced

__all__ = ["Backoff", "Chunk", "Fenced", "FencedResponse", "StreamInfo", "StreamsClient", "StreamsError", "Writer"]

RETRYABLE = {429, 500, 502, 503, 504}


class StreamsError(DurableError):
    """A request the server refused: its HTTP ``status``, the message and the response ``headers``."""

    def __init__(self, status: int, message: str, headers: httpx.Headers | None = None) -> None:
        DurableError.__init__(self, f"{status}: {message}")  # not super(): FencedResponse's next base is Fenced
        self.status = status
        self.headers = headers or httpx.Headers()


class FencedResponse(StreamsError, Fenced):
    """403: a newer epoch of this producer exists (``current_epoch``, from the Producer-Epoch header), or
    the server's stream fenced the append otherwise. Catch it as :class:`durable.Fenced`."""

    def __init__(self, status: int, message: str, headers: httpx.Headers | None = None) -> None:
        StreamsError.__init__(self, status, message, headers)
        self.current_epoch = int(self.headers.get("producer-epoch", "0"))
        self.call = "append"


@dataclass
class Backoff:
    """Exponential backoff with full jitter: ``base * factor**n`` capped at ``cap`` seconds."""

    base: float = 0.05
    factor: float = 2.0
    cap: float = 5.0
    attempts: int = 8  # give up after this many consecutive failures

    def delay(self, n: int) -> float:
        """Seconds to wait after the ``n``-th consecutive failure (0-based), drawn with full jitter."""
        return random.uniform(0, min(self.cap, self.base * self.factor**n))


@dataclass(frozen=True)
class StreamInfo:
    """What HEAD tells of a stream: content type, next offset, whether it is closed, its TTL or expiry."""

    content_type: str
    next_offset: str
    closed: bool
    ttl: int | None
    expires_at: str | None


@dataclass(frozen=True)
class Chunk:
    """Bytes read from a stream and the offset to continue from."""

    data: bytes
    offset: str
    up_to_date: bool
    closed: bool

    def json(self) -> list[Any]:
        """The messages of a JSON-mode chunk."""
        return json.loads(self.data) if self.data else []


def _check(r: httpx.Response) -> httpx.Response:
    if r.status_code == 403:
        raise FencedResponse(403, r.text, r.headers)
    if r.status_code >= 400:
        raise StreamsError(r.status_code, r.text or r.reason_phrase, r.headers)
    return r


class StreamsClient:
    """An HTTP client of one Durable Streams server (``base_url``): create, append, read (catch-up,
    long-poll, SSE), head, delete, and :meth:`writer` for exactly-once batched appends. Use as an async
    context manager; ``http`` may be an httpx.AsyncClient of your own."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 60.0,
        backoff: Backoff | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self.backoff = backoff or Backoff()

    async def __aenter__(self) -> StreamsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request retried with backoff on network errors and 429/5xx (for idempotent calls)."""
        for n in range(self.backoff.attempts):
            try:
                r = await self.http.request(method, path, **kwargs)
            except httpx.TransportError:
                if n == self.backoff.attempts - 1:
                    raise
            else:
                if r.status_code not in RETRYABLE or n == self.backoff.attempts - 1:
                    return _check(r)
            await anyio.sleep(self.backoff.delay(n))
        raise AssertionError("unreachable")

    # -- stream management --------------------------------------------------------------------------
    async def create(
        self,
        path: str,
        *,
        content_type: str = "application/octet-stream",
        ttl: int | None = None,
        expires_at: str | None = None,
        closed: bool = False,
        data: bytes = b"",
    ) -> str:
        """Create (or confirm) a stream; returns its tail offset."""
        headers = {"content-type": content_type}
        if ttl is not None:
            headers["stream-ttl"] = str(ttl)
        if expires_at is not None:
            headers["stream-expires-at"] = expires_at
        if closed:
            headers["stream-closed"] = "true"
        r = await self._request("PUT", path, headers=headers, content=data)
        return r.headers["stream-next-offset"]

    async def head(self, path: str) -> StreamInfo:
        """The stream's metadata (HEAD)."""
        r = await self._request("HEAD", path)
        ttl = r.headers.get("stream-ttl")
        return StreamInfo(
            r.headers.get("content-type", ""),
            r.headers["stream-next-offset"],
            r.headers.get("stream-closed") == "true",
            int(ttl) if ttl else None,
            r.headers.get("stream-expires-at"),
        )

    async def delete(self, path: str) -> None:
        """Delete the stream."""
        await self._request("DELETE", path)

    async def append(
        self, path: str, data: bytes, *, content_type: str = "application/octet-stream", close: bool = False
    ) -> str:
        """One plain append (not retried: without producer headers a retry could duplicate)."""
        headers = {"content-type": content_type}
        if close:
            headers["stream-closed"] = "true"
        r = _check(await self.http.post(path, headers=headers, content=data))
        return str(r.headers.get("stream-next-offset", ""))

    # -- writing ------------------------------------------------------------------------------------
    @asynccontextmanager
    async def writer(
        self,
        path: str,
        *,
        producer_id: str,
        epoch: int = 0,
        content_type: str = "application/octet-stream",
        linger: float = 0.005,
        max_batch_bytes: int = 256 * 1024,
        auto_claim: bool = False,
    ) -> AsyncIterator[Writer]:
        """A batching, exactly-once writer; everything appended is flushed when the block ends."""
        w = Writer(self, path, producer_id, epoch, content_type, linger, max_batch_bytes, auto_claim)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(w._run)
                try:
                    yield w
                    await w.flush()
                finally:
                    w._stop = True
                    w._wake.set()
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:  # one error (e.g. Fenced) is raised as itself
                raise group.exceptions[0] from None
            raise

    # -- reading ------------------------------------------------------------------------------------
    async def read(
        self,
        path: str,
        *,
        offset: str = "-1",
        live: str | None = None,
        checkpoint: Callable[[str], Awaitable[None] | None] | None = None,
    ) -> AsyncGenerator[Chunk, None]:
        """Chunks from ``offset``: catch-up only (``live=None``, ends when up to date), or tailing
        with ``long-poll`` / ``sse`` (ends when the stream is closed). Errors back off and resume.
        To stop early and still checkpoint the last chunk, close the generator:
        ``async with contextlib.aclosing(client.read(...)) as chunks: ...``."""
        failures = 0
        cursor: str | None = None
        pending: str | None = None  # offset of the chunk handed out last, checkpointed once consumed

        async def commit() -> None:
            nonlocal pending
            if checkpoint is not None and pending is not None:
                result = checkpoint(pending)
                if result is not None:
                    await result
            pending = None

        try:
            while True:
                try:
                    if live == "sse":
                        async with aclosing(self._sse(path, offset, cursor)) as events:
                            async for chunk in events:
                                failures = 0
                                await commit()
                                offset = chunk.offset
                                if chunk.data:
                                    pending = offset
                                    yield chunk
                                if chunk.closed:
                                    return
                        continue  # the server ended the connection: reconnect from offset
                    params = {"offset": offset}
                    if live == "long-poll":
                        params["live"] = "long-poll"
                        if cursor:
                            params["cursor"] = cursor
                    r = await self.http.get(path, params=params)
                except httpx.TransportError:
                    failures = await self._fail(failures)
                    continue
                if r.status_code in RETRYABLE:
                    failures = await self._fail(failures)
                    continue
                _check(r)
                failures = 0
                cursor = r.headers.get("stream-cursor", cursor)
                await commit()
                chunk = Chunk(
                    r.content if r.status_code == 200 else b"",
                    r.headers["stream-next-offset"],
                    r.headers.get("stream-up-to-date") == "true",
                    r.headers.get("stream-closed") == "true",
                )
                offset = chunk.offset
                has_data = bool(chunk.data) and chunk.data != b"[]"
                if has_data:
                    pending = offset
                    yield chunk
                if chunk.closed or (live is None and chunk.up_to_date):
                    return
        finally:
            with anyio.CancelScope(shield=True):
                await commit()

    async def _fail(self, failures: int) -> int:
        if failures + 1 >= self.backoff.attempts:
            raise StreamsError(503, "server unreachable")
        await anyio.sleep(self.backoff.delay(failures))
        return failures + 1

    async def _sse(self, path: str, offset: str, cursor: str | None) -> AsyncGenerator[Chunk, None]:
        params = {"offset": offset, "live": "sse"}
        if cursor:
            params["cursor"] = cursor
        async with self.http.stream("GET", path, params=params, timeout=None) as r:
            if r.status_code in RETRYABLE:
                raise httpx.TransportError(f"server answered {r.status_code}")
            if r.status_code >= 400:
                await r.aread()
                _check(r)
            b64 = r.headers.get("stream-sse-data-encoding") == "base64"
            kind, lines, data = "", [], b""
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    lines.append(line[5:][1:] if line[5:].startswith(" ") else line[5:])
                elif line == "":
                    payload = "\n".join(lines)
                    if kind == "data":
                        data += base64.b64decode(payload.replace("\n", "")) if b64 else payload.encode()
                    elif kind == "control":
                        control = json.loads(payload)
                        yield Chunk(
                            data,
                            control["streamNextOffset"],
                            bool(control.get("upToDate")),
                            bool(control.get("streamClosed")),
                        )
                        data = b""
                    kind, lines = "", []


@dataclass
class Writer:
    """Buffers appends and sends them in batches (at most one request in flight, in order)."""

    client: StreamsClient
    path: str
    producer_id: str
    epoch: int
    content_type: str
    linger: float
    max_batch_bytes: int
    auto_claim: bool
    seq: int = 0
    last_offset: str | None = None
    retries: int = 0  # batches sent again after a network error or 5xx
    _buffer: list[bytes] = field(default_factory=list)
    _size: int = 0
    _stop: bool = False
    _error: BaseException | None = None
    _sending: bool = False
    _wake: anyio.Event = field(default_factory=anyio.Event)

    @property
    def in_flight(self) -> bool:
        """A batch is being sent (or retried) right now."""
        return self._sending

    @property
    def json(self) -> bool:
        """Whether the stream is in JSON mode (messages are JSON values)."""
        return self.content_type.split(";")[0].strip().lower() == "application/json"

    async def append(self, item: bytes | str | Any) -> None:
        """Buffer one message (bytes; or any JSON value in JSON mode); sent within ``linger``."""
        if self._error is not None:
            raise self._error
        data = json.dumps(item).encode() if self.json else (item.encode() if isinstance(item, str) else item)
        self._buffer.append(data)
        self._size += len(data)
        if self._size >= self.max_batch_bytes or len(self._buffer) == 1:
            self._wake.set()

    async def flush(self) -> None:
        """Wait until everything appended so far is acknowledged."""
        while self._buffer or self._sending:
            if self._error is not None:
                raise self._error
            self._wake.set()
            await anyio.sleep(0.001)
        if self._error is not None:
            raise self._error

    async def _run(self) -> None:
        while not (self._stop and not self._buffer):
            await self._wake.wait()
            self._wake = anyio.Event()
            if not self._buffer:
                continue
            if self._size < self.max_batch_bytes and not self._stop:
                await anyio.sleep(self.linger)  # let more appends join the batch
            batch, self._buffer, self._size = self._buffer, [], 0
            self._sending = True
            try:
                await self._send(batch)
            except BaseException as exc:  # surfaced to the next append/flush
                self._error = exc
                self._sending = False
                return
            self._sending = False
            if self._buffer:
                self._wake.set()

    async def _send(self, batch: list[bytes]) -> None:
        body = b"[" + b",".join(batch) + b"]" if self.json else b"".join(batch)
        backoff = self.client.backoff
        for n in range(backoff.attempts):
            headers = {
                "content-type": self.content_type,
                "producer-id": self.producer_id,
                "producer-epoch": str(self.epoch),
                "producer-seq": str(self.seq),
            }
            try:
                r = await self.client.http.post(self.path, headers=headers, content=body)
            except httpx.TransportError:
                self.retries += 1
                await anyio.sleep(backoff.delay(n))
                continue  # same seq again: the server drops it if the first attempt landed
            if r.status_code in RETRYABLE:
                self.retries += 1
                await anyio.sleep(backoff.delay(n))
                continue
            if r.status_code == 403 and self.auto_claim:
                self.epoch = int(r.headers.get("producer-epoch", self.epoch)) + 1
                self.seq = 0
                continue
            _check(r)
            self.last_offset = r.headers.get("stream-next-offset", self.last_offset)
            self.seq += 1
            return
        raise StreamsError(503, "append failed after retries")
