"""Exactly-once stream output from at-least-once steps.

A step appends through its ``ctx``: the producer id is the instance id, the epoch is the claim's lease
token (a later claim always has a higher one) and ``seq`` is a number the step chooses
deterministically (e.g. a counter kept in the state, or the token index of an LLM reply). The append
commits only while that claim is still the instance's current one, so a zombie worker (its lease reaped
or re-claimed) is refused with :class:`~durable.streams.errors.Fenced`; a re-executed step repeats its
seqs, and each already-stored seq is a duplicate, not a second copy. Unlike plain protocol producers,
an engine producer's seq runs on across epochs (a new claim continues, it does not restart at 0).

    @step
    async def speak(self, ctx):
        for i, token in enumerate(reply_tokens):
            await durable.streams.append(ctx, f"/chat/{ctx.id}", token.encode(), seq=i)
        return Done(...)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import DefinitionError
from .errors import Conflict, StreamNotFound
from .store import DEFAULT_CONTENT_TYPE, AppendResult, CreateSpec, Producer, Store, is_json

if TYPE_CHECKING:
    from .._pg import Pool


class _Database(Protocol):
    @property
    def pool(self) -> Pool: ...


class Context(Protocol):
    """What a stream append reads of a step's ``ctx`` (a ``durable.Context``; the streams engine sits below
    the step API and never imports it): the instance id (the producer), the lease token (the epoch) and
    the database."""

    @property
    def id(self) -> int:
        """The step's instance id: the producer of its appends."""

    @property
    def lease_token(self) -> int:
        """The step's lease token: the epoch of its appends (a stale claim's append is fenced)."""

    @property
    def db(self) -> _Database | None:
        """The Database the step runs on (None outside a runtime: no stream can be written)."""


def _store(ctx: Context) -> Store:
    if ctx.db is None:
        raise DefinitionError("ctx has no database: stream appends run inside a step of a Runtime")
    return Store(ctx.db.pool)


def _encode(data: bytes | str | Any, content_type: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, str) and not is_json(content_type):
        return data.encode("utf-8")
    import json

    return json.dumps(data, separators=(",", ":")).encode("utf-8")


async def append(
    ctx: Context,
    stream: str,
    data: bytes | str | Any,
    *,
    seq: int,
    content_type: str = DEFAULT_CONTENT_TYPE,
    close: bool = False,
    create: bool = True,
) -> AppendResult:
    """Append ``data`` to ``stream`` (a URL path such as ``/chat/42``) as producer ``ctx.id`` with
    epoch ``ctx.lease_token``. ``seq`` must be deterministic across re-executions and start at 0 for
    the instance's first append to this stream, then go up by one per append. Returns the result
    (``status`` ``accepted`` or ``duplicate``); raises Fenced when this claim is no longer current.
    ``create`` makes the stream (with ``content_type``) if it does not exist yet. In JSON mode
    (``application/json``) ``data`` is any JSON value (a list appends its items)."""
    if not isinstance(seq, int) or seq < 0:
        raise DefinitionError(f"seq must be a non-negative integer, not {seq!r}")
    store = _store(ctx)
    body = _encode(data, content_type)
    producer = Producer(str(ctx.id), ctx.lease_token, seq, spans_epochs=True)
    for attempt in range(2):
        try:
            return await store.append(
                stream,
                body,
                content_type=content_type,
                producer=producer,
                close=close,
                expected_lease=(ctx.id, ctx.lease_token),
            )
        except StreamNotFound:
            if not create or attempt:
                raise
            try:
                await store.create(stream, CreateSpec(content_type=content_type))
            except Conflict:
                pass  # created concurrently with another config: the append reports the mismatch
    raise AssertionError("unreachable")


@dataclass
class Stream:
    """A step's view of one stream that numbers the appends for you, from ``start``:

        out = Stream(ctx, f"/chat/{ctx.id}", start=ctx.state.sent)
        await out.append(b"hello")        # seq = start, then start + 1, ...

    ``start`` must be the same on every execution of the step (keep it in the state)."""

    ctx: Context
    path: str
    start: int = 0
    content_type: str = DEFAULT_CONTENT_TYPE

    def __post_init__(self) -> None:
        self.next_seq = self.start

    async def append(self, data: bytes | str | Any, *, close: bool = False) -> AppendResult:
        """Append ``data`` as this step's next sequence number (exactly once: a re-executed step's repeat
        is a duplicate); ``close`` closes the stream after it."""
        result = await append(self.ctx, self.path, data, seq=self.next_seq, content_type=self.content_type, close=close)
        self.next_seq += 1
        return result
