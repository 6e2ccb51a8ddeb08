"""Where a row's pickup time goes under load (issue 20, item 2): bench-side recorders installed on one
worker's Runtime (no cost on the engine's own paths when not installed), the box's CPU from /proc/stat,
and the breakdown of every row's latency into its phases:

    stamp -> insert commit returned (producer) -> pick sent (worker) -> pick returned -> step start

The phases add up to the row's latency (stamp -> step start). Each pick also records what woke the
scheduler before it (a NOTIFY hint, a local wake-up, or its poll timeout) and when; each outcome flush its
size and duration. Wall-clock times (``time.time()``) throughout: producer and worker share the box's clock.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cpu import proc_stat
from .stats import percentile


class SendClock:
    """While entered, ``pool.fetch`` is wrapped so that ``sent`` is the time (``time.time()``) the last
    statement went out: the producer's insert, between its stamp and its commit's return."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.sent = 0.0
        self._fetch = pool.fetch

    async def _timed(self, *args: Any, **kwargs: Any) -> Any:
        self.sent = time.time()
        return await self._fetch(*args, **kwargs)

    def __enter__(self) -> SendClock:
        self.pool.fetch = self._timed
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.fetch = self._fetch


# -- the box's CPU ---------------------------------------------------------------------------------


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of every core so far, from /proc/stat's first line (iowait counts as idle)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    values = [float(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    total = sum(values)
    return total - idle, total


def busy_fraction(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """The share of the box's CPU time (all cores) that was busy between two :func:`cpu_times`."""
    total = after[1] - before[1]
    return None if total <= 0 else round((after[0] - before[0]) / total, 3)


def server_cpu_by_kind(postmaster: int | None) -> dict[str, float]:
    """CPU seconds so far of a local PostgreSQL server's processes by kind: ``backend`` (client sessions),
    ``autovacuum`` (its live workers), ``wal`` (walwriter), ``checkpointer``, ``bgwriter``, ``exited`` (children
    already reaped: mostly autovacuum workers and sessions that ended) and ``other``. Empty when unreadable."""
    if postmaster is None:
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    own = proc_stat(postmaster)
    if own is None:
        return {}
    out = {"exited": (int(own[13]) + int(own[14])) / tick, "other": (int(own[11]) + int(own[12])) / tick}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        st = proc_stat(int(entry.name))
        if st is None or int(st[1]) != postmaster:
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        kind = next((k for marker, k in _KINDS if marker in title), "backend")
        out[kind] = out.get(kind, 0.0) + (int(st[11]) + int(st[12])) / tick
    return out


_KINDS = (
    ("autovacuum", "autovacuum"),
    ("walwriter", "wal"),
    ("checkpointer", "checkpointer"),
    ("background writer", "bgwriter"),
    ("logical replication", "other"),
    ("io worker", "other"),
)


def run_queue_wait(pids: Sequence[int]) -> dict[int, float]:
    """Seconds each of ``pids`` (its main thread) has spent runnable but waiting for a core so far
    (/proc/<pid>/schedstat's second field): the CPU contention it met. Unreadable ones are left out."""
    out = {}
    for pid in pids:
        try:
            out[pid] = int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            pass
    return out


def waited(before: dict[int, float], after: dict[int, float]) -> float:
    """Run-queue seconds between two :func:`run_queue_wait` readings, over the processes seen in both."""
    return sum(after[p] - before[p] for p in before.keys() & after.keys())


def server_pids(postmaster: int | None) -> list[int]:
    """The live child processes of a local PostgreSQL server (its backends and helpers)."""
    if postmaster is None:
        return []
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = proc_stat(int(entry.name))
            if st is not None and int(st[1]) == postmaster:
                out.append(int(entry.name))
    return out


def cores_by_kind(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Cores used per kind between two :func:`server_cpu_by_kind` readings ``seconds`` apart."""
    return {k: round((after.get(k, 0.0) - before.get(k, 0.0)) / seconds, 3) for k in after if seconds > 0}


# -- recorders in the worker -----------------------------------------------------------------------


@dataclass
class PhaseLog:
    """What the recorders saw in one worker process (lists of plain tuples, for JSON)."""

    sets: list[tuple[float, str]] = field(default_factory=list)  # (time, who set the scheduler's wakeup)
    waits: list[tuple[float, float, bool, str]] = field(default_factory=list)  # (began, returned, woken, by)
    picks: list[tuple[float, float, int, int, int]] = field(default_factory=list)  # (sent, returned, demand, n, wait#)
    flushes: list[tuple[float, float, int]] = field(default_factory=list)  # (began, ended, outcomes)
    pick_of: dict[int, int] = field(default_factory=dict)  # instance id -> index in picks

    def to_json(self, starts: Sequence[tuple[float, float, int]]) -> dict[str, Any]:
        """The log, with ``starts`` (stamp, step start, instance id) per row as ``rows`` (stamp, step start,
        index of the pick that claimed it, or None)."""
        rows = [(t, start, self.pick_of.get(ident)) for t, start, ident in starts]
        return {"sets": self.sets, "waits": self.waits, "picks": self.picks, "flushes": self.flushes, "rows": rows}


def install(rt: Any) -> PhaseLog:
    """Wrap every scheduler's ``wakeup`` and ``pick`` and the flusher's ``_flush`` of Runtime ``rt`` (before
    it runs) with recorders; returns their log."""
    from durable.runtime.scheduler import Wakeup

    log = PhaseLog()

    class RecordingWakeup(Wakeup):
        last_set: str = "none"

        def set(self) -> None:
            caller = sys._getframe(1).f_code.co_name
            who = "notify" if caller == "_listen_loop" else caller
            if not self._event.is_set():  # the first set since the last wait: what will wake it
                self.last_set = who
                log.sets.append((time.time(), who))
            super().set()

        async def wait(self, timeout: float) -> bool:
            began = time.time()
            woke = await super().wait(timeout)
            log.waits.append((began, time.time(), woke, self.last_set if woke else "timeout"))
            return woke

    for s in rt.schedulers.values():
        s.wakeup = RecordingWakeup()
        pick = s.pick

        async def recorded_pick(demand: int, _pick: Any = pick) -> Any:
            sent = time.time()
            claims = await _pick(demand)
            index = len(log.picks)
            log.picks.append((sent, time.time(), demand, len(claims), len(log.waits) - 1))
            for c in claims:
                log.pick_of[c.id] = index
            return claims

        s.pick = recorded_pick
    flush = rt.flusher._flush

    async def recorded_flush(batch: list[Any]) -> None:
        began = time.time()
        await flush(batch)
        log.flushes.append((began, time.time(), len(batch)))

    rt.flusher._flush = recorded_flush
    return log


# -- the breakdown ---------------------------------------------------------------------------------


def _summary(values: Sequence[float], scale: float = 1000.0) -> dict[str, float | None]:
    ms = [v * scale for v in values]
    if not ms:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    return {
        "p50": round(percentile(ms, 50) or 0, 2),
        "p90": round(percentile(ms, 90) or 0, 2),
        "p99": round(percentile(ms, 99) or 0, 2),
        "mean": round(sum(ms) / len(ms), 2),
    }


def _sizes(values: Sequence[int]) -> dict[str, float | None]:
    if not values:
        return {"count": 0, "p50": None, "p90": None, "max": None, "mean": None}
    return {
        "count": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "max": max(values),
        "mean": round(sum(values) / len(values), 1),
    }


def breakdown(ticks: Sequence[tuple[float, float, float]], log: dict[str, Any]) -> dict[str, Any]:
    """Every row's latency in phases. ``ticks``: the producer's (stamp, statement sent, commit returned) per
    insert; ``log``: :meth:`PhaseLog.to_json` of the worker, whose ``rows`` are (stamp, step start, pick index)
    per row. ``insert`` = ``insert_build`` (the specs' columns, client side) + ``insert_statement`` (the
    statement's round trip and commit)."""
    committed = {stamp: (sent, done) for stamp, sent, done in ticks}  # each tick's rows share one stamp
    picks = log["picks"]
    waits = log["waits"]
    rows = log["rows"]
    names = ("insert", "insert_build", "insert_statement", "to_pick", "pick", "to_step", "total")
    phases: dict[str, list[float]] = {k: [] for k in names}
    woke_phase: dict[str, list[float]] = {"commit_to_wake": [], "wake_to_pick": []}
    by: dict[str, int] = {}
    for stamp, start, k in rows:
        tick = committed.get(stamp)
        if tick is None or k is None:
            continue
        to_db, done = tick
        sent, returned, _demand, _n, w = picks[k]
        phases["insert"].append(done - stamp)
        phases["insert_build"].append(to_db - stamp)
        phases["insert_statement"].append(done - to_db)
        phases["to_pick"].append(sent - done)
        phases["pick"].append(returned - sent)
        phases["to_step"].append(start - returned)
        phases["total"].append(start - stamp)
        if 0 <= w < len(waits):
            _began, woke_at, _woken, reason = waits[w]
            by[reason] = by.get(reason, 0) + 1
            woke_phase["commit_to_wake"].append(woke_at - done)
            woke_phase["wake_to_pick"].append(sent - woke_at)
    flushes = log["flushes"]
    t0 = ticks[0][0] if ticks else 0.0

    def slowest(spans: Sequence[tuple[float, float]], n: int = 5) -> list[tuple[float, float]]:
        """The ``n`` longest (start, end) spans as (seconds into the stage, ms), longest first."""
        top = sorted(spans, key=lambda x: x[1] - x[0], reverse=True)[:n]
        return [(round(a - t0, 3), round((b - a) * 1000, 2)) for a, b in top]

    return {
        "rows": len(phases["total"]),
        "phases_ms": {k: _summary(v) for k, v in phases.items()},
        "wait_split_ms": {k: _summary(v) for k, v in woke_phase.items()},
        "rows_by_wake": by,
        "pick_sizes": _sizes([p[3] for p in picks if p[3] > 0]),
        "empty_picks": sum(1 for p in picks if p[3] == 0),
        "pick_ms": _summary([p[1] - p[0] for p in picks]),
        "flush_sizes": _sizes([f[2] for f in flushes]),
        "flush_ms": _summary([f[1] - f[0] for f in flushes]),
        "notify_sets": sum(1 for s in log["sets"] if s[1] == "notify"),
        "wakes": {r: sum(1 for x in waits if x[3] == r) for r in {x[3] for x in waits}},
        "slowest_ms": {
            "insert": slowest([(sent, done) for _stamp, sent, done in ticks]),
            "pick": slowest([(p[0], p[1]) for p in picks]),
            "flush": slowest([(f[0], f[1]) for f in flushes]),
        },
    }
