"""Named values: bytes a step stores under a name, apart from the instance's state, read only when asked for.

    ref = await ctx.values.put("invoice.pdf", pdf_bytes)       # in a step; a ValueRef
    pdf = await ctx.values.get("invoice.pdf")                   # bytes, or None
    blobs = await db.values.mget([ref, other_ref])              # bytes (or None) per ref, in order

A claim never reads them (the pick does not touch their table), so an instance carrying a large artifact
costs a claim what one without does. A value lives as long as its instance (deleted with it, by ``db.gc``
too). A put from a step is fenced by the step's lease: after the lease is lost (reaped, claimed again) it
raises :class:`~durable.Fenced` and writes nothing (the statement's header in durable/sql/values.sql says how).
A put is durable at once, not staged until the step's outcome: a retried step sees what an earlier attempt
put, and ``override=False`` accepts the same bytes again (an idempotent re-put), refusing only different
bytes (:class:`~durable.errors.ValueExists`).

Limits: a name is a non-empty str without NUL of at most ``durable.limits.MAX_KEY_BYTES`` UTF-8 bytes; a
value at most the database's ``max_value_bytes`` (``durable.connect(max_value_bytes=...)``, 16 MiB by default:
ValueTooLarge past it); an instance holds at most ``durable.limits.MAX_VALUES`` values; one ``mget`` reads at
most ``MAX_MGET`` refs.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from .errors import Fenced, InvalidArgument, ValueExists, ValueTooLarge
from .limits import MAX_VALUES, check_id, check_text
from .sql import Q

if TYPE_CHECKING:
    from ._pg import Pool
    from .clock import Clock


class Database(Protocol):
    """What named values use of a ``durable.Database`` (the step API sits below the public API)."""

    @property
    def pool(self) -> Pool:
        """The pool the value statements go through."""

    @property
    def clock(self) -> Clock:
        """The clock whose ``now()`` the statements carry."""

    @property
    def max_value_bytes(self) -> int:
        """The largest encoded value, in bytes."""

    @property
    def values(self) -> Values:
        """The Database's named values (``db.values``), which a step's ``ctx.values`` reads through."""


__all__ = ["MAX_MGET", "StepValues", "ValueInfo", "ValueRef", "Values"]

MAX_MGET = 1000  # refs one mget reads


@dataclass(frozen=True, slots=True)
class ValueRef:
    """A stored value: its instance, name, size in bytes and SHA-256 (hex). ``db.values.mget`` reads the
    bytes of exactly this content (None once the name holds other bytes, or the instance is gone)."""

    instance_id: int
    name: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ValueInfo:
    """A value as listed (``durable show``, the console, ``db.values.list``): no bytes, with the lease token
    of the claim that wrote it and when."""

    instance_id: int
    name: str
    size: int
    sha256: str
    lease_token: int | None
    written_at: datetime

    @property
    def ref(self) -> ValueRef:
        """The value's reference (instance, name, size, sha256)."""
        return ValueRef(self.instance_id, self.name, self.size, self.sha256)


def _name(name: Any) -> str:
    return check_text(name, "value name")


def _data(data: Any, name: str, limit: int) -> bytes:
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"value {name!r} must be bytes, not {type(data).__name__}")
    if len(data) > limit:
        raise ValueTooLarge(
            f"value {name!r} is {len(data)} bytes; the limit is {limit} bytes (durable.connect(max_value_bytes=...))"
        )
    return data


class Values:
    """``db.values``: read the named values of any instance (they are written by steps: ``ctx.values``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, instance_id: int, name: str) -> bytes | None:
        """The bytes of value ``name`` of instance ``instance_id``, or None when it has none."""
        row = await self.db.pool.fetchrow(Q.value_get, check_id(instance_id), _name(name))
        return None if row is None else bytes(row["data"])

    async def mget(self, refs: Iterable[ValueRef]) -> builtins.list[bytes | None]:
        """The bytes of each ref, in order, in one statement: None where the instance no longer holds that
        content (the name was overridden with other bytes since the ref was taken, or the instance was
        deleted). At most MAX_MGET refs."""
        refs = builtins.list(refs)
        if len(refs) > MAX_MGET:
            raise InvalidArgument(f"mget of {len(refs)} refs; the limit is {MAX_MGET} per call")
        for i, ref in enumerate(refs):
            if not isinstance(ref, ValueRef):
                raise TypeError(f"mget: item #{i} is {type(ref).__name__} {ref!r}, not a durable.ValueRef")
        if not refs:
            return []
        rows = await self.db.pool.fetch(
            Q.value_mget,
            [check_id(r.instance_id) for r in refs],
            [_name(r.name) for r in refs],
            [r.sha256 for r in refs],
        )
        return [None if r["data"] is None else bytes(r["data"]) for r in rows]

    async def list(self, instance_id: int) -> builtins.list[ValueInfo]:
        """The values of an instance (name, size, sha256, writer), without their bytes, by name."""
        iid = check_id(instance_id)
        rows = await self.db.pool.fetch(Q.value_list, iid)
        return [ValueInfo(iid, r["name"], r["size"], r["sha256"], r["lease_token"], r["written_at"]) for r in rows]


class StepValues:
    """``ctx.values``: the named values of the step's own instance; writes are fenced by the step's lease."""

    def __init__(self, db: Database, instance_id: int, lease_token: int) -> None:
        self.db = db
        self.instance_id = instance_id
        self.lease_token = lease_token

    async def put(self, name: str, data: bytes, *, override: bool = False) -> ValueRef:
        """Store ``data`` under ``name``; returns its ref. Over an existing name, ``override=False`` raises
        ValueExists unless the stored bytes are the same (a re-put is idempotent); ``override=True``
        replaces them. Fenced (raises durable.Fenced, writes nothing) once the step's lease is lost."""
        name = _name(name)
        if not isinstance(override, bool):
            raise TypeError(f"override must be a bool, not {type(override).__name__} {override!r}")
        data = _data(data, name, self.db.max_value_bytes)
        row = await self.db.pool.fetchrow(
            Q.value_put, self.instance_id, self.lease_token, name, data, override, self.db.clock.now(), MAX_VALUES
        )
        assert row is not None
        if not row["owned"]:
            raise Fenced(self.instance_id, self.lease_token, f"values.put({name!r})")
        if row["sha256"] is None:
            raise InvalidArgument(
                f"instance {self.instance_id} holds {row['held']} named values; the limit is "
                f"durable.limits.MAX_VALUES ({MAX_VALUES}): value {name!r} not stored"
            )
        if row["sha256"] != row["wanted"]:  # override=False over other bytes: the stored value was kept
            raise ValueExists(self.instance_id, name, row["sha256"])
        return ValueRef(self.instance_id, name, int(row["size"]), row["sha256"])

    async def get(self, name: str) -> bytes | None:
        """The bytes of this instance's value ``name``, or None (read now: values are never read with the
        claim)."""
        return await self.db.values.get(self.instance_id, name)

    async def list(self) -> builtins.list[ValueInfo]:
        """This instance's values, without their bytes."""
        return await self.db.values.list(self.instance_id)
