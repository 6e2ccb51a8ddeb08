"""Recurring schedules (issue 17 item 4) on real PostgreSQL: one instance per tick however many runtimes
fire it, catch_up after a gap, time zones and DST, the `durable schedules` command, hostile definitions.

Most tests drive a runtime's schedule loop one scan at a time under a clock of their own (the runtime's
injectable ``clock``: the scans compute ticks against it, never the wall clock); the end-to-end tests run
real runtimes on a per-second cron and wait on conditions.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

import durable
from durable import DefinitionError, Machine, Schedule, step
from durable.runtime.schedule_loop import CATCH_UP_BATCH, MAX_NAP, ScheduleLoop
from durable.sql import Query

from .helpers import pick, wait_for
from .helpers import step as run_step
from .test_cli_ops import CLI

pytestmark = pytest.mark.trio


@durable.job(queue="sched")
async def report(args: Any, ctx: durable.Context) -> Any:
    return {"state": args}


class Typed(Machine, queue="sched_typed"):
    class State(durable.State):
        region: str

    @step
    async def start(self, ctx: durable.Context) -> Any:
        return durable.Done(ctx.state.region)


class SetClock:
    """The runtime's clock, set by the test (durable.Clock: ``now()``)."""

    def __init__(self, t: datetime) -> None:
        self.t = t

    def now(self) -> datetime | None:
        return self.t


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC) if "+" not in text else datetime.fromisoformat(text)


def sql(text: str) -> Query:
    return Query("test", text, "")


def loop_of(db: durable.Database, clock: SetClock, *schedules: Schedule) -> ScheduleLoop:
    rt = durable.Runtime(db, machines=[report, Typed], schedules=list(schedules), clock=clock)
    assert rt.schedule_loop is not None
    return rt.schedule_loop


async def ticks_of(db: durable.Database, name: str) -> list[str]:
    """The tick part of every instance key of schedule ``name``, in order (duplicates kept)."""
    rows = await db.pool.fetch(
        sql("select unique_key from instances where unique_key like $1 order by 1"), f"schedule:{name}:%"
    )
    return [r["unique_key"].removeprefix(f"schedule:{name}:") for r in rows]


async def row(db: durable.Database, name: str) -> dict[str, Any]:
    r = await db.pool.fetchrow(sql("select * from schedules where name = $1"), name)
    assert r is not None
    return dict(r)


# -- exactly one instance per tick --------------------------------------------------------------------
async def test_two_runtimes_racing_on_every_tick_insert_one_instance_each(db: durable.Database, pg_dsn: str) -> None:
    clock = SetClock(at("2030-01-01T00:00:00.5"))
    sched = Schedule("* * * * * *", report, name="race", catch_up="all")
    async with durable.connect(pg_dsn, schema=db.schema) as other:
        a, b = loop_of(db, clock, sched), loop_of(other, clock, sched)
        await a.scan()
        await b.scan()  # both registered
        for k in range(1, 41):
            clock.t = at("2030-01-01T00:00:00.5") + timedelta(seconds=k)
            if k % 10 == 0:  # now and then a lost advance: both fire five fired ticks again, and a new one
                await db.pool.execute(sql("update schedules set last_tick = last_tick - interval '5 seconds'"))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(a.scan)
                nursery.start_soon(b.scan)
    keys = await ticks_of(db, "race")
    assert len(keys) == len(set(keys)) == 40  # one per second, none twice
    assert keys[0] == "2030-01-01T00:00:01Z" and keys[-1] == "2030-01-01T00:00:40Z"
    assert a.fired + b.fired == 40
    assert a.taken + b.taken > 0  # they did race: some ticks were fired by both, inserted once
    stats = [loop.runtime.statistics()["schedule_ticks"] for loop in (a, b)]
    assert sum(s["fired"] for s in stats) == 40 and sum(s["taken"] for s in stats) == a.taken + b.taken


async def test_a_done_tick_is_never_run_again(db: durable.Database) -> None:
    """A crash between a tick's insert and the advance of last_tick fires the tick again; its key is
    occupied in every status, so even a finished tick gets no second instance."""
    clock = SetClock(at("2030-01-01T00:00:30"))
    loop = loop_of(db, clock, Schedule("* * * * *", report, state={"n": 1}, name="once"))
    await loop.scan()
    clock.t = at("2030-01-01T00:01:30")
    await loop.scan()
    assert await ticks_of(db, "once") == ["2030-01-01T00:01:00Z"]
    (claim,) = await pick(db, "sched")
    await run_step(db, claim)
    assert (await db.get(claim.id)).status == "done"
    await db.pool.execute(sql("update schedules set last_tick = '2030-01-01T00:00:30Z'"))  # the lost advance
    await loop.scan()
    assert await ticks_of(db, "once") == ["2030-01-01T00:01:00Z"]
    assert loop.taken == 1 and loop.fired == 1
    assert (await row(db, "once"))["last_instance_id"] == claim.id


async def test_two_running_runtimes_fire_each_second_once(db: durable.Database, pg_dsn: str) -> None:
    sched = Schedule("* * * * * *", report, state={"from": "cron"}, name="live", catch_up="all")  # no second skipped
    async with durable.connect(pg_dsn, schema=db.schema) as other, trio.open_nursery() as nursery:
        a = durable.Runtime(db, machines=[report], schedules=[sched], queues=["sched"])
        b = durable.Runtime(other, machines=[report], schedules=[sched], queues=["sched"])
        await nursery.start(a.run)
        await nursery.start(b.run)

        async def three_done() -> bool:
            n = await db.pool.fetchval(sql("select count(*) from instances where status = 'done'"))
            return bool(
                n >= 3
                and a.schedule_loop
                and b.schedule_loop
                and a.schedule_loop.scans > 1
                and b.schedule_loop.scans > 1
            )

        await wait_for(three_done, timeout=30)
        nursery.cancel_scope.cancel()
    keys = await ticks_of(db, "live")
    assert len(keys) == len(set(keys)) >= 3
    seconds = [datetime.strptime(k, "%Y-%m-%dT%H:%M:%SZ") for k in keys]
    assert all((y - x) == timedelta(seconds=1) for x, y in itertools.pairwise(seconds)), keys
    done = await db.pool.fetch(sql("select result from instances where status = 'done'"))
    assert all(json.loads(r["result"]) == {"state": {"from": "cron"}} for r in done)


# -- catch_up ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "fired"),
    [
        ("latest", ["2030-01-01T10:00:00Z"]),
        ("all", [f"2030-01-01T{h:02d}:00:00Z" for h in range(1, 11)]),
        ("none", []),
    ],
)
async def test_catch_up_after_a_gap(db: durable.Database, policy: str, fired: list[str]) -> None:
    clock = SetClock(at("2030-01-01T00:30:00"))
    loop = loop_of(db, clock, Schedule("0 * * * *", report, name="hourly", catch_up=policy))
    assert await loop.scan() == MAX_NAP  # registered at 00:30: the next tick (01:00) is further
    clock.t = at("2030-01-01T10:30:00")  # no runtime ran for ten hours
    await loop.scan()
    assert await ticks_of(db, "hourly") == fired
    r = await row(db, "hourly")
    assert r["last_tick"] == at("2030-01-01T10:00:00")  # every missed tick is handled, fired or not
    assert r["next_tick"] == at("2030-01-01T11:00:00")
    assert loop.dropped == (1 if policy == "none" else 0)
    clock.t = at("2030-01-01T11:00:05")  # on time again: every policy fires the next tick
    await loop.scan()
    assert (await ticks_of(db, "hourly"))[-1] == "2030-01-01T11:00:00Z"


async def test_catch_up_none_fires_a_tick_found_within_its_grace(db: durable.Database) -> None:
    clock = SetClock(at("2030-01-01T00:00:30"))
    loop = loop_of(db, clock, Schedule("* * * * *", report, name="g", catch_up="none", grace=20))
    await loop.scan()
    clock.t = at("2030-01-01T00:01:19")  # 19 s late: fired
    await loop.scan()
    clock.t = at("2030-01-01T00:02:21")  # 21 s late: dropped
    await loop.scan()
    assert await ticks_of(db, "g") == ["2030-01-01T00:01:00Z"]
    assert (await row(db, "g"))["last_tick"] == at("2030-01-01T00:02:00")


async def test_catch_up_all_is_bounded_per_scan(db: durable.Database) -> None:
    """A schedule down for a long time does not insert its backlog at once: CATCH_UP_BATCH per scan, and
    the scan asks for the next one at once (nap 0) until the backlog is gone."""
    clock = SetClock(at("2030-01-01T00:00:30"))
    loop = loop_of(db, clock, Schedule("* * * * *", report, name="backlog", catch_up="all"))
    await loop.scan()
    clock.t = at("2030-01-01T04:10:30")  # 250 missed minutes
    naps = [await loop.scan() for _ in range(4)]
    assert naps[:2] == [0.0, 0.0] and naps[2] == naps[3] == 30.0  # 100, 100, 50, then nothing
    keys = await ticks_of(db, "backlog")
    assert len(keys) == len(set(keys)) == 250 and loop.largest == CATCH_UP_BATCH
    assert keys[0] == "2030-01-01T00:01:00Z" and keys[-1] == "2030-01-01T04:10:00Z"


async def test_a_gap_made_by_setting_last_tick_back_is_caught_up_by_a_running_runtime(db: durable.Database) -> None:
    sched = Schedule("0 0 * * *", report, name="daily", catch_up="all")
    loop = loop_of(db, SetClock(datetime.now(UTC)), sched)
    await loop.register(None)  # the row, at the database's now
    await db.pool.execute(sql("update schedules set last_tick = last_tick - interval '5 days'"))
    before = (await row(db, "daily"))["last_tick"]
    async with trio.open_nursery() as nursery:
        rt = durable.Runtime(db, machines=[report], schedules=[sched], queues=["sched"])
        await nursery.start(rt.run)

        async def caught_up() -> bool:
            return (await row(db, "daily"))["last_tick"] > before + timedelta(days=4)

        await wait_for(caught_up)
        nursery.cancel_scope.cancel()
    keys = [datetime.strptime(k, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) for k in await ticks_of(db, "daily")]
    last = (await row(db, "daily"))["last_tick"]
    assert keys[0] > before and keys[0] - before <= timedelta(days=1) and keys[-1] == last
    assert all(y - x == timedelta(days=1) for x, y in itertools.pairwise(keys)) and len(keys) >= 5


async def test_the_nap_is_computed_from_the_cron_expression(db: durable.Database) -> None:
    """No drift: every scan sleeps exactly until the next tick of the expression, however late it ran."""
    clock = SetClock(at("2030-01-01T12:00:00.250"))
    loop = loop_of(db, clock, Schedule("* * * * *", report, name="m"), Schedule("*/20 * * * * *", report, name="s"))
    assert await loop.scan() == 19.75
    clock.t = at("2030-01-01T12:00:20.900")  # woke 0.9 s late
    assert await loop.scan() == pytest.approx(19.1)
    clock.t = at("2030-01-01T12:00:59.999")
    assert await loop.scan() == pytest.approx(0.001)


# -- time zones ------------------------------------------------------------------------------------------
async def test_time_zones_and_daylight_saving(db: durable.Database) -> None:
    clock = SetClock(at("2030-01-01T00:00:00"))
    nine = Schedule("0 9 * * *", report, name="nine", tz="Europe/Paris")
    gap = Schedule("30 2 * * *", report, name="gap", tz="Europe/Paris")
    every = Schedule("*/30 * * * *", report, name="every", tz="Europe/Paris", catch_up="all")
    loop = loop_of(db, clock, nine, gap, every)
    await loop.scan()
    clock.t = at("2030-01-01T07:59:59")  # 08:59:59 in Paris (CET, +01:00)
    await loop.scan()
    assert await ticks_of(db, "nine") == []
    clock.t = at("2030-01-01T08:00:00")
    await loop.scan()
    assert await ticks_of(db, "nine") == ["2030-01-01T08:00:00Z"]
    clock.t = at("2030-07-01T07:00:00")  # summer (CEST, +02:00): 09:00 is 07:00 UTC
    await loop.scan()
    assert (await ticks_of(db, "nine"))[-1] == "2030-07-01T07:00:00Z"

    # spring forward, 2030-03-31: 02:00-03:00 does not exist; the 02:30 tick fires once, at 03:00 CEST
    await db.pool.execute(sql("update schedules set last_tick = '2030-03-30T12:00:00Z'"))
    clock.t = at("2030-03-31T00:59:59")
    await loop.scan()
    assert "2030-03-31T01:00:00Z" not in await ticks_of(db, "gap")
    clock.t = at("2030-03-31T01:00:00")
    await loop.scan()
    assert [k for k in await ticks_of(db, "gap") if k.startswith("2030-03")] == ["2030-03-31T01:00:00Z"]

    # fall back, 2030-10-27: 02:00-03:00 happens twice; "30 2 * * *" fires at the first 02:30 only,
    # "*/30 * * * *" follows real time and fires at both
    await db.pool.execute(sql("update schedules set last_tick = '2030-10-26T22:00:00Z'"))
    for t in ("2030-10-27T00:30:00", "2030-10-27T01:30:00", "2030-10-27T02:10:00"):
        clock.t = at(t)
        await loop.scan()
    assert [k for k in await ticks_of(db, "gap") if k.startswith("2030-10")] == ["2030-10-27T00:30:00Z"]
    assert [k for k in await ticks_of(db, "every") if k.startswith("2030-10-27T0")] == [
        "2030-10-27T00:00:00Z",
        "2030-10-27T00:30:00Z",
        "2030-10-27T01:00:00Z",
        "2030-10-27T01:30:00Z",
        "2030-10-27T02:00:00Z",
    ]


async def test_a_state_callable_gets_the_tick(db: durable.Database) -> None:
    clock = SetClock(at("2030-01-01T00:00:00"))
    loop = loop_of(
        db, clock, Schedule("0 * * * *", Typed, name="typed", state=lambda tick: {"region": f"eu-{tick:%H}"})
    )
    await loop.scan()
    clock.t = at("2030-01-01T05:00:00")
    await loop.scan()
    (iid,) = [r["id"] for r in await db.pool.fetch(sql("select id from instances"))]
    assert (await db.get(iid)).state == {"region": "eu-05"}


async def test_a_state_that_cannot_be_stored_at_some_tick_stops_only_its_schedule(db: durable.Database) -> None:
    logged: list[str] = []
    clock = SetClock(at("2030-01-01T00:00:00"))
    bad = Schedule("0 * * * *", report, name="bad", state=lambda tick: {"x": float("nan") if tick.year == 2030 else 0})
    rt = durable.Runtime(
        db,
        machines=[report],
        schedules=[bad, Schedule("0 * * * *", report, name="good")],
        clock=clock,
        on_error=logged.append,
    )
    assert rt.schedule_loop is not None
    await rt.schedule_loop.scan()
    clock.t = at("2030-01-01T01:00:00")
    await rt.schedule_loop.scan()
    assert await ticks_of(db, "good") == ["2030-01-01T01:00:00Z"] and await ticks_of(db, "bad") == []
    assert len(logged) == 1 and "schedule 'bad': no instance for its tick" in logged[0] and "NaN" in logged[0]
    assert (await row(db, "bad"))["last_tick"] == at("2030-01-01T00:00:00")  # tried again at the next scan


# -- the command ------------------------------------------------------------------------------------------
async def test_durable_schedules_lists_last_and_next_runs(db: durable.Database, pg_dsn: str) -> None:
    cli = CLI(pg_dsn, db.schema)
    empty = await trio.to_thread.run_sync(lambda: cli("schedules"))
    assert empty.stdout.startswith("no schedules")
    clock = SetClock(at("2030-01-01T00:00:30"))
    loop = loop_of(
        db,
        clock,
        Schedule("* * * * *", report, name="report"),
        Schedule("0 9 * * 1", report, name="weekly", tz="Europe/Paris"),
    )
    await loop.scan()
    clock.t = at("2030-01-01T00:01:10")
    await loop.scan()
    (iid,) = [r["id"] for r in await db.pool.fetch(sql("select id from instances"))]
    out = json.loads((await trio.to_thread.run_sync(lambda: cli("schedules", "--json"))).stdout)
    by = {s["name"]: s for s in out["schedules"]}
    assert list(by) == ["report", "weekly"]
    assert by["report"]["cron"] == "* * * * *" and by["report"]["tz"] == "UTC"
    assert by["report"]["machine"] == "report" and by["report"]["catch_up"] == "latest"
    assert by["report"]["last_run"].startswith("2030-01-01T00:01:00")
    assert by["report"]["next_tick"].startswith("2030-01-01T00:02:00")
    assert by["report"]["last_instance_id"] == iid and by["report"]["last_status"] == "runnable"
    assert by["weekly"]["last_run"] is None and by["weekly"]["next_tick"].startswith("2030-01-07T08:00:00")
    table = (await trio.to_thread.run_sync(lambda: cli("schedules"))).stdout
    assert "next run" in table and "last run" in table
    line = next(x for x in table.splitlines() if x.strip().startswith("report"))
    assert "2030-01-01 00:01:00Z" in line and "2030-01-01 00:02:00Z" in line and str(iid) in line
    assert "Europe/Paris" in table and "0 9 * * 1" in table
    # a row edited by hand past what asyncpg decodes reads clamped, never a traceback
    edit = "update schedules set next_tick = 'infinity', last_run = '-infinity' where name = 'weekly'"
    await db.pool.execute(sql(edit))
    edited = await trio.to_thread.run_sync(lambda: cli("schedules", "--json"))
    assert edited.returncode == 0, edited.stderr
    weekly = {s["name"]: s for s in json.loads(edited.stdout)["schedules"]}["weekly"]
    assert weekly["next_tick"].startswith("9999-12-31") and weekly["last_run"].startswith("0001-01-01")
    shown = await trio.to_thread.run_sync(lambda: cli("schedules"))
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
    assert "9999-12-31" in shown.stdout


async def test_durable_schedules_on_a_schema_that_is_not_durables_is_one_error_line(pg_dsn: str) -> None:
    argv = CLI(pg_dsn, "t_no_such_schema_x").argv("schedules")
    proc = await trio.to_thread.run_sync(lambda: subprocess.run(argv, capture_output=True, text=True, timeout=60))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1


WORKER_MODULE = """
import durable

@durable.job(queue="cron_jobs")
async def tick(args, ctx):
    return args

every_second = durable.Schedule("* * * * * *", tick, state={"from": "worker"}, name="{name}")
"""


async def test_durable_worker_fires_the_schedules_its_module_defines(
    db: durable.Database, pg_dsn: str, tmp_path: Any
) -> None:
    name = f"sched_mod_{db.schema}"
    (tmp_path / f"{name}.py").write_text(WORKER_MODULE.replace("{name}", "from-module"))
    cli = CLI(pg_dsn, db.schema)
    env = {**cli.env, "PYTHONPATH": str(tmp_path)}
    proc = cli.popen("worker", name, "--json", env=env)
    try:

        async def fired() -> bool:
            n = await db.pool.fetchval(sql("select count(*) from instances where status = 'done'"))
            return bool(n)

        await wait_for(fired, timeout=60)
    finally:
        proc.terminate()
        out, err = await trio.to_thread.run_sync(lambda: proc.communicate(timeout=60))
    assert proc.returncode == 0, err
    started = json.loads(out.splitlines()[0])
    assert started["schedules"] == ["from-module"]
    assert (await ticks_of(db, "from-module"))[0].endswith("Z")
    bad = WORKER_MODULE.replace("{name}", "x").replace("* * * * * *", "99 * * * *")
    (tmp_path / f"{name}_bad.py").write_text(bad)
    proc = cli.popen("worker", f"{name}_bad", env=env)
    out, err = await trio.to_thread.run_sync(lambda: proc.communicate(timeout=60))
    assert proc.returncode == 2 and err.startswith("error: module ") and len(err.splitlines()) == 1, err
    assert "bad cron expression '99 * * * *'" in err


# -- hostile definitions ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "error", "says"),
    [
        (lambda: Schedule("61 * * * *", report), ValueError, "bad cron expression '61 * * * *': Bad minute"),
        (lambda: Schedule("* * *", report), ValueError, "Wrong number of fields"),
        (lambda: Schedule("", report), ValueError, "bad cron expression"),
        (lambda: Schedule("0 0 30 2 *", report), ValueError, "Bad day-of-month"),
        (lambda: Schedule("* * */20 * 1L", report), ValueError, "never fires"),
        (lambda: Schedule(5, report), TypeError, "cron must be a str"),
        (lambda: Schedule("* * * * *", report, tz="Mars/Olympus"), ValueError, "unknown time zone 'Mars/Olympus'"),
        (lambda: Schedule("* * * * *", report, tz="../../etc/passwd"), ValueError, "unknown time zone"),
        (lambda: Schedule("* * * * *", report, tz=1), TypeError, "tz must be an IANA time zone name"),
        (lambda: Schedule("* * * * *", report, catch_up="sometimes"), ValueError, "catch_up must be one of"),
        (lambda: Schedule("* * * * *", report, grace=0), ValueError, "grace must be a positive number"),
        (lambda: Schedule("* * * * *", report, name=""), ValueError, "name must not be empty"),
        (lambda: Schedule("* * * * *", report, name="a\x00b"), ValueError, "NUL"),
        (lambda: Schedule("* * * * *", report, name="x" * 300), ValueError, "the limit is 200 bytes"),
        (lambda: Schedule("* * * * *", object), TypeError, "machine must be a Machine subclass"),
    ],
)
async def test_a_bad_schedule_is_refused_where_it_is_made(make: Any, error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=None) as caught:
        make()
    assert says in str(caught.value)


class Unregistered(Machine, queue="nowhere"):
    @step
    async def start(self, ctx: durable.Context) -> Any:
        return durable.Done(None)


@pytest.mark.parametrize(
    ("schedules", "error", "says"),
    [
        (
            [Schedule("* * * * *", report, name="a"), Schedule("0 * * * *", report, name="a")],
            DefinitionError,
            "schedule 'a' is defined twice",
        ),
        ([Schedule("* * * * *", Unregistered)], DefinitionError, "machine 'Unregistered' is not registered"),
        ([Schedule("* * * * *", "NoSuchMachine")], DefinitionError, "machine 'NoSuchMachine' is not registered"),
        ([Schedule("* * * * *", report, state={"x": float("nan")})], ValueError, "NaN"),
        ([Schedule("* * * * *", report, state=object())], durable.StateError, "cannot be stored as JSON"),
        ([Schedule("* * * * *", Typed, state={"region": 5})], ValueError, "region"),
        ([Schedule("* * * * *", report, state=lambda tick: 1 / 0)], DefinitionError, "ZeroDivisionError"),
        (Schedule("* * * * *", report), TypeError, "schedules must be a list"),
        (["* * * * *"], TypeError, "is not a durable.Schedule"),
    ],
)
async def test_a_schedule_the_runtime_cannot_run_is_refused_at_construction(
    db: durable.Database, schedules: Any, error: type[Exception], says: str
) -> None:
    with pytest.raises(error) as caught:
        durable.Runtime(db, machines=[report, Typed], schedules=schedules)
    assert says in str(caught.value), caught.value
    assert await db.pool.fetchval(sql("select count(*) from schedules")) == 0


async def test_a_database_that_does_not_answer_is_waited_out(db: durable.Database) -> None:
    """The loop's scan failing with DatabaseUnavailable (its connection ended by the server mid-statement)
    backs off through the runtime's Outage, logs once, and the next scan goes through."""
    logged: list[str] = []
    rt = durable.Runtime(
        db, machines=[report], schedules=[Schedule("* * * * * *", report, name="o")], on_error=logged.append
    )
    loop = rt.schedule_loop
    assert loop is not None
    await loop.step()
    naps: list[float] = []
    find = sql(
        "select pid from pg_stat_activity where wait_event_type = 'Lock' and query like '%schedules s%'"
        " and pid <> pg_backend_pid()"
    )
    async with db.pool.transaction() as conn:  # the scan waits on this lock, and is killed there
        await conn.execute(sql("lock table schedules in access exclusive mode"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _append(naps, loop.step()))
            with trio.fail_after(20):
                while not (pids := [r["pid"] for r in await db.pool.fetch(find)]):
                    await trio.sleep(0.02)
            await db.pool.fetch(sql("select pg_terminate_backend(pid) from unnest($1::int[]) as pid"), pids)
    assert rt.outage.down and 0 < naps[0] <= rt.outage.cap
    assert [m for m in logged if m.startswith("database unavailable")] == logged and len(logged) == 1
    await loop.step()
    assert not rt.outage.down and logged[-1].startswith("database available again")


async def _append(out: list[float], value: Any) -> None:
    out.append(await value)
