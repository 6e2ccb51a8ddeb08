"""The real ``durable`` command in subprocesses against a real database: output, exit codes, and bad
arguments as one line on stderr with exit status 2 (never a traceback)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

import durable
from durable.migrate import drop_schema
from durable.sql import Q

from .helpers import tail_settled
from .locks import holding
from .test_streams_util import drop

ROOT = Path(__file__).resolve().parent.parent
DURABLE = str(Path(sys.executable).parent / "durable")


class CLI:
    """Runs ``durable`` with ``--dsn``/``--schema`` of a test database."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn, self.schema = dsn, schema
        self.env = {**os.environ, "COLUMNS": "200", "DURABLE_DSN": "", "DURABLE_SCHEMA": ""}

    def argv(self, *args: str, db: bool = True) -> list[str]:
        """The command line; the test's own options come after ours (a repeated option: last wins)."""
        if not db:
            return [DURABLE, *args]
        return [DURABLE, args[0], "--dsn", self.dsn, "--schema", self.schema, *args[1:]]

    def __call__(self, *args: str, db: bool = True, code: int = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.argv(*args, db=db), capture_output=True, text=True, env=self.env, cwd=ROOT, timeout=60
        )
        assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)

    def popen(self, *args: str, db: bool = True, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args, db=db),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env or self.env,
            cwd=ROOT,
        )


def in_process(dsn: str, schema: str, fn: Callable[[durable.Database], Any], *, migrate: bool = False) -> Any:
    """Run ``await fn(db)`` on a connection of our own (fast setup without subprocesses)."""

    async def main() -> Any:
        async with durable.connect(dsn, schema=schema, migrate=migrate) as db:
            return await fn(db)

    return trio.run(main)


@pytest.fixture(scope="module")
def cli(pg_dsn: str) -> Iterator[CLI]:
    schema = f"t_cli_{uuid.uuid4().hex[:10]}"
    runner = CLI(pg_dsn, schema)
    in_process(pg_dsn, schema, lambda db: db.migrated_version(), migrate=True)
    yield runner

    async def drop(db: durable.Database) -> None:
        await drop_schema(db.pool, schema)

    in_process(pg_dsn, schema, drop)


def wait_for(check: Callable[[], Any], seconds: float = 20.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def test_migrate_reports_what_it_did(cli: CLI) -> None:
    fresh = f"t_cli_m_{uuid.uuid4().hex[:8]}"  # our --schema comes last: it wins
    try:
        assert "applied 1" in cli("migrate", "--schema", fresh).stdout
        report = cli.json("migrate", "--check", "--schema", fresh)
        assert report["version"] == report["latest"] >= 1 and report["applied"] == []
        assert "up to date" in cli("migrate", "--schema", fresh).stdout
    finally:
        in_process(cli.dsn, fresh, lambda db: drop_schema(db.pool, fresh))


def test_a_worker_runs_the_example_checkout_driven_from_the_cli(cli: CLI) -> None:
    worker = cli.popen(
        "worker",
        "examples.checkout",
        "--queue",
        "checkout=2",
        "--queue",
        "shipping=2",
        "--queue",
        "email=1",
        "--lease",
        "5",
    )
    try:
        assert worker.stderr is not None
        started = worker.stderr.readline()
        assert "started" in started and "checkout=2" in started and "Checkout v1" in started, started
        made = cli.json("insert", "Checkout", "--module", "examples.checkout", "--state", '{"order": 42, "items": 2}')
        iid = made["id"]
        assert made["step"] == "reserve" and made["queue"] == "checkout"
        status_of = lambda i: in_process(cli.dsn, cli.schema, lambda db: db.get(i)).status  # noqa: E731
        wait_for(lambda: status_of(iid) == "awaiting_signal")
        sent = cli.json("signal", str(iid), "payment", "--payload", '{"amount": 100}', "--dedup", "e1")
        assert sent["signal_id"] is not None and not sent["duplicate"]
        # the same dedup key twice, to an instance nobody runs (so it cannot have ended in between)
        parked = in_process(cli.dsn, cli.schema, lambda db: db.insert("cli.parked", {}, step="s", queue="nobody"))
        assert cli("signal", str(parked), "go", "--dedup", "d1").stdout.startswith("signal ")
        assert cli("signal", str(parked), "go", "--dedup", "d1").stdout.startswith("duplicate")
        assert len(in_process(cli.dsn, cli.schema, lambda db: db.get(parked)).inbox) == 1
        wait_for(lambda: status_of(iid) == "done")
        done = cli.json("show", str(iid))
        assert done["status"] == "done" and done["awaits"] is None
        assert done["result"] == {"order": 42, "paid": 100, "parcels": 2}
        assert [c["status"] for c in done["children"]] == ["done", "done"]
        assert [e["event"] for e in done["history"]] == [
            "inserted",
            "next",
            "await",
            "signal",
            "spawn",
            "joined",
            "done",
        ]
        text = cli("show", str(iid)).stdout
        assert "Checkout v1" in text and '"parcels":2' in text
        assert "children" in text and "Shipment" in text and "joined" in text
        live = cli.json("workers")
        assert len(live) == 1 and live[0]["state"] == "live"
        assert live[0]["gauges"]["checkout"]["concurrency"] == 2
        sat = cli.json("queues", "--all")
        assert sat["queues"]["shipping"]["counts"]["done"] == 2
        assert sat["queues"]["checkout"]["concurrency"] == 2 and sat["queues"]["email"]["prefetch"] == 1
        table = cli("queues").stdout
        assert "checkout" in table and "0/2" in table and "live workers" in table
    finally:
        worker.send_signal(signal.SIGINT)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert "draining" in err and "stopped: 3 done" in err and "Traceback" not in err
    stopped = cli.json("workers", "--all")
    assert stopped[0]["state"] == "stopped" and cli.json("workers") == []
    assert "no live workers" in cli("workers").stdout


def running(proc: subprocess.Popen[str]) -> None:
    """Assert that ``proc`` has not exited (its output in the message when it has)."""
    assert proc.poll() is None, proc.communicate()


async def stderr_at_exit(proc: subprocess.Popen[str], ignored: str) -> str:
    """``proc``'s standard error once it has exited, within 30 s; AssertionError("``ignored``") when it has not."""
    try:
        _, err = await trio.to_thread.run_sync(partial(proc.communicate, timeout=30))
    except subprocess.TimeoutExpired:
        raise AssertionError(ignored) from None
    return err  # type: ignore[no-any-return]


@pytest.mark.trio
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_while_the_worker_migrates_stops_it(cli: CLI, sig: signal.Signals) -> None:
    """SIGTERM or Ctrl-C while ``durable worker`` still starts (here its migration waits on the lock of
    another migrator of the schema; a database slow to answer is the same) stops it as a signal does once it
    runs: exit 0, a 'stopped' line, no traceback, no statement of it left waiting. Before, its signals were
    read only once it ran: SIGTERM killed it (exit -15) and Ctrl-C ended it with 'interrupted' (exit 130)."""
    fresh = f"t_cli_w_{uuid.uuid4().hex[:8]}"
    try:
        async with holding(cli.dsn, Q.lock_migrations.text, fresh) as held:  # a migrator of the schema
            worker = cli.popen("worker", "examples.checkout", "--schema", fresh)
            try:
                await held.until_waited_on(60, alive=lambda: running(worker))  # its migration waits on the lock
                worker.send_signal(sig)
                err = await stderr_at_exit(worker, f"{sig.name} ignored while the worker started")
            finally:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait(10)
            assert worker.returncode == 0, (worker.returncode, err)
            assert "Traceback" not in err and "worker stopped before it started" in err, err
            assert f"stopping ({sig.name})" in err, err
            await held.until_free(10)  # its statement ended with it
            await held.release()
    finally:
        await trio.to_thread.run_sync(drop, cli.dsn, fresh)


@pytest.mark.trio
async def test_a_second_signal_stops_a_worker_whose_runtime_start_waits(cli: CLI) -> None:
    """Migrated, the worker's runtime starts (it frees dead workers' claims and registers itself) with its
    statements shielded: a signal then drains it, up to --drain-timeout, as once it runs. A second signal
    stops it at once, as once it runs (exit 0, 'stopping now', no statement left waiting). Before, the
    signals that followed the first were read but ignored until the runtime had started: here, with the
    start waiting on a lock, the worker stopped only at the drain deadline (120 s)."""
    fresh = f"t_cli_w_{uuid.uuid4().hex[:8]}"
    try:
        cli("migrate", "--schema", fresh)
        async with holding(cli.dsn, "lock table workers in access exclusive mode", schema=fresh) as held:
            worker = cli.popen("worker", "examples.checkout", "--schema", fresh, "--drain-timeout", "120")
            assert worker.stderr is not None
            lines: list[str] = []
            try:
                await held.until_waited_on(60, alive=lambda: running(worker))  # the runtime's start waits on it
                worker.send_signal(signal.SIGTERM)
                with trio.fail_after(30):  # the worker took the first signal (it says so)
                    while not any("stopping" in line or "draining" in line for line in lines):
                        line = await trio.to_thread.run_sync(worker.stderr.readline, abandon_on_cancel=True)
                        assert line, lines
                        lines.append(line)
                worker.send_signal(signal.SIGTERM)
                err = await stderr_at_exit(worker, f"a second SIGTERM ignored while the runtime started: {lines}")
            finally:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait(10)
            err = "".join(lines) + err
            assert worker.returncode == 0, (worker.returncode, err)
            assert "Traceback" not in err and "stopping now" in err, err
            await held.until_free(10)  # its statement ended with it
            await held.release()
    finally:
        await trio.to_thread.run_sync(drop, cli.dsn, fresh)


def test_ls_filters_pages_and_prints_a_table(cli: CLI) -> None:

    async def fill(db: durable.Database) -> list[int | None]:
        return await db.insert_many(
            [
                durable.Insert("cli.ls", {"order": i, "tier": "gold" if i % 2 else "std"}, step="s", queue="lsq")
                for i in range(5)
            ]
        )

    ids = in_process(cli.dsn, cli.schema, fill)
    first = cli.json("ls", "--machine", "cli.ls", "--status", "runnable", "--limit", "2")
    assert [r["id"] for r in first["items"]] == ids[:2] and first["next"]
    rest = cli.json("ls", "--machine", "cli.ls", "--status", "runnable", "--limit", "2", "--after", first["next"])
    assert [r["id"] for r in rest["items"]] == ids[2:4]
    gold = cli.json("ls", "--prefix", "cli.", "--state", '{"tier": "gold"}', "--order", "-id")
    assert [r["id"] for r in gold["items"]] == [ids[3], ids[1]] and gold["next"] is None
    assert cli.json("ls", "--queue", "lsq", "--updated-before", "1h")["items"] == []
    assert len(cli.json("ls", "--queue", "lsq", "--inserted-after", "1h")["items"]) == 5
    table = cli("ls", "--queue", "lsq", "--limit", "3")
    assert "machine" in table.stdout.splitlines()[0] and "cli.ls" in table.stdout
    assert "more: --after " in table.stderr
    assert "no instances match" in cli("ls", "--id", "999999").stdout


def test_tail_prints_offsets_and_resumes(cli: CLI) -> None:
    in_process(
        cli.dsn, cli.schema, lambda db: db.insert_many([durable.Insert("cli.tail", {}, step="s", queue="nobody")] * 3)
    )
    in_process(cli.dsn, cli.schema, tail_settled)  # no older transaction of another test holds them back
    events = [json.loads(line) for line in cli("tail", "--json").stdout.splitlines()]
    assert events and all(set(e) >= {"offset", "instance_id", "event", "at"} for e in events)
    offsets = [e["offset"] for e in events]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    resumed = [json.loads(line) for line in cli("tail", "--json", "--from", offsets[1]).stdout.splitlines()]
    assert [e["offset"] for e in resumed] == offsets[2 : len(resumed) + 2] and resumed[0]["offset"] == offsets[2]
    assert cli("tail", "--from", "now").stdout == ""
    text = cli("tail", "--limit", "1").stdout.splitlines()
    assert len(text) == 1 and text[0].startswith(offsets[0])
    follower = cli.popen("tail", "--from", offsets[-1], "--follow", "--poll", "0.05", "--limit", "1", "--json")
    made = cli.json("insert", "cli.tail", "--step", "s", "--queue", "nobody")
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    seen = json.loads(out)
    assert seen["instance_id"] == made["id"] and seen["event"] == "inserted"


def test_cancel_retry_and_gc(cli: CLI) -> None:
    iid = cli.json("insert", "cli.nudge", "--step", "s", "--queue", "nobody", "--state", '{"n": 1}')["id"]
    assert in_process(cli.dsn, cli.schema, lambda db: db.get(iid)).state == {"n": 1}
    assert cli("cancel", str(iid), "--reason", "testing").stdout.strip() == f"{iid}: runnable -> cancelled"
    assert cli("retry", str(iid)).stdout.strip() == f"{iid}: cancelled -> runnable"
    refused = cli("retry", str(iid), code=2)
    assert refused.stderr.strip() == (
        f"error: instance {iid} is runnable: only failed or cancelled instances can be retried"
    )
    cli("cancel", str(iid))
    assert "already cancelled" in cli("cancel", str(iid)).stdout
    assert cli.json("gc", "--older-than", "1d")["deleted"] == 0
    gone = cli("gc", "--older-than", "0s")
    assert gone.stdout.startswith("deleted ") and int(gone.stdout.split()[1]) >= 1
    assert cli("show", str(iid), code=2).stderr.strip() == f"error: no instance with id {iid}"


BAD = [
    (["show", "999999999"], "no instance with id 999999999"),
    (["show", "abc"], "'abc' is not a valid integer"),
    (["ls", "--status", "finished"], "unknown status 'finished'"),
    (["ls", "--state", "{bad"], "--state is not valid JSON"),
    (["ls", "--after", "!!"], "malformed cursor"),
    (["signal", "1", "go", "--payload", "{"], "--payload is not valid JSON"),
    (["insert", "M"], "no definition of machine 'M': give --module MODULE"),
    (["tail", "--from", "zzz"], "malformed offset 'zzz'"),
    (["gc", "--older-than", "3x"], "'3x' is not a duration"),
    (["worker", "examples.checkout", "--queue", "checkout"], "expected NAME=N"),
    (["worker", "no_such_module_here"], "cannot import module 'no_such_module_here'"),
]


def test_bad_arguments_are_one_line_and_exit_2(cli: CLI) -> None:
    # run them side by side: each is a process start
    procs = [(args, wanted, cli.popen(*args)) for args, wanted in BAD]
    for args, wanted, proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (args, proc.returncode, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
        assert wanted in lines[0], (args, err)
        assert out == ""


def test_a_worker_without_heartbeat_is_shown_as_gone(cli: CLI) -> None:
    from datetime import UTC, datetime, timedelta

    from durable.sql import Q

    gauges = json.dumps({"ghostq": {"concurrency": 7, "prefetch": 7, "in_flight": 3, "buffered": 1}})
    long_ago = datetime.now(UTC) - timedelta(minutes=10)
    in_process(
        cli.dsn,
        cli.schema,
        lambda db: db.pool.execute(Q.register_worker, "ghost:1", "elsewhere", 1, ["ghostq"], gauges, long_ago),
    )
    rows = {w["id"]: w for w in cli.json("workers", "--all")}
    assert rows["ghost:1"]["state"] == "gone" and rows["ghost:1"]["seen_ago"] >= 600
    assert "ghost:1" not in {w["id"] for w in cli.json("workers")}
    text = cli("queues").stdout
    assert "gone" in text and "ghost:1" in text
    # a gone worker's capacity is not counted
    in_process(cli.dsn, cli.schema, lambda db: db.insert("cli.ghost", {}, step="s", queue="ghostq"))
    sat = cli.json("queues")["queues"]["ghostq"]
    assert sat["counts"] == {"due": 1} and sat["concurrency"] == 0 and sat["workers"] == []


def test_a_schema_that_does_not_exist_is_reported_not_created(cli: CLI) -> None:
    proc = cli("ls", "--schema", "t_nothing_here", code=2)
    assert proc.stderr.strip().startswith("error: no durable schema 't_nothing_here'")


def test_worker_otlp_without_the_otel_sdk_is_one_line(cli: CLI, tmp_path: Path) -> None:
    # a folder where the SDK (durable.otel's dependency) cannot be imported, run from there (the worker
    # imports from its cwd); opentelemetry is a namespace package, so the API still imports
    fake = tmp_path / "opentelemetry" / "sdk"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named opentelemetry.sdk')\n")
    (tmp_path / "tiny_jobs.py").write_text(
        "import durable\n\n@durable.job(queue='tiny')\nasync def tiny(args, ctx):\n    return 1\n"
    )
    env = {**cli.env, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.Popen(
        cli.argv("worker", "tiny_jobs", "--otlp", "grpc"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()] and "--otlp grpc needs the OpenTelemetry SDK" in err
    assert "pip install 'durable[otel]'" in err


def session_home(dsn: str) -> Path | None:
    """$DURABLE_HOME of the test session's server when it is an embedded one (its socket is in pgdata)."""
    from urllib.parse import parse_qs, urlparse

    host = parse_qs(urlparse(dsn).query).get("host", [""])[0]
    folder = Path(host) if host else None
    if folder is not None and folder.name == "pgdata" and (folder / "PG_VERSION").exists():
        return folder.parent
    return None


def test_embedded_db_status_uri_and_stop(cli: CLI, tmp_path: Path) -> None:
    def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**cli.env, "DURABLE_HOME": str(home)}
        proc = subprocess.run([DURABLE, "db", *args], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        return proc

    empty = tmp_path / "home"
    assert run(empty, "status").stdout.startswith("not running (not initialized)")
    assert run(empty, "stop").stdout.strip() == "not running"
    home = session_home(cli.dsn)
    if home is not None:
        # the session's own embedded server: uri joins it (and leaves it running), status sees it
        status = json.loads(run(home, "status", "--json").stdout)
        assert status["running"] and status["initialized"] and status["pid"] > 0
        assert run(home, "uri").stdout.strip() == cli.dsn
        return
    # no embedded session server: a full cycle in a fresh folder (initdb, start, stop)
    uri = run(empty, "uri").stdout.strip()
    try:
        assert uri.startswith("postgresql://") and str(tmp_path) in uri
        assert json.loads(run(empty, "status", "--json").stdout)["running"]
    finally:
        assert run(empty, "stop").stdout.strip() == "stopped"
    assert run(empty, "status").stdout.startswith("not running (initialized)")
