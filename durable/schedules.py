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

The runtime's loop (``durable/runtime/schedule_loop.py``) sleeps until the nearest next tick (at most
:data:`MAX_NAP`), computed afresh from the cron expression at every scan, so it does not drift, and backs off
while the database does not answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .errors import DefinitionError
from .limits import MAX_DELAY, check_text
from .machine import Machine, Registry
from .outcomes import STATUSES, Insert

__all__ = ["CATCH_UP", "CATCH_UP_BATCH", "Schedule"]

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
    from .inserts import InsertColumns

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
