"""Durable Streams on durable's PostgreSQL: the store (shared with ``durable serve``), exactly-once
appends from steps (:func:`append`, :class:`Stream`). The HTTP client is :mod:`durable.contrib.streams_client`
(outside the engine: it needs httpx)."""

from .engine import Stream, append
from .errors import BadRequest, Conflict, Fenced, StreamError, StreamGone, StreamNotFound, TooLarge
from .store import AppendResult, CreateSpec, Producer, Store

__all__ = [
    "AppendResult",
    "BadRequest",
    "Conflict",
    "CreateSpec",
    "Fenced",
    "Producer",
    "Store",
    "Stream",
    "StreamError",
    "StreamGone",
    "StreamNotFound",
    "TooLarge",
    "append",
]
