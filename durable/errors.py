"""Exceptions raised by durable.

    DurableError                  base of everything durable raises on purpose
    ├── DatabaseUnavailable       the server cannot be reached (bad DSN, server down, connection lost)
    ├── SchemaError               the schema is missing or newer than this code
    ├── DefinitionError           a machine, step or job definition is malformed
    ├── UnknownMachine            a machine name/version is not registered
    ├── UnknownStep               a step name does not exist on its machine
    ├── OutcomeError              a step returned something that is not a valid outcome
    ├── StateError                a state or payload cannot be encoded to / decoded from JSON
    ├── InvalidArgument           a filter, cursor or offset given to a query is malformed
    ├── NoSuchInstance            no instance has this id
    └── NotDeliverable            a signal to a terminal instance (it would never be read)
"""

from __future__ import annotations


class DurableError(Exception):
    """Base class of the errors durable raises on purpose."""


class DatabaseUnavailable(DurableError):
    pass


class SchemaError(DurableError):
    pass


class DefinitionError(DurableError):
    pass


class UnknownMachine(DurableError):
    pass


class UnknownStep(DurableError):
    pass


class OutcomeError(DurableError):
    pass


class StateError(DurableError):
    pass


class InvalidArgument(DurableError):
    pass


class NoSuchInstance(DurableError):
    pass


class NotDeliverable(DurableError):
    pass
