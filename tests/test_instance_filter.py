"""durable.InstanceFilter: the one filter of db.query, the bulk operations, the CLI and the console."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import get_type_hints

import pytest

import durable
from durable import records
from durable.filters import FilterFields, InstanceFilter
from durable.ops import query_statement


def test_the_keyword_filters_are_the_fields_of_the_filter() -> None:
    fields = [f.name for f in dataclasses.fields(InstanceFilter)]
    assert list(get_type_hints(FilterFields)) == fields
    init = list(InstanceFilter.__init__.__code__.co_varnames[1 : 1 + len(fields)])
    assert init == fields


def test_a_filter_is_normalized_and_frozen() -> None:
    f = InstanceFilter(status="failed, terminal", ids=[3, 1], inserted_after=datetime(2030, 1, 1))
    assert f.status == ("failed", "done", "cancelled")
    assert f.ids == (3, 1)
    assert f.inserted_after == datetime(2030, 1, 1, tzinfo=UTC)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.machine = "x"  # type: ignore[misc]
    assert dataclasses.replace(f, machine="m") == InstanceFilter(
        status=f.status, ids=f.ids, machine="m", inserted_after=f.inserted_after
    )
    ago = InstanceFilter(updated_before=timedelta(hours=1)).updated_before
    assert ago is not None and ago < datetime.now(UTC)
    assert InstanceFilter().is_empty() and not InstanceFilter(ids=[]).is_empty()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"status": "finished"}, "unknown status 'finished'"),
        ({"version": "2"}, "version must be an integer"),
        ({"version": 2**40}, "version 1099511627776 is outside"),
        ({"machine": ""}, "machine must be a non-empty string"),
        ({"queue": "a\x00b"}, "queue contains"),
        ({"ids": "12"}, "ids must be a list of integers"),
        ({"ids": [1, "2"]}, "id must be an integer"),
        ({"state": "{x"}, "state filter is not valid JSON"),
        ({"updated_after": "yesterday"}, "updated_after must be a datetime or a timedelta"),
    ],
)
def test_a_bad_field_is_named(fields: dict[str, object], message: str) -> None:
    with pytest.raises(durable.InvalidArgument, match=message):
        InstanceFilter(**fields)  # type: ignore[arg-type]


def test_a_filter_and_the_same_keywords_give_one_statement() -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    keywords = {"status": "failed", "machine_prefix": "billing.", "state": {"order": 42}, "updated_after": when}
    flt = InstanceFilter(**keywords)  # type: ignore[arg-type]
    assert query_statement(flt, order="-updated") == query_statement(order="-updated", **keywords)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not both"):
        query_statement(flt, machine="x")
    with pytest.raises(TypeError, match="unexpected filter 'colour'"):
        query_statement(colour="red")  # type: ignore[call-arg]


def test_the_console_line_reads_every_field_it_prints() -> None:
    f = InstanceFilter(
        queue="q",
        machine="m",
        machine_prefix="b.",
        version=2,
        status="active",
        partition_key="p",
        unique_key="u",
        ids=[4, 5],
        parent_id=9,
    )
    assert InstanceFilter.parse(f.text()) == f
    with pytest.raises(durable.InvalidArgument, match="unknown filter 'colour:red'"):
        InstanceFilter.parse("colour:red")


@pytest.mark.trio
async def test_db_query_takes_a_filter(db: durable.Database) -> None:
    ids = await db.insert_many([durable.Insert("f.a", {"n": i}, step="s", queue="fq") for i in range(3)])
    page = await db.query(InstanceFilter(queue="fq", state={"n": 1}))
    assert [r.id for r in page] == [ids[1]]
    assert isinstance(page.items[0], durable.Instance) and page.items[0].lease_token is None
    assert list(page.items[0].to_json(records.LISTED)) == list(records.LISTED)
    from durable import ops

    assert await ops.count(db, InstanceFilter(queue="fq")) == 3
    done = await db.cancel_many("x", InstanceFilter(queue="fq", ids=ids[:2]))
    assert (done.matched, done.changed) == (2, 2)
    assert (await db.retry_many(InstanceFilter(queue="fq", status="cancelled"))).changed == 2
    with pytest.raises(durable.InvalidArgument, match="at least one filter"):
        await db.retry_many(InstanceFilter())
