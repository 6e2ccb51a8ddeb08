"""Checks of client text and JSON before they reach PostgreSQL, which stores neither NUL (U+0000) in
text or jsonb nor lone UTF-16 surrogates, and whose integers stop at 2^63-1. Each check raises
ValueError naming the problem; the HTTP layer answers it with a 400."""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_BIGINT = 2**63 - 1
_DECIMAL = re.compile(r"[0-9]{1,40}")


def parse_decimal(text: str, maximum: int = MAX_BIGINT) -> int | None:
    """A non-negative integer of ASCII digits up to ``maximum`` (at most 2^63-1), or None. Never
    calls ``int`` on a long string: that is slow and raises past 4300 digits."""
    if not _DECIMAL.fullmatch(text):
        return None
    value = int(text)
    return value if value <= maximum else None


def text_problem(value: str, *, allow_nul: bool = False) -> str | None:
    """Why PostgreSQL cannot store ``value`` as text, or None."""
    if not allow_nul and "\x00" in value:
        return "contains NUL (U+0000)"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone UTF-16 surrogate (not valid UTF-8)"
    return None


def check_text(value: str, what: str) -> str:
    """``value`` if it is text the protocol accepts; ValueError naming ``what`` and the problem."""
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(f"{what} {problem}")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range of a double")
    return value


def load_json(body: bytes, what: str = "body", *, allow_nul: bool = False) -> Any:
    """The JSON value of ``body`` (UTF-8). ValueError when it is not JSON (NaN and Infinity are not),
    has a number past a double's range (1e999), is nested too deeply for the parser, or has a string
    (or key) PostgreSQL cannot store: NUL unless ``allow_nul`` (JSON stored as text keeps it escaped),
    lone surrogates always."""
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError(f"{what} is JSON nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} is not UTF-8: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{what} is not JSON: {exc}") from None
    pending = [value]
    while pending:  # iterative: the parser already bounds the depth
        item = pending.pop()
        if isinstance(item, str):
            strings = [item]
        elif isinstance(item, list):
            pending.extend(item)
            continue
        elif isinstance(item, dict):
            pending.extend(item.values())
            strings = list(item)
        else:
            continue
        for s in strings:
            problem = text_problem(s, allow_nul=allow_nul)
            if problem is not None:
                raise ValueError(f"{what}: a JSON string {problem}")
    return value
