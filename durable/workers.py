"""Worker liveness, a core value: ONE rule for "live", "gone" and "stopped" that ``durable workers``,
``durable queues`` and the console all apply (trio-free, no database access).

A worker that stopped gracefully is ``stopped``. Otherwise it is ``gone`` once it has not been seen for
three of its own heartbeat periods, when its gauges report the period (``heartbeat`` seconds in any
queue's gauges), else for ``gone_after`` seconds (default 60 = three default heartbeats); ``live`` before.
"""

from __future__ import annotations

from typing import Any, Final, Literal

GONE_AFTER: Final = 60.0  # seconds without a heartbeat after which a worker that reports no period is gone
BEATS_BEFORE_GONE: Final = 3  # heartbeat periods without a heartbeat after which a worker is gone
WORKER_STATES: Final = ("live", "gone", "stopped")

WorkerState = Literal["live", "gone", "stopped"]


def heartbeat_of(gauges: Any) -> float | None:
    """The heartbeat period a runtime reports in its gauges (``heartbeat`` seconds in any queue's gauges),
    if it does."""
    if isinstance(gauges, dict):
        for g in gauges.values():
            if isinstance(g, dict) and isinstance(g.get("heartbeat"), int | float) and g["heartbeat"] > 0:
                return float(g["heartbeat"])
    return None


def gone_limit(gauges: Any, gone_after: float = GONE_AFTER) -> float:
    """Seconds without a heartbeat after which this worker is gone."""
    beat = heartbeat_of(gauges)
    return BEATS_BEFORE_GONE * beat if beat is not None else gone_after


def worker_state(*, seen_ago: float, stopped: bool, gauges: Any, gone_after: float = GONE_AFTER) -> WorkerState:
    """``live``, ``gone`` or ``stopped`` (see the module's docstring)."""
    if stopped:
        return "stopped"
    return "gone" if seen_ago > gone_limit(gauges, gone_after) else "live"
