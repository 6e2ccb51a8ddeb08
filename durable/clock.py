"""The engine's only source of time for SQL (DESIGN.md §1).

Intervals (sleeps, durations) use trio's clock, which the simulator replaces with ``MockClock``.
Timestamps written to the database come from :meth:`Clock.now`: ``None`` in production, so every
statement's ``coalesce($now, now())`` uses the database's clock; a virtual timestamp in the simulator.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

import trio


class Clock(Protocol):
    """Where durable's time comes from: the ``now`` its time-dependent statements use (leases, delays,
    timeouts). :class:`DatabaseClock` in production, :class:`VirtualClock` in the simulator."""

    def now(self) -> datetime | None:
        """The ``now`` passed to time-dependent statements (None = the database's now())."""
        ...


class DatabaseClock:
    """Production: the database's now() rules for every node."""

    def now(self) -> datetime | None:
        """None: every statement uses the database's now()."""
        return None


class VirtualClock:
    """Simulation: ``epoch`` + trio's (mock) clock, so leases and backoff follow virtual time."""

    def __init__(self, epoch: datetime | None = None) -> None:
        self.epoch = epoch or datetime(2030, 1, 1, tzinfo=UTC)

    def now(self) -> datetime | None:
        """``epoch`` plus trio's current (virtual) time."""
        return self.epoch + timedelta(seconds=trio.current_time())
