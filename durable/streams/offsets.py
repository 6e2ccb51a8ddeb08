"""Offsets: opaque to clients, ``<16 digits>_<16 digits>`` here (the second part is a byte position),
so they sort lexicographically like the positions they stand for."""

from __future__ import annotations

import re

from .errors import BadRequest
from .text import parse_decimal

START = "-1"
NOW = "now"
_OFFSET = re.compile(r"([0-9]{1,20})_([0-9]{1,20})")


def format_offset(position: int) -> str:
    """The protocol's offset text of message position ``position`` (fixed width: sorts as it reads)."""
    return f"{0:016d}_{position:016d}"


def is_offset(text: str) -> bool:
    """Whether ``text`` is an offset this server writes."""
    return bool(_OFFSET.fullmatch(text))


def parse_offset(text: str) -> int:
    """The byte position of an offset token (``-1`` is the start); BadRequest when malformed."""
    if text == START:
        return 0
    m = _OFFSET.fullmatch(text)
    if not m:
        raise BadRequest("invalid offset format")
    position = parse_decimal(m.group(2))
    if parse_decimal(m.group(1)) is None or position is None:
        raise BadRequest(f"invalid offset {text!r}: a position past 2^63-1")
    return position
