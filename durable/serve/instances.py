"""Engine endpoints: an instance's history as a read-only JSON stream, and signals over HTTP.

    GET  /instances/{id}/history[?offset=&live=long-poll|sse]   history rows in commit order
    HEAD /instances/{id}/history                                 tail offset
    POST /instances/{id}/signals/{name}   JSON body = payload; Idempotency-Key = dedup key

History offsets are ``<xid>_<id>`` (20 digits each): rows are ordered by commit visibility, so a row
that commits late is never skipped (see ``history_stream_page``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..client import Database
from ..errors import DefinitionError, InvalidArgument, NoSuchInstance, NotDeliverable, StateError
from ..sql import Q
from ..streams.errors import BadRequest, StreamError, StreamNotFound, TooLarge
from ..streams.text import load_json, parse_decimal, text_problem
from . import protocol as p
from .guard import problem
from .streams import Settings, error

PAGE_ROWS = 500
POLL_INTERVAL = 0.2
Position = tuple[int, int]


def format_position(pos: Position) -> str:
    """The stream offset of history position ``pos`` (transaction id, event id)."""
    return f"{pos[0]:020d}_{pos[1]:020d}"


def parse_position(text: str) -> Position:
    """The history position of an offset (``-1``: the beginning); 400 when malformed."""
    if text == "-1":
        return (0, 0)
    xid, _, hid = text.partition("_")
    position = (parse_decimal(xid), parse_decimal(hid))
    if position[0] is None or position[1] is None:
        raise BadRequest(f"invalid offset {text!r}: <xid>_<id>, each a non-negative integer up to 2^63-1")
    return (position[0], position[1])


def instance_id(request: Request) -> int:
    """The ``{id}`` of the path (digits, by the route); 400 past bigint: no instance has such an id."""
    text = request.path_params["id"]
    iid = parse_decimal(str(text))
    if iid is None:
        raise BadRequest(f"instance id {text} is out of range (at most 2^63-1)")
    return iid


def signal_payload(body: bytes) -> Any:
    """The JSON payload of a signal body (None when empty); 400 for what is not JSON or cannot be
    stored (NUL, a lone surrogate, nesting too deep for the parser, NaN)."""
    try:
        return load_json(body) if body.strip() else None
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def event_json(row: Any) -> str:
    """One history row as the JSON message of the history stream."""
    return json.dumps(
        {
            "id": row["id"],
            "instance_id": row["instance_id"],
            "machine": row["machine"],
            "event": row["event"],
            "step": row["step"],
            "attempt": row["attempt"],
            "status": row["status"],
            "worker_id": row["worker_id"],
            "lease_token": row["lease_token"],
            "detail": json.loads(row["detail"]) if row["detail"] is not None else None,
            "at": row["at"].isoformat(),
        },
        separators=(",", ":"),
    )


class InstanceEndpoints:
    """An instance over HTTP: its history as a read-only JSON stream, and signals by POST."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.pool = db.pool
        self.settings = settings

    async def _tail(self, iid: int) -> Position:
        row = await self.pool.fetchrow(Q.history_stream_tail, iid)
        return (0, 0) if row is None else (int(row["xid"]), row["id"])

    async def _page(self, iid: int, after: Position) -> tuple[list[str], Position]:
        rows = await self.pool.fetch(Q.history_stream_page, iid, str(after[0]), after[1], PAGE_ROWS)
        if not rows:
            return [], after
        return [event_json(r) for r in rows], (int(rows[-1]["xid"]), rows[-1]["id"])

    async def history(self, request: Request) -> Response:
        """GET: the instance's history from ``offset`` (catch-up, long-poll or SSE)."""
        try:
            iid = instance_id(request)
            if not await self.pool.fetchval(Q.history_instance_exists, iid):
                raise StreamNotFound(f"no instance with id {iid}")
            headers = {"content-type": "application/json"}
            if request.method == "HEAD":
                tail = await self._tail(iid)
                headers.update({"Stream-Next-Offset": format_position(tail), "cache-control": "no-store"})
                return Response(status_code=200, headers=headers)
            q = request.query_params
            offset = q.get("offset") or "-1"
            live = p.parse_live(q.get("live"))
            if not p.OFFSET_QUERY.match(offset):
                raise BadRequest("invalid offset format")
            after = await self._tail(iid) if offset == "now" else parse_position(offset)
            if live == "sse":
                return StreamingResponse(
                    self._sse(iid, after, q.get("cursor")),
                    headers={"cache-control": "no-cache", "content-type": "text/event-stream"},
                )
            events, pos = await self._page(iid, after)
            if not events and live == "long-poll":
                with trio.move_on_after(self.settings.long_poll_timeout):
                    while not events:
                        await trio.sleep(POLL_INTERVAL)
                        events, pos = await self._page(iid, after)
                if not events:
                    return Response(
                        status_code=204,
                        headers={
                            "Stream-Next-Offset": format_position(pos),
                            "Stream-Up-To-Date": "true",
                            "Stream-Cursor": p.cursor(q.get("cursor")),
                        },
                    )
            headers["Stream-Next-Offset"] = format_position(pos)
            if len(events) < PAGE_ROWS:
                headers["Stream-Up-To-Date"] = "true"
            if live == "long-poll":
                headers["Stream-Cursor"] = p.cursor(q.get("cursor"))
            return Response("[" + ",".join(events) + "]", status_code=200, headers=headers)
        except StreamError as exc:
            return error(exc)

    async def _sse(self, iid: int, after: Position, client_cursor: str | None) -> AsyncIterator[bytes]:
        ends_at = trio.current_time() + self.settings.sse_lifetime
        idle_since = trio.current_time()
        first = True
        while trio.current_time() < ends_at:
            events, pos = await self._page(iid, after)
            if events or first or trio.current_time() - idle_since >= self.settings.long_poll_timeout:
                out = [p.sse_event("data", "[" + ",".join(events) + "]")] if events else []
                out.append(
                    p.sse_control(
                        format_position(pos),
                        closed=False,
                        up_to_date=len(events) < PAGE_ROWS,
                        client_cursor=client_cursor,
                    )
                )
                yield b"".join(out)
                first = False
                idle_since = trio.current_time()
            after = pos
            if len(events) < PAGE_ROWS:
                await trio.sleep(POLL_INTERVAL)

    async def signal(self, request: Request) -> Response:
        """POST: deliver the body as a durable signal (name from the path, dedup key from a header)."""
        path = request.url.path
        try:
            iid = instance_id(request)
            name = request.path_params["name"]
            check = text_problem(name)
            if check is not None:
                raise BadRequest(f"signal name {check}")
            dedup = request.headers.get("idempotency-key") or request.headers.get("signal-dedup-key")
            check = text_problem(dedup) if dedup is not None else None
            if check is not None:
                raise BadRequest(f"Idempotency-Key {check}")
            payload = signal_payload(await self._body(request))
            signal_id = await self.db.signal(iid, name, payload, dedup_key=dedup)
        except StreamError as exc:
            return problem(path, exc.status, exc.message, exc.headers)
        except NoSuchInstance as exc:
            return problem(path, 404, str(exc))
        except NotDeliverable as exc:
            return problem(path, 409, str(exc))
        except (DefinitionError, StateError, InvalidArgument, TypeError, ValueError) as exc:
            return problem(path, 400, str(exc))  # the engine's own checks of a name, payload or key
        if signal_id is None:
            return JSONResponse({"signal_id": None, "duplicate": True}, status_code=200)
        return JSONResponse({"signal_id": signal_id, "duplicate": False}, status_code=201)

    async def _body(self, request: Request) -> bytes:
        """The body, at most ``max_append_bytes`` (413; a chunked body is drained first, so the client
        reads the answer; the Guard bounds how long that takes)."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= self.settings.max_append_bytes:
                chunks.append(chunk)
        if size > self.settings.max_append_bytes:
            raise TooLarge(f"request body above {self.settings.max_append_bytes} bytes")
        return b"".join(chunks)
