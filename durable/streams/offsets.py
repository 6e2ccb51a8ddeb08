"""Offsets: opaque to clients, ``<16 digits>_<16 digits>`` here (the second part is a byte position),
so they sort lexicographically like the positions they stand for."""

from __future__ import annotations

import re

from .errors import BadRequest

START = "-1"
NOW = "now"
_OFFSET = re.compile(r"^(\d{1,20})_(\d{1,20})$")


def format_offset(position: int) -> str:
    return f"{0:016d}_{position:016d}"


def is_offset(text: str) -> bool:
    return bool(_OFFSET.match(text))


def parse_offset(text: str) -> int:
    """The byte position of an offset token (``-1`` is the start); BadRequest when malformed."""
    if text == START:
        return 0
    m = _OFFSET.match(text)
    if not m:
        raise BadRequest("invalid offset format")
    return int(m.group(2))
