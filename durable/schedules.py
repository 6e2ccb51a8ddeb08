"""Recurring schedules: ``Runtime(schedules=[durable.Schedule("*/5 * * * *", Report, name="report")])``.

Cron expressions are parsed and evaluated by `cronsim <https://pypi.org/project/cronsim/>`_ (five fields,
or six with seconds first; ``L``, ``LW``, ``MON#2``; ``@hourly`` and friends are mapped here). Ticks are
computed in the schedule's time zone (``tz``, an IANA name read by :mod:`zoneinfo`) and identified by
their UTC instant. Daylight saving time follows cronsim, i.e. Debian's cron: an expression with a fixed
minute and hour (``30 2 * * *``) whose time falls in a spring-forward gap fires once, at the end of the gap
(03:00), and fires once in a fall-back overlap (at the first 02:30); expressions with ``*`` in the minute
or hour field run on real time (``*/30 * * * *`` fires at both 02:30 of a fall-back night).

Exactly one instance per tick: each tick inserts its instance with the unique key
``schedule:<name>:<tick, UTC ISO>`` occupied in every status, so any number of runtimes may fire the
same tick (the others' inserts are skipped) and a finished tick is never run again. The ``schedules``
table keeps each schedule's last handled tick; a scan fires the ticks after it:

- ``catch_up="latest"`` (default): after a gap, only the newest missed tick fires;
- ``catch_up="all"``: every missed tick fires, at most :data:`CATCH_UP_BATCH` per scan (the next scan
  follows at once), oldest first;
- ``catch_up="none"``: a tick fires only if found within ``grace`` seconds (default 60) of its time;
  older ones are dropped.

The runtime's loop sleeps until the nearest next tick (at most :data:`MAX_NAP`), computed afresh from the
cron expression at every scan, so it does not drift, and backs off while the database does not answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
import trio
from cronsim import CronSim, CronSimError

from .errors import DatabaseUnavailable, DefinitionError
from .limits import MAX_DELAY, check_text
from .machine import Machine, Registry
from .outcomes import STATUSES, Insert
from .sql import Q

if TYPE_CHECKING:
    from .client import Database
    from .runtime.runtime import Runtime

__all__ = ["CATCH_UP", "CATCH_UP_BATCH", "Schedule", "ScheduleLoop"]

CATCH_UP: Final = ("latest", "all", "none")
CATCH_UP_BATCH: Final = 100  # ticks one scan inserts per schedule under catch_up="all"
MAX_NAP: Final = 60.0  # a runtime re-reads its schedules' rows at least this often
LATEST_WALK: Final = 1000  # forward steps checking the newest tick found by a reverse walk
ALIASES: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
TICK_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"


class Schedule:
    """Insert an instance of ``machine`` with ``state`` at every tick of ``cron`` (see the module doc).

    ``state`` is a value, or a callable taking the tick (an aware UTC datetime) and returning the state.
    ``name`` (default: the machine's name) identifies the schedule across runtimes and restarts: every
    runtime that runs it should give it the same definition. Bad values raise TypeError / ValueError here;
    the machine and the state are checked against the runtime's registry by ``Runtime(schedules=...)``.
    """

    def __init__(
        self,
        cron: str,
        machine: type[Machine] | str,
        *,
        state: Any = None,
        name: str | None = None,
        catch_up: str = "latest",
        tz: str = "UTC",
        grace: float = 60.0,
    ) -> None:
        if not isinstance(cron, str):
            raise TypeError(f"Schedule: cron must be a str, not {type(cron).__name__} {cron!r}")
        expr = ALIASES.get(cron.strip().lower(), cron.strip())
        if isinstance(machine, str):
            machine_name = check_text(machine, "Schedule: machine", error=ValueError)
        elif isinstance(machine, type) and issubclass(machine, Machine) and machine is not Machine:
            machine_name = machine.name
        else:
            raise TypeError(f"Schedule: machine must be a Machine subclass, a @job or a name, not {machine!r}")
        name = machine_name if name is None else name
        where = f"schedule {name!r}" if isinstance(name, str) else "Schedule"
        check_text(name, f"{where}: name", max_bytes=200, error=ValueError)
        if not isinstance(tz, str):
            raise TypeError(f"{where}: tz must be an IANA time zone name (a str), not {type(tz).__name__} {tz!r}")
        try:
            zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"{where}: unknown time zone {tz!r} (an IANA name like 'Europe/Paris' or 'UTC')") from None
        if catch_up not in CATCH_UP:
            raise ValueError(f"{where}: catch_up must be one of {', '.join(map(repr, CATCH_UP))}, not {catch_up!r}")
        if isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 < grace <= MAX_DELAY:
            raise ValueError(f"{where}: grace must be a positive number of seconds, not {grace!r}")
        self.cron = expr
        self.machine = machine
        self.machine_name = machine_name
        self.state = state
        self.name = name
        self.catch_up = catch_up
        self.tz = tz
        self.zone = zone
        self.grace = float(grace)
        try:
            first = self.next_after(datetime.now(UTC))
        except CronSimError as exc:
            raise ValueError(f"{where}: bad cron expression {cron!r}: {exc}") from None
        if first is None:
            raise ValueError(f"{where}: cron expression {cron!r} never fires (no tick in the next 50 years)")

    def __repr__(self) -> str:
        return (
            f"Schedule({self.cron!r}, {self.machine_name}, name={self.name!r}, tz={self.tz!r}, "
            f"catch_up={self.catch_up!r})"
        )

    # -- ticks: aware UTC datetimes ----------------------------------------------------------------
    def _forward(self, after: datetime) -> Iterator[datetime]:
        it = CronSim(self.cron, after.astimezone(self.zone))
        while True:
            try:
                tick = next(it)
            except StopIteration:  # no tick within 50 years
                return
            yield tick.astimezone(UTC)  # compare instants only: same-zone comparisons ignore `fold`

    def next_after(self, after: datetime) -> datetime | None:
        """The first tick strictly after ``after`` (None: none within 50 years)."""
        return next(iter(self._forward(after)), None)

    def ticks(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        """The ticks in (after, until], oldest first, at most ``limit``."""
        out: list[datetime] = []
        for tick in self._forward(after):
            if tick > until or len(out) >= limit:
                break
            out.append(tick)
        return out

    def latest(self, after: datetime, until: datetime) -> datetime | None:
        """The newest tick in (after, until], found without walking every tick since ``after``: a reverse
        walk from ``until`` finds a candidate, a short forward walk from there confirms it (cronsim's
        reverse walk may miss the second of two equal wall times in a fall-back overlap)."""
        try:
            back = next(CronSim(self.cron, until.astimezone(self.zone) + timedelta(microseconds=1), reverse=True))
            start = max(after, back.astimezone(UTC) - timedelta(seconds=1))
        except StopIteration:
            start = after
        found = None
        for tick in self.ticks(start, until, LATEST_WALK):
            found = tick
        return found

    def due(self, last: datetime, now: datetime) -> tuple[list[datetime], datetime | None, bool]:
        """What a scan at ``now`` does: the ticks to fire, the tick handled last (fired or dropped; None:
        nothing to do), and whether more missed ticks remain (catch_up="all" past its batch)."""
        if self.catch_up == "all":
            fire = self.ticks(last, now, CATCH_UP_BATCH + 1)
            more = len(fire) > CATCH_UP_BATCH
            fire = fire[:CATCH_UP_BATCH]
            return fire, (fire[-1] if fire else None), more
        newest = self.latest(last, now)
        if newest is None:
            return [], None, False
        if self.catch_up == "none" and (now - newest).total_seconds() > self.grace:
            return [], newest, False  # missed: dropped, and last_tick moves past it
        return [newest], newest, False

    def key(self, tick: datetime) -> str:
        """The unique key of tick ``tick``'s instance (``schedule:<name>:<tick in UTC>``)."""
        return f"schedule:{self.name}:{tick.astimezone(UTC).strftime(TICK_FORMAT)}"

    def state_at(self, tick: datetime) -> Any:
        """The state of tick ``tick``'s instance (the schedule's value, or its callable's result)."""
        return self.state(tick) if callable(self.state) else self.state

    def insert(self, tick: datetime) -> Insert:
        """The insert of tick ``tick``: its state, its unique key, in every status's scope."""
        return Insert(self.machine, self.state_at(tick), unique_key=self.key(tick), unique_scope=STATUSES)


def check_schedules(schedules: Iterable[Schedule], registry: Registry, max_value_bytes: int) -> list[Schedule]:
    """DefinitionError / TypeError / ValueError for a schedule a runtime cannot run: not a Schedule, a name
    given twice, a machine not registered, a state that does not encode (a callable state is called with
    the schedule's next tick)."""
    from .client import InsertColumns

    if isinstance(schedules, Schedule) or not isinstance(schedules, Iterable):
        raise TypeError(f"schedules must be a list of durable.Schedule, not {schedules!r}")
    out: list[Schedule] = []
    names: set[str] = set()
    for s in schedules:
        if not isinstance(s, Schedule):
            raise TypeError(f"schedules: {s!r} is not a durable.Schedule")
        if s.name in names:
            raise DefinitionError(f"schedule {s.name!r} is defined twice: give each schedule its own name=")
        names.add(s.name)
        m = s.machine
        known = (m.name, m.version) in registry if isinstance(m, type) else m in {c.name for c in registry}
        if not known:
            raise DefinitionError(
                f"schedule {s.name!r}: machine {s.machine_name!r} is not registered with this "
                "runtime: pass it in machines="
            )
        tick = s.next_after(datetime.now(UTC))
        assert tick is not None  # checked by Schedule()
        where = f"schedule {s.name!r}"
        try:
            spec = s.insert(tick)
        except Exception as exc:
            raise DefinitionError(f"{where}: its state callable raised {type(exc).__name__}: {exc}") from exc
        InsertColumns(max_value_bytes).add(spec, registry, where)  # encodes and validates like an insert
        out.append(s)
    return out


@dataclass
class ScheduleLoop:
    """A runtime's service that fires its schedules' ticks (one per runtime, started when it has
    schedules). Counters for tests and statistics: ``scans``, ``fired`` (instances inserted by this
    runtime), ``taken`` (ticks another runtime fired first), ``dropped`` (ticks handled without an
    instance: catch_up="none"), ``largest`` (the most ticks one scan fired for one schedule)."""

    runtime: Runtime
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
        except (DatabaseUnavailable, asyncpg.PostgresError, OSError) as exc:
            from .runtime.backoff import unavailable

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
        from .client import InsertColumns

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
