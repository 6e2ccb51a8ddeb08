"""What a step sees: ``ctx`` with the instance's id, machine, version, step, attempt, state, inbox
(``ctx.signals()``), whether its await timed out (``ctx.timed_out``) and children, plus the claim's lease
token (to fence the step's own side effects)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterable, Mapping, Sequence
    from datetime import datetime, timedelta

    from ._pg import Pool
    from .clock import Clock
    from .outcomes import Insert
    from .records import Event, Instance
    from .values import StepValues, Values


class StepDatabase(Protocol):
    """What a step may use of the ``durable.Database`` it runs on (``ctx.db``): the step API sits below the
    public API and never imports it, and ``durable.Database`` implements this (mypy checks it where a
    ``Runtime`` is given one). For the rest of the Database's API, ``typing.cast(durable.Database, ctx.db)``."""

    @property
    def pool(self) -> Pool:
        """The Database's pool (``durable._pg.Pool``): named statements, transactions."""

    @property
    def clock(self) -> Clock:
        """The clock whose ``now()`` the Database's statements carry."""

    @property
    def max_value_bytes(self) -> int:
        """The largest encoded state, payload or result the Database accepts, in bytes."""

    @property
    def values(self) -> Values:
        """Named values of any instance: ``get``, ``mget``, ``list`` (``durable.Database.values``)."""

    async def insert(
        self,
        machine: type[Any] | str,
        state: Any = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        partition_key: str | None = None,
        unique_key: str | None = None,
        unique_scope: Sequence[str] | None = None,
        schedule_at: datetime | None = None,
        schedule_in: float | timedelta | None = None,
        step: str | None = None,
        version: int | None = None,
        on_conflict: str = "none",
        attributes: Mapping[str, str] | None = None,
    ) -> int | None:
        """Insert one instance of ``machine`` (a Machine class or its name): ``durable.Database.insert``."""

    def insert_many(self, specs: Iterable[Insert]) -> Awaitable[list[int | None]]:
        """Insert a batch in one statement: ``durable.Database.insert_many``."""

    async def signal(
        self,
        instance_id: int | None = None,
        name: str | None = None,
        payload: Any = None,
        *,
        key: str | None = None,
        dedup_key: str | None = None,
    ) -> int | None:
        """Deliver a durable signal to another instance: ``durable.Database.signal``."""

    async def get(self, instance_id: int | None = None, *, key: str | None = None) -> Instance:
        """One instance with its inbox and children: ``durable.Database.get``."""

    async def history(self, instance_id: int) -> list[Event]:
        """An instance's history, oldest first: ``durable.Database.history``."""

    async def cancel(
        self, instance_id: int, reason: str = "cancelled", *, by: str = "operator", limit: int | None = None
    ) -> str:
        """Cancel an instance and its descendants: ``durable.Database.cancel``."""


@dataclass(frozen=True, slots=True)
class Signal:
    """A durable signal in a step's inbox: its id, ``name``, decoded ``payload``, the ``dedup_key`` it was
    sent with and the sender's W3C ``traceparent``."""

    id: int
    name: str
    payload: Any
    dedup_key: str | None = None
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """A child instance as its parent's step sees it after a :class:`~durable.Spawn` (``ctx.children``):
    its id, machine, status, step, state, result and last error."""

    id: int
    machine: str
    status: str
    step: str
    state: Any
    result: Any
    last_error: str | None


@dataclass(slots=True)
class Context:
    """What a step is given about its instance: id, machine, version, step, attempt, the decoded
    ``state``, the signals shown to it (``inbox``; :meth:`signal`, :meth:`signals_named`,
    :meth:`signals`), its children after a Spawn, queue, priority, keys, the await that woke it
    (``awaits``, ``timed_out``) and its claim (``lease_token``, ``worker_id``)."""

    id: int
    machine: str
    version: int
    step: str
    attempt: int
    state: Any
    inbox: tuple[Signal, ...] = ()  # the signals shown to this step, oldest first (see signals())
    children: tuple[ChildInfo, ...] = ()
    queue: str = "default"
    priority: int = 0
    partition_key: str | None = None
    parent_id: int | None = None
    awaits: str | None = None  # the (first) name the instance awaited, when a signal or a timeout woke it
    awaits_any: tuple[str, ...] | None = None  # every awaited name, when the await named several
    timed_out: bool = False  # the instance's await timed out: no awaited signal came in time
    lease_token: int = 0
    worker_id: str = ""
    # the durable.Database the step runs against (None for a Context made outside a runtime)
    db: StepDatabase | None = field(default=None, repr=False)
    taken: set[str] = field(default_factory=set, repr=False)

    @property
    def values(self) -> StepValues:
        """The instance's named values (``put``, ``get``, ``list``: durable/values.py); a put is fenced by
        this step's lease token."""
        from .values import StepValues

        if self.db is None:
            raise RuntimeError("ctx.values needs the step's database (a Context made outside a runtime has none)")
        return StepValues(self.db, self.id, self.lease_token)

    def signal(self, name: str) -> Signal | None:
        """The oldest signal named ``name`` in the inbox, or None. Reading a name marks its signals as
        consumed when the step's outcome progresses (like the awaited name)."""
        self.taken.add(name)
        for s in self.inbox:
            if s.name == name:
                return s
        return None

    def stream(self, path: str, *, start: int = 0, content_type: str = "application/octet-stream") -> Any:
        """A Durable Stream this step appends to, fenced by its claim: the instance id is the producer,
        the lease token the epoch (see durable.streams.engine.Stream)."""
        from .streams.engine import Stream

        return Stream(self, path, start, content_type)

    def signals_named(self, name: str) -> list[Signal]:
        """Every signal named ``name`` in the inbox, oldest first; like :meth:`signal`, reading a name
        consumes its signals when the step's outcome progresses."""
        self.taken.add(name)
        return [s for s in self.inbox if s.name == name]

    def signals(self) -> list[Signal]:
        """Every signal shown to this step, oldest first (after an ``Await`` of several names: which of
        them came). Listing them consumes nothing: a progressing outcome consumes the awaited names' and
        those read by name (signal() / signals_named())."""
        return list(self.inbox)
