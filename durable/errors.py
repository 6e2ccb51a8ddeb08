"""Exceptions raised by durable.

    DurableError                  base of everything durable raises on purpose
    ├── DatabaseUnavailable       the server cannot be reached (bad DSN, server down, connection lost)
    ├── SchemaError               the schema is missing or newer than this code
    ├── DefinitionError           a machine, step or job definition is malformed
    ├── UnknownMachine            a machine name/version is not registered
    ├── UnknownStep               a step name does not exist on its machine
    ├── OutcomeError              a step returned something that is not a valid outcome, or an insert or
    │                             child spec holds a value durable cannot store (a ValueError)
    ├── StateError                a state or payload cannot be encoded to / decoded from JSON (a ValueError)
    │   └── ValueTooLarge         an encoded state, payload or result is over the size limit
    ├── InvalidArgument           an argument is malformed or out of range: a query's filter, cursor or
    │                             offset, an instance id, a name or key (a ValueError)
    ├── OutcomeRejected           the database refused to commit a step's outcome (SQLSTATE classes 22,
    │                             23, 54): handle() sees it, the instance's stored state is unchanged
    │   └── UniqueKeyOccupied     an outcome into an occupied unique_scope (.key, .status)
    ├── NoSuchInstance            no instance has this id (or unique key)
    ├── NotDeliverable            a signal to a terminal instance (it would never be read)
    ├── InstanceFailed            Database.result of a failed instance (.instance_id, .last_error)
    ├── InstanceCancelled         Database.result of a cancelled instance (.instance_id, .last_error)
    ├── UniqueKeyTaken            insert(..., on_conflict="raise") of a key another holds (.key, .holder_id)
    └── Fenced                    a call of an explicit claim (durable.Claim) whose lease is no longer held:
                                  nothing changed (.instance_id, .lease_token, .call)
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


class OutcomeError(DurableError, ValueError):
    pass


class StateError(DurableError, ValueError):
    pass


class ValueTooLarge(StateError):
    pass


class InvalidArgument(DurableError, ValueError):
    pass


class NoSuchInstance(DurableError):
    pass


class NotDeliverable(DurableError):
    pass


class TreeTooLarge(DurableError):
    """A cancel would walk more instances (the roots and their descendants) than its limit: nothing was
    changed. Cancel the tree in parts (its subtrees first) or pass a larger ``limit``."""


class OutcomeRejected(DurableError):
    """The database refused a step's outcome for what it holds (a data exception, a constraint, a program
    limit), so committing it again would fail again: the runtime calls ``handle(error, ctx)`` with this
    error and the instance's stored state, as for an exception raised by the step."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(f"outcome rejected by the database (SQLSTATE {sqlstate}): {message}")
        self.sqlstate = sqlstate
        self.message = message


class UniqueKeyOccupied(OutcomeRejected):
    """A step's outcome (or an operator's retry) would move its instance into a status of its
    ``unique_scope`` while another instance occupies the key (``key``) in its own scope; ``status`` is the
    status refused. ``handle()`` sees it like any rejected outcome (the default retries with backoff, then
    fails); ``Database.retry`` raises it and leaves the instance as it was."""

    def __init__(self, key: str, status: str, message: str | None = None) -> None:
        text = message or f"unique key {key!r} is occupied: {status} is in its unique_scope and another holds the key"
        DurableError.__init__(self, text)
        self.sqlstate, self.message, self.key, self.status = "23505", text, key, status


class InstanceFailed(DurableError):
    """``Database.result`` of an instance that ended failed: ``last_error`` is its error text."""

    def __init__(self, instance_id: int, last_error: str | None) -> None:
        super().__init__(f"instance {instance_id} failed: {last_error}")
        self.instance_id = instance_id
        self.last_error = last_error


class InstanceCancelled(DurableError):
    """``Database.result`` of an instance that ended cancelled: ``last_error`` is the cancel's reason."""

    def __init__(self, instance_id: int, last_error: str | None) -> None:
        super().__init__(f"instance {instance_id} was cancelled: {last_error}")
        self.instance_id = instance_id
        self.last_error = last_error


class UniqueKeyTaken(DurableError):
    """``insert(..., unique_key=key, on_conflict="raise")`` while another instance holds ``key`` in its
    unique_scope; ``holder_id`` is that instance's id."""

    def __init__(self, key: str, holder_id: int | None) -> None:
        super().__init__(f"unique key {key!r} is held by instance {holder_id}: nothing inserted")
        self.key = key
        self.holder_id = holder_id


class Fenced(DurableError):
    """A call of an explicit claim (:class:`durable.Claim`: transition, complete, retry, fail, release,
    extend) made after the claim stopped being held: its lease expired and the row was reaped, another
    worker claimed it again, or the claim already ended. Nothing changed; an outcome's history shows
    ``fenced``."""

    def __init__(self, instance_id: int, lease_token: int, call: str) -> None:
        super().__init__(f"instance {instance_id}: {call} with lease token {lease_token} is fenced: the claim is no "
                         "longer held (its lease expired, it was claimed again, or it already ended); nothing changed")
        self.instance_id = instance_id
        self.lease_token = lease_token
        self.call = call
