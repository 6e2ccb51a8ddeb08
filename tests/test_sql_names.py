"""Statement names are checked statically: durable/sql/statements.py (generated) types every ``Q.<name>``
for mypy, matches the .sql files, and every ``Q.<name>`` in the code names a statement (and every
statement is used). Replacing a statement's text is scoped to a block."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from durable.sql import Q, stub_source

ROOT = Path(__file__).resolve().parent.parent
CODE = ("durable", "sim", "bench", "console", "otel", "tests")
METHODS = {"get", "replaced"}


def test_the_generated_names_match_the_sql_files() -> None:
    generated = (ROOT / "durable" / "sql" / "statements.py").read_text()
    assert generated == stub_source(), "run: python -m durable.sql"


def test_every_name_used_is_a_statement_and_every_statement_is_used() -> None:
    names = {q.name for q in Q}
    used: dict[str, str] = {}
    for folder in CODE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "statements.py":
                continue
            for name in re.findall(r"\bQ\.([a-z_][a-z0-9_]*)", path.read_text()):
                used.setdefault(name, str(path.relative_to(ROOT)))
    unknown = {name: where for name, where in used.items() if name not in names | METHODS}
    assert not unknown, f"Q.<name> that no .sql file defines: {unknown}"
    assert not names - set(used), f"statements nothing uses: {sorted(names - set(used))}"


def test_a_replaced_statement_is_put_back_however_the_block_ends() -> None:
    original = Q.pick
    with Q.replaced("pick", "select 1") as new:
        assert Q.pick is new and Q.pick.text == "select 1" and Q.pick.doc == original.doc
        with Q.replaced("pick", "select 2"):
            assert Q.pick.text == "select 2"
        assert Q.pick is new
    assert Q.pick is original
    with pytest.raises(RuntimeError), Q.replaced("pick", "select 3"):
        raise RuntimeError
    assert Q.pick is original
    with pytest.raises(KeyError, match="no SQL statement named 'pikc'"), Q.replaced("pikc", "select 1"):
        pass
    misspelled = "pikc"
    with pytest.raises(AttributeError, match="no SQL statement named 'pikc'"):
        getattr(Q, misspelled)
    assert "pick" in Q and "pikc" not in Q


def test_fragments_are_shared_sql_and_not_statements() -> None:
    from durable.sql import expand, parse_queries

    source = (
        "-- fragment: pair\n-- Two columns.\nselect {a}, {b}\n\n"
        "-- name: one\n-- Uses pair.\n  -- include: pair a=$1 b=2\nfrom t;\n"
    )
    queries = parse_queries(source)
    assert list(queries) == ["one"] and queries["one"].text == "-- Uses pair.\n  select $1, 2\nfrom t;\n"
    with pytest.raises(ValueError, match="no SQL fragment named 'nope'"):
        expand("-- include: nope", {})
    with pytest.raises(ValueError, match="needs a value for \\{b\\}"):
        expand("-- include: pair a=1", {"pair": "select {a}, {b}"})
    with pytest.raises(ValueError, match="has no placeholder \\{c\\}"):
        expand("-- include: pair a=1 b=2 c=3", {"pair": "select {a}, {b}"})
    # the engine's statements hold no include line and no placeholder left unexpanded
    for query in Q:
        assert "-- include:" not in query.text and not re.search(r"\{[a-z_]+\}", query.text), query.name
    assert "starts_with(machine, $4::text)" in Q.count_instances.text  # the instance_filters fragment
    assert "for no key update of g" in Q.release.text and "for no key update of g" in Q.lease_lost.text
