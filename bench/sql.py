"""The benchmark's named statements (``bench/bench.sql``), in durable's ``-- name:`` format.

Parsed here rather than by ``durable.sql`` because importing ``durable`` installs trio-asyncio's
event loop policy, and the peer and commit-limit processes must run on plain asyncio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_HEADER = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Statement:
    name: str
    text: str
    doc: str


def parse(source: str) -> dict[str, Statement]:
    out: dict[str, Statement] = {}
    headers = list(_HEADER.finditer(source))
    for i, m in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(source)
        body = source[m.end() : end].strip("\n")
        doc = " ".join(line[2:].strip() for line in body.splitlines() if line.startswith("--"))
        if m.group(1) in out:
            raise ValueError(f"duplicate bench statement {m.group(1)!r}")
        out[m.group(1)] = Statement(m.group(1), body.strip() + "\n", doc)
    return out


_STATEMENTS = parse(resources.files(__package__).joinpath("bench.sql").read_text("utf-8"))


class _Statements:
    def __getattr__(self, name: str) -> Statement:
        try:
            return _STATEMENTS[name]
        except KeyError:
            raise AttributeError(f"no bench statement named {name!r}") from None


B = _Statements()
