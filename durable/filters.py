"""The one instance filter: :class:`InstanceFilter`, used by ``db.query``, the bulk operations
(``db.cancel_many``, ``db.retry_many``), ``durable ls / cancel / retry`` and the console's instances screen.

    flt = InstanceFilter(status="failed", machine_prefix="billing.", state={"order": 42})
    page = await db.query(flt)                       # or the same filters as keywords:
    page = await db.query(status="failed", machine_prefix="billing.")

A filter is a frozen value, validated when it is made (InvalidArgument names the bad field); every given
field must match (AND); ``None`` (or an empty tuple of ids) leaves a field out. :meth:`InstanceFilter.args`
are the filter parameters ``$1..$14`` of the ``query_instances*`` and ``count_instances`` statements
(durable/sql/ops.sql). The console's filter line (``queue:orders status:failed``) is
:meth:`InstanceFilter.parse` / :meth:`InstanceFilter.text`.

This module imports neither trio nor asyncpg: the console (asyncio) uses it as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import orjson

from .errors import InvalidArgument
from .limits import INT32, INT64, NUL_HINT, check_attributes
from .outcomes import STATUSES, TERMINAL

__all__ = ["STATUS_GROUPS", "FilterFields", "InstanceFilter", "parse_statuses"]

# status aliases accepted next to the enum values
STATUS_GROUPS: dict[str, tuple[str, ...]] = {
    "terminal": TERMINAL,
    "active": ("runnable", "executing", "awaiting_signal", "awaiting_children"),
    "awaiting": ("awaiting_signal", "awaiting_children"),
}

# arguments of a paged query that are not filters (a bulk operation pages by itself)
NOT_FILTERS = ("order", "limit", "after")


def parse_statuses(value: str | Iterable[str] | None) -> list[str] | None:
    """Statuses from a name, a comma-separated list or an iterable; aliases: terminal, active, awaiting."""
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for raw in names:
        if not isinstance(raw, str):
            raise InvalidArgument(f"status must be a string, not {raw!r}")
        name = raw.strip().lower()
        if name in STATUS_GROUPS:
            out.extend(s for s in STATUS_GROUPS[name] if s not in out)
        elif name in STATUSES:
            if name not in out:
                out.append(name)
        else:
            choices = ", ".join((*STATUSES, *STATUS_GROUPS))
            raise InvalidArgument(f"unknown status {raw!r} (one of: {choices})")
    if not out:
        raise InvalidArgument("empty status filter")
    return out


def _state_filter(state: Any) -> str | None:
    if state is None:
        return None
    if isinstance(state, (str, bytes)):
        try:
            parsed = orjson.loads(state)
        except orjson.JSONDecodeError as exc:
            raise InvalidArgument(f"state filter is not valid JSON: {exc}") from None
    else:
        parsed = state
    if not isinstance(parsed, (dict, list)):
        raise InvalidArgument(f"state filter must be a JSON object or array, not {parsed!r}")
    from . import codec  # pydantic: only when a state filter is given

    return codec.encode(parsed, "state filter")


def _when(value: Any, what: str) -> datetime | None:
    """A timestamp filter: an aware datetime (naive = UTC) or a timedelta meaning 'that long ago'."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        try:
            return datetime.now(UTC) - value
        except OverflowError:
            raise InvalidArgument(f"{what} {value} ago is before year 1") from None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    raise InvalidArgument(f"{what} must be a datetime or a timedelta, not {value!r}")


def opt_int(value: Any, what: str, bounds: tuple[int, int] = INT64) -> int | None:
    """``value`` if it is None or an integer within ``bounds``; else InvalidArgument naming ``what``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what} must be an integer, not {value!r}")
    if not bounds[0] <= value <= bounds[1]:
        raise InvalidArgument(f"{what} {value} is outside {bounds[0]}..{bounds[1]}")
    return value


def opt_text(value: Any, what: str) -> str | None:
    """``value`` if it is None or a non-empty string without NUL; else InvalidArgument naming ``what``."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{what} must be a non-empty string, not {value!r}")
    if "\x00" in value:
        raise InvalidArgument(f"{what} contains {NUL_HINT}")
    return value


class FilterFields(TypedDict, total=False):
    """The fields of :class:`InstanceFilter` as keyword arguments (``db.query(status="failed")``);
    a test keeps the two the same."""

    ids: Iterable[int] | None
    status: str | Iterable[str] | None
    machine: str | None
    machine_prefix: str | None
    version: int | None
    queue: str | None
    partition_key: str | None
    unique_key: str | None
    parent_id: int | None
    inserted_after: datetime | timedelta | None
    inserted_before: datetime | timedelta | None
    updated_after: datetime | timedelta | None
    updated_before: datetime | timedelta | None
    state: Any
    attributes: Mapping[str, str] | None


# the console's filter line: key -> field
_PARSE_KEYS = {
    "id": "ids",
    "status": "status",
    "machine": "machine",
    "prefix": "machine_prefix",
    "version": "version",
    "queue": "queue",
    "key": "partition_key",
    "unique": "unique_key",
    "parent": "parent_id",
    "attr": "attributes",
}
FILTER_KEYS = tuple(_PARSE_KEYS)


@dataclass(frozen=True, slots=True, init=False)
class InstanceFilter:
    """Which instances: every given field must match (AND); None leaves a field out.

    - ``ids``: instance ids (an empty tuple matches none).
    - ``status``: a name, a comma-separated list or an iterable of names (aliases: terminal, active,
      awaiting), kept as a tuple of statuses.
    - ``machine`` / ``machine_prefix``: a machine name, or a family prefix (``billing.``).
    - ``version``, ``queue``, ``partition_key``, ``unique_key``, ``parent_id``: equal.
    - ``inserted_after`` ... ``updated_before``: an aware datetime (naive is UTC) or a timedelta meaning
      that long before the filter is made; ``*_after`` bounds are inclusive, ``*_before`` exclusive.
    - ``state``: a JSON object or array (or its text) the state contains (``@>``).
    - ``attributes``: a dict of attributes the instance carries with these values (equality on each; the
      attributes' GIN index serves it), kept as a tuple of (name, value) pairs.

    Validated on construction: :class:`~durable.InvalidArgument` names the field."""

    ids: tuple[int, ...] | None = None
    status: tuple[str, ...] | None = None
    machine: str | None = None
    machine_prefix: str | None = None
    version: int | None = None
    queue: str | None = None
    partition_key: str | None = None
    unique_key: str | None = None
    parent_id: int | None = None
    inserted_after: datetime | None = None
    inserted_before: datetime | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    state: Any = None
    attributes: tuple[tuple[str, str], ...] | None = None

    def __init__(
        self,
        *,
        ids: Iterable[int] | None = None,
        status: str | Iterable[str] | None = None,
        machine: str | None = None,
        machine_prefix: str | None = None,
        version: int | None = None,
        queue: str | None = None,
        partition_key: str | None = None,
        unique_key: str | None = None,
        parent_id: int | None = None,
        inserted_after: datetime | timedelta | None = None,
        inserted_before: datetime | timedelta | None = None,
        updated_after: datetime | timedelta | None = None,
        updated_before: datetime | timedelta | None = None,
        state: Any = None,
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if ids is not None:
            if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
                raise InvalidArgument(f"ids must be a list of integers, not {ids!r}")
            put("ids", tuple(opt_int(i, "id") for i in ids))  # () matches no instance
        else:
            put("ids", None)
        statuses = parse_statuses(status)
        put("status", tuple(statuses) if statuses is not None else None)
        put("machine", opt_text(machine, "machine"))
        put("machine_prefix", opt_text(machine_prefix, "machine prefix"))
        put("version", opt_int(version, "version", INT32))
        put("queue", opt_text(queue, "queue"))
        put("partition_key", opt_text(partition_key, "partition key"))
        put("unique_key", opt_text(unique_key, "unique key"))
        put("parent_id", opt_int(parent_id, "parent id"))
        put("inserted_after", _when(inserted_after, "inserted_after"))
        put("inserted_before", _when(inserted_before, "inserted_before"))
        put("updated_after", _when(updated_after, "updated_after"))
        put("updated_before", _when(updated_before, "updated_before"))
        _state_filter(state)  # validated now; encoded by args()
        put("state", state)
        attrs = check_attributes(attributes, "attributes filter")
        put("attributes", tuple(attrs.items()) if attrs is not None else None)

    @classmethod
    def of(
        cls, where: InstanceFilter | None = None, filters: Mapping[str, Any] | None = None, *, what: str = "query"
    ) -> InstanceFilter:
        """``where`` and keyword ``filters`` as one filter: either may be given, not both; ``order``,
        ``limit`` and ``after`` are refused (InvalidArgument), an unknown name is a TypeError."""
        filters = dict(filters or {})
        if where is not None and not isinstance(where, InstanceFilter):
            raise TypeError(f"{what}: where must be a durable.InstanceFilter, not {where!r}")
        for name in NOT_FILTERS:
            if name in filters:
                raise InvalidArgument(f"{what} takes the filters of db.query, not {name!r} (it pages by itself)")
        if where is not None:
            if any(v is not None for v in filters.values()):
                raise TypeError(f"{what}: pass an InstanceFilter or filter keywords, not both")
            return where
        unknown = sorted(set(filters) - set(cls.__dataclass_fields__))
        if unknown:
            raise TypeError(f"{what}: unexpected filter {unknown[0]!r}")
        return cls(**filters)  # names checked above; values by __init__

    def is_empty(self) -> bool:
        """True when no field is given (the filter matches every instance)."""
        return all(getattr(self, f.name) is None for f in dataclasses.fields(self))

    def args(self) -> list[Any]:
        """The filter parameters $1..$15 of the query_instances* and count_instances statements."""
        return [
            list(self.ids) if self.ids is not None else None,
            list(self.status) if self.status is not None else None,
            self.machine,
            self.machine_prefix,
            self.version,
            self.queue,
            self.partition_key,
            self.unique_key,
            self.parent_id,
            self.inserted_after,
            self.inserted_before,
            self.updated_after,
            self.updated_before,
            _state_filter(self.state),
            self.attributes_json(),
        ]

    def attributes_json(self) -> str | None:
        """The attributes filter as the JSON object ``attributes @>`` takes (None: no filter)."""
        if self.attributes is None:
            return None
        return orjson.dumps(dict(self.attributes)).decode()

    @classmethod
    def parse(cls, text: str) -> InstanceFilter:
        """The console's filter line: ``queue:orders status:failed,cancelled machine:M version:2 prefix:P
        key:PARTITION unique:KEY parent:ID id:1,2 attr:NAME=VALUE`` (attr: repeatable) or a bare id;
        InvalidArgument names a bad token."""
        fields: dict[str, Any] = {}
        for token in text.split():
            key, sep, value = token.partition(":")
            if not sep:
                key, value = ("id", token) if token.isdigit() else ("?", token)
            if not value:
                raise InvalidArgument(f"filter {key!r} needs a value, e.g. {key}:x")
            name = _PARSE_KEYS.get(key)
            if name is None:
                raise InvalidArgument(f"unknown filter {token!r} (use {': '.join(FILTER_KEYS)}: or a bare id)")
            if name == "ids":
                fields[name] = tuple(_ints(value, key))
            elif name in ("version", "parent_id"):
                fields[name] = _ints(value, key)[0]
            elif name == "attributes":
                attr, eq, attr_value = value.partition("=")
                if not eq or not attr:
                    raise InvalidArgument(f"filter attr takes name=value (attr:tenant=acme), not {value!r}")
                fields.setdefault(name, {})[attr] = attr_value
            else:
                fields[name] = value
        return cls(**fields)

    def text(self) -> str:
        """The filter as :meth:`parse` reads it (the fields the filter line has; others are left out)."""
        parts = []
        for key, name in (
            ("queue", "queue"),
            ("machine", "machine"),
            ("prefix", "machine_prefix"),
            ("version", "version"),
            ("status", "status"),
            ("key", "partition_key"),
            ("unique", "unique_key"),
            ("id", "ids"),
            ("parent", "parent_id"),
        ):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{key}:{','.join(map(str, value)) if isinstance(value, tuple) else value}")
        parts.extend(f"attr:{k}={v}" for k, v in self.attributes or ())
        return " ".join(parts)


def _ints(value: str, what: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise InvalidArgument(f"{what} must be a number, not {value!r}") from None
