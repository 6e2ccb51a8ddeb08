"""Subscription configuration (protocol 6.2): parsing and validation of a PUT body, its normalized form
and hash (idempotent re-confirmation), and stream paths relative to a stream root.

A subscription lives under ``{root}/__ds/subscriptions/{id}``; ``root`` is the URL path before the
``__ds`` segment (``""`` for ``/__ds/...``). Stream paths in bodies are root-relative (``events/a``);
the stream they name is at ``{root}/events/a``. Pure functions: no database, no web stack.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from .errors import invalid
from .text import load_json

TYPES = ("webhook", "pull-wake")
DEFAULT_LEASE_TTL_MS = 30_000
MIN_LEASE_TTL_MS = 1_000
MAX_LEASE_TTL_MS = 600_000
MAX_STREAMS = 1000
_ID = re.compile(r"^[A-Za-z0-9._~:@-]{1,200}$")
_FIELDS = {"type", "pattern", "streams", "webhook", "wake_stream", "lease_ttl_ms", "description"}
RESERVED = "__ds"


def check_id(sub_id: str) -> str:
    """``sub_id`` if it is a valid subscription id; 400 INVALID_REQUEST otherwise."""
    if not _ID.match(sub_id):
        raise invalid(f"invalid subscription id {sub_id!r}: 1-200 characters of A-Z a-z 0-9 . _ ~ : @ -")
    return sub_id


def check_relative(path: object, what: str = "stream path") -> str:
    """A stream-root-relative path: non-empty segments, no leading slash, not under ``__ds``."""
    if not isinstance(path, str) or not path:
        raise invalid(f"{what} must be a non-empty string")
    if path.startswith("/"):
        raise invalid(f"{what} {path!r} must be stream-root-relative (no leading '/')")
    segments = path.split("/")
    if any(not s for s in segments):
        raise invalid(f"{what} {path!r} has an empty segment")
    if segments[0] == RESERVED:
        raise invalid(f"{what} {path!r} is under the reserved __ds prefix")
    if len(path.encode()) > 1000:
        raise invalid(f"{what} is too long")
    return path


def full_path(root: str, relative: str) -> str:
    """The URL path of a root-relative stream path."""
    return f"{root}/{relative}"


def relative_path(root: str, path: str) -> str:
    """``path`` relative to the stream root ``root`` (unchanged when outside it)."""
    return path[len(root) + 1 :] if path.startswith(root + "/") else path


def glob_regex(root: str, pattern: str) -> str:
    """An anchored regular expression (valid in Python and PostgreSQL) for the full stream paths that
    ``pattern`` matches: ``*`` is one segment (or, inside a segment, any characters but ``/``), ``**``
    is zero or more segments."""
    pieces = [re.escape(root)]
    for segment in pattern.split("/"):
        if segment == "**":
            pieces.append("(/[^/]+)*")
        elif "**" in segment:
            raise invalid(f"invalid pattern {pattern!r}: '**' must be a whole segment")
        elif segment == "*":
            pieces.append("/[^/]+")
        else:
            pieces.append("/" + "[^/]*".join(re.escape(part) for part in segment.split("*")))
    return "^" + "".join(pieces) + "$"


def check_pattern(pattern: object) -> str:
    """``pattern`` if it is a valid root-relative glob; 400 INVALID_REQUEST otherwise."""
    if not isinstance(pattern, str) or not pattern:
        raise invalid("pattern must be a non-empty string")
    if pattern.startswith("/"):
        raise invalid(f"pattern {pattern!r} must be stream-root-relative (no leading '/')")
    segments = pattern.split("/")
    if any(not s for s in segments):
        raise invalid(f"pattern {pattern!r} has an empty segment")
    if segments[0] == RESERVED:
        raise invalid(f"pattern {pattern!r} is under the reserved __ds prefix")
    glob_regex("", pattern)  # '**' inside a segment
    return pattern


def check_streams(value: object) -> list[str]:
    """A ``streams`` list: root-relative paths, deduplicated and sorted (the normalized form)."""
    if not isinstance(value, list):
        raise invalid("streams must be an array of stream paths")
    if len(value) > MAX_STREAMS:
        raise invalid(f"at most {MAX_STREAMS} streams per request")
    return sorted({check_relative(v) for v in value})


@dataclass(frozen=True, slots=True)
class Config:
    """A subscription's normalized configuration: what PUT compares (by :meth:`hash`)."""

    type: str
    pattern: str | None
    streams: tuple[str, ...]
    webhook_url: str | None
    wake_stream: str | None
    lease_ttl_ms: int
    description: str | None

    def normalized(self) -> dict[str, Any]:
        """The configuration as the JSON object a PUT compares (same config: same subscription)."""
        return {
            "type": self.type,
            "pattern": self.pattern,
            "streams": list(self.streams),
            "webhook": {"url": self.webhook_url} if self.webhook_url is not None else None,
            "wake_stream": self.wake_stream,
            "lease_ttl_ms": self.lease_ttl_ms,
            "description": self.description,
        }

    def hash(self) -> str:
        """SHA-256 of the normalized configuration (canonical JSON)."""
        text = json.dumps(self.normalized(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()


def _load(body: bytes) -> Any:
    """A control API body's JSON (None when empty); 400 when it is not JSON PostgreSQL can store."""
    try:
        return load_json(body) if body.strip() else None
    except ValueError as exc:
        raise invalid(str(exc)) from None


def parse_config(body: bytes) -> Config:
    """The configuration of a PUT body; ``invalid`` (400) naming the first problem. The webhook URL's
    safety (SSRF) is checked by the server, which knows its policy."""
    data = _load(body)
    if not isinstance(data, dict):
        raise invalid("body must be a JSON object")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise invalid(f"unknown field {unknown[0]!r}")
    kind = data.get("type")
    if kind not in TYPES:
        raise invalid("type is required: 'webhook' or 'pull-wake'")
    pattern = data.get("pattern")
    if pattern is not None:
        pattern = check_pattern(pattern)
    streams = check_streams(data["streams"]) if data.get("streams") is not None else []
    if pattern is None and not streams:
        raise invalid("give pattern or streams (at least one of them)")
    webhook_url: str | None = None
    wake_stream: str | None = None
    if kind == "webhook":
        webhook = data.get("webhook")
        if not isinstance(webhook, dict) or not isinstance(webhook.get("url"), str) or not webhook["url"]:
            raise invalid("webhook.url is required for type 'webhook'")
        extra = sorted(set(webhook) - {"url"})
        if extra:
            raise invalid(f"unknown field 'webhook.{extra[0]}'")
        webhook_url = webhook["url"]
    else:
        if data.get("wake_stream") is None:
            raise invalid("wake_stream is required for type 'pull-wake'")
        wake_stream = check_relative(data["wake_stream"], "wake_stream")
        if wake_stream in streams:
            raise invalid("a subscription cannot link its own wake_stream")
    ttl = data.get("lease_ttl_ms", DEFAULT_LEASE_TTL_MS)
    if ttl is None:
        ttl = DEFAULT_LEASE_TTL_MS
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not MIN_LEASE_TTL_MS <= ttl <= MAX_LEASE_TTL_MS:
        raise invalid(f"lease_ttl_ms must be an integer from {MIN_LEASE_TTL_MS} to {MAX_LEASE_TTL_MS}")
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        raise invalid("description must be a string")
    return Config(kind, pattern, tuple(streams), webhook_url, wake_stream, ttl, description)


def parse_stream_list(body: bytes) -> list[str]:
    """The body of ``POST .../streams``: ``{"streams": [...]}``."""
    data = _load(body)
    if not isinstance(data, dict) or "streams" not in data:
        raise invalid('body must be {"streams": [...]}')
    streams = check_streams(data["streams"])
    if not streams:
        raise invalid("streams must not be empty")
    return streams
