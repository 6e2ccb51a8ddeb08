"""Pure helpers of the HTTP protocol: header parsing, cursors, SSE framing, ETags."""

from __future__ import annotations

import base64
import json
import random
import re
import time
from datetime import UTC, datetime

from ..streams.errors import BadRequest
from ..streams.store import MAX_JS_INT, Producer
from ..streams.text import parse_decimal

CURSOR_EPOCH = 1728432000.0  # 2024-10-09T00:00:00Z
CURSOR_INTERVAL = 20

_NON_NEGATIVE = re.compile(r"0|[1-9][0-9]*")
_MEDIA = re.compile(r"^[\w.+-]+/[\w.+-]+")
OFFSET_QUERY = re.compile(r"(-1|now|[0-9]+_[0-9]+)\Z")
LIVE_MODES = ("long-poll", "sse")
MAX_TTL_SECONDS = 36525 * 86400  # 100 years: far beyond any use, far inside PostgreSQL's intervals

# CORS and browser security headers on every response (protocol 12.7)
COMMON_HEADERS = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "GET, POST, PUT, DELETE, HEAD, OPTIONS",
    "access-control-allow-headers": (
        "content-type, authorization, Stream-Seq, Stream-TTL, Stream-Expires-At, Stream-Closed, "
        "Producer-Id, Producer-Epoch, Producer-Seq, Stream-Forked-From, Stream-Fork-Offset, "
        "Stream-Fork-Sub-Offset, Idempotency-Key, If-None-Match"
    ),
    "access-control-expose-headers": (
        "Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, Producer-Epoch, "
        "Producer-Seq, Producer-Expected-Seq, Producer-Received-Seq, etag, content-type, "
        "Stream-SSE-Data-Encoding, Location"
    ),
    "x-content-type-options": "nosniff",
    "cross-origin-resource-policy": "cross-origin",
}


def is_true(value: str | None) -> bool:
    """``Stream-Closed``: present only when exactly ``true`` (any case)."""
    return value is not None and value.strip().lower() == "true"


def valid_media_type(value: str | None) -> bool:
    """Whether ``value`` is a well-formed media type (``type/subtype`` with optional parameters)."""
    return bool(value and _MEDIA.match(value.strip()))


def parse_ttl(value: str | None) -> int | None:
    """The Stream-TTL header in seconds (None when absent); 400 when malformed or over 100 years."""
    if value is None:
        return None
    if not _NON_NEGATIVE.fullmatch(value):
        raise BadRequest("invalid Stream-TTL: a non-negative integer without sign or leading zeros")
    ttl = parse_decimal(value, MAX_TTL_SECONDS)
    if ttl is None:
        raise BadRequest(f"invalid Stream-TTL: at most {MAX_TTL_SECONDS} seconds (100 years)")
    return ttl


def parse_expires_at(value: str | None) -> datetime | None:
    """The Stream-Expires-At header as an aware datetime (None when absent); 400 when malformed."""
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        raise BadRequest("invalid Stream-Expires-At: an RFC 3339 timestamp") from None
    if ts.tzinfo is None:
        raise BadRequest("invalid Stream-Expires-At: a time zone is required")
    try:
        ts.astimezone(UTC)  # stored in UTC: 0001-01-01T00:00+01:00 has no UTC date
    except OverflowError:
        raise BadRequest("invalid Stream-Expires-At: outside years 1-9999 in UTC") from None
    return ts


def parse_sub_offset(value: str | None) -> int:
    """A fork's sub-offset header (0 when absent); 400 when it is not a non-negative integer."""
    if value is None:
        return 0
    sub = parse_decimal(value.strip()) if _NON_NEGATIVE.fullmatch(value.strip()) else None
    if sub is None:
        raise BadRequest("invalid Stream-Fork-Sub-Offset: a non-negative integer up to 2^63-1")
    return sub


def parse_live(value: str | None) -> str | None:
    """The ``live`` query parameter: absent, ``long-poll`` or ``sse`` (400 otherwise)."""
    if value is not None and value not in LIVE_MODES:
        raise BadRequest(f"invalid live mode {value!r}: long-poll or sse")
    return value


def parse_producer(pid: str | None, epoch: str | None, seq: str | None) -> Producer | None:
    """The producer headers: all three or none (400 otherwise)."""
    if pid is None and epoch is None and seq is None:
        return None
    if pid is None or epoch is None or seq is None:
        raise BadRequest("Producer-Id, Producer-Epoch and Producer-Seq must be given together")
    if pid == "":
        raise BadRequest("Producer-Id must not be empty")
    values = []
    for name, raw in (("Producer-Epoch", epoch), ("Producer-Seq", seq)):
        value = parse_decimal(raw, MAX_JS_INT)
        if value is None:
            raise BadRequest(f"invalid {name}: a non-negative integer <= 2^53-1")
        values.append(value)
    return Producer(pid, values[0], values[1])


def cursor(client: str | None) -> str:
    """Stream-Cursor: the current 20 s interval; strictly above the client's when it is not behind."""
    current = int((time.time() - CURSOR_EPOCH) // CURSOR_INTERVAL)
    try:
        theirs = int(client) if client else None
    except ValueError:
        theirs = None
    if theirs is None or theirs < current:
        return str(current)
    jitter = random.randint(1, 3600)
    return str(theirs + max(1, -(-jitter // CURSOR_INTERVAL)))


def sse_event(kind: str, payload: str) -> bytes:
    """One SSE event; every line of the payload (CR, LF or CRLF ends one) gets its own ``data:``."""
    lines = re.split(r"\r\n|\r|\n", payload)
    return (f"event: {kind}\n" + "".join(f"data:{line}\n" for line in lines) + "\n").encode("utf-8")


def sse_data(data: bytes, *, base64_mode: bool, json_mode: bool) -> bytes:
    """One SSE ``data`` event of a read's bytes (base64, a JSON array, or text)."""
    if base64_mode:
        return sse_event("data", base64.b64encode(data).decode("ascii"))
    text = data.decode("utf-8", errors="replace")
    return sse_event("data", f"[{text}]" if json_mode else text)


def sse_control(next_offset: str, *, closed: bool, up_to_date: bool, client_cursor: str | None) -> bytes:
    """One SSE ``control`` event: the next offset, and closed, or the cursor and up-to-date."""
    control: dict[str, object] = {"streamNextOffset": next_offset}
    if closed:
        control["streamClosed"] = True
    else:
        control["streamCursor"] = cursor(client_cursor)
        if up_to_date:
            control["upToDate"] = True
    return sse_event("control", json.dumps(control, separators=(",", ":")))


def etag(stream_id: int, start: str, end: str, closed: bool) -> str:
    """The ETag of a read of ``stream_id`` from ``start`` to ``end`` (closed streams differ)."""
    return f'"{stream_id}:{start}:{end}{":c" if closed else ""}"'
