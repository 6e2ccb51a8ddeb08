"""Every value is checked where it enters (issue 14, items 2 and 7): a clear TypeError or ValueError (a
DurableError for the value ones) naming the argument, nothing written, nothing silently changed. A bad
value in an outcome goes to handle() like any invalid outcome; a timestamp durable did not write stays
readable."""

from __future__ import annotations

import dataclasses
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

import durable
from durable import Await, Cancel, Child, Done, Machine, Next, Retry, Spawn, Stop, step
from durable.sql import Query

from .helpers import pick, row, wait_status
from .helpers import step as run_step

pytestmark = pytest.mark.trio

COUNT_INSTANCES = Query("t", "select count(*) from instances", "")
COUNT_SIGNALS = Query("t", "select count(*) from signals", "")
COUNT_HISTORY = Query("t", "select count(*) from history", "")


class Plain(Machine, queue="vl"):
    @step
    async def go(self, ctx):
        return Done()


class Typed(Machine, queue="vl"):
    class State(durable.State):
        t: str = ""
        x: float | None = None

    @step
    async def go(self, ctx):
        return Done()


@pytest.fixture
def vdb(db: durable.Database) -> durable.Database:
    db.registry.add(Plain)
    db.registry.add(Typed)
    return db


async def counts(db: durable.Database) -> tuple[int, int, int]:
    return (
        await db.pool.fetchval(COUNT_INSTANCES),
        await db.pool.fetchval(COUNT_SIGNALS),
        await db.pool.fetchval(COUNT_HISTORY),
    )


LATER = datetime.now(UTC) + timedelta(days=11 * 366)

# (insert keyword arguments, exception type, a regex the message must match: it names the argument)
BAD_INSERTS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"unique_key": b"k"}, TypeError, r"insert #0: unique_key must be a str, not bytes"),
    ({"unique_key": "k\x00"}, durable.OutcomeError, r"insert #0: unique_key contains a NUL character"),
    ({"partition_key": 5}, TypeError, r"insert #0: partition_key must be a str, not int 5"),
    ({"partition_key": "a\x00b"}, durable.OutcomeError, r"insert #0: partition_key contains a NUL character"),
    ({"partition_key": "p" * 2000}, durable.OutcomeError, r"partition_key is 2000 bytes long; the limit is 1024"),
    ({"partition_key": "\ud800"}, durable.OutcomeError, r"partition_key is not valid Unicode"),
    ({"queue": "q\x00"}, durable.OutcomeError, r"insert #0: queue contains a NUL character"),
    ({"queue": ""}, durable.OutcomeError, r"insert #0: queue must not be empty"),
    ({"queue": 7}, TypeError, r"insert #0: queue must be a str"),
    ({"step": "go\x00"}, durable.OutcomeError, r"insert #0: step contains a NUL character"),
    ({"priority": True}, TypeError, r"insert #0: priority must be an int, not bool True"),
    ({"priority": "1"}, TypeError, r"insert #0: priority must be an int, not str"),
    ({"priority": 40000}, durable.OutcomeError, r"insert #0: priority 40000 is outside -32768..32767"),
    ({"priority": -(2**40)}, durable.OutcomeError, r"insert #0: priority -1099511627776 is outside"),
    ({"version": 0}, durable.OutcomeError, r"insert #0: version 0 is outside 1..2147483647"),
    ({"version": 2**40}, durable.OutcomeError, r"insert #0: version 1099511627776 is outside 1..2147483647"),
    ({"version": True}, TypeError, r"insert #0: version must be an int"),
    ({"schedule_in": 1e12}, durable.OutcomeError, r"insert #0: schedule_in .* longer than durable.MAX_DELAY"),
    ({"schedule_in": timedelta(days=4000)}, durable.OutcomeError, r"schedule_in .* longer than durable.MAX_DELAY"),
    ({"schedule_in": 10**400}, durable.OutcomeError, r"insert #0: schedule_in must be a finite"),
    ({"schedule_in": math.inf}, durable.OutcomeError, r"insert #0: schedule_in must be a finite"),
    ({"schedule_in": math.nan}, durable.OutcomeError, r"insert #0: schedule_in must be a finite"),
    ({"schedule_in": True}, durable.OutcomeError, r"insert #0: schedule_in must be a number of seconds"),
    ({"schedule_at": "2030-01-01"}, TypeError, r"insert #0: schedule_at must be a datetime, not str"),
    ({"schedule_at": datetime(2030, 1, 1)}, durable.OutcomeError, r"insert #0: schedule_at .* has no time zone"),
    ({"schedule_at": datetime.max}, durable.OutcomeError, r"insert #0: schedule_at .* has no time zone"),
    ({"schedule_at": LATER}, durable.OutcomeError, r"insert #0: schedule_at .* more than durable.MAX_DELAY"),
    ({"schedule_at": datetime.max.replace(tzinfo=UTC)}, durable.OutcomeError, r"schedule_at .* durable.MAX_DELAY"),
    (
        {"schedule_at": datetime.now(UTC) + timedelta(days=9 * 365), "schedule_in": timedelta(days=2 * 365)},
        durable.OutcomeError,
        r"insert #0: schedule_at \+ schedule_in is more than durable.MAX_DELAY",
    ),
    ({"unique_key": "k", "unique_scope": "done"}, TypeError, r"insert #0: unique_scope must be a list"),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    BAD_INSERTS,
    ids=[f"{next(iter(k))}={next(iter(k.values()))!r}"[:40] for k, _, _ in BAD_INSERTS],
)
async def test_bad_insert_argument(
    vdb: durable.Database, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        await vdb.insert(Plain, {}, **kwargs)
    assert isinstance(caught.value, (TypeError, ValueError))
    assert "\x00" not in str(caught.value)  # an error message is stored as text too: never a raw NUL
    assert await counts(vdb) == (0, 0, 0)


BAD_STATES: list[tuple[Any, type[Exception], str]] = [
    ({"t": "a\x00b"}, durable.StateError, r"state of Plain: string at \$\.t contains a NUL character \(\\x00\)"),
    ({"a\x00": 1}, durable.StateError, r"state of Plain: key 'a\\x00' at \$ contains a NUL character"),
    ({"l": [1, {"x y": ["ok", "q\x00"]}]}, durable.StateError, r"string at \$\.l\[1\]\['x y'\]\[1\] contains a NUL"),
    ({"x": math.nan}, durable.StateError, r"state of Plain: float at \$\.x is NaN or infinite"),
    ({"x": [1.0, -math.inf]}, durable.StateError, r"state of Plain: float at \$\.x\[1\] is NaN or infinite"),
    ({"x": (math.inf,)}, durable.StateError, r"float at \$\.x\[0\] is NaN or infinite"),
    ({"n": 2**70}, durable.StateError, r"state of Plain cannot be stored as JSON"),
    ({"s": "\ud800"}, durable.StateError, r"state of Plain cannot be stored as JSON"),
]


@pytest.mark.parametrize(("state", "error", "message"), BAD_STATES, ids=[m[:30] for _, _, m in BAD_STATES])
async def test_bad_state_on_insert(vdb: durable.Database, state: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as caught:
        await vdb.insert(Plain, state)
    assert isinstance(caught.value, ValueError) and "\x00" not in str(caught.value)
    assert await counts(vdb) == (0, 0, 0)


async def test_bad_typed_state_on_insert(vdb: durable.Database) -> None:
    with pytest.raises(durable.StateError, match=r"state of Typed: string at \$\.t contains a NUL"):
        await vdb.insert(Typed, Typed.State(t="a\x00"))
    with pytest.raises(durable.StateError, match=r"state of Typed: float at \$\.x is NaN or infinite"):
        await vdb.insert(Typed, {"x": math.nan})
    st = Typed.State()
    st.x = math.inf  # assigned after validation: caught on encode
    with pytest.raises(durable.StateError, match=r"float at \$\.x is NaN or infinite"):
        await vdb.insert(Typed, st)
    assert await counts(vdb) == (0, 0, 0)


async def test_values_that_only_look_bad_are_stored_unchanged(vdb: durable.Database) -> None:
    @dataclasses.dataclass
    class Point:
        x: float

    state = {"literal": "\\u0000", "word": "null", "none": None, "p": Point(1.5), "big": 1e308}
    iid = await vdb.insert(Plain, state)
    assert iid is not None
    assert (await vdb.get(iid)).state == {
        "literal": "\\u0000",
        "word": "null",
        "none": None,
        "p": {"x": 1.5},
        "big": 1e308,
    }


async def test_a_bad_spec_in_a_batch_writes_nothing(vdb: durable.Database) -> None:
    specs = [durable.Insert(Plain, {"ok": 1}), durable.Insert(Plain, {"ok": 2}, partition_key="a\x00")]
    with pytest.raises(durable.OutcomeError, match="insert #1: partition_key contains a NUL"):
        await vdb.insert_many(specs)
    assert await counts(vdb) == (0, 0, 0)


async def test_machine_by_name_with_a_nul(vdb: durable.Database) -> None:
    with pytest.raises(durable.OutcomeError, match="insert #0: machine contains a NUL"):
        await vdb.insert("Pl\x00ain", {}, step="go")
    assert await counts(vdb) == (0, 0, 0)


async def test_size_limit(vdb: durable.Database, pg_dsn: str, schema_name: str) -> None:
    iid = await vdb.insert(Plain, {})
    assert vdb.max_value_bytes == durable.MAX_VALUE_BYTES == 16 * 2**20
    before = await counts(vdb)
    async with durable.connect(pg_dsn, schema=schema_name, machines=[Plain], max_value_bytes=100) as small:
        assert await small.insert(Plain, {"s": "x" * 80}) is not None  # 88 bytes: fits
        with pytest.raises(
            durable.ValueTooLarge,
            match=r"insert #0: state of Plain is 110 bytes as JSON; "
            r"the limit is 100 bytes",
        ):
            await small.insert(Plain, {"s": "x" * 102})
        with pytest.raises(durable.ValueTooLarge, match=r"state of Plain is 130 bytes as JSON"):
            await small.insert(Plain, {"s": "é" * 61})  # 61 characters, 122 bytes of UTF-8
        with pytest.raises(durable.ValueTooLarge, match=r"payload of signal 'go' is 202 bytes as JSON; the limit"):
            await small.signal(iid, "go", "y" * 200)
        with pytest.raises(durable.InvalidArgument, match=r"cancel reason is 101 bytes long; the limit is 100"):
            await small.cancel(iid, "r" * 101)
    assert await counts(vdb) == (before[0] + 1, before[1], before[2] + 1)
    assert (await vdb.get(iid)).status == "runnable"
    with pytest.raises(durable.InvalidArgument, match=r"max_value_bytes 0 is outside 1\.\."):
        async with durable.connect(pg_dsn, schema=schema_name, max_value_bytes=0):
            pass
    with pytest.raises(TypeError, match=r"max_value_bytes must be an int"):
        async with durable.connect(pg_dsn, schema=schema_name, max_value_bytes=1e6):  # type: ignore[arg-type]
            pass


BIG_ID = 2**70

BAD_SIGNALS: list[tuple[tuple[Any, ...], dict[str, Any], type[Exception], str]] = [
    ((BIG_ID, "go", {}), {}, durable.InvalidArgument, r"instance_id 1180591620717411303424 is outside"),
    ((-(2**63) - 1, "go", {}), {}, durable.InvalidArgument, r"instance_id -9223372036854775809 is outside"),
    (("1", "go", {}), {}, TypeError, r"instance_id must be an int, not str '1'"),
    ((True, "go", {}), {}, TypeError, r"instance_id must be an int, not bool"),
    ((None, "go\x00", {}), {}, durable.InvalidArgument, r"signal name contains a NUL character"),
    ((None, "g" * 1025, {}), {}, durable.InvalidArgument, r"signal name is 1025 bytes long; the limit is 1024"),
    ((None, "go", "a\x00b"), {}, durable.StateError, r"payload of signal 'go': string at \$ contains a NUL"),
    ((None, "go", {"k\x00": 1}), {}, durable.StateError, r"payload of signal 'go': key 'k\\x00' at \$"),
    ((None, "go", {"amount": math.nan}), {}, durable.StateError, r"payload of signal 'go': float at \$\.amount"),
    ((None, "go", {}), {"dedup_key": b"d"}, TypeError, r"dedup_key must be a str, not bytes"),
    ((None, "go", {}), {"dedup_key": "d\x00"}, durable.InvalidArgument, r"dedup_key contains a NUL character"),
    ((None, "go", {}), {"dedup_key": 7}, TypeError, r"dedup_key must be a str, not int"),
]


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"), BAD_SIGNALS, ids=[m[:30] for _, _, _, m in BAD_SIGNALS]
)
async def test_bad_signal_argument(
    vdb: durable.Database, args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    iid = await vdb.insert(Plain, {})
    before = await counts(vdb)
    args = (iid if args[0] is None else args[0], *args[1:])
    with pytest.raises(error, match=message) as caught:
        await vdb.signal(*args, **kwargs)
    assert isinstance(caught.value, (TypeError, ValueError)) and "\x00" not in str(caught.value)
    assert await counts(vdb) == before
    assert (await vdb.get(iid)).inbox == []


@pytest.mark.parametrize("call", ["get", "history", "cancel", "retry"])
@pytest.mark.parametrize(
    ("bad_id", "error", "message"),
    [
        (BIG_ID, durable.InvalidArgument, r"instance_id 1180591620717411303424 is outside"),
        ("7", TypeError, r"instance_id must be an int, not str"),
        (7.0, TypeError, r"instance_id must be an int, not float"),
    ],
)
async def test_bad_instance_id(
    vdb: durable.Database, call: str, bad_id: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        await getattr(vdb, call)(bad_id)
    assert await counts(vdb) == (0, 0, 0)


async def test_bad_cancel_reason(vdb: durable.Database) -> None:
    iid = await vdb.insert(Plain, {})
    before = await counts(vdb)
    with pytest.raises(durable.InvalidArgument, match="cancel reason contains a NUL character"):
        await vdb.cancel(iid, "no\x00")
    with pytest.raises(TypeError, match="cancel reason must be a str, not bytes"):
        await vdb.cancel(iid, b"no")  # type: ignore[arg-type]
    assert await counts(vdb) == before
    assert (await vdb.get(iid)).status == "runnable"


async def test_bad_machine_definitions() -> None:
    with pytest.raises(durable.DefinitionError, match="queue contains a NUL character"):

        class BadQueue(Machine, queue="q\x00"):
            @step
            async def go(self, ctx):
                return Done()

    with pytest.raises(durable.DefinitionError, match="name contains a NUL character"):

        class BadName(Machine, name="n\x00"):
            @step
            async def go(self, ctx):
                return Done()


# -- outcomes: a bad value goes to handle() (here: max_attempts=1, so the default handle stops) -------------
OUTCOMES: dict[str, tuple[Any, str]] = {
    "retry_far": (Retry(delay=1e12), r"Retry delay of 1000000000000.0 seconds is longer than durable.MAX_DELAY"),
    "retry_far_td": (Retry(delay=timedelta(days=3700)), r"Retry delay of .* is longer than durable.MAX_DELAY"),
    "retry_inf": (Retry(delay=math.inf), r"Retry delay must be a finite, non-negative delay"),
    "retry_error_nul": (Retry(error="e\x00"), r"Retry error contains a NUL character"),
    "next_nul": (Next("go", {"t": "a\x00b"}), r"state returned by Returns.next_nul: string at \$.t contains a NUL"),
    "next_nan": (Next("go", {"x": math.nan}), r"state returned by Returns.next_nan: float at \$.x is NaN"),
    "done_nul": (Done({"r": ["\x00"]}), r"result of Returns.done_nul: string at \$.r\[0\] contains a NUL"),
    "done_inf": (Done(math.inf), r"result of Returns.done_inf: float at \$ is NaN or infinite"),
    "await_nul": (Await("pay\x00"), r"Await signal contains a NUL character"),
    "stop_nul": (Stop("why\x00"), r"Stop reason contains a NUL character"),
    "cancel_nul": (Cancel("why\x00"), r"Cancel reason contains a NUL character"),
    "spawn_key": (Spawn("go", [Child(Plain, {}, partition_key=5)]), r"child #0: partition_key must be a str"),
    "spawn_nul": (
        Spawn("go", [Child(Plain, {}), Child(Plain, {"t": "\x00"})]),
        r"child #1: state of Plain: string at \$.t contains a NUL",
    ),
    "spawn_far": (Spawn("go", [Child(Plain, {}, schedule_in=1e12)]), r"child #0: schedule_in .* durable.MAX_DELAY"),
    "spawn_prio": (Spawn("go", [Child(Plain, {}, priority=True)]), r"child #0: priority must be an int"),
}


def _returning(name: str, outcome: Any) -> Any:
    async def fn(self: Machine, ctx: Any) -> Any:
        return outcome

    fn.__name__ = fn.__qualname__ = name
    return step(fn)


# one step per entry of OUTCOMES, returning that outcome
Returns = type(
    "Returns",
    (Machine,),
    {"go": _returning("go", Done()), **{n: _returning(n, o) for n, (o, _) in OUTCOMES.items()}},
    queue="vl_out",
    max_attempts=1,
    initial="go",
)


@pytest.mark.parametrize("name", list(OUTCOMES))
async def test_bad_outcome_goes_to_handle(db: durable.Database, name: str) -> None:
    db.registry.add(Returns)
    db.registry.add(Plain)
    iid = await db.insert(Returns, {"n": 1}, step=name)
    _, committed = await run_step(db, (await pick(db, "vl_out"))[0])
    r = await row(db, iid)
    assert committed.status == "failed" and r["status"] == "failed"
    assert r["last_error"].startswith(("OutcomeError: ", "StateError: ", "TypeError: "))
    assert re.search(OUTCOMES[name][1], r["last_error"]), r["last_error"]
    assert "\x00" not in r["last_error"]
    assert durable.codec.decode(r["state"]) == {"n": 1}  # untouched
    assert (await db.get(iid)).status == "failed"
    assert await db.pool.fetchval(COUNT_INSTANCES) == 1  # no child inserted


async def test_an_exception_message_with_a_nul_is_stored_escaped(db: durable.Database) -> None:
    class Raises(Machine, queue="vl_out", max_attempts=2):
        backoff_base = 0.0

        @step
        async def go(self, ctx):
            raise ValueError("bad \x00 byte")

    db.registry.add(Raises)
    iid = await db.insert(Raises, {})
    _, committed = await run_step(db, (await pick(db, "vl_out"))[0])
    assert committed.status == "runnable"
    assert (await row(db, iid))["last_error"] == "ValueError: bad \\x00 byte"
    _, committed = await run_step(db, (await pick(db, "vl_out"))[0])
    assert committed.status == "failed"
    assert (await row(db, iid))["last_error"] == "ValueError: bad \\x00 byte (after 2 attempts)"


# -- the same through a running runtime: bounded by max_attempts, then failed; the row stays readable ------
class Poison(Machine, queue="vl_rt", max_attempts=3):
    backoff_base = 0.0

    @step
    async def far(self, ctx):
        return Retry(ctx.state, delay=1e12)

    @step
    async def nul(self, ctx):
        return Next("far", {"t": "a\x00b"})

    @step
    async def nan(self, ctx):
        return Done({"ratio": math.nan})


@pytest.mark.parametrize(
    ("first", "message"),
    [
        ("far", "Retry delay of 1000000000000.0 seconds is longer than durable.MAX_DELAY"),
        ("nul", r"state returned by Poison.nul: string at $.t contains a NUL character (\x00)"),
        ("nan", "result of Poison.nan: float at $.ratio is NaN or infinite"),
    ],
)
async def test_poison_outcome_under_the_runtime_ends_failed(db: durable.Database, first: str, message: str) -> None:
    iid = await db.insert(Poison, {"n": 1}, step=first)
    async with trio.open_nursery() as n:
        await n.start(durable.Runtime(db, machines=[Poison], queues={"vl_rt": 2}).run)
        await wait_status(db, iid, "failed", timeout=30)
        n.cancel_scope.cancel()
    inst = await db.get(iid)  # readable: no timestamp past year 9999 was written
    assert inst.status == "failed" and inst.step == first and inst.state == {"n": 1}
    assert message in (inst.last_error or "") and "(after 3 attempts)" in (inst.last_error or "")
    assert inst.attempt == 2  # three attempts: 0, 1, 2
    assert inst.eligible_at.year < 2100
    events = [e.event for e in await db.history(iid)]
    assert events.count("retry") == 2 and events[-1] == "stop", events
    page = await db.query(ids=[iid])
    assert [r.status for r in page] == ["failed"]


# -- reading what durable did not write ---------------------------------------------------------------------
@pytest.mark.parametrize("stamp", ["infinity", "20000-01-01 00:00:00+00", "294276-12-31 00:00:00+00"])
async def test_a_timestamp_past_year_9999_reads_clamped(vdb: durable.Database, stamp: str) -> None:
    iid = await vdb.insert(Plain, {})
    await vdb.pool.execute(
        Query("t", "update instances set eligible_at = $2::text::timestamptz where id = $1", ""), iid, stamp
    )
    end = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    inst = await vdb.get(iid)
    assert inst.eligible_at == end and inst.lease_expires_at is None
    assert [r.eligible_at for r in await vdb.query(ids=[iid])] == [end]
    counts_by_status = {r["status"]: r for r in await vdb.pool.fetch(durable.sql.Q.queue_counts, None, True)}
    assert counts_by_status["scheduled"]["oldest"] == end
    assert await vdb.cancel(iid) == "cancelled"  # and an operator can still act on it


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ids": [BIG_ID]}, r"id 1180591620717411303424 is outside"),
        ({"parent_id": BIG_ID}, r"parent id 1180591620717411303424 is outside"),
        ({"version": 2**40}, r"version 1099511627776 is outside -2147483648..2147483647"),
        ({"queue": "q\x00"}, r"queue contains a NUL character"),
        ({"machine": "m\x00"}, r"machine contains a NUL character"),
        ({"partition_key": "p\x00"}, r"partition key contains a NUL character"),
        ({"unique_key": "u\x00"}, r"unique key contains a NUL character"),
        ({"inserted_after": timedelta(days=10**6)}, r"inserted_after 1000000 days, 0:00:00 ago is before year 1"),
        ({"state": {"t": "\x00"}}, r"state filter: string at \$\.t contains a NUL character"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else "",
)
async def test_bad_query_filter(vdb: durable.Database, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        await vdb.query(**kwargs)
    assert isinstance(caught.value, durable.DurableError)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("lease", 0),
        ("lease", -1),
        ("lease", float("nan")),
        ("lease", float("inf")),
        ("lease", 1e12),
        ("lease", True),
        ("lease", "60"),
        ("heartbeat", 0),
        ("heartbeat", float("nan")),
        ("reap_every", -5),
        ("reap_every", 1e12),
    ],
)
async def test_runtime_timing_options_are_checked(db: durable.Database, option: str, value: object) -> None:
    """A lease past year 9999 (or NaN, or a bool) would be written into lease_expires_at: refused up front."""
    with pytest.raises(durable.DefinitionError, match=option):
        durable.Runtime(db, queues={"q": 1}, **{option: value})  # type: ignore[arg-type]
