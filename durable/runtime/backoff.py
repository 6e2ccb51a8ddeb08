"""How a runtime's loops wait out a database that does not answer (:class:`~durable.errors.DatabaseUnavailable`).

One :class:`Outage` per runtime, shared by all its loops (pick, heartbeat, reaper, listen, retention,
flusher): the first failure logs ``database unavailable: ...; retrying``, the first success after it logs
``database available again after Xs``; the failures in between log nothing. A loop that failed waits
:meth:`Outage.pause`: about as long as the outage has lasted (so the attempts thin out exponentially),
at least ``first``, at most ``cap``, jittered so that the workers of a fleet do not all retry at once.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import trio

from .._pg import _UNREACHABLE
from ..errors import DatabaseUnavailable


def unavailable(exc: BaseException) -> bool:
    """Whether an error means the database did not answer (rather than refused a statement). The few
    driver calls made outside :class:`~durable._pg.Pool`'s statements (a LISTEN connection) raise the
    driver's own connection errors."""
    return isinstance(exc, (DatabaseUnavailable, *_UNREACHABLE))


class Outage:
    """Whether the database answers, as one runtime sees it; one log line per change of state."""

    def __init__(self, log: Callable[[str], None], *, seed: str = "", first: float = 0.05, cap: float = 2.0) -> None:
        self.log = log
        self.first = first
        self.cap = cap
        self.since: float | None = None  # trio time of the first failure of the current outage
        self.outages = 0
        self.failures = 0  # failed attempts, every outage included
        self._rng = random.Random(seed)  # seeded: the simulator replays the same waits

    @property
    def down(self) -> bool:
        """True from the first failed attempt of an outage until an attempt succeeds."""
        return self.since is not None

    def lasted(self) -> float:
        """Seconds since the current outage began (0 when the database answers)."""
        return 0.0 if self.since is None else trio.current_time() - self.since

    def failed(self, exc: BaseException) -> None:
        """An attempt failed with DatabaseUnavailable: logged only when it begins an outage."""
        self.failures += 1
        if self.since is None:
            self.since = trio.current_time()
            self.outages += 1
            self.log(f"database unavailable: {exc}; retrying")

    def succeeded(self) -> None:
        """An attempt went through: logged only when it ends an outage."""
        if self.since is not None:
            lasted = trio.current_time() - self.since
            self.since = None
            self.log(f"database available again after {lasted:.1f}s")

    def delay(self) -> float:
        """The next wait: the outage's length so far, within [first, cap], times a jitter in [0.5, 1]."""
        return min(self.cap, max(self.first, self.lasted())) * (0.5 + 0.5 * self._rng.random())

    async def pause(self, exc: BaseException) -> None:
        """Record the failure, then wait before the caller tries again."""
        self.failed(exc)
        await trio.sleep(self.delay())
