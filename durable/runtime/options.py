"""The Runtime's options, grouped into frozen values: :class:`Leases`, :class:`Polling`, :class:`Flushing`
and :class:`Retention`. ``Runtime(db, leases=Leases(lease=30))`` and the flat shorthand
``Runtime(db, lease=30)`` mean the same; giving one option both ways is a TypeError. Each group checks its
values when it is made (DefinitionError names the option). Plain values: no trio here."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from ..errors import DefinitionError
from ..limits import MAX_DELAY

__all__ = ["Flushing", "Leases", "Polling", "Retention", "RuntimeOptions", "resolve"]


def _seconds(name: str, value: Any, *, optional: bool = False, zero: bool = False) -> None:
    if optional and value is None:
        return
    typed = not isinstance(value, bool) and isinstance(value, int | float)
    if not typed or not ((value >= 0 if zero else value > 0) and value <= MAX_DELAY):
        raise DefinitionError(
            f"{name} must be a {'non-negative' if zero else 'positive'} number of seconds up to "
            f"durable.MAX_DELAY, not {value!r}"
        )


def _count(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DefinitionError(f"{name} must be an integer of at least {low}, not {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Leases:
    """How long a claim holds its row and how it is kept: ``lease`` seconds per claim, extended every
    ``heartbeat`` seconds (default: a third of the lease); expired claims of other workers are released
    every ``reap_every`` seconds (default: half the lease, at most 30)."""

    lease: float = 60.0
    heartbeat: float | None = None
    reap_every: float | None = None

    def __post_init__(self) -> None:
        _seconds("lease", self.lease)
        _seconds("heartbeat", self.heartbeat, optional=True)
        _seconds("reap_every", self.reap_every, optional=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Polling:
    """How a scheduler finds work: an idle queue is picked again after ``poll_min`` seconds, backing off to
    ``poll_max``; ``listen`` wakes it at once on another process's insert (NOTIFY; default: on, off under
    a VirtualClock); ``handoff`` lets an idle scheduler take due rows of a local insert in the insert's own
    statement; ``chain`` is how many ``next`` steps a claim may run in a row without a new pick."""

    poll_min: float = 0.05
    poll_max: float = 1.0
    listen: bool | None = None
    handoff: bool = True
    chain: int = 0

    def __post_init__(self) -> None:
        _seconds("poll_min", self.poll_min)
        _seconds("poll_max", self.poll_max)
        _count("chain", self.chain, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Flushing:
    """Group commit: up to ``max_batch`` outcomes per statement (``flush_max``), after an optional
    ``linger`` wait for more (``flush_linger``, seconds), up to ``parallel`` plain batches at once
    (``flush_parallel``)."""

    linger: float = 0.0
    max_batch: int = 500
    parallel: int = 2

    def __post_init__(self) -> None:
        _seconds("flush_linger", self.linger, zero=True)
        _count("flush_max", self.max_batch, 1)
        _count("flush_parallel", self.parallel, 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Retention:
    """Delete terminal instances last updated more than ``older_than`` seconds ago (with their signals and
    history), checking every ``every`` seconds; ``older_than=None``: keep everything."""

    older_than: float | None = None
    every: float = 60.0

    def __post_init__(self) -> None:
        _seconds("retention", self.older_than, optional=True, zero=True)
        _seconds("retention_every", self.every)


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """A Runtime's four option groups as resolved (``runtime.options``)."""

    leases: Leases
    polling: Polling
    flushing: Flushing
    retention: Retention


G = TypeVar("G", Leases, Polling, Flushing, Retention)


def resolve(group: G | None, default: G, flat: dict[str, Any], what: str) -> G:
    """``group`` (or ``default``) with the flat keywords that were given (not None) applied: ``flat`` maps a
    field of the group to the shorthand's value. A field given both ways is a TypeError."""
    given = {name: value for name, value in flat.items() if value is not None}
    if group is None:
        return replace(default, **given) if given else default
    if not isinstance(group, type(default)):
        raise TypeError(f"{what} must be a durable.runtime.{type(default).__name__}, not {group!r}")
    if given:
        names = ", ".join(sorted(given))
        raise TypeError(f"Runtime: pass {what}= or its shorthand keywords ({names}), not both")
    return group


def field_names(group: type[Any]) -> tuple[str, ...]:
    """The fields of an options class (for docs and tests)."""
    return tuple(f.name for f in fields(group))
