"""Bad input gets a clear error that names the problem, and never loses or corrupts a row."""

from __future__ import annotations

import pytest
import trio

import durable
from durable import Done, Machine, Next, Retry, Stop, step

from .helpers import pick, row
from .helpers import step as run_step

pytestmark = pytest.mark.trio


class Buggy(Machine, queue="bad", max_attempts=1):
    class State(durable.State):
        n: int = 0

    @step
    async def shape(self, ctx):
        return 42

    @step
    async def unserializable(self, ctx):
        return Done({"when": {1, 2}})

    @step
    async def to_nowhere(self, ctx):
        return Next("nowhere", ctx.state)

    @step
    async def negative(self, ctx):
        return Retry(ctx.state, delay=-5)

    @step
    async def raises(self, ctx):
        raise ValueError("boom")


class Picky(Machine, queue="bad"):
    @step
    async def go(self, ctx):
        raise RuntimeError("always")

    async def handle(self, error, ctx):
        raise KeyError("handler is broken too")


@pytest.fixture
def bdb(db: durable.Database) -> durable.Database:
    db.registry.add(Buggy)
    db.registry.add(Picky)
    return db


@pytest.mark.parametrize(
    ("step_name", "message"),
    [
        ("shape", "returned 42 (int); a step must return Next, Retry"),
        ("unserializable", "result of Buggy.unserializable cannot be stored as JSON"),
        ("to_nowhere", "returned Next to unknown step 'nowhere'"),
        ("negative", "Retry delay must be a finite, non-negative delay"),
        ("raises", "ValueError: boom"),
    ],
)
async def test_step_errors_are_recorded_on_the_row(bdb: durable.Database, step_name: str, message: str) -> None:
    iid = await bdb.insert(Buggy, {"n": 3}, step=step_name)
    _, committed = await run_step(bdb, (await pick(bdb, "bad"))[0])
    r = await row(bdb, iid)
    assert committed.status == "failed" and r["status"] == "failed"
    assert message in r["last_error"]
    assert durable.codec.decode(r["state"]) == {"n": 3}  # state untouched


async def test_failing_handle_stops_with_both_errors(bdb: durable.Database) -> None:
    iid = await bdb.insert(Picky, {})
    await run_step(bdb, (await pick(bdb, "bad"))[0])
    r = await row(bdb, iid)
    assert r["status"] == "failed"
    assert "handle() failed with KeyError" in r["last_error"] and "RuntimeError: always" in r["last_error"]


async def test_unknown_machine_is_put_back_with_the_error(db: durable.Database) -> None:
    iid = await db.insert("Ghost", {"x": 1}, step="haunt", queue="bad")
    _, committed = await run_step(db, (await pick(db, "bad"))[0])
    r = await row(db, iid)
    assert committed.status == "runnable" and r["attempt"] == 1
    assert "machine 'Ghost' version 1 is not registered" in r["last_error"]
    assert durable.codec.decode(r["state"]) == {"x": 1}


async def test_unknown_step_goes_through_handle(bdb: durable.Database) -> None:
    iid = await bdb.insert("Buggy", {"n": 1}, step="vanished", queue="bad")
    await run_step(bdb, (await pick(bdb, "bad"))[0])
    r = await row(bdb, iid)
    assert r["status"] == "failed" and "has no step 'vanished'" in r["last_error"]


async def test_state_that_does_not_match_the_state_class(bdb: durable.Database) -> None:
    with pytest.raises(durable.StateError, match="does not match Buggy.State: n: Input should be a valid integer"):
        await bdb.insert(Buggy, {"n": "three"})
    iid = await bdb.insert("Buggy", {"n": "x"}, step="raises", queue="bad")  # by name: not validated
    await run_step(bdb, (await pick(bdb, "bad"))[0])
    r = await row(bdb, iid)
    assert r["status"] == "failed" and "does not match Buggy.State" in r["last_error"]


async def test_insert_errors_name_the_problem(bdb: durable.Database) -> None:
    with pytest.raises(durable.StateError, match="cannot be stored as JSON"):
        await bdb.insert(Picky, {"s": {1}})
    with pytest.raises(ValueError, match="unknown status 'finished' in unique_scope"):
        await bdb.insert(Picky, {}, unique_key="k", unique_scope=["finished"])
    with pytest.raises(durable.OutcomeError, match="schedule_in must be a finite, non-negative delay"):
        await bdb.insert(Picky, {}, schedule_in=-1)
    with pytest.raises(durable.DefinitionError, match="is not a machine"):
        await bdb.insert(int, {})  # type: ignore[arg-type]
    with pytest.raises(durable.UnknownMachine, match="no machine named 'Nope' is registered"):
        await bdb.insert("Nope", {})
    assert await bdb.pool.fetchval(durable.sql.Query("t", "select count(*) from instances", "")) == 0


async def test_definition_errors() -> None:
    with pytest.raises(durable.DefinitionError, match="must be an async function"):
        step(lambda self, ctx: None)  # type: ignore[arg-type]
    with pytest.raises(durable.DefinitionError, match="initial step 'nope' is not one of its steps"):

        class Bad(Machine, initial="nope"):
            @step
            async def a(self, ctx):
                return Stop("x")

    with pytest.raises(durable.DefinitionError, match="has no steps"):
        durable.Registry([type("Empty", (Machine,), {})])


async def test_unreachable_dsn_is_one_clear_error() -> None:
    with trio.fail_after(30):
        with pytest.raises(
            durable.DatabaseUnavailable, match=r"cannot reach PostgreSQL at postgresql://u:\*\*\*@127.0.0.1:1/x"
        ):
            async with durable.connect("postgresql://u:secret@127.0.0.1:1/x"):
                pass


async def test_invalid_schema_name() -> None:
    with pytest.raises(durable.SchemaError, match="invalid schema name"):
        async with durable.connect("postgresql://127.0.0.1:1/x", schema="drop table;"):
            pass
