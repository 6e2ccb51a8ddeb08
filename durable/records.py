"""The typed records durable hands back: :class:`Instance` (``db.get``, ``db.query``), :class:`Event`
(``db.history``) and a Runtime's counters (:class:`Statistics`). Plain frozen values, rows built by column
name (:meth:`Instance.from_row`); this module imports neither trio nor asyncpg."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

__all__ = ["LISTED", "Event", "Instance", "ScheduleTicks", "Statistics"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Instance:
    """One instance as stored. ``db.get`` reads every field, with the instance's pending signals
    (``inbox``) and children; ``db.query`` lists the columns named in :data:`LISTED` and leaves the others
    None (``inbox`` and ``children`` too: read one instance with ``db.get`` for them)."""

    id: int
    machine: str
    version: int
    step: str
    status: str
    state: Any
    result: Any
    awaits: str | None
    queue: str
    priority: int
    partition_key: str | None
    unique_key: str | None
    attempt: int
    last_error: str | None
    worker_id: str | None
    lease_expires_at: datetime | None
    cancel_requested: bool
    parent_id: int | None
    children_pending: int
    eligible_at: datetime
    inserted_at: datetime
    updated_at: datetime
    # read by db.get only (db.query's rows keep these defaults)
    lease_token: int | None = None
    unique_scope: list[str] | None = None
    traceparent: str | None = None
    inbox: list[dict[str, Any]] = field(default_factory=list)  # the pending signals, oldest first
    children: list[dict[str, Any]] = field(default_factory=list)  # id, machine, status, state, ... of each
    awaits_any: list[str] | None = None  # every awaited name, when an await names several
    timeout_at: datetime | None = None  # an await's deadline (then runnable at timeout_step, timed_out)
    timeout_step: str | None = None  # the step the timeout runs (None: the step a signal would)
    timed_out: bool = False  # runnable because its await timed out (ctx.timed_out of the next step)
    attributes: dict[str, str] | None = None  # set at insert (db.insert(..., attributes=...)); db.query lists it

    @classmethod
    def from_row(cls, row: Mapping[str, Any], **extra: Any) -> Instance:
        """An instance from a row of ``get_instance`` or ``query_instances*`` (by column name; state and
        result decoded from their JSON text; columns that are no field, such as signal_seq, are ignored)."""
        from . import codec

        data = {name: row[name] for name in _FIELDS if name in row}
        data["state"] = codec.decode(data["state"])
        data["result"] = codec.decode(data["result"])
        if data.get("attributes") is not None:
            data["attributes"] = codec.decode(data["attributes"])
        return cls(**data, **extra)

    def to_json(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """The fields ``names`` (default: all; db.query's rows: :data:`LISTED`), datetimes as ISO 8601."""
        return {name: _jsonable(getattr(self, name)) for name in (_FIELDS if names is None else names)}


_FIELDS = tuple(f.name for f in fields(Instance))
LISTED = (*_FIELDS[: _FIELDS.index("updated_at") + 1], "attributes")  # the columns db.query lists


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One history row of an instance (``db.history``): what happened (``event``), at which step and
    attempt, the status after, by which worker and lease, with the event's ``detail``."""

    id: int
    instance_id: int
    machine: str
    event: str
    step: str | None
    attempt: int | None
    status: str | None
    worker_id: str | None
    lease_token: int | None
    detail: Any
    at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Event:
        """An event from a ``get_history`` row (by column name; detail decoded)."""
        from . import codec

        data = {name: row[name] for name in _EVENT_FIELDS}
        data["detail"] = codec.decode(data["detail"])
        return cls(**data)


_EVENT_FIELDS = tuple(f.name for f in fields(Event))


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


@dataclass(frozen=True, slots=True)
class ScheduleTicks:
    """Recurring-schedule ticks of one runtime: inserted by it (``fired``), found inserted by another
    runtime (``taken``), dropped (``catch_up='none'``)."""

    fired: int = 0
    taken: int = 0
    dropped: int = 0

    def __getitem__(self, name: str) -> int:
        """``ticks["fired"]``: the field by name (the form statistics() had as a dict)."""
        return int(getattr(self, name))

    def to_json(self) -> dict[str, int]:
        """The counts as a dict."""
        return {"fired": self.fired, "taken": self.taken, "dropped": self.dropped}


@dataclass(frozen=True, slots=True, kw_only=True)
class Statistics:
    """A snapshot of one Runtime's counters (``Runtime.statistics()``), since it started.

    - ``worker_id``: the runtime's worker id.
    - ``queues``: per queue, its scheduler's gauges (concurrency, prefetch, in_flight, committing,
      buffered, steps, done, failed, fenced, picks, handed, heartbeat).
    - ``batches`` / ``committed``: outcome batches committed and the outcomes in them.
    - ``transient_retries``: batches retried after a lost connection, a serialization failure or a
      deadlock. ``rejected``: outcomes the database refused, each handed to ``handle()``.
    - ``reaped``: expired claims of other workers this runtime released. ``heartbeats``: lease extensions.
    - ``blocked_steps``: steps that held the event loop over a third of the lease.
    - ``lease_lost``: steps cancelled (or dropped unstarted) because their lease was lost.
    - ``freed_at_start``: claims of dead workers released when this runtime started.
    - ``schedule_ticks``: :class:`ScheduleTicks`.

    ``stats["committed"]`` reads a field by name, as when this was a dict."""

    worker_id: str
    queues: Mapping[str, Mapping[str, float]]
    batches: int
    committed: int
    transient_retries: int
    rejected: int
    reaped: int
    heartbeats: int
    blocked_steps: int
    lease_lost: int
    freed_at_start: int
    schedule_ticks: ScheduleTicks

    def __getitem__(self, name: str) -> Any:
        """The field ``name`` (the form statistics() had as a dict)."""
        if name not in _STAT_FIELDS:
            raise KeyError(name)
        return getattr(self, name)

    def to_json(self) -> dict[str, Any]:
        """Every field as JSON-ready values."""
        data = {name: getattr(self, name) for name in _STAT_FIELDS}
        data["queues"] = {q: dict(g) for q, g in self.queues.items()}
        data["schedule_ticks"] = self.schedule_ticks.to_json()
        return data


_STAT_FIELDS = tuple(f.name for f in fields(Statistics))
