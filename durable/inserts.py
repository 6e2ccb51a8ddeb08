"""Insert plumbing, owned here for both sides: :class:`InsertColumns` turns insert specs (``db.insert``,
``Spawn``, a schedule's tick) into the parallel arrays of ``insert_instances`` and ``complete``'s children,
and :class:`Handoff` is the hook through which an insert in this process hands its due rows to an idle
local scheduler. The public API (``client``) and the runtime both import this module; it imports
neither."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from . import codec, tracing
from .errors import DefinitionError, OutcomeError
from .limits import MAX_VALUE_BYTES, check_attributes
from .machine import Machine, Registry, check_insert
from .outcomes import NON_TERMINAL, Insert, seconds


class InsertColumns:
    """Insert specs turned into the parallel arrays of ``insert_instances`` / ``complete``'s children."""

    def __init__(self, max_value_bytes: int = MAX_VALUE_BYTES, *, attributes: bool = True) -> None:
        self.max_value_bytes = max_value_bytes  # of each encoded state
        self.takes_attributes = attributes  # False: a child spec (a spawned child takes no attributes)
        self.machine: list[str] = []
        self.version: list[int] = []
        self.step: list[str] = []
        self.state: list[str] = []
        self.queue: list[str] = []
        self.priority: list[int] = []
        self.partition_key: list[str | None] = []
        self.unique_key: list[str | None] = []
        self.scope: list[str] = []
        self.eligible_at: list[datetime | None] = []
        self.traceparent: list[str | None] = []
        self.tracestate: list[str | None] = []
        self.delay: list[float | None] = []
        self.attributes: list[dict[str, str] | None] = []
        self.attributes_json: list[str | None] = []

    def __len__(self) -> int:
        return len(self.machine)

    def add(self, spec: Insert, registry: Registry | None, where: str) -> None:
        """Check ``spec`` and append its columns; DefinitionError / StateError name ``where``."""
        check_insert(spec, where)
        attributes = check_attributes(spec.attributes, f"{where}: attributes", OutcomeError)
        if attributes is not None and not self.takes_attributes:
            raise OutcomeError(f"{where}: a spawned child takes no attributes (they are set by db.insert)")
        m = spec.machine
        if isinstance(m, str):
            cls = registry.latest(m) if registry is not None and spec.step is None else None
            if cls is None and spec.step is None:
                raise DefinitionError(f"{where}: machine {m!r} is given by name: pass step= or register it")
            name = m
            version = spec.version or (cls.version if cls else 1)
            step = spec.step or (cls.initial if cls else "")
            queue = spec.queue or (cls.queue if cls else "default")
            state_cls = cls.State if cls else None
        elif isinstance(m, type) and issubclass(m, Machine) and m.steps:
            name, version = m.name, spec.version or m.version
            step = spec.step or m.initial
            if step not in m.steps:
                raise DefinitionError(f"{where}: machine {m.name} has no step {step!r}")
            queue = spec.queue or m.queue
            state_cls = m.State
        else:
            raise DefinitionError(f"{where}: {m!r} is not a machine (a Machine subclass, a @job or a name)")
        state = spec.state
        if state is None:
            state = {} if state_cls is not None else None
        limit = self.max_value_bytes
        if state_cls is not None and isinstance(state, dict):
            what = f"{where}: state of {name}"
            state = codec.decode_state(state_cls, codec.encode(state, what, limit), what)
        self.machine.append(name)
        self.version.append(version)
        self.step.append(step)
        self.state.append(codec.encode(state, f"{where}: state of {name}", limit))
        self.queue.append(queue)
        self.priority.append(spec.priority or 0)
        self.partition_key.append(spec.partition_key)
        self.unique_key.append(spec.unique_key)
        scope = spec.unique_scope if spec.unique_scope is not None else NON_TERMINAL
        self.scope.append("{" + ",".join(scope) + "}" if spec.unique_key is not None else "{}")
        self.eligible_at.append(spec.schedule_at)
        self.delay.append(seconds(spec.schedule_in, f"{where}: schedule_in") if spec.schedule_in else None)
        parent, state_ = tracing.current_context_headers()
        self.traceparent.append(parent)
        self.tracestate.append(state_)
        self.attributes.append(attributes)
        self.attributes_json.append(None if attributes is None else codec.encode(attributes, f"{where}: attributes"))

    def rows(self) -> tuple[list[Any], ...]:
        """The per-row arrays of ``insert_instances`` in its parameter order ($1-$13: machine to tracestate, then
        the parent ids, none from an insert)."""
        return (
            self.machine,
            self.version,
            self.step,
            self.state,
            self.queue,
            self.priority,
            self.partition_key,
            self.unique_key,
            self.scope,
            self.eligible_at,
            self.traceparent,
            self.tracestate,
            [None] * len(self),
        )


class Handoff(Protocol):
    """A local runtime's scheduler that takes due rows straight from an insert in this process (the
    runtime's ``handoff`` option; implemented by ``durable.runtime.scheduler.Scheduler``)."""

    @property
    def worker_id(self) -> str:
        """The worker id the handed rows are claimed for."""
        ...

    @property
    def lease(self) -> float:
        """The lease in seconds the handed rows are claimed with."""
        ...

    def offer(self) -> int:
        """How many new rows it takes now (0: none; it takes rows only when idle)."""

    def accept(self, cols: InsertColumns, rows: Sequence[Any]) -> bool:
        """The rows the insert handed over (those with a lease token); False when it could not take
        them (stopping): they are then given back."""

    def suspect_orphans(self) -> None:
        """The insert failed or was cancelled with its answer unknown: it may have claimed rows for this
        worker that nobody runs. Release them."""

    async def give_back(self, cols: InsertColumns, rows: Sequence[Any]) -> None:
        """Release handed-over rows it could not take."""
