"""What a step (or ``handle``) returns: Next, Retry, Await, Spawn, Done, Stop, Cancel.

``state`` defaults to UNCHANGED (the stored state is kept). Outcomes are validated against the machine
before anything touches SQL (:func:`durable.machine.validate_outcome`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from .errors import OutcomeError
from .limits import MAX_DELAY, check_delay


class _Unchanged:
    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()

StepRef = str | Callable[..., Any]

NON_TERMINAL: Final = ("runnable", "executing", "awaiting_signal", "awaiting_children")
TERMINAL: Final = ("done", "failed", "cancelled")
STATUSES: Final = NON_TERMINAL + TERMINAL


def step_name(ref: StepRef) -> str:
    """The step name of a step reference: a name, or a step function (its ``__name__``)."""
    if isinstance(ref, str):
        return ref
    name = getattr(ref, "__name__", None)
    if not isinstance(name, str):
        raise TypeError(f"a step is named by a string or a step function, not {ref!r}")
    return name


@dataclass(frozen=True, slots=True)
class Insert:
    """One instance to insert (``insert_many``) or spawn as a child (``Spawn``)."""

    machine: type | str  # a Machine subclass (or @job) or a machine's name (core values know no Machine)
    state: Any = None
    queue: str | None = None
    priority: int | None = None
    partition_key: str | None = None
    unique_key: str | None = None
    unique_scope: Sequence[str] | None = None
    schedule_at: datetime | None = None
    schedule_in: float | timedelta | None = None
    step: str | None = None
    version: int | None = None
    attributes: Mapping[str, str] | None = None  # small string->string metadata (insert only, not a child)


Child = Insert


_set = object.__setattr__


@dataclass(frozen=True, slots=True, init=False)
class Next:
    """Go on at ``step``; with ``delay`` (seconds or a timedelta) or ``at`` (an aware datetime) the instance
    sleeps until then (a durable timer: no attempt is counted). Both are kept in one field, ``wake``
    (``(delay, at)``, None for a plain next): a plain next costs what it did before timers."""

    step: StepRef
    state: Any = UNCHANGED
    wake: tuple[float | timedelta | None, datetime | None] | None = None

    def __init__(
        self, step: StepRef, state: Any = UNCHANGED, delay: float | timedelta | None = None, at: datetime | None = None
    ) -> None:
        _set(self, "step", step)
        _set(self, "state", state)
        _set(self, "wake", None if delay is None and at is None else (delay, at))

    @property
    def delay(self) -> float | timedelta | None:
        """The wait before the next step runs (a durable timer), or None."""
        return None if self.wake is None else self.wake[0]

    @property
    def at(self) -> datetime | None:
        """The time the next step runs at (a durable timer), or None."""
        return None if self.wake is None else self.wake[1]


@dataclass(frozen=True, slots=True)
class Retry:
    """Run the same step again after ``delay`` seconds (or a timedelta), attempt + 1, with ``state``
    (default: unchanged); ``error`` is recorded as the last error. The inbox is kept."""

    state: Any = UNCHANGED
    delay: float | timedelta = 0.0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Await:
    """Park until a signal of one of the names arrives (``signal``: a name or a list of names), then run
    ``step`` (default: the same step). With ``timeout`` (seconds or a timedelta) and no signal by then,
    the instance runs ``timeout_step`` instead (default: the step a signal would run, with
    ``ctx.timed_out`` true)."""

    signal: str | Sequence[str]
    state: Any = UNCHANGED
    step: StepRef | None = None
    timeout: float | timedelta | None = None
    timeout_step: StepRef | None = None


@dataclass(frozen=True, slots=True)
class Spawn:
    """Insert ``children`` (:class:`~durable.Child` specs) and park until every one has ended; then the
    instance runs ``step`` with ``ctx.children``."""

    step: StepRef
    children: Sequence[Insert] = field(default_factory=tuple)
    state: Any = UNCHANGED


@dataclass(frozen=True, slots=True)
class Done:
    """End the instance ``done`` with ``result`` (what ``db.result`` returns)."""

    result: Any = None


@dataclass(frozen=True, slots=True)
class Stop:
    """End the instance ``failed`` with ``reason`` as its last error."""

    reason: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """End the instance ``cancelled`` with ``reason`` (its cancelled children too)."""

    reason: str = "cancelled"


Outcome = Next | Retry | Await | Spawn | Done | Stop | Cancel
OUTCOME_TYPES: Final = (Next, Retry, Await, Spawn, Done, Stop, Cancel)
MAX_AWAIT_NAMES: Final = 100  # the most signal names one Await may wait for


def seconds(value: float | timedelta, what: str) -> float:
    """A delay in seconds: finite, non-negative, at most ``durable.MAX_DELAY`` (OutcomeError otherwise)."""
    if type(value) is float and 0.0 <= value <= MAX_DELAY:  # the common case, no further checks
        return value
    return check_delay(value, what, OutcomeError)
