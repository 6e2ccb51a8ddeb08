"""The trio runtime: schedulers, executor, group-commit flusher, heartbeat and reaper."""

from .runtime import Runtime

__all__ = ["Runtime"]
