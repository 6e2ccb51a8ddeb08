"""What the console shows, as plain records, and the loaders that read them through named statements.

Loaders are plain coroutines on a :class:`~console.source.Source`; the screens run them in workers and
post the records as messages. Everything here is free of Textual, so it is easy to test and reuse.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from durable.errors import InvalidArgument
from durable.filters import InstanceFilter
from durable.outcomes import TERMINAL
from durable.sql import Q, Query
from durable.workers import GONE_AFTER, WorkerState, worker_state

from .source import Reader, Record, Source

STOPPED_SHOWN_FOR = 300.0  # seconds a gracefully stopped worker stays listed


# -- queues and workers ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Gauge:
    """One worker's figures for one queue, as its last heartbeat wrote them."""

    concurrency: int = 0
    prefetch: int = 0
    in_flight: int = 0
    buffered: int = 0
    steps: int = 0
    done: int = 0
    failed: int = 0
    fenced: int = 0
    picks: int = 0

    @classmethod
    def parse(cls, raw: Any) -> Gauge:
        if not isinstance(raw, dict):
            return cls()
        known = {k: int(v) for k, v in raw.items() if k in cls.__slots__ and isinstance(v, int | float)}
        return cls(**known)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    gauges: dict[str, Gauge]
    seen_at: datetime
    stopped_at: datetime | None
    seen_ago: float
    state: WorkerState  # live | gone | stopped (durable.workers: one rule for the console and the CLI)


@dataclass(frozen=True, slots=True)
class Saturation:
    """Summed over live workers of one queue."""

    in_flight: int = 0
    concurrency: int = 0
    buffered: int = 0
    prefetch: int = 0
    workers: int = 0


@dataclass(frozen=True, slots=True)
class QueueRow:
    queue: str
    due: int = 0
    scheduled: int = 0
    executing: int = 0
    awaiting_signal: int = 0
    awaiting_children: int = 0
    done: int | None = None  # None until the (slower) terminal counts were read
    failed: int | None = None
    cancelled: int | None = None
    rate: float = 0.0  # steps/s over the last RATE_WINDOW seconds
    trend: tuple[int, ...] = ()  # steps per bucket, oldest first
    saturation: Saturation = field(default_factory=Saturation)
    lag: float | None = None  # seconds the oldest due row has waited (None: nothing due)


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A recurring schedule (Runtime(schedules=...)) as its runtimes last wrote it."""

    name: str
    cron: str
    tz: str
    machine: str
    catch_up: str
    last_run: datetime | None  # the latest tick that inserted an instance
    last_instance_id: int | None
    last_status: str | None  # that instance's status (None: none yet, or garbage-collected)
    next_run: datetime | None  # the next tick to handle


@dataclass(frozen=True, slots=True)
class Overview:
    now: datetime
    queues: list[QueueRow]
    workers: list[WorkerInfo]
    schedules: list[ScheduleRow] = field(default_factory=list)


def parse_schedules(rows: Iterable[Record]) -> list[ScheduleRow]:
    return [
        ScheduleRow(
            name=r["name"],
            cron=r["cron"],
            tz=r["tz"],
            machine=r["machine"],
            catch_up=r["catch_up"],
            last_run=r["last_run"],
            last_instance_id=r["last_instance_id"],
            last_status=r["last_status"],
            next_run=r["next_tick"],
        )
        for r in rows
    ]


def parse_workers(rows: Iterable[Record], gone_after: float) -> list[WorkerInfo]:
    """Registry rows as records. A worker is gone after three of its own heartbeats when it reports
    its period, else after ``gone_after`` seconds."""
    out = []
    for r in rows:
        stopped = r["stopped_at"] is not None
        if stopped and r["seen_ago"] > STOPPED_SHOWN_FOR:
            continue
        raw = json.loads(r["gauges"] or "{}")
        gauges = {q: Gauge.parse(g) for q, g in sorted(raw.items())} if isinstance(raw, dict) else {}
        out.append(
            WorkerInfo(
                id=r["id"],
                host=r["host"],
                pid=r["pid"],
                queues=tuple(r["queues"] or ()),
                gauges=gauges,
                seen_at=r["seen_at"],
                stopped_at=r["stopped_at"],
                seen_ago=max(0.0, float(r["seen_ago"])),
                state=worker_state(seen_ago=float(r["seen_ago"]), stopped=stopped, gauges=raw, gone_after=gone_after),
            )
        )
    out.sort(key=lambda w: (w.state != "live", w.id))
    return out


def saturation(workers: Iterable[WorkerInfo]) -> dict[str, Saturation]:
    """In flight / concurrency and buffered / prefetch per queue, summed over live workers."""
    sums: dict[str, Saturation] = {}
    for w in workers:
        if w.state != "live":
            continue
        for q, g in w.gauges.items():
            s = sums.get(q, Saturation())
            sums[q] = Saturation(
                s.in_flight + g.in_flight,
                s.concurrency + g.concurrency,
                s.buffered + g.buffered,
                s.prefetch + g.prefetch,
                s.workers + 1,
            )
    return sums


# -- throughput ------------------------------------------------------------------------------------
class Throughput:
    """Steps per queue and second over the last ``window`` seconds, read incrementally: the first load
    reads the whole window, later ones only the last ``overlap`` seconds (re-read, because a history row
    is stamped when its transaction starts and may commit a little later)."""

    def __init__(self, window: int = 300, overlap: int = 5, bucket: int = 25, rate_over: int = 10) -> None:
        self.window = window
        self.overlap = overlap
        self.bucket = bucket
        self.rate_over = rate_over
        self.counts: dict[str, dict[int, int]] = {}
        self.loaded_to: int | None = None  # exclusive upper second of the last read

    def next_range(self, now_second: int) -> tuple[int, int]:
        start = now_second - self.window
        if self.loaded_to is not None:
            start = max(start, self.loaded_to - self.overlap)
        return start, now_second + 1

    def merge(self, start: int, end: int, rows: Iterable[tuple[str, int, int]]) -> None:
        for per_second in self.counts.values():
            for s in [s for s in per_second if start <= s < end or s < end - self.window - 1]:
                del per_second[s]
        for queue, second, steps in rows:
            self.counts.setdefault(queue, {})[second] = steps
        self.loaded_to = end

    def rate(self, queue: str, now_second: int) -> float:
        """Mean steps/s over the last ``rate_over`` complete seconds."""
        per = self.counts.get(queue, {})
        return sum(per.get(s, 0) for s in range(now_second - self.rate_over, now_second)) / self.rate_over

    def trend(self, queue: str, now_second: int) -> tuple[int, ...]:
        """Steps per ``bucket`` seconds over the window, oldest first (the last bucket ends now)."""
        per = self.counts.get(queue, {})
        n = self.window // self.bucket
        first = now_second + 1 - n * self.bucket
        out = [0] * n
        for s, c in per.items():
            i = (s - first) // self.bucket
            if 0 <= i < n:
                out[i] += c
        return tuple(out)

    def queues(self) -> set[str]:
        return {q for q, per in self.counts.items() if per}


class OverviewLoader:
    """Reads the queues screen: counts by (queue, status), the worker registry and throughput. The
    terminal counts (a scan of the whole queue/status index) are re-read every ``terminal_every``
    loads only."""

    def __init__(
        self, *, gone_after: float = GONE_AFTER, terminal_every: int = 5, throughput: Throughput | None = None
    ) -> None:
        self.gone_after = gone_after
        self.terminal_every = terminal_every
        self.throughput = throughput or Throughput()
        self.loads = 0
        self.terminal: dict[str, dict[str, int]] = {}

    async def load(self, source: Source, now: datetime | None = None) -> Overview:
        with_terminal = self.loads % self.terminal_every == 0

        async def read(r: Reader) -> tuple[datetime, list[Record], list[Record], list[Record], int, int, list[Record]]:
            clock: datetime = await r.fetchval(Q.console_now, now)
            counts = await r.fetch(Q.queue_counts, clock, with_terminal)
            workers = await r.fetch(Q.list_workers, clock)
            start, end = self.throughput.next_range(int(clock.timestamp()))
            steps = await r.fetch(Q.console_throughput, _at(start), _at(end))
            schedules = await r.fetch(Q.list_schedules)
            return clock, counts, workers, steps, start, end, schedules

        clock, counts, worker_rows, steps, start, end, schedule_rows = await source.read(read)
        second = int(clock.timestamp())
        workers = parse_workers(worker_rows, self.gone_after)
        self.throughput.merge(start, end, ((r["queue"], r["second"], r["steps"]) for r in steps))
        self.loads += 1
        by_queue: dict[str, dict[str, int]] = {}
        lags: dict[str, float] = {}
        for r in counts:
            by_queue.setdefault(r["queue"], {})[r["status"]] = int(r["n"])
            if r["status"] == "due" and r["oldest"] is not None:
                lags[r["queue"]] = max(0.0, (clock - r["oldest"]).total_seconds())
        if with_terminal:
            self.terminal = {q: {s: c.get(s, 0) for s in TERMINAL} for q, c in by_queue.items()}
        sat = saturation(workers)
        names = sorted(
            set(by_queue)
            | set(self.terminal)
            | set(sat)
            | self.throughput.queues()
            | {q for w in workers if w.state == "live" for q in w.queues}
        )
        rows = []
        for q in names:
            c = by_queue.get(q, {})
            t = self.terminal.get(q)
            rows.append(
                QueueRow(
                    queue=q,
                    due=c.get("due", 0),
                    scheduled=c.get("scheduled", 0),
                    executing=c.get("executing", 0),
                    awaiting_signal=c.get("awaiting_signal", 0),
                    awaiting_children=c.get("awaiting_children", 0),
                    done=t.get("done", 0) if t is not None else (0 if self.terminal else None),
                    failed=t.get("failed", 0) if t is not None else (0 if self.terminal else None),
                    cancelled=t.get("cancelled", 0) if t is not None else (0 if self.terminal else None),
                    rate=self.throughput.rate(q, second),
                    trend=self.throughput.trend(q, second),
                    saturation=sat.get(q, Saturation()),
                    lag=lags.get(q),
                )
            )
        return Overview(now=clock, queues=rows, workers=workers, schedules=parse_schedules(schedule_rows))


def _at(second: int) -> datetime:
    return datetime.fromtimestamp(second, UTC)


# -- instances -------------------------------------------------------------------------------------
FilterError = InvalidArgument  # a filter line that cannot be read (the message is one line for the screen)


SORTS: dict[str, tuple[Query, Query]] = {
    "id": (Q.query_instances, Q.query_instances_desc),
    "updated": (Q.query_instances_updated, Q.query_instances_updated_desc),
}


@dataclass(frozen=True, slots=True)
class Cursor:
    id: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[Record]
    has_more: bool
    number: int  # 1-based

    @property
    def last(self) -> Cursor | None:
        if not self.rows:
            return None
        return Cursor(self.rows[-1]["id"], self.rows[-1]["updated_at"])


async def load_page(
    source: Source, flt: InstanceFilter, sort: str, descending: bool, after: Cursor | None, limit: int, number: int
) -> Page:
    """One keyset page (never the whole table): ``limit`` rows after ``after`` in the sort order."""
    q = SORTS[sort][1 if descending else 0]
    args = [*flt.args(), limit + 1, after.id if after else None]
    if sort == "updated":
        args.append(after.updated_at if after else None)
    rows = await source.fetch_custom_plan(q, *args)
    return Page(rows=rows[:limit], has_more=len(rows) > limit, number=number)


# -- one instance ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Detail:
    now: datetime
    instance: Record
    parent_status: str | None
    inbox: list[Record]
    children: list[Record]
    history: list[Record]
    values: list[Record] = field(default_factory=list)  # named values: name, size, sha256 (never the bytes)


async def load_detail(source: Source, instance_id: int, now: datetime | None = None) -> Detail | None:
    """Everything the instance screen shows, read from one snapshot."""

    async def read(r: Reader) -> Detail | None:
        clock: datetime = await r.fetchval(Q.console_now, now)
        row = await r.fetchrow(Q.get_instance, instance_id)
        if row is None:
            return None
        parent_status = None
        if row["parent_id"] is not None:
            parent = await r.fetchrow(Q.get_instance, row["parent_id"])
            parent_status = parent["status"] if parent is not None else "deleted"
        return Detail(
            now=clock,
            instance=row,
            parent_status=parent_status,
            inbox=await r.fetch(Q.get_inbox, instance_id),
            children=await r.fetch(Q.get_children, instance_id),
            history=await r.fetch(Q.get_history, instance_id),
            values=await r.fetch(Q.value_list, instance_id),
        )

    return await source.read(read)


# -- actions ---------------------------------------------------------------------------------------
async def send_signal(
    source: Source, instance_id: int, name: str, payload: str, dedup_key: str | None, now: datetime | None = None
) -> str:
    """Deliver through the engine's deliver_signal; returns a one-line outcome. ``payload`` is JSON."""
    row = await source.fetchrow(Q.deliver_signal, instance_id, name, payload, dedup_key or None, None, now)
    if row is None:
        return f"no instance {instance_id}"
    if row["signal_id"] is None:
        if row["before"] in TERMINAL:
            return f"#{instance_id} is {row['before']}: signal {name!r} not stored"
        return f"signal {name!r} to #{instance_id} was already delivered (dedup key {dedup_key!r})"
    return f"signal {name!r} delivered to #{instance_id}: {row['before']} -> {row['after']}"


async def retry_now(source: Source, instance_id: int, now: datetime | None = None) -> str:
    row = await source.fetchrow(Q.retry_instance, instance_id, now)
    if row is None:
        return f"no instance {instance_id}"
    if row["before"] == row["after"]:
        return f"#{instance_id} is {row['before']}: only failed or cancelled instances can be retried"
    return f"#{instance_id} retried: {row['before']} -> {row['after']}"


CANCEL_LIMIT = 10_000  # instances one cancel may walk (the instance and its descendants), as the engine's
CANCEL_RERUNS = 5  # runs while the statement reports children committed under its walk
CONSOLE_TOKEN = "console"  # the sender of this console's 'instances ended' hints


async def cancel(
    source: Source, instance_id: int, reason: str, now: datetime | None = None, by: str = "console"
) -> str:
    """Cancel the instance and its non-terminal descendants through the engine's cancel_instance (rerun
    while it reports a race, as durable.ops.cancel_tree does), then hint other processes' result()
    waiters. Returns a one-line outcome."""
    from durable.results import channel, payloads

    first: Record | None = None
    cancelled = requested = 0
    for _ in range(CANCEL_RERUNS):
        rows = await source.fetch(Q.cancel_instance, [instance_id], reason, now, CANCEL_LIMIT, by)
        if not rows:
            return f"no instance {instance_id}"
        row = rows[0]
        if row["too_many"]:
            return (
                f"#{instance_id} has more than {CANCEL_LIMIT:,} descendants: nothing was changed "
                f"(cancel its subtrees first, or use durable cancel)"
            )
        first = first or row
        cancelled += row["cancelled"]
        requested += row["requested_count"]
        if row["ended"]:
            await source.fetchval(Q.announce_ended, channel(source.schema), payloads(CONSOLE_TOKEN, row["ended"]))
        if not row["raced"]:
            break
    assert first is not None
    before, after = first["before"], rows[0]["after"]
    own_cancel = 1 if after == "cancelled" and before != "cancelled" else 0
    own_request = 1 if first["requested"] else 0
    tree = ""
    if cancelled > own_cancel:
        tree += f"; {cancelled - own_cancel} descendant(s) cancelled"
    if requested > own_request:
        tree += f"; {requested - own_request} running descendant step(s) asked to stop"
    if first["requested"]:
        return f"#{instance_id} is executing: its step is cancelled at its next heartbeat{tree}"
    if before == after:
        return f"#{instance_id} is {before}: nothing to cancel{tree}"
    return f"#{instance_id} cancelled ({before} -> {after}){tree}"


def check_json(text: str) -> str:
    """The payload as compact JSON text; raises ValueError with a one-line reason."""
    try:
        return json.dumps(json.loads(text or "null"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"payload is not JSON: {exc.msg} at column {exc.colno}") from None


def duration_ms(detail: str | None) -> float | None:
    if not detail:
        return None
    try:
        value = json.loads(detail)
    except json.JSONDecodeError:
        return None
    d = value.get("duration_ms") if isinstance(value, dict) else None
    return float(d) if isinstance(d, int | float) else None


def detail_note(detail: str | None) -> str:
    """What an event's detail says besides an error: a durable timer's wake time (``wake_at``), an await's
    or a fired timeout's deadline (``timeout_at``), who cancelled (``by``)."""
    if not detail:
        return ""
    try:
        value = json.loads(detail)
    except json.JSONDecodeError:
        return ""
    if not isinstance(value, dict):
        return ""
    parts = []
    for key, label in (("wake_at", "wakes"), ("timeout_at", "timeout")):
        if isinstance(value.get(key), str):
            parts.append(f"{label} {_short_time(value[key])}")
    if value.get("by") is not None:
        parts.append(f"by {value['by']}")
    return " · ".join(parts)


def _short_time(text: str) -> str:
    try:
        return datetime.fromisoformat(text).astimezone(UTC).strftime("%m-%d %H:%M:%S")
    except ValueError:
        return text


def detail_error(detail: str | None) -> str:
    """The error an event carries, if any (from its detail json)."""
    if not detail:
        return ""
    try:
        value = json.loads(detail)
    except json.JSONDecodeError:
        return ""
    if isinstance(value, dict):
        for k in ("error", "reason"):
            if value.get(k):
                return str(value[k])
    return ""
