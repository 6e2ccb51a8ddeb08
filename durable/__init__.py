"""durable: durable state machines on PostgreSQL, for trio."""

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
