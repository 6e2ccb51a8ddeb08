"""The trio runtime: schedulers, executor, group-commit flusher, heartbeat and reaper."""

from .options import Flushing, Leases, Polling, Retention, RuntimeOptions
from .runtime import Runtime

__all__ = ["Flushing", "Leases", "Polling", "Retention", "Runtime", "RuntimeOptions"]
