"""Durable Streams on durable's PostgreSQL: the store (shared with ``durable serve``), exactly-once
appends from steps (:func:`append`, :class:`Stream`) and an HTTP client (:mod:`durable.streams.client`,
imported on demand: it needs httpx)."""

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
