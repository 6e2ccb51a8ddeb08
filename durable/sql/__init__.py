"""Every SQL statement durable runs, loaded once from the ``.sql`` files beside this module.

Each statement in ``queries.sql`` starts with a ``-- name: <name>`` header followed by comment lines
saying what it does and what its ``$n`` parameters are. This module has no dependency on trio or
asyncpg so that the console (asyncio) reads through exactly the same statements as the engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

__all__ = ["MIGRATIONS", "Migration", "Q", "Query"]


@dataclass(frozen=True, slots=True)
class Query:
    """A named, parameterized statement."""

    name: str
    text: str
    doc: str
    # a `-- plan: generic` line: the statement's plan does not depend on its parameters, so a cached
    # generic plan may serve it (durable._pg runs it on connections that keep one)
    generic: bool = False

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    text: str


_HEADER = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_GENERIC = "plan: generic"


def parse_queries(source: str) -> dict[str, Query]:
    """Split a file of ``-- name:`` sections into queries; a duplicate name is an error."""
    out: dict[str, Query] = {}
    headers = list(_HEADER.finditer(source))
    for i, m in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(source)
        body = source[m.end() : end].strip("\n")
        doc_lines = []
        for line in body.splitlines():
            if line.startswith("--"):
                doc_lines.append(line[2:].strip())
            else:
                break
        name = m.group(1)
        if name in out:
            raise ValueError(f"duplicate query name {name!r}")
        generic = _GENERIC in doc_lines
        doc = " ".join(line for line in doc_lines if line != _GENERIC)
        out[name] = Query(name=name, text=body.strip() + "\n", doc=doc, generic=generic)
    return out


def load_migrations() -> tuple[Migration, ...]:
    folder = resources.files(__package__).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        m = re.fullmatch(r"(\d{4})_([a-z0-9_]+)\.sql", entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda mig: mig.version)
    for expected, mig in enumerate(found, start=1):
        if mig.version != expected:
            raise RuntimeError(f"migration numbering has a gap at {mig.version:04d}_{mig.name}")
    return tuple(found)


class _Queries:
    """Attribute access to the statements: ``Q.pick``; unknown names raise AttributeError."""

    def __init__(self, queries: dict[str, Query]) -> None:
        self._queries = queries

    def __getattr__(self, name: str) -> Query:
        try:
            return self._queries[name]
        except KeyError:
            raise AttributeError(f"no SQL statement named {name!r}") from None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._queries.values())

    def __contains__(self, name: str) -> bool:
        return name in self._queries

    def replace(self, name: str, text: str) -> Query:
        """Swap one statement's text (the simulator's planted bugs use this); returns the old one."""
        old = self._queries[name]
        self._queries[name] = Query(name=name, text=text, doc=old.doc, generic=old.generic)
        return old

    def restore(self, query: Query) -> None:
        self._queries[query.name] = query


def _load_all() -> dict[str, Query]:
    merged: dict[str, Query] = {}
    for entry in sorted(resources.files(__package__).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, q in parse_queries(entry.read_text("utf-8")).items():
                if name in merged:
                    raise ValueError(f"query {name!r} defined twice ({entry.name})")
                merged[name] = q
    return merged


Q = _Queries(_load_all())
MIGRATIONS = load_migrations()
