"""Every SQL statement durable runs, loaded once from the ``.sql`` files beside this module.

Each statement in ``queries.sql`` starts with a ``-- name: <name>`` header followed by comment lines
saying what it does and what its ``$n`` parameters are. This module has no dependency on trio or
asyncpg so that the console (asyncio) reads through exactly the same statements as the engine.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Protocol, cast

from .statements import StatementNames

__all__ = ["MIGRATIONS", "Migration", "Q", "Query", "Statements"]


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
    """One schema migration: ``NNNN_name.sql`` of durable/sql/migrations."""

    version: int
    name: str
    text: str


_HEADER = re.compile(r"^--\s*(name|fragment):\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_INCLUDE = re.compile(r"^([ \t]*)--\s*include:\s*([a-z_][a-z0-9_]*)((?:\s+[a-z_]+=\S+)*)\s*$", re.MULTILINE)
_GENERIC = "plan: generic"


def _sections(source: str) -> list[tuple[str, str, str]]:
    """(kind, name, body) of each ``-- name:`` or ``-- fragment:`` section of a file."""
    headers = list(_HEADER.finditer(source))
    out = []
    for i, m in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(source)
        out.append((m.group(1), m.group(2), source[m.end() : end].strip("\n")))
    return out


def _code(body: str) -> str:
    """A section's body without its leading comment lines (a fragment's doc)."""
    lines = body.splitlines()
    while lines and lines[0].startswith("--"):
        lines.pop(0)
    return "\n".join(lines).strip("\n")


def expand(text: str, fragments: dict[str, str]) -> str:
    """``text`` with each ``-- include: NAME key=value ...`` line replaced by fragment NAME (indented like
    the line), its ``{key}`` placeholders filled in. An unknown fragment or placeholder is an error."""

    def one(m: re.Match[str]) -> str:
        indent, name, args = m.group(1), m.group(2), m.group(3)
        if name not in fragments:
            raise ValueError(f"-- include: no SQL fragment named {name!r}")
        body = fragments[name]
        for arg in args.split():
            key, _, value = arg.partition("=")
            if "{" + key + "}" not in body:
                raise ValueError(f"-- include: {name} has no placeholder {{{key}}}")
            body = body.replace("{" + key + "}", value)
        left = re.search(r"\{[a-z_]+\}", body)
        if left:
            raise ValueError(f"-- include: {name} needs a value for {left.group(0)}")
        return "\n".join(indent + line if line else line for line in body.splitlines())

    return _INCLUDE.sub(one, text)


def parse_fragments(source: str) -> dict[str, str]:
    """The ``-- fragment: NAME`` sections of a file: SQL that statements share through ``-- include:``
    lines (a fragment is no statement of its own: it is not in :data:`Q`)."""
    return {name: _code(body) for kind, name, body in _sections(source) if kind == "fragment"}


def parse_queries(source: str, fragments: dict[str, str] | None = None) -> dict[str, Query]:
    """Split a file of ``-- name:`` sections into queries, ``-- include:`` lines expanded from
    ``fragments`` (default: the file's own); a duplicate name is an error."""
    fragments = parse_fragments(source) if fragments is None else fragments
    out: dict[str, Query] = {}
    for kind, name, body in _sections(source):
        if kind != "name":
            continue
        doc_lines = []
        for line in body.splitlines():
            if line.startswith("--"):
                doc_lines.append(line[2:].strip())
            else:
                break
        if name in out:
            raise ValueError(f"duplicate query name {name!r}")
        generic = _GENERIC in doc_lines
        doc = " ".join(line for line in doc_lines if line != _GENERIC)
        out[name] = Query(name=name, text=expand(body.strip(), fragments) + "\n", doc=doc, generic=generic)
    return out


def load_migrations() -> tuple[Migration, ...]:
    """The migrations in version order; RuntimeError when their numbering has a gap."""
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
    """Attribute access to the statements: ``Q.pick``. Typed as :class:`Statements` (one attribute per
    statement, generated into ``durable/sql/statements.py``), so mypy rejects a misspelled name; at run
    time an unknown name raises AttributeError."""

    def __init__(self, queries: dict[str, Query]) -> None:
        self._queries = queries

    def __getattr__(self, name: str) -> Query:
        try:
            return self._queries[name]
        except KeyError:
            raise AttributeError(f"no SQL statement named {name!r}") from None

    def __iter__(self) -> Iterator[Query]:
        return iter(self._queries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._queries

    def get(self, name: str) -> Query:
        """The statement ``name`` (a name held in a variable); KeyError names an unknown one."""
        try:
            return self._queries[name]
        except KeyError:
            raise KeyError(f"no SQL statement named {name!r}") from None

    @contextmanager
    def replaced(self, name: str, text: str) -> Iterator[Query]:
        """Run statement ``name`` as ``text`` inside the block, and put the previous text back when it
        ends, however it ends (the simulator's planted bugs use this; blocks nest). Yields the new query."""
        old = self.get(name)
        new = Query(name=name, text=text, doc=old.doc, generic=old.generic)
        self._queries[name] = new
        try:
            yield new
        finally:
            self._queries[name] = old


def _load_all() -> dict[str, Query]:
    files = [
        (entry.name, entry.read_text("utf-8"))
        for entry in sorted(resources.files(__package__).iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".sql")
    ]
    fragments: dict[str, str] = {}
    for file_name, text in files:
        for name, body in parse_fragments(text).items():
            if name in fragments:
                raise ValueError(f"SQL fragment {name!r} defined twice ({file_name})")
            fragments[name] = body
    merged: dict[str, Query] = {}
    for file_name, text in files:
        for name, q in parse_queries(text, fragments).items():
            if name in merged:
                raise ValueError(f"query {name!r} defined twice ({file_name})")
            merged[name] = q
    return merged


class Statements(StatementNames, Protocol):
    """The type of :data:`Q`: every statement as an attribute (:class:`StatementNames`, generated from the
    ``.sql`` files; ``tests/test_sql_names.py`` keeps it current), iteration, ``in``, :meth:`get` and the
    scoped :meth:`replaced`."""

    def __iter__(self) -> Iterator[Query]: ...

    def __contains__(self, name: object) -> bool: ...

    def get(self, name: str) -> Query:
        """The statement ``name``; KeyError names an unknown one."""
        ...

    def replaced(self, name: str, text: str) -> AbstractContextManager[Query]:
        """Statement ``name`` runs as ``text`` inside the block; the previous text is put back after it."""
        ...


def stub_source() -> str:
    """The text of ``durable/sql/statements.py``: one typed attribute per statement of the ``.sql`` files."""
    lines = [
        '"""Generated from durable/sql/*.sql by ``python -m durable.sql``: do not edit by hand.',
        "",
        "One attribute per named statement, so that mypy checks every ``Q.<name>``; tests/test_sql_names.py",
        'fails when this file and the .sql files disagree."""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import TYPE_CHECKING, Protocol",
        "",
        "if TYPE_CHECKING:",
        "    from . import Query",
        "",
        "",
        "class StatementNames(Protocol):",
        '    """The named statements of durable/sql/*.sql (see each one\'s ``-- name:`` header there)."""',
        "",
    ]
    lines += [f"    @property\n    def {name}(self) -> Query: ..." for name in sorted(_load_all())]
    return "\n".join(lines) + "\n"


Q: Statements = cast("Statements", _Queries(_load_all()))
MIGRATIONS = load_migrations()
