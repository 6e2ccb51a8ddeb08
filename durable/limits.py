"""What durable can store, checked where a value enters (the client's calls, an outcome, a child spec), so
that no bad value reaches the driver and none is silently changed.

    MAX_DELAY            the longest delay (Retry, schedule_in, schedule_at past now), in seconds: 10 years
    MAX_KEY_BYTES        the longest name or key (queue, machine, step, signal, partition/unique/dedup key),
                         in UTF-8 bytes: these columns are indexed, and a btree entry holds at most ~2.7 kB
    MAX_VALUE_BYTES      the default size limit of one encoded state, payload, result or reason text, and
                         of one named value (``durable.connect(max_value_bytes=...)`` sets a database's own)
    MAX_ATTRIBUTES       the most attributes (small string->string metadata) an instance carries, each name
                         at most MAX_ATTRIBUTE_NAME_BYTES and each value at most MAX_ATTRIBUTE_VALUE_BYTES
    MAX_VALUES           the most named values one instance holds (``ctx.values.put``)

Text may not contain a NUL character (PostgreSQL cannot store one in text or jsonb).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from .errors import InvalidArgument

MAX_DELAY: Final = 10 * 365.25 * 86400.0  # 10 years in seconds (315,576,000)
MAX_KEY_BYTES: Final = 1024
MAX_VALUE_BYTES: Final = 16 * 1024 * 1024  # 16 MiB
MAX_ATTRIBUTES: Final = 32
MAX_ATTRIBUTE_NAME_BYTES: Final = 128
MAX_ATTRIBUTE_VALUE_BYTES: Final = 1024
MAX_VALUES: Final = 1000
INT64: Final = (-(2**63), 2**63 - 1)
INT32: Final = (-(2**31), 2**31 - 1)
SMALLINT: Final = (-(2**15), 2**15 - 1)

NUL_HINT: Final = "a NUL character (\\x00), which PostgreSQL cannot store"


def check_int(value: Any, what: str, bounds: tuple[int, int], error: type[Exception] = InvalidArgument) -> int:
    """``value`` as an int within ``bounds`` (a bool is not an int here)."""
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{what} must be an int, not {type(value).__name__} {value!r}")
    low, high = bounds
    if not low <= value <= high:
        raise error(f"{what} {value} is outside {low}..{high}")
    return int(value)


def decimal(text: str, digits: int) -> int | None:
    """The integer ``text`` spells in at most ``digits`` ASCII decimal digits, else None: ``str.isdigit``
    alone admits what ``int`` refuses ("\u00b2", a digit string longer than Python converts)."""
    return int(text) if len(text) <= digits and text.isascii() and text.isdigit() else None


def check_id(value: Any, what: str = "instance_id") -> int:
    """An instance id: an int in bigint range."""
    if type(value) is int and INT64[0] <= value <= INT64[1]:  # the common case, no further checks
        return value
    return check_int(value, what, INT64)


def check_text(
    value: Any,
    what: str,
    *,
    max_bytes: int = MAX_KEY_BYTES,
    error: type[Exception] = InvalidArgument,
    empty: bool = False,
) -> str:
    """A str without NUL characters of at most ``max_bytes`` UTF-8 bytes (and not empty unless allowed)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__} {value!r}")
    if not value and not empty:
        raise error(f"{what} must not be empty")
    if "\x00" in value:
        raise error(f"{what} contains {NUL_HINT}")
    if len(value) * 4 > max_bytes:  # only then can its UTF-8 form exceed the limit
        try:
            size = len(value.encode())
        except UnicodeEncodeError as exc:
            raise error(f"{what} is not valid Unicode: {exc.reason} at index {exc.start}") from None
        if size > max_bytes:
            raise error(f"{what} is {size} bytes long; the limit is {max_bytes} bytes")
    elif not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise error(f"{what} is not valid Unicode: {exc.reason} at index {exc.start}") from None
    return value


def check_delay(value: Any, what: str, error: type[Exception]) -> float:
    """A delay in seconds (a number or a timedelta): finite, non-negative and at most MAX_DELAY."""
    secs = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(secs, bool) or not isinstance(secs, (int, float)):
        raise error(f"{what} must be a number of seconds or a timedelta, not {value!r}")
    try:
        secs = float(secs)
    except OverflowError:  # an int too large for a float
        secs = float("inf")
    if not secs >= 0 or secs == float("inf"):  # also NaN
        raise error(f"{what} must be a finite, non-negative delay, not {value!r}")
    if secs > MAX_DELAY:
        raise error(f"{what} of {value!r} seconds is longer than durable.MAX_DELAY ({MAX_DELAY:.0f} s, 10 years)")
    return secs


def check_time(
    value: Any, what: str, error: type[Exception] = InvalidArgument, now: datetime | None = None
) -> datetime:
    """A timezone-aware datetime at most MAX_DELAY after now (the wall clock unless given)."""
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(value).__name__} {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise error(f"{what} {value.isoformat()} has no time zone: pass an aware datetime (e.g. tzinfo=UTC)")
    latest = (now or datetime.now(UTC)) + timedelta(seconds=MAX_DELAY)
    if value > latest:
        raise error(f"{what} {value.isoformat()} is more than durable.MAX_DELAY (10 years) from now")
    return value


def check_attributes(value: Any, what: str, error: type[Exception] = InvalidArgument) -> dict[str, str] | None:
    """Instance attributes: a mapping of at most MAX_ATTRIBUTES str names (non-empty, no NUL, at most
    MAX_ATTRIBUTE_NAME_BYTES) to str values (no NUL, at most MAX_ATTRIBUTE_VALUE_BYTES); None or an empty
    mapping is no attributes (None). TypeError for a non-mapping or a non-str name or value."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict of str to str, not {type(value).__name__} {value!r}")
    if len(value) > MAX_ATTRIBUTES:
        raise error(f"{what} has {len(value)} attributes; the limit is {MAX_ATTRIBUTES}")
    out: dict[str, str] = {}
    for name, text in value.items():
        if not isinstance(name, str):
            raise TypeError(f"{what}: attribute names must be str, not {type(name).__name__} {name!r}")
        check_text(name, f"{what}: attribute name {name[:40]!r}", max_bytes=MAX_ATTRIBUTE_NAME_BYTES, error=error)
        if not isinstance(text, str):
            raise TypeError(f"{what}: attribute {name!r} must be a str, not {type(text).__name__} {text!r}")
        check_text(text, f"{what}: attribute {name!r}", max_bytes=MAX_ATTRIBUTE_VALUE_BYTES, error=error, empty=True)
        out[name] = text
    return out or None
