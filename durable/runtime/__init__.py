"""The runtime layer: it owns running steps. ``Runtime`` (runtime.py: heartbeat, reaper, timers, LISTEN,
drain), one ``Scheduler`` per queue (scheduler.py: pick, slots, handoff), the executor (executor.py: a
step and its outcome), the group-commit ``Flusher`` (flusher.py), claims (claim.py), cancels reaching a
held claim (cancelling.py), the schedule loop, and the step spans and gauges (spans.py). It sees the
``durable.Database`` above it only through Protocols (docs/architecture.md)."""

from .options import Flushing, Leases, Polling, Retention, RuntimeOptions
from .runtime import Runtime

__all__ = ["Flushing", "Leases", "Polling", "Retention", "Runtime", "RuntimeOptions"]
