"""JSON encoding of states, results and payloads (bound as text, cast ::jsonb: no double encoding)."""

from __future__ import annotations

from typing import Any

import orjson
import pydantic

from .errors import StateError


class State(pydantic.BaseModel):
    """Base class for a machine's typed state: validated on decode, encoded to jsonb."""

    model_config = pydantic.ConfigDict(extra="forbid")


def _default(value: Any) -> Any:
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset)):
        raise TypeError(f"a {type(value).__name__} is not JSON (use a list)")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode(value: Any, what: str) -> str:
    """JSON text of ``value``; ``what`` names the value in the error ("state of Checkout.ship")."""
    try:
        return orjson.dumps(value, default=_default).decode()
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise StateError(f"{what} cannot be stored as JSON: {exc}") from None


def decode(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def decode_state(state_cls: type[pydantic.BaseModel] | None, text: str | None, what: str) -> Any:
    raw = decode(text)
    if state_cls is None:
        return raw
    try:
        return state_cls.model_validate(raw)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ())) or "(root)"
        raise StateError(f"{what} does not match {state_cls.__qualname__}: {loc}: {first['msg']}") from None
