"""A claimed row (one pick result) and the encoded outcome the executor hands to the flusher."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import trio

from .. import codec
from .._pg import Record
from ..context import ChildInfo, Signal


class Row(Protocol):
    """A result row read by column name (asyncpg's Record, a dict)."""

    def __getitem__(self, name: str, /) -> Any: ...


@dataclass(eq=False, slots=True)
class Claim:
    """A row this runtime claimed (a ``pick`` result, or a row an insert handed over): the instance's
    columns the step needs, its lease token, and the runtime's bookkeeping while the step runs."""

    id: int
    machine: str
    version: int
    step: str
    state_json: str
    attempt: int
    queue: str
    priority: int
    partition_key: str | None
    lease_token: int
    signal_seq: int
    awaits: str | None
    parent_id: int | None
    cancel_requested: bool
    traceparent: str | None
    tracestate: str | None
    signals: tuple[Signal, ...]
    children: tuple[ChildInfo, ...]
    awaits_any: list[str] | None = None  # every awaited name, when the await named several
    timed_out: bool = False  # the await timed out (the timer sweep made the row runnable)
    attributes: dict[str, str] | None = None  # the instance's attributes (for the step's span)
    started: bool = False
    ahead: int = 0  # steps run ahead on this claim (run-ahead)
    # lease loss (runtime.py): until when the lease surely holds, in trio time (the start of the statement
    # that took or last extended it, plus the lease); the running step's cancel scope; why it was lost
    lease_until: float = math.inf
    scope: trio.CancelScope | None = None
    lost: str | None = None
    # the database refused this claim's outcome (OutcomeRejected): handle() runs instead of the step, and
    # a second refusal ends the instance (bounded: no outcome is retried as is)
    rejected: BaseException | None = None
    rejections: int = 0
    submitted: float = 0.0  # trio time its outcome went to the flusher (a run-ahead lease starts after it)
    # a cancel pending on the instance (db.cancel) reached this claim: what on_cancel did (cancelling.py)
    compensation: str | None = None

    def run_ahead(self, row: Record) -> None:
        """Become the claim of the next step, kept by a `next` outcome (same row, new lease token)."""
        self.ahead += 1
        self.rejected, self.rejections = None, 0
        self.step = row["step"]
        self.attempt = row["attempt"]
        self.state_json = row["state"]
        self.lease_token = row["lease_token"]
        self.signal_seq = row["signal_seq"]
        self.awaits = None
        self.awaits_any = None
        self.timed_out = False
        self.cancel_requested = False
        self.signals = _signals(row["signals"])
        self.children = _children(row["children"])

    @classmethod
    def from_row(cls, row: Row) -> Claim:
        """The claim of one ``pick`` row, each value read by its column name (``state`` is kept as its JSON
        text; the inbox and the children are decoded). The values are passed in field order rather than as
        keywords: on 500 real pick rows (load average 17 on 2 cores) keywords took 1.9 us per row against
        1.0 us (the former ``tuple(row)`` slicing: 0.8-0.9 us), and this runs once per step;
        tests/test_claims.py checks the result field by field against the row's columns."""
        return cls(
            row["id"],
            row["machine"],
            row["version"],
            row["step"],
            row["state"],
            row["attempt"],
            row["queue"],
            row["priority"],
            row["partition_key"],
            row["lease_token"],
            row["signal_seq"],
            row["awaits"],
            row["parent_id"],
            row["cancel_requested"],
            row["traceparent"],
            row["tracestate"],
            _signals(row["signals"]),
            _children(row["children"]),
            row["awaits_any"],
            row["timed_out"],
            codec.decode(attributes) if (attributes := row["attributes"]) is not None else None,
        )


def _signals(text: str) -> tuple[Signal, ...]:
    if text == "[]":
        return ()
    return tuple(Signal(s["id"], s["name"], s["payload"], s["dedup_key"], s["traceparent"]) for s in codec.decode(text))


def _children(text: str) -> tuple[ChildInfo, ...]:
    if text == "[]":
        return ()
    return tuple(
        ChildInfo(c["id"], c["machine"], c["status"], c["step"], c["state"], c["result"], c["last_error"])
        for c in codec.decode(text)
    )


def claims_from_rows(rows: Sequence[Row]) -> list[Claim]:
    """Pick results (already in pick order: priority, eligible_at, id)."""
    return [Claim.from_row(r) for r in rows]


@dataclass(slots=True)
class Encoded:
    """An outcome as the ``complete`` statement's columns."""

    kind: str
    step: str | None = None
    state: str | None = None
    delay: float | None = None
    awaits: str | None = None
    awaits_any: list[str] | None = None  # await: every name, when it names several
    timeout: float | None = None  # await: seconds until its timeout
    timeout_step: str | None = None  # await: the step its timeout runs (None: the step a signal would)
    wake_at: datetime | None = None  # next: the time it sleeps until (Next(at=...); Next(delay=...) is `delay`)
    result: str | None = None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    children: Any = None  # inserts.InsertColumns for spawn
    consume: list[int] = field(default_factory=list)  # signal ids a progressing outcome deletes
    hold: bool = False  # `next` only: keep the claim and run the next step at once


@dataclass(frozen=True, slots=True)
class Committed:
    """What the database made of an outcome."""

    status: str | None
    fenced: bool
    held: Any = None  # the 'outcome' row when a `next` kept the claim (run-ahead)
