"""Exceptions raised by durable: one tree under :class:`DurableError` (docs/errors.md lists them all).

DurableError                  base of everything durable raises on purpose
├── DatabaseUnavailable       the server cannot be reached (bad DSN, server down, connection lost)
├── SchemaError               the schema is missing or newer than this code
├── DefinitionError           a machine, step or job definition is malformed
├── UnknownMachine            a machine name/version is not registered
├── UnknownStep               a step name does not exist on its machine
├── OutcomeError              a step returned something that is not a valid outcome, or an insert or
│                             child spec holds a value durable cannot store (a ValueError)
├── StateError                a state or payload cannot be encoded to / decoded from JSON (a ValueError)
│   └── ValueTooLarge         an encoded state, payload, result or named value is over the size limit
├── InvalidArgument           an argument is malformed or out of range: a query's filter, cursor or
│                             offset, an instance id, a name or key (a ValueError)
├── OutcomeRejected           the database refused to commit a step's outcome (SQLSTATE classes 22,
│                             23, 54): handle() sees it, the instance's stored state is unchanged
│   └── UniqueKeyOccupied     an outcome into an occupied unique_scope (.key, .status)
├── NoSuchInstance            no instance has this id (or unique key)
├── NotDeliverable            a signal to a terminal instance (it would never be read)
├── TreeTooLarge              a cancel would walk more instances than its limit (nothing changed)
├── InstanceFailed            Database.result of a failed instance (.instance_id, .last_error)
├── InstanceCancelled         Database.result of a cancelled instance (.instance_id, .last_error)
├── UniqueKeyTaken            insert(..., on_conflict="raise") of a key another holds (.key, .holder_id)
├── ValueExists               ctx.values.put(name, other bytes) over a stored name without override=True
├── Fenced                    a write by a holder that was superseded: nothing changed. An explicit
│   │                         claim's call after its lease is no longer held (.instance_id,
│   │                         .lease_token, .call), or a stream append with a stale producer epoch
│   │                         or from a step whose claim was lost (.current_epoch), or a named value's
│   │                         put (ctx.values.put) from a step whose lease was lost
│   ├── streams.errors.FencedAppend            ...as the stream store raises it (HTTP 403)
│   └── contrib.streams_client.FencedResponse  ...as the HTTP client reads it from a 403
├── streams.errors.StreamError           the stream store refused a request (.status: its HTTP status)
│   ├── BadRequest 400, StreamNotFound 404, RequestTimeout 408, Conflict 409, StreamGone 410,
│   │   TooLarge 413
│   └── FencedAppend 403     (also a Fenced)
├── streams.errors.SubscriptionError     the subscription API refused a request (.status, .code)
├── streams.wakes.NoWakeStream           a pull-wake subscription's wake stream cannot take events
├── serve.claims.Problem                 a request the claims API refuses (.status)
└── contrib.streams_client.StreamsError  a Durable Streams server refused the client's request
    └── FencedResponse 403   (also a Fenced)
"""

from __future__ import annotations


class DurableError(Exception):
    """Base class of the errors durable raises on purpose."""


class DatabaseUnavailable(DurableError):
    """The PostgreSQL server cannot be reached: a bad DSN, a server that is down, a connection lost
    (``durable`` commands exit 3). A Runtime waits such an outage out; a client call raises it."""


class SchemaError(DurableError):
    """The durable schema is missing (run ``durable migrate`` or ``connect(migrate=True)``) or was
    migrated by newer code than this one."""


class DefinitionError(DurableError):
    """A machine, step, job or insert specification is malformed (raised where it is defined or
    passed, never at run time of a step)."""


class UnknownMachine(DurableError):
    """A machine name (and version) that is not registered with this Registry or Runtime."""


class UnknownStep(DurableError):
    """A step name that does not exist on its machine."""


class OutcomeError(DurableError, ValueError):
    """A step returned something that is not a valid outcome, or an insert or child spec holds a
    value durable cannot store (also a ValueError)."""


class StateError(DurableError, ValueError):
    """A state, payload or result cannot be encoded to JSON or decoded into its declared type (also a
    ValueError)."""


class ValueTooLarge(StateError):
    """An encoded state, payload or result is over the size limit (``max_value_bytes``, default
    :data:`durable.MAX_VALUE_BYTES`)."""


class InvalidArgument(DurableError, ValueError):
    """An argument is malformed or out of range: a query's filter, cursor or offset, an instance id,
    a name, a key, a limit (also a ValueError). The message names the argument."""


class NoSuchInstance(DurableError):
    """No instance has this id (or unique key)."""


class NotDeliverable(DurableError):
    """A signal to an instance that has ended (done, failed or cancelled): it would never be read,
    so it is not stored."""


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
    """A write by a holder that was superseded; nothing changed. The one fencing error of durable:

    - a call of an explicit claim (:class:`durable.Claim`: transition, complete, retry, fail, release,
      extend) made after the claim stopped being held: its lease expired and the row was reaped, another
      worker claimed it again, or the claim already ended (``instance_id``, ``lease_token``, ``call``; an
      outcome's history shows ``fenced``);
    - a named value's put (``ctx.values.put``) from a step whose lease was lost (``instance_id``,
      ``lease_token``, ``call``: ``values.put('name')``); nothing is written;
    - a stream append with a stale producer epoch, or from a step whose claim was lost
      (``current_epoch``): raised as its subclasses ``durable.streams.errors.FencedAppend`` (the store)
      and ``durable.contrib.streams_client.FencedResponse`` (the HTTP client).

    Attributes a kind of fencing does not have are None."""

    instance_id: int | None = None
    lease_token: int | None = None
    call: str | None = None
    current_epoch: int | None = None

    def __init__(self, instance_id: int, lease_token: int, call: str) -> None:
        super().__init__(
            f"instance {instance_id}: {call} with lease token {lease_token} is fenced: the claim is no "
            "longer held (its lease expired, it was claimed again, or it already ended); nothing changed"
        )
        self.instance_id = instance_id
        self.lease_token = lease_token
        self.call = call


class ValueExists(DurableError):
    """``ctx.values.put(name, data)`` (``override=False``) over a name the instance already holds with other
    bytes: the stored value is kept (``instance_id``, ``name``, ``sha256``: the stored bytes' digest). A put of
    the same bytes again is no error (a retried step's re-put); pass ``override=True`` to replace them."""

    def __init__(self, instance_id: int, name: str, sha256: str) -> None:
        super().__init__(
            f"instance {instance_id} already holds a value named {name!r} (other bytes, sha256 "
            f"{sha256[:16]}...): not overridden (pass override=True to replace it)"
        )
        self.instance_id = instance_id
        self.name = name
        self.sha256 = sha256
