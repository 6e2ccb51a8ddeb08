"""Operator tools over a :class:`~durable.Database`: instance queries, the history tail, retention.

    page = await db.query(status={"failed"}, machine_prefix="billing.", state={"order": 42})
    more = await db.query(status={"failed"}, machine_prefix="billing.", after=page.next)

    async for ev in db.tail(after="-1", follow=True):   # every history event once, in commit order
        save(ev.offset)                                 # resume later with after=ev.offset

    deleted = await db.gc(older_than=7 * 86400)         # terminal instances older than a week

Statements are in ``durable/sql/ops.sql``; the console reads through the same ones.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, Unpack

import trio

from . import codec, tracing
from .errors import InvalidArgument, TreeTooLarge
from .filters import FilterFields, InstanceFilter, opt_int, opt_text, parse_statuses
from .records import Instance
from .sql import Q, Query

if TYPE_CHECKING:
    from ._pg import Pool
    from .clock import Clock


class Database(Protocol):
    """What the operator tools use of a ``durable.Database`` (they sit below it: its query, tail, gc,
    cancel_many... methods call them)."""

    @property
    def pool(self) -> Pool:
        """The pool the operator statements go through."""

    @property
    def clock(self) -> Clock:
        """The clock whose ``now()`` the statements carry."""

    @property
    def max_value_bytes(self) -> int:
        """The largest encoded state or payload, in bytes."""

    def wake(self, queues: Iterable[str | None]) -> None:
        """Wake this process's schedulers of ``queues`` (None entries are skipped)."""

    async def ended(self, ids: Iterable[int]) -> None:
        """Wake the result() waiters of instances a commit of this process ended."""


__all__ = [
    "ORDERS",
    "Bulk",
    "InstanceFilter",
    "InvalidArgument",
    "Page",
    "Row",
    "TailEvent",
    "cancel_many",
    "cancel_tree",
    "count",
    "gc",
    "parse_statuses",
    "query",
    "retry_many",
    "tail",
]

Row = Instance  # the former name of db.query's rows: one row type, durable.Instance

# order name -> (statement, keyed by updated_at)
ORDERS: dict[str, tuple[Query, bool]] = {
    "id": (Q.query_instances, False),
    "-id": (Q.query_instances_desc, False),
    "updated": (Q.query_instances_updated, True),
    "-updated": (Q.query_instances_updated_desc, True),
}

MAX_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Page:
    """One page of :func:`query`; ``next`` is the cursor of the following page (None on the last)."""

    items: list[Instance]
    next: str | None

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class TailEvent:
    """One history event with its tail offset (opaque, sortable as a string, resumable)."""

    offset: str
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

    def to_json(self) -> dict[str, Any]:
        """The event as JSON-ready values (datetimes as ISO 8601)."""
        return _jsonable(asdict(self))


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in data.items()}


# -- query -----------------------------------------------------------------------------------------
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _encode_cursor(order: str, row: Instance) -> str:
    parts = [order, str(row.id)]
    if ORDERS[order][1]:
        delta = row.updated_at - _EPOCH
        parts.append(str((delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds))
    return base64.urlsafe_b64encode(":".join(parts).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, order: str) -> tuple[int, datetime | None]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        parts = raw.split(":")
        kind = parts[0]
        last_id = int(parts[1])
        stamp = _EPOCH + timedelta(microseconds=int(parts[2])) if ORDERS[kind][1] else None
    except (ValueError, IndexError, KeyError, UnicodeDecodeError):
        raise InvalidArgument(f"malformed cursor {cursor!r} (pass the `next` of a previous page)") from None
    if kind != order:
        raise InvalidArgument(f"cursor {cursor!r} belongs to order {kind!r}, not {order!r}")
    return last_id, stamp


async def query(
    db: Database,
    where: InstanceFilter | None = None,
    /,
    *,
    order: str = "id",
    limit: int = 50,
    after: str | None = None,
    **filters: Unpack[FilterFields],
) -> Page:
    """Instances matching the filter ``where`` (an :class:`InstanceFilter`) or the same filters given as
    keywords, sorted by ``order`` (id, -id, updated, -updated), ``limit`` per page; pass
    ``after=page.next`` for the following page (keyset paging: a page is as fast at row 1,000,000 as at
    row 1, and rows inserted meanwhile never shift it). ``status`` is a name, a comma-separated list or a
    set (aliases: terminal, active, awaiting). ``state`` is a dict (or JSON text) the state must contain
    (``@>``). Time bounds take datetimes or timedeltas (ago)."""
    statement, args = query_statement(where, order=order, limit=limit, after=after, **filters)
    async with db.pool.transaction() as conn:
        await conn.fetchval(Q.force_custom_plans)
        records = await conn.fetch(statement, *args)
    rows = [Instance.from_row(r) for r in records[:limit]]
    return Page(rows, _encode_cursor(order, rows[-1]) if len(records) > limit else None)


def query_statement(
    where: InstanceFilter | None = None,
    /,
    *,
    order: str = "id",
    limit: int = 50,
    after: str | None = None,
    **filters: Unpack[FilterFields],
) -> tuple[Query, list[Any]]:
    """The statement :func:`query` runs for these filters and its parameters (validated), so a plan
    can be inspected; run it after ``force_custom_plans`` in the same transaction."""
    flt = InstanceFilter.of(where, filters)
    if order not in ORDERS:
        raise InvalidArgument(f"unknown order {order!r} (one of: {', '.join(ORDERS)})")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit must be an integer from 1 to {MAX_LIMIT}, not {limit!r}")
    statement, keyed_by_time = ORDERS[order]
    args: list[Any] = [*flt.args(), limit + 1]  # one more than asked: tells whether a next page exists
    cursor_id, cursor_at = _decode_cursor(after, order) if after else (None, None)
    args.append(cursor_id)
    if keyed_by_time:
        args.append(cursor_at)
    return statement, args


# -- tail -------------------------------------------------------------------------------------------
_OFFSET = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})$")
BEGINNING = "-1"
END = "now"


def format_offset(xid: int, event_id: int) -> str:
    """The offset after the event (xid, id): fixed-width hex, so string order is tail order."""
    return f"{xid:016x}-{event_id:016x}"


def parse_offset(offset: str) -> tuple[int, int]:
    """The (xid, event id) of a tail offset; InvalidArgument for malformed text."""
    m = _OFFSET.match(offset.strip().lower()) if isinstance(offset, str) else None
    if m is None:
        raise InvalidArgument(f"malformed offset {offset!r} (use -1, now, or an offset printed by the tail)")
    return int(m.group(1), 16), int(m.group(2), 16)


async def resolve_offset(db: Database, after: str) -> tuple[int, int]:
    """``-1`` = before the first event, ``now`` = the current end, else a tail offset."""
    if after == BEGINNING:
        return 0, 0
    if after == END:
        return int(await db.pool.fetchval(Q.tail_frontier)), 0
    return parse_offset(after)


async def tail(
    db: Database,
    after: str = BEGINNING,
    *,
    follow: bool = False,
    instance: int | None = None,
    machine: str | None = None,
    attributes: Mapping[str, str] | None = None,
    poll: float = 0.5,
    batch: int = 500,
) -> AsyncIterator[TailEvent]:
    """History events after offset ``after`` in commit order (by transaction id, then event id); each
    carries the offset to resume from. A reader that stores the last offset it handled and resumes
    from it sees every event exactly once, including events of transactions that commit out of id
    order. ``follow`` keeps polling every ``poll`` seconds for new events instead of stopping at the end.
    ``instance``, ``machine`` and ``attributes`` (a dict the event's instance's attributes contain) filter.
    """
    instance = opt_int(instance, "instance id")
    machine = opt_text(machine, "machine")
    attrs = InstanceFilter(attributes=attributes).attributes_json()
    if not isinstance(batch, int) or batch < 1:
        raise InvalidArgument(f"batch must be a positive integer, not {batch!r}")
    xid, last_id = await resolve_offset(db, after)
    while True:
        rows = await db.pool.fetch(Q.tail_history, str(xid), last_id, instance, machine, batch, attrs)
        for record in rows:
            r: dict[str, Any] = dict(record)
            xid, last_id = int(r.pop("xid")), r["id"]
            yield TailEvent(offset=format_offset(xid, last_id), **{**r, "detail": codec.decode(r["detail"])})
        if len(rows) < batch:
            if not follow:
                return
            await trio.sleep(poll)


# -- retention --------------------------------------------------------------------------------------
async def gc(
    db: Database,
    older_than: float | timedelta,
    *,
    batch: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete terminal instances (done, failed, cancelled) last updated more than ``older_than``
    seconds ago, with their signals and history, ``batch`` per transaction. A terminal child whose
    parent is still live is kept. Returns how many instances were deleted; ``progress`` is called
    with the running total after each batch."""
    seconds = older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise InvalidArgument(f"older_than must be a non-negative number of seconds, not {older_than!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidArgument(f"batch must be a positive integer, not {batch!r}")
    total = 0
    while True:
        deleted = int(await db.pool.fetchval(Q.gc_batch, db.clock.now(), batch, float(seconds)))
        total += deleted
        if progress is not None:
            progress(total)
        if deleted < batch:
            return total


# -- cancel trees and bulk operations ---------------------------------------------------------------
CANCEL_LIMIT = 10_000  # instances one cancel may walk (its roots and their descendants), by default
CANCEL_RERUNS = 5  # runs of cancel_instance while it reports a race (children committed under its walk)
DEADLOCK_RETRIES = 3
BULK_BATCH = 500


@dataclass(frozen=True, slots=True)
class Bulk:
    """What :func:`cancel_many` or :func:`retry_many` did. ``matched``: instances the filters matched;
    ``changed``: cancelled now (with their descendants) or retried; ``requested``: executing instances
    marked to end cancelled at their step's end (their runtime cancels the step at its next heartbeat);
    ``skipped``: matched instances left as they were (already terminal, not failed or cancelled, or a unique
    key another holds); ``too_large``: roots whose tree exceeds the cancel limit (left as they were)."""

    matched: int = 0
    changed: int = 0
    requested: int = 0
    skipped: int = 0
    too_large: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The counts as a JSON-ready dict."""
        return {**asdict(self), "too_large": list(self.too_large)}


@dataclass(frozen=True, slots=True)
class CancelReport:
    """One cancel call: per root (id -> (status before, status after)); totals over the roots' trees."""

    roots: dict[int, tuple[str, str]]
    cancelled: int
    requested: int


def _limit(value: Any, what: str, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise InvalidArgument(f"{what} must be an integer from 1 to {most}, not {value!r}")
    return value


async def cancel_tree(
    db: Database, ids: list[int], reason: str, *, by: str = "operator", limit: int = CANCEL_LIMIT
) -> CancelReport:
    """Cancel the instances ``ids`` and their non-terminal descendants (``cancel_instance``); rerun while
    the statement reports that children were committed under its walk (bounded); a deadlock with a
    concurrent commit is retried. TreeTooLarge (nothing changed) past ``limit`` walked instances. A span
    "durable cancel" records who cancelled what (by, reason, the counts)."""
    limit = _limit(limit, "cancel limit", 10_000_000)
    attributes = {
        "durable.cancel.by": by,
        "durable.cancel.reason": reason,
        "durable.cancel.roots": len(ids),
        "durable.instance.id": ids[0] if len(ids) == 1 else None,
    }
    with tracing.span("durable cancel", attributes) as span:
        report = await _cancel_tree(db, ids, reason, by, limit)
        span.set_attribute("durable.cancel.cancelled", report.cancelled)
        span.set_attribute("durable.cancel.requested", report.requested)
    return report


async def _cancel_tree(db: Database, ids: list[int], reason: str, by: str, limit: int) -> CancelReport:
    from ._pg import DeadlockDetectedError  # the driver, only when a cancel runs

    roots: dict[int, tuple[str, str]] = {}
    cancelled = requested = 0
    for _ in range(CANCEL_RERUNS):
        for attempt in range(DEADLOCK_RETRIES):
            try:
                rows = await db.pool.fetch(Q.cancel_instance, ids, reason, db.clock.now(), limit, by)
                break
            except DeadlockDetectedError:
                if attempt == DEADLOCK_RETRIES - 1:
                    raise
        if not rows:
            break
        if rows[0]["too_many"]:
            raise TreeTooLarge(
                f"cancelling {_ids_text(ids)} would walk more than {limit} instances (the "
                "instances and their descendants); nothing was changed: cancel its subtrees "
                "first or pass a larger limit"
            )
        for r in rows:
            roots[r["id"]] = (roots.get(r["id"], (r["before"], ""))[0], r["after"])
        cancelled += rows[0]["cancelled"]
        requested += rows[0]["requested_count"]
        db.wake(rows[0]["woken"])
        if rows[0]["ended"]:
            await db.ended(rows[0]["ended"])  # result() waiters, here and in other processes
        if not rows[0]["raced"]:
            break
    return CancelReport(roots, cancelled, requested)


def _ids_text(ids: list[int]) -> str:
    if len(ids) == 1:
        return f"instance {ids[0]}"
    return f"{len(ids)} instances ({ids[0]}..{ids[-1]})"


def _filter(where: InstanceFilter | None, filters: Mapping[str, Any], what: str) -> InstanceFilter:
    flt = InstanceFilter.of(where, filters, what=what)
    if flt.is_empty():
        raise InvalidArgument(f"{what} needs at least one filter (it would touch every instance)")
    return flt


async def count(db: Database, where: InstanceFilter | None = None, /, **filters: Unpack[FilterFields]) -> int:
    """How many instances match the filter of :func:`query` (what a bulk operation would touch)."""
    flt = InstanceFilter.of(where, filters, what="count")
    async with db.pool.transaction() as conn:
        await conn.fetchval(Q.force_custom_plans)
        return int(await conn.fetchval(Q.count_instances, *flt.args()))


async def _pages(db: Database, flt: InstanceFilter, batch: int) -> AsyncIterator[list[int]]:
    """The ids matching the filter, a keyset page of at most ``batch`` at a time (ascending id: a page
    acted on never shifts the next one)."""
    after: str | None = None
    while True:
        page = await query(db, flt, order="id", limit=batch, after=after)
        if page.items:
            yield [r.id for r in page.items]
        if page.next is None:
            return
        after = page.next


async def cancel_many(
    db: Database,
    reason: str = "cancelled",
    where: InstanceFilter | None = None,
    *,
    by: str = "operator",
    batch: int = BULK_BATCH,
    limit: int = CANCEL_LIMIT,
    **filters: Unpack[FilterFields],
) -> Bulk:
    """Cancel every instance matching the filter of :func:`query` (and their non-terminal descendants),
    ``batch`` roots per statement, keyset-paged. A root whose tree exceeds ``limit`` is left as it was and
    listed in ``too_large``."""
    from .limits import check_text

    flt = _filter(where, filters, "cancel_many")
    batch = _limit(batch, "batch", MAX_LIMIT)
    check_text(reason, "cancel reason", max_bytes=db.max_value_bytes, empty=True)
    check_text(by, "cancel by", max_bytes=db.max_value_bytes)
    matched = changed = requested = skipped = 0
    too_large: list[int] = []
    async for ids in _pages(db, flt, batch):
        matched += len(ids)
        try:
            reports = [await cancel_tree(db, ids, reason, by=by, limit=limit)]
        except TreeTooLarge:  # some tree of this page is too large: one root at a time, to name it
            reports = []
            for iid in ids:
                try:
                    reports.append(await cancel_tree(db, [iid], reason, by=by, limit=limit))
                except TreeTooLarge:
                    too_large.append(iid)
        for rep in reports:
            changed += rep.cancelled
            requested += rep.requested
            skipped += sum(1 for before, after in rep.roots.values() if before == after and before != "executing")
    return Bulk(matched, changed, requested, skipped + len(too_large), tuple(too_large))


async def retry_many(
    db: Database, where: InstanceFilter | None = None, *, batch: int = BULK_BATCH, **filters: Unpack[FilterFields]
) -> Bulk:
    """Put every failed or cancelled instance matching the filter of :func:`query` back to runnable at the
    step where it ended (``db.retry`` for each), ``batch`` per statement, keyset-paged. An instance whose
    unique key another holds is skipped (and counted)."""
    from ._pg import UniqueViolationError  # the driver, only when a retry runs

    flt = _filter(where, filters, "retry_many")
    batch = _limit(batch, "batch", MAX_LIMIT)
    matched = changed = 0
    async for ids in _pages(db, flt, batch):
        matched += len(ids)
        try:
            rows = await db.pool.fetch(Q.retry_instances, ids, db.clock.now())
        except UniqueViolationError as exc:
            if exc.constraint_name != "instances_unique":
                raise
            rows = []  # one of them cannot enter runnable: the batch one instance at a time
            for iid in ids:
                try:
                    one = await db.pool.fetchrow(Q.retry_instance, iid, db.clock.now())
                except UniqueViolationError as taken:
                    if taken.constraint_name != "instances_unique":
                        raise
                    continue
                if one is not None and one["before"] != one["after"]:
                    changed += 1
                    db.wake([one["queue"]])
        changed += len(rows)
        db.wake(r["queue"] for r in rows)
    return Bulk(matched, changed, 0, matched - changed)
