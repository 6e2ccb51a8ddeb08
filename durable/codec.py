"""JSON encoding of states, results and payloads (bound as text, cast ::jsonb: no double encoding).

What PostgreSQL's jsonb cannot hold is refused, never changed: a NUL character in a string or key, and a
NaN or infinite float (orjson would write ``null``). Both are found with a scan of the encoded bytes for
``\\u0000`` and ``null``; only a hit walks the value to name the path of the offending part.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import orjson
import pydantic

from .errors import StateError, ValueTooLarge
from .limits import MAX_VALUE_BYTES, NUL_HINT


class State(pydantic.BaseModel):
    """Base class for a machine's typed state: validated on decode, encoded to jsonb."""

    model_config = pydantic.ConfigDict(extra="forbid")


def _default(value: Any) -> Any:
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset)):
        raise TypeError(f"a {type(value).__name__} is not JSON (use a list)")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode(value: Any, what: str, limit: int = MAX_VALUE_BYTES) -> str:
    """JSON text of ``value``; ``what`` names the value in the error ("state of Checkout.ship").
    StateError for what JSON or PostgreSQL cannot hold; ValueTooLarge past ``limit`` bytes."""
    if type(value) is not dict and isinstance(value, pydantic.BaseModel):
        value = value.model_dump(mode="json")  # as _default would; plain values walk faster on a hit below
    try:
        text = orjson.dumps(value, default=_default).decode()
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise StateError(f"{what} cannot be stored as JSON: {exc}") from None
    # the slow checks only on a hit (str `in` is ~50 ns here; bytes `in` was 4x slower)
    if "null" in text or "\\u0000" in text or len(text) > limit // 4:
        _check(value, text, what, limit)
    return text


def _check(value: Any, text: str, what: str, limit: int) -> None:
    size = len(text) if text.isascii() else len(text.encode())
    if size > limit:
        raise ValueTooLarge(f"{what} is {size} bytes as JSON; the limit is {limit} bytes")
    if "\\u0000" in text:  # or an escaped backslash before "u0000": then no path is found
        path = _nul(orjson.loads(text))
        if path is not None:
            raise StateError(f"{what}: {_render(path, 'string')} contains {NUL_HINT}")
    if "null" in text:
        path = _nonfinite(value, 0)
        if path is not None:
            raise StateError(
                f"{what}: {_render(path, 'float')} is NaN or infinite, which JSON cannot hold (orjson would store null)"
            )


_SKIP = frozenset({str, int, bool, type(None)})


class _Key(str):
    """A dict key that is itself the offending part (a NUL in a key)."""


def _nul(value: Any) -> list[Any] | None:
    """The path (innermost first) to the first string or key holding a NUL in decoded JSON (dicts,
    lists, strs). Only run when the encoded text has a ``\\u0000``."""
    if isinstance(value, str):
        return [] if "\x00" in value else None
    items: Any
    if isinstance(value, dict):
        for k in value:
            if "\x00" in k:
                return [_Key(k)]
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        found = _nul(v)
        if found is not None:
            found.append(k)
            return found
    return None


def _nonfinite(value: Any, depth: int) -> list[Any] | None:
    """The path (innermost first) to the first NaN or infinite float in a value as given: orjson writes
    them as ``null``, so the encoded text cannot tell. Runs for every value whose JSON holds a null, so
    the common shapes (dicts and lists of scalars) take the fast loop below."""
    kind = type(value)
    if kind is dict:
        items: Any = value.items()
    elif kind is list or kind is tuple:
        items = enumerate(value)
    elif kind in _SKIP:
        return None
    elif isinstance(value, float):
        return None if math.isfinite(value) else []
    elif isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    elif isinstance(value, pydantic.BaseModel):
        items = vars(value).items()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
    else:
        return None
    if depth > 255:  # orjson refuses deeper nesting anyway
        return None
    for k, v in items:
        kind = type(v)
        if kind in _SKIP:
            continue
        if kind is float:
            if math.isfinite(v):
                continue
            return [k]
        found = _nonfinite(v, depth + 1)
        if found is not None:
            found.append(k)
            return found
    return None


def _render(path: list[Any], noun: str) -> str:
    """``string at $.a[2]['b c']`` (or ``key 'k' at $.a``) from an innermost-first path. No raw NUL in
    the text: keys are shown by repr (error messages are stored as text too)."""
    if path and isinstance(path[0], _Key):
        noun, path = f"key {str(path[0])!r}", path[1:]
    out = "$"
    for part in reversed(path):
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier():
            out += f".{part}"
        else:
            out += f"[{str(part)!r}]"
    return f"{noun} at {out}"


def decode(text: str | None) -> Any:
    """The value of JSON ``text`` (None stays None)."""
    return None if text is None else orjson.loads(text)


def decode_state(state_cls: type[pydantic.BaseModel] | None, text: str | None, what: str) -> Any:
    """JSON ``text`` decoded into the machine's ``State`` class (plain JSON without one); StateError names
    ``what`` and the first field that does not match."""
    raw = decode(text)
    if state_cls is None:
        return raw
    try:
        return state_cls.model_validate(raw)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ())) or "(root)"
        raise StateError(f"{what} does not match {state_cls.__qualname__}: {loc}: {first['msg']}") from None
