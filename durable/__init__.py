"""durable: durable state machines on PostgreSQL, for trio.

The public API. ``import durable`` is lazy (PEP 562): a name is imported from its module on first use,
so ``import durable`` (or ``durable.sql``, ``durable.errors``, ``durable.outcomes``) loads neither trio,
trio-asyncio, asyncpg nor pydantic (tests/test_import_hygiene.py pins it). Reading top-down: this API
(``client``: Database; ``machine``: Machine, steps), then the runtime (``runtime/``), then the core values
(``outcomes``, ``errors``, ``limits``, ``filters``, ``records``, ``workers``) and the one database
boundary (``_pg``). docs/architecture.md draws the layers.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .claims import Claim
    from .client import Database, connect
    from .clock import Clock, DatabaseClock, VirtualClock
    from .codec import State
    from .context import ChildInfo, Context, Signal
    from .errors import (
        DatabaseUnavailable,
        DefinitionError,
        DurableError,
        Fenced,
        InstanceCancelled,
        InstanceFailed,
        InvalidArgument,
        NoSuchInstance,
        NotDeliverable,
        OutcomeError,
        OutcomeRejected,
        SchemaError,
        StateError,
        TreeTooLarge,
        UniqueKeyTaken,
        UnknownMachine,
        UnknownStep,
        ValueExists,
        ValueTooLarge,
    )
    from .filters import InstanceFilter
    from .limits import MAX_DELAY, MAX_KEY_BYTES, MAX_VALUE_BYTES
    from .machine import Machine, Registry, job, step
    from .migrate import migrate, migrated_version
    from .outcomes import UNCHANGED, Await, Cancel, Child, Done, Insert, Next, Retry, Spawn, Stop
    from .records import Event, Instance
    from .runtime import Runtime
    from .schedules import Schedule
    from .values import ValueRef


# exported name -> the module (relative to this package) that defines it
_EXPORTS: dict[str, str] = {
    "Claim": "claims",
    "Database": "client",
    "connect": "client",
    "Clock": "clock",
    "DatabaseClock": "clock",
    "VirtualClock": "clock",
    "State": "codec",
    "ChildInfo": "context",
    "Context": "context",
    "Signal": "context",
    "DatabaseUnavailable": "errors",
    "DefinitionError": "errors",
    "DurableError": "errors",
    "Fenced": "errors",
    "InstanceCancelled": "errors",
    "InstanceFailed": "errors",
    "InvalidArgument": "errors",
    "NoSuchInstance": "errors",
    "NotDeliverable": "errors",
    "OutcomeError": "errors",
    "OutcomeRejected": "errors",
    "SchemaError": "errors",
    "StateError": "errors",
    "TreeTooLarge": "errors",
    "UniqueKeyTaken": "errors",
    "UnknownMachine": "errors",
    "UnknownStep": "errors",
    "ValueExists": "errors",
    "ValueTooLarge": "errors",
    "InstanceFilter": "filters",
    "MAX_DELAY": "limits",
    "MAX_KEY_BYTES": "limits",
    "MAX_VALUE_BYTES": "limits",
    "Machine": "machine",
    "Registry": "machine",
    "job": "machine",
    "step": "machine",
    "migrate": "migrate",
    "migrated_version": "migrate",
    "UNCHANGED": "outcomes",
    "Await": "outcomes",
    "Cancel": "outcomes",
    "Child": "outcomes",
    "Done": "outcomes",
    "Insert": "outcomes",
    "Next": "outcomes",
    "Retry": "outcomes",
    "Spawn": "outcomes",
    "Stop": "outcomes",
    "Event": "records",
    "Instance": "records",
    "Runtime": "runtime",
    "Schedule": "schedules",
    "ValueRef": "values",
}

__version__ = "0.1.0"

__all__ = [
    "MAX_DELAY",
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "UNCHANGED",
    "Await",
    "Cancel",
    "Child",
    "ChildInfo",
    "Claim",
    "Clock",
    "Context",
    "Database",
    "DatabaseClock",
    "DatabaseUnavailable",
    "DefinitionError",
    "Done",
    "DurableError",
    "Event",
    "Fenced",
    "Insert",
    "Instance",
    "InstanceCancelled",
    "InstanceFailed",
    "InstanceFilter",
    "InvalidArgument",
    "Machine",
    "Next",
    "NoSuchInstance",
    "NotDeliverable",
    "OutcomeError",
    "OutcomeRejected",
    "Registry",
    "Retry",
    "Runtime",
    "Schedule",
    "SchemaError",
    "Signal",
    "Spawn",
    "State",
    "StateError",
    "Stop",
    "TreeTooLarge",
    "UniqueKeyTaken",
    "UnknownMachine",
    "UnknownStep",
    "ValueExists",
    "ValueRef",
    "ValueTooLarge",
    "VirtualClock",
    "connect",
    "job",
    "migrate",
    "migrated_version",
    "step",
]


if not TYPE_CHECKING:  # mypy sees the imports above; at run time a name is imported on first use

    def __getattr__(name: str) -> Any:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'durable' has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps an exported name bound to its export when the import system binds a submodule of the same
    name (``durable.migrate`` is the function, as before, even after ``durable.migrate``, the module,
    is imported)."""

    def __setattr__(self, name: str, value: Any) -> None:
        submodule = isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}"
        if submodule and _EXPORTS.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
