"""The stream endpoints: PUT create/fork, POST append/close, GET read (catch-up, long-poll, SSE), HEAD,
DELETE. Any path outside ``/instances/`` is a stream, except paths with a ``__ds`` segment: the control
API (:mod:`durable.serve.subscriptions`), with the path before ``__ds`` as its stream root."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

import trio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..errors import DatabaseUnavailable
from ..streams.errors import BadRequest, StreamError, StreamGone, StreamNotFound, TooLarge
from ..streams.offsets import NOW, format_offset, is_offset, parse_offset
from ..streams.store import CreateSpec, Page, Store, StreamInfo, is_json, media_type
from ..streams.subscriptions import RESERVED
from . import protocol as p
from .hub import Hub, wait

MAX_PATH_BYTES = 1024


@dataclass
class Settings:
    """``durable serve``'s limits and options (timeouts, sizes, connections, webhooks, access control)."""

    long_poll_timeout: float = 30.0
    sse_lifetime: float = 60.0
    max_append_bytes: int = 8 << 20  # largest stream or signal body (413 above)
    body_timeout: float = 60.0  # a request body must be complete this many seconds after its head (408)
    connections: int = 8  # PostgreSQL connections kept for stream statements
    sweep_interval: float = 0.5  # subscriptions: lease expiry and retry checks (seconds)
    webhook_timeout: float = 30.0  # one webhook POST (also at most the subscription's lease)
    allow_dev_webhooks: bool = True  # http://localhost and http://127.0.0.x webhook URLs
    public_url: str | None = None  # base of callback and JWKS URLs (default: the request's origin)
    tokens: tuple[str, ...] = ()  # access control: writes need one of these as a bearer token
    protect_reads: bool = False  # reads (GET, HEAD) need a token too


def error(exc: StreamError) -> Response:
    """The plain-text response of a refused request: its status, message and headers."""
    return Response(exc.message, status_code=exc.status, headers=exc.headers, media_type="text/plain")


class ControlAPI(Protocol):
    """The handler of the reserved ``__ds`` control paths (the subscription API)."""

    async def __call__(self, request: Request, root: str, rest: list[str]) -> Response: ...


class StreamEndpoints:
    """The Durable Streams protocol's endpoints on the store: PUT (create), POST (append), HEAD, GET
    (catch-up, long-poll, SSE), DELETE."""

    def __init__(self, store: Store, hub: Hub, settings: Settings, control: ControlAPI | None = None) -> None:
        self.store = store
        self.hub = hub
        self.settings = settings
        self.control = control

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        if len(path.encode()) > MAX_PATH_BYTES:
            return Response("stream path too long", status_code=400, media_type="text/plain")
        segments = path.split("/")
        if RESERVED in segments:  # the control API, routed before any stream operation
            at = segments.index(RESERVED)
            if self.control is None:
                return Response("the reserved __ds API is not enabled", status_code=501, media_type="text/plain")
            return await self.control(request, "/".join(segments[:at]), segments[at + 1 :])
        try:
            match request.method:
                case "PUT":
                    return await self.create(path, request)
                case "POST":
                    return await self.append(path, request)
                case "GET":
                    return await self.read(path, request)
                case "HEAD":
                    return await self.head(path)
                case "DELETE":
                    await self.store.delete(path)
                    return Response(status_code=204)
                case _:
                    return Response("method not allowed", status_code=405, media_type="text/plain")
        except StreamError as exc:
            return error(exc)
        except DatabaseUnavailable as exc:
            return Response(str(exc), status_code=503, headers={"retry-after": "1"}, media_type="text/plain")

    # -- PUT ----------------------------------------------------------------------------------------
    async def create(self, path: str, request: Request) -> Response:
        """PUT: create the stream (or a fork); 200 when it exists with the same configuration."""
        h = request.headers
        forked_from = h.get("stream-forked-from")
        content_type = h.get("content-type")
        if not p.valid_media_type(content_type):
            content_type = None if forked_from else "application/octet-stream"
        ttl_raw, expires_raw = h.get("stream-ttl"), h.get("stream-expires-at")
        if ttl_raw is not None and expires_raw is not None:
            raise BadRequest("give Stream-TTL or Stream-Expires-At, not both")
        ttl = p.parse_ttl(ttl_raw)
        expires_ts = p.parse_expires_at(expires_raw)
        fork_offset_raw = h.get("stream-fork-offset")
        fork_offset = None
        if fork_offset_raw is not None:
            if not is_offset(fork_offset_raw):
                raise BadRequest("invalid Stream-Fork-Offset format")
            fork_offset = parse_offset(fork_offset_raw)
        sub_raw = h.get("stream-fork-sub-offset")
        if sub_raw is not None and not forked_from:
            raise BadRequest("Stream-Fork-Sub-Offset requires Stream-Forked-From")
        sub = p.parse_sub_offset(sub_raw)
        body = await self._body(request)
        spec = CreateSpec(
            content_type=content_type,
            ttl_seconds=ttl,
            expires_at=expires_raw,
            expires_at_ts=expires_ts,
            closed=p.is_true(h.get("stream-closed")),
            body=body,
            forked_from=forked_from,
            fork_offset=fork_offset,
            fork_sub_offset=sub,
        )
        created = await self.store.create(path, spec)
        s = created.stream
        headers = {"content-type": s.content_type, "Stream-Next-Offset": s.next_offset}
        if created.new:  # the path as the client encoded it: a header value is latin-1 only
            raw = request.scope.get("raw_path")
            headers["location"] = str(request.url.replace(path=raw.decode("ascii") if raw else quote(path), query=""))
            self.hub.notify(s.id)
        if s.closed:
            headers["Stream-Closed"] = "true"
        return Response(status_code=201 if created.new else 200, headers=headers)

    async def _body(self, request: Request) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():  # drained even when too large: the client sees the 413
            size += len(chunk)
            if size <= self.settings.max_append_bytes:
                chunks.append(chunk)
        if size > self.settings.max_append_bytes:
            raise TooLarge("request body too large")
        return b"".join(chunks)

    # -- POST ---------------------------------------------------------------------------------------
    async def append(self, path: str, request: Request) -> Response:
        """POST: append the body (idempotent producer headers deduplicate; Stream-Closed closes)."""
        h = request.headers
        producer = p.parse_producer(h.get("producer-id"), h.get("producer-epoch"), h.get("producer-seq"))
        close = p.is_true(h.get("stream-closed"))
        body = await self._body(request)
        if not body and close:
            result = await self.store.close(path, producer=producer)
        else:
            if not body:
                raise BadRequest("empty body (only a close may have no body)")
            content_type = h.get("content-type")
            if not content_type:
                raise BadRequest("Content-Type is required")
            result = await self.store.append(
                path, body, content_type=content_type, producer=producer, stream_seq=h.get("stream-seq"), close=close
            )
        headers: dict[str, str] = {}
        if result.status == "accepted" or result.closed or producer is None:
            headers["Stream-Next-Offset"] = result.next_offset
        if result.closed:
            headers["Stream-Closed"] = "true"
        if producer is not None:
            headers["Producer-Epoch"] = str(producer.epoch)
            headers["Producer-Seq"] = str(result.last_seq if result.last_seq is not None else producer.seq)
        status = 200 if producer is not None and result.status == "accepted" and body else 204
        return Response(status_code=status, headers=headers)

    # -- HEAD ---------------------------------------------------------------------------------------
    async def head(self, path: str) -> Response:
        """HEAD: the stream's metadata headers."""
        s = await self.store.get(path)
        headers = {
            "content-type": s.content_type,
            "Stream-Next-Offset": s.next_offset,
            "cache-control": "no-store",
            "etag": p.etag(s.id, "-1", s.next_offset, s.closed),
        }
        if s.closed:
            headers["Stream-Closed"] = "true"
        if s.ttl_seconds is not None:
            headers["Stream-TTL"] = str(s.ttl_seconds)
        if s.expires_at is not None:
            headers["Stream-Expires-At"] = s.expires_at
        return Response(status_code=200, headers=headers)

    # -- GET ----------------------------------------------------------------------------------------
    async def read(self, path: str, request: Request) -> Response:
        """GET: read from ``offset`` (catch-up, ``live=long-poll`` or ``live=sse``)."""
        q = request.query_params
        offsets = q.getlist("offset")
        offset = offsets[0] if offsets else None
        live = q.get("live")
        client_cursor = q.get("cursor")
        s = await self.store.get(path)
        if offset is not None:
            if offset == "":
                raise BadRequest("empty offset")
            if len(offsets) > 1:
                raise BadRequest("more than one offset")
            if not p.OFFSET_QUERY.match(offset):
                raise BadRequest("invalid offset format")
        live = p.parse_live(live)
        if live in ("long-poll", "sse") and not offset:
            raise BadRequest(f"live={live} requires an offset")
        if live == "sse":
            return self.sse(path, s, None if offset == NOW else parse_offset(offset or "-1"), client_cursor)
        if offset == NOW and live != "long-poll":
            await self.store.touch(s)
            headers = {
                "Stream-Next-Offset": s.next_offset,
                "Stream-Up-To-Date": "true",
                "cache-control": "no-store",
                "content-type": s.content_type,
            }
            if s.closed:
                headers["Stream-Closed"] = "true"
            return Response(b"[]" if s.json else b"", status_code=200, headers=headers)
        after = s.tail if offset == NOW else parse_offset(offset or "-1")
        event = self.hub.subscribe(s.id)
        await self.store.touch(s)
        page = await self.store.read_info(s, after)
        if live == "long-poll" and not page.messages and (offset == NOW or after == page.stream.tail):
            if page.stream.closed:
                return Response(
                    status_code=204,
                    headers={
                        "Stream-Next-Offset": page.stream.next_offset,
                        "Stream-Up-To-Date": "true",
                        "Stream-Closed": "true",
                    },
                )
            page = await self._wait_for_data(path, page, event)
            if not page.messages:
                headers = {
                    "Stream-Next-Offset": page.next_offset,
                    "Stream-Up-To-Date": "true",
                    "Stream-Cursor": p.cursor(client_cursor),
                }
                if page.stream.closed:
                    headers["Stream-Closed"] = "true"
                return Response(status_code=204, headers=headers)
        return self._page_response(page, offset or "-1", request, live, client_cursor)

    async def _wait_for_data(self, path: str, page: Page, event: trio.Event) -> Page:
        """Long-poll: wait for an append after the page's position (or closure / timeout)."""
        deadline = trio.current_time() + self.settings.long_poll_timeout
        after = page.next_position
        while True:
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                return page
            # re-check now and then even without a notification (a lost NOTIFY costs at most 1 s)
            await wait(event, min(remaining, 1.0))
            event = self.hub.subscribe(page.stream.id)
            page = await self.store.read(path, after)
            if page.messages or page.stream.closed:
                return page

    def _page_response(
        self, page: Page, start: str, request: Request, live: str | None, client_cursor: str | None
    ) -> Response:
        s = page.stream
        closed = page.closed_at_tail
        headers = {"content-type": s.content_type, "Stream-Next-Offset": page.next_offset}
        if live == "long-poll":
            headers["Stream-Cursor"] = p.cursor(client_cursor)
        if page.up_to_date:
            headers["Stream-Up-To-Date"] = "true"
        if closed:
            headers["Stream-Closed"] = "true"
        tag = p.etag(s.id, start, page.next_offset, closed)
        headers["etag"] = tag
        if request.headers.get("if-none-match") == tag:
            return Response(status_code=304, headers={"etag": tag})
        if media_type(s.content_type) == "application/octet-stream":
            headers["content-disposition"] = "attachment"
        return Response(page.body(), status_code=200, headers=headers)

    # -- SSE ----------------------------------------------------------------------------------------
    def sse(self, path: str, s: StreamInfo, after: int | None, client_cursor: str | None) -> Response:
        """The SSE response of a live read: data and control events until the stream closes or the
        connection's lifetime ends (binary streams base64-encoded)."""
        ct = media_type(s.content_type)
        base64_mode = not (ct.startswith("text/") or ct == "application/json")
        headers = {"cache-control": "no-cache", "content-type": "text/event-stream"}
        if base64_mode:
            headers["Stream-SSE-Data-Encoding"] = "base64"
        events = self._sse_events(path, s, after, client_cursor, base64_mode)
        return StreamingResponse(events, status_code=200, headers=headers)

    async def _sse_events(
        self, path: str, s: StreamInfo, after: int | None, client_cursor: str | None, base64_mode: bool
    ) -> AsyncIterator[bytes]:
        json_mode = is_json(s.content_type)
        position = s.tail if after is None else after
        ends_at = trio.current_time() + self.settings.sse_lifetime
        while True:
            event = self.hub.subscribe(s.id)
            try:
                page = await self.store.read(path, position)
            except (StreamNotFound, StreamGone):
                return
            closed = page.closed_at_tail
            out = []
            # every data event is followed by its control event (clients frame data by controls)
            for i, (end, data) in enumerate(page.messages):
                last = i == len(page.messages) - 1
                out.append(p.sse_data(data, base64_mode=base64_mode, json_mode=json_mode))
                out.append(
                    p.sse_control(
                        format_offset(end),
                        closed=closed and last,
                        up_to_date=page.up_to_date and last,
                        client_cursor=client_cursor,
                    )
                )
            if not page.messages:
                out.append(
                    p.sse_control(
                        page.next_offset, closed=closed, up_to_date=page.up_to_date, client_cursor=client_cursor
                    )
                )
            yield b"".join(out)
            if closed:
                return
            position = page.next_position
            if not page.up_to_date:
                continue
            # wait for a notification; re-check the tail every second in case one was lost, and
            # send a keep-alive control event after a poll window without data
            keep_alive_at = trio.current_time() + self.settings.long_poll_timeout
            while not await wait(event, min(1.0, max(0.0, min(keep_alive_at, ends_at) - trio.current_time()))):
                now = trio.current_time()
                if now >= ends_at:
                    return
                if now >= keep_alive_at:
                    break
                event = self.hub.subscribe(s.id)  # before the check: an append after it still wakes us
                try:
                    current = await self.store.get(path)
                except (StreamNotFound, StreamGone):
                    return
                if current.tail != position or current.closed:
                    break
