"""Defining machines: named async steps over a typed state, an error handler, a version and a queue.

    class Checkout(Machine, queue="checkout", version=1, initial="start"):
        class State(durable.State):
            order: int

        @step
        async def start(self, ctx): return Next("pay", ctx.state)

The one-step form, :func:`job`, wraps a function ``perform(args, ctx)`` with ``max_attempts`` and a
default exponential backoff.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Collection, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import pydantic

from .errors import DefinitionError, OutcomeError, UnknownMachine, UnknownStep
from .limits import INT32, MAX_DELAY, MAX_VALUE_BYTES, SMALLINT, check_int, check_text, check_time
from .outcomes import (
    MAX_AWAIT_NAMES,
    OUTCOME_TYPES,
    Await,
    Cancel,
    Done,
    Insert,
    Next,
    Outcome,
    Retry,
    Spawn,
    Stop,
    seconds,
    step_name,
)
from .uniqueness import check_unique_scope

if TYPE_CHECKING:
    from .context import Context

StepFn = Callable[[Any, "Context"], Awaitable[Any]]
F = TypeVar("F", bound=Callable[..., Any])

_STEP_MARK = "__durable_step__"


def step(fn: F) -> F:
    """Mark an ``async def name(self, ctx)`` method as a step of its machine."""
    if not inspect.iscoroutinefunction(fn):
        raise DefinitionError(f"step {fn.__qualname__} must be an async function")
    setattr(fn, _STEP_MARK, True)
    return fn


class Machine:
    """Base class of state machines. Class keywords: name, version, queue, initial, max_attempts."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    queue: ClassVar[str] = "default"
    initial: ClassVar[str]
    max_attempts: ClassVar[int] = 20
    backoff_base: ClassVar[float] = 1.0
    backoff_max: ClassVar[float] = 300.0
    on_cancel_timeout: ClassVar[float] = 30.0  # seconds on_cancel may run (shielded) before it is cut off
    State: ClassVar[type[pydantic.BaseModel] | None] = None
    steps: ClassVar[dict[str, StepFn]]

    def __init_subclass__(
        cls,
        *,
        name: str | None = None,
        version: int | None = None,
        queue: str | None = None,
        initial: str | None = None,
        max_attempts: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = name or cls.__dict__.get("name") or cls.__name__
        if version is not None:
            cls.version = version
        if queue is not None:
            cls.queue = queue
        if max_attempts is not None:
            cls.max_attempts = max_attempts
        if not isinstance(cls.version, int) or isinstance(cls.version, bool) or cls.version < 1:
            raise DefinitionError(f"machine {cls.name}: version must be a positive int, not {cls.version!r}")
        if not isinstance(cls.queue, str) or not cls.queue:
            raise DefinitionError(f"machine {cls.name}: queue must be a non-empty string")
        check_text(cls.name, f"machine {cls.name!r}: name", error=DefinitionError)
        check_text(cls.queue, f"machine {cls.name}: queue", error=DefinitionError)
        if cls.max_attempts < 1:
            raise DefinitionError(f"machine {cls.name}: max_attempts must be at least 1")
        steps: dict[str, StepFn] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                if getattr(value, _STEP_MARK, False):
                    steps[attr] = value
        cls.steps = steps
        state_cls = cls.__dict__.get("State", cls.State)
        if state_cls is not None and not (isinstance(state_cls, type) and issubclass(state_cls, pydantic.BaseModel)):
            raise DefinitionError(f"machine {cls.name}: State must subclass durable.State")
        cls.State = state_cls
        if initial is not None:
            cls.initial = initial
        elif "initial" not in cls.__dict__ and steps:
            own = [a for a, v in cls.__dict__.items() if getattr(v, _STEP_MARK, False)]
            cls.initial = own[0] if own else next(iter(steps))
        if steps and getattr(cls, "initial", None) not in steps:
            raise DefinitionError(
                f"machine {cls.name}: initial step {getattr(cls, 'initial', None)!r} is not one of its "
                f"steps ({', '.join(steps)})"
            )

    def backoff(self, attempt: int) -> float:
        """Seconds before retry number ``attempt + 1``: exponential, capped (no jitter: deterministic)."""
        return float(min(self.backoff_base * 2**attempt, self.backoff_max))

    async def handle(self, error: BaseException, ctx: Context) -> Outcome:
        """Called with an exception raised by a step; returns any outcome. Default: retry with
        exponential backoff until ``max_attempts`` attempts, then stop as failed."""
        if ctx.attempt + 1 < self.max_attempts:
            return Retry(delay=self.backoff(ctx.attempt), error=describe(error))
        return Stop(f"{describe(error)} (after {ctx.attempt + 1} attempts)")

    async def on_cancel(self, ctx: Context) -> None:
        """Compensation when the instance is cancelled (``db.cancel``, its own or an ancestor's) while a
        worker holds it: its running step was cancelled at a checkpoint, or it was picked with the cancel
        pending. Runs shielded, at most ``on_cancel_timeout`` seconds, once per such claim; an exception
        is recorded in the outcome's history detail (``on_cancel``), never retried. Default: nothing."""


def describe(error: BaseException) -> str:
    """``Type: message`` of an exception, as stored in ``last_error`` (a NUL shown as ``\\x00``: PostgreSQL
    cannot store one)."""
    text = str(error)
    described = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return described.replace("\x00", "\\x00") if "\x00" in described else described


_DONE_NONE = Done(None)  # immutable: shared by every job that returns None


def job(
    fn: Callable[..., Awaitable[Any]] | None = None,
    *,
    queue: str = "default",
    max_attempts: int = 20,
    name: str | None = None,
    version: int = 1,
    backoff_base: float = 1.0,
) -> Any:
    """The one-step form: ``@job(queue="email", max_attempts=20) async def send(args, ctx): ...``.

    ``perform`` returning a value (or None) ends the job done with that result; it may also return an
    outcome (``Retry``, ``Cancel``, ``Stop``, ``Done``). An exception retries with exponential backoff
    until ``max_attempts`` attempts, then fails.
    """

    def wrap(perform: Callable[..., Awaitable[Any]]) -> type[Machine]:
        if not inspect.iscoroutinefunction(perform):
            raise DefinitionError(f"job {perform.__qualname__} must be an async function")

        async def perform_step(self: Machine, ctx: Context) -> Any:
            result = await perform(ctx.state, ctx)
            if result is None:
                return _DONE_NONE
            if isinstance(result, (Retry, Cancel, Stop, Done)):
                return result
            if isinstance(result, OUTCOME_TYPES):
                raise OutcomeError(
                    f"job {perform.__qualname__} returned {type(result).__name__}: a job may return "
                    "a value, Done, Retry, Stop or Cancel"
                )
            return Done(result)

        perform_step.__name__ = "perform"
        setattr(perform_step, _STEP_MARK, True)
        cls = type(
            perform.__name__,
            (Machine,),
            {
                "perform": perform_step,
                "backoff_base": backoff_base,
                "__module__": perform.__module__,
                "__doc__": perform.__doc__,
                "perform_fn": staticmethod(perform),
            },
            name=name or perform.__name__,
            queue=queue,
            version=version,
            initial="perform",
            max_attempts=max_attempts,
        )
        return cls

    return wrap(fn) if fn is not None else wrap


class Registry:
    """Machines by (name, version); several versions of one name run side by side (spec §8)."""

    def __init__(self, machines: Iterable[type[Machine]] = ()) -> None:
        self._by_key: dict[tuple[str, int], type[Machine]] = {}
        self._instances: dict[tuple[str, int], Machine] = {}
        for m in machines:
            self.add(m)

    def add(self, machine: type[Machine]) -> None:
        """Register a machine (a Machine subclass or a @job); DefinitionError for a malformed one or a
        second definition of the same name and version."""
        if not (isinstance(machine, type) and issubclass(machine, Machine)) or machine is Machine:
            raise DefinitionError(f"{machine!r} is not a Machine subclass or a @job")
        if not machine.steps:
            raise DefinitionError(f"machine {machine.name} has no steps (mark them with @durable.step)")
        key = (machine.name, machine.version)
        existing = self._by_key.get(key)
        if existing is not None and existing is not machine:
            raise DefinitionError(
                f"two definitions of machine {machine.name} version {machine.version}: "
                f"{existing.__qualname__} and {machine.__qualname__}"
            )
        self._by_key[key] = machine
        self._instances[key] = machine()

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._by_key

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_key.values())

    def names(self) -> list[str]:
        """The registered machines as ``name vN``, sorted."""
        return sorted({f"{n} v{v}" for n, v in self._by_key})

    def resolve(self, name: str, version: int) -> Machine:
        """The machine object of ``name`` version ``version``; UnknownMachine if it is not registered."""
        try:
            return self._instances[(name, version)]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise UnknownMachine(
                f"machine {name!r} version {version} is not registered with this runtime (registered: {known})"
            ) from None

    def latest(self, name: str) -> type[Machine]:
        """The highest registered version of machine ``name``; UnknownMachine if there is none."""
        versions = [m for (n, _), m in self._by_key.items() if n == name]
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise UnknownMachine(f"no machine named {name!r} is registered (registered: {known})")
        return max(versions, key=lambda m: m.version)


def step_fn(machine: Machine, name: str) -> StepFn:
    """The step function ``name`` of ``machine``; UnknownStep if it has none."""
    try:
        return type(machine).steps[name]
    except KeyError:
        raise UnknownStep(
            f"machine {machine.name} v{machine.version} has no step {name!r} (steps: {', '.join(type(machine).steps)})"
        ) from None


def validate_outcome(machine: Machine, outcome: Any, where: str) -> Outcome:
    """Check an outcome's shape against the machine before it touches SQL; OutcomeError names the
    problem."""
    kind = type(outcome)
    if kind is Done:  # the common cases first, without the checks below
        return outcome  # type: ignore[no-any-return]
    return check_outcome(outcome, where, type(machine).steps)


def check_outcome(outcome: Any, where: str, steps: Collection[str]) -> Outcome:
    """:func:`validate_outcome` against the step names ``steps`` (the explicit pipeline of
    durable/claims.py passes a container of every valid name when the machine is not a class here)."""
    kind = type(outcome)
    if kind is Done:
        return outcome  # type: ignore[no-any-return]
    if kind is Next and type(outcome.step) is str and outcome.step in steps and outcome.wake is None:
        return outcome  # type: ignore[no-any-return]  # a plain next (no delay, no at)
    if not isinstance(outcome, OUTCOME_TYPES):
        raise OutcomeError(
            f"{where} returned {outcome!r} ({type(outcome).__name__}); a step must return "
            "Next, Retry, Await, Spawn, Done, Stop or Cancel"
        )

    def check_step(ref: Any, label: str) -> None:
        try:
            name = step_name(ref)
        except TypeError as exc:
            raise OutcomeError(f"{where} returned {label}: {exc}") from None
        if name not in steps:
            raise OutcomeError(f"{where} returned {label} to unknown step {name!r} (steps: {', '.join(steps)})")

    if isinstance(outcome, Next):
        check_step(outcome.step, "Next")
        if outcome.delay is not None and outcome.at is not None:
            raise OutcomeError(f"{where} returned Next with both delay and at: give one")
        if outcome.delay is not None:
            seconds(outcome.delay, f"{where}: Next delay")
        if outcome.at is not None:
            try:
                check_time(outcome.at, f"{where}: Next at", OutcomeError)
            except TypeError as exc:
                raise OutcomeError(str(exc)) from None
    elif isinstance(outcome, Retry):
        seconds(outcome.delay, f"{where}: Retry delay")
        if outcome.error is not None:
            if not isinstance(outcome.error, str):
                raise OutcomeError(f"{where} returned Retry with a non-string error {outcome.error!r}")
            check_text(
                outcome.error, f"{where}: Retry error", max_bytes=MAX_VALUE_BYTES, error=OutcomeError, empty=True
            )
    elif isinstance(outcome, Await):
        for name in await_names(outcome.signal, where):
            check_text(name, f"{where}: Await signal", error=OutcomeError)
        if outcome.step is not None:
            check_step(outcome.step, "Await")
        if outcome.timeout is not None:
            seconds(outcome.timeout, f"{where}: Await timeout")
        if outcome.timeout_step is not None:
            if outcome.timeout is None:
                raise OutcomeError(f"{where} returned Await with a timeout_step but no timeout")
            check_step(outcome.timeout_step, "Await timeout_step")
    elif isinstance(outcome, Spawn):
        check_step(outcome.step, "Spawn")
        if isinstance(outcome.children, (str, bytes)) or not hasattr(outcome.children, "__iter__"):
            raise OutcomeError(f"{where} returned Spawn whose children is not a list of durable.Child")
        for i, child in enumerate(outcome.children):
            if not isinstance(child, Insert):
                raise OutcomeError(f"{where} returned Spawn whose child #{i} is {child!r}, not a durable.Child")
            check_insert(child, f"{where}: child #{i}")
    elif isinstance(outcome, Stop | Cancel):
        reason = outcome.reason
        if not isinstance(reason, str):
            raise OutcomeError(f"{where} returned {type(outcome).__name__} with a non-string reason {reason!r}")
        check_text(
            reason,
            f"{where}: {type(outcome).__name__} reason",
            max_bytes=MAX_VALUE_BYTES,
            error=OutcomeError,
            empty=True,
        )
    return outcome


def await_names(signal: Any, where: str) -> tuple[str, ...]:
    """The names an Await waits for: one name, or a non-empty list of distinct names (OutcomeError)."""
    if isinstance(signal, str):
        if not signal:
            raise OutcomeError(f"{where} returned Await with signal {signal!r}: need a name")
        return (signal,)
    if not isinstance(signal, (list, tuple)):
        raise OutcomeError(f"{where} returned Await with signal {signal!r}: need a name or a list of names")
    if not signal:
        raise OutcomeError(f"{where} returned Await with an empty list of signal names")
    if len(signal) > MAX_AWAIT_NAMES:
        raise OutcomeError(f"{where} returned Await with {len(signal)} signal names; the limit is {MAX_AWAIT_NAMES}")
    for name in signal:
        if not isinstance(name, str) or not name:
            raise OutcomeError(f"{where} returned Await with signal names {signal!r}: each must be a non-empty str")
    if len(set(signal)) != len(signal):
        raise OutcomeError(f"{where} returned Await with a signal name twice in {signal!r}")
    return tuple(signal)


def check_insert(spec: Insert, where: str) -> None:
    """Every field of an insert or child spec but its state (encoded by InsertColumns): TypeError for a
    wrong type, OutcomeError for a value durable cannot store (names and keys: no NUL, at most
    MAX_KEY_BYTES; priority: smallint; version: positive int; a delay at most MAX_DELAY)."""
    if isinstance(spec.machine, str):
        check_text(spec.machine, f"{where}: machine", error=OutcomeError)
    for label, value in (
        ("queue", spec.queue),
        ("step", spec.step),
        ("partition_key", spec.partition_key),
        ("unique_key", spec.unique_key),
    ):
        if value is not None:
            check_text(value, f"{where}: {label}", error=OutcomeError)
    check_unique_scope(spec.unique_key, spec.unique_scope, where)  # durable/uniqueness.py: the scope rules
    delay = seconds(spec.schedule_in, f"{where}: schedule_in") if spec.schedule_in is not None else 0.0
    if spec.schedule_at is not None:
        check_time(spec.schedule_at, f"{where}: schedule_at", OutcomeError)
        if delay and spec.schedule_at + timedelta(seconds=delay) > datetime.now(UTC) + timedelta(seconds=MAX_DELAY):
            raise OutcomeError(f"{where}: schedule_at + schedule_in is more than durable.MAX_DELAY (10 years) from now")
    if spec.priority is not None:
        check_int(spec.priority, f"{where}: priority", SMALLINT, OutcomeError)
    if spec.version is not None:
        check_int(spec.version, f"{where}: version", (1, INT32[1]), OutcomeError)
