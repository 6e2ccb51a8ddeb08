"""A runtime's service that fires its schedules' ticks (the definitions, and what a tick inserts, are in
:mod:`durable.schedules`). It reads and calls the runtime through :class:`Host`, never importing it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import trio

from .._pg import PostgresError
from ..errors import DatabaseUnavailable
from ..inserts import InsertColumns
from ..schedules import CATCH_UP_BATCH, MAX_NAP, Schedule
from ..sql import Q
from .backoff import Outage, unavailable
from .executor import Database  # a tick inserts through its insert_many (context.StepDatabase)

if TYPE_CHECKING:
    from ..clock import Clock
    from ..outcomes import Insert


__all__ = ["CATCH_UP_BATCH", "MAX_NAP", "ScheduleLoop"]


class Host(Protocol):
    """What the schedule loop uses of its runtime."""

    @property
    def db(self) -> Database:
        """The runtime's Database."""

    @property
    def clock(self) -> Clock:
        """The runtime's clock (its ``now()`` is the time of a scan)."""

    @property
    def outage(self) -> Outage:
        """The runtime's outage tracker: a scan that finds the database down backs off with it."""

    @property
    def reap_every(self) -> float:
        """The runtime's sweep period in seconds: a failed scan is tried again after it."""

    def log_error(self, message: str) -> None:
        """The runtime's error line (a scan that failed, a schedule whose state callable raised)."""


@dataclass
class ScheduleLoop:
    """A runtime's service that fires its schedules' ticks (one per runtime, started when it has
    schedules). Counters for tests and statistics: ``scans``, ``fired`` (instances inserted by this
    runtime), ``taken`` (ticks another runtime fired first), ``dropped`` (ticks handled without an
    instance: catch_up="none"), ``largest`` (the most ticks one scan fired for one schedule)."""

    runtime: Host
    schedules: Sequence[Schedule]
    scans: int = 0
    fired: int = 0
    taken: int = 0
    dropped: int = 0
    largest: int = 0
    registered: bool = False
    fired_ticks: list[tuple[str, datetime, int]] = field(default_factory=list)  # (name, tick, id), bounded
    _by_name: dict[str, Schedule] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_name = {s.name: s for s in self.schedules}

    @property
    def db(self) -> Database:
        """The runtime's Database."""
        return self.runtime.db

    async def run(self) -> None:
        """Scan, sleep until the nearest next tick, repeat; never raises for a database error."""
        while True:
            nap = await self.step()
            await trio.sleep(nap)

    async def step(self) -> float:
        """One scan with its error handling; returns the seconds to sleep before the next."""
        rt = self.runtime
        try:
            nap = await self.scan()
        except (DatabaseUnavailable, PostgresError, OSError) as exc:
            if unavailable(exc):
                rt.outage.failed(exc)
                return min(MAX_NAP, rt.outage.delay())
            rt.log_error(f"firing schedules failed (tried again in {rt.reap_every:.0f}s): {exc}")
            return min(MAX_NAP, rt.reap_every)
        rt.outage.succeeded()
        return nap

    async def register(self, now: datetime | None) -> None:
        """Write this runtime's schedules to the schedules table (register_schedules)."""
        after = now or datetime.now(UTC)
        await self.db.pool.fetch(
            Q.register_schedules,
            [s.name for s in self.schedules],
            [s.cron for s in self.schedules],
            [s.tz for s in self.schedules],
            [s.machine_name for s in self.schedules],
            [s.catch_up for s in self.schedules],
            [s.next_after(after) for s in self.schedules],
            now,
        )
        self.registered = True

    async def scan(self, now: datetime | None = None) -> float:
        """Fire every due tick of this runtime's schedules once; returns the seconds until the nearest next
        tick (0 when catch_up="all" left missed ticks for the next scan; at most MAX_NAP). ``now`` defaults
        to the runtime's clock (None: the database's now())."""
        if now is None:
            now = self.runtime.clock.now()
        if not self.registered:
            await self.register(now)
        rows = await self.db.pool.fetch(Q.schedule_scan, list(self._by_name), now)
        self.scans += 1
        if len(rows) < len(self._by_name):
            self.registered = False  # a row was deleted (by hand): registered again at the next scan
        plan: list[tuple[Schedule, datetime, list[datetime]]] = []
        specs: list[Insert] = []
        more = False
        at = rows[0]["now"] if rows else (now or datetime.now(UTC))
        for r in rows:
            s = self._by_name[r["name"]]
            fire, handled, rest = s.due(r["last_tick"], r["now"])
            if handled is None:
                continue
            try:  # a state callable that raises or returns what cannot be stored stops this schedule only
                batch = [s.insert(t) for t in fire]
                check = InsertColumns(self.db.max_value_bytes)
                for spec in batch:
                    check.add(spec, self.db.registry, f"schedule {s.name!r}")
            except Exception as exc:
                self.runtime.log_error(
                    f"schedule {s.name!r}: no instance for its tick (tried again at the next scan): "
                    f"{type(exc).__name__}: {exc}"
                )
                continue
            more = more or rest
            plan.append((s, handled, fire))
            specs += batch
            self.largest = max(self.largest, len(fire))
        ids = await self.db.insert_many(specs) if specs else []
        names: list[str] = []
        ticks: list[datetime | None] = []
        instance_ids: list[int | None] = []
        nexts: list[datetime | None] = []
        pos = 0
        for s, handled, fire in plan:
            for t in fire:  # every fired tick, so last_run/last_instance_id name the newest instance
                iid = ids[pos]
                pos += 1
                if iid is None:
                    self.taken += 1
                else:
                    self.fired += 1
                    self.fired_ticks.append((s.name, t, iid))
                    del self.fired_ticks[:-1000]
                names.append(s.name)
                ticks.append(t)
                instance_ids.append(iid)
                nexts.append(s.next_after(t))
            if not fire or fire[-1] != handled:  # dropped (catch_up="none")
                self.dropped += 1
                names.append(s.name)
                ticks.append(handled)
                instance_ids.append(None)
                nexts.append(s.next_after(handled))
        if names:
            await self.db.pool.execute(Q.advance_schedules, names, ticks, instance_ids, nexts, now)
        if more:
            return 0.0
        upcoming = [n for s in self.schedules if (n := s.next_after(at)) is not None]
        if not upcoming:
            return MAX_NAP
        return max(0.001, min(MAX_NAP, min((n - at).total_seconds() for n in upcoming)))
