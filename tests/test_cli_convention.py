"""One CLI convention (docs/cli.md), through the installed ``durable`` command in subprocesses:

- ``--dsn``/``--schema``/``--json`` before or after the subcommand (after wins, then before, then the
  environment);
- every usage error, click's own included, is one ``error:`` line with exit status 2; an unreachable
  database is exit status 3;
- every command has ``--json``;
- a missing optional dependency names the extra that installs it;
- the standard OTEL_* variables make the commands that run steps export traces;
- shell completion is documented and works.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from durable.cli import COMMANDS, LazyGroup, main
from durable.migrate import drop_schema

from .test_cli_ops import CLI, DURABLE, ROOT, in_process, wait_for

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"  # port 1: refused at once


@pytest.fixture(scope="module")
def cli(pg_dsn: str) -> Iterator[CLI]:
    schema = f"t_conv_{uuid.uuid4().hex[:10]}"
    runner = CLI(pg_dsn, schema)
    in_process(pg_dsn, schema, lambda db: db.migrated_version(), migrate=True)
    yield runner
    in_process(pg_dsn, schema, lambda db: drop_schema(db.pool, schema))


def durable(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, code: int | None = 0
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [DURABLE, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", "DURABLE_DSN": "", "DURABLE_SCHEMA": "", **(env or {})},
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    if code is not None:
        assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def test_global_options_before_or_after_the_command(cli: CLI) -> None:
    made = json.loads(
        durable(
            "--dsn", cli.dsn, "--schema", cli.schema, "--json", "insert", "conv.m", "--step", "s", "--queue", "nobody"
        ).stdout
    )
    before = json.loads(durable("--dsn", cli.dsn, "--schema", cli.schema, "--json", "ls").stdout)
    after = json.loads(durable("ls", "--dsn", cli.dsn, "--schema", cli.schema, "--json").stdout)
    mixed = json.loads(durable("--json", "ls", "--dsn", cli.dsn, "--schema", cli.schema).stdout)
    assert [r["id"] for r in before["items"]] == [made["id"]] and before == after == mixed
    # after the command wins over before it; before it wins over the environment
    assert (
        json.loads(
            durable("--schema", "t_nothing_here", "ls", "--schema", cli.schema, "--dsn", cli.dsn, "--json").stdout
        )
        == before
    )
    env = {"DURABLE_SCHEMA": "t_nothing_here", "DURABLE_DSN": UNREACHABLE}
    assert json.loads(durable("--schema", cli.schema, "--dsn", cli.dsn, "ls", "--json", env=env).stdout) == before
    # the environment still works on its own
    env = {"DURABLE_SCHEMA": cli.schema, "DURABLE_DSN": cli.dsn}
    assert json.loads(durable("ls", "--json", env=env).stdout) == before
    # and for a group's command
    status = json.loads(durable("--json", "db", "status", env={"DURABLE_HOME": str(ROOT / "no-such-home")}).stdout)
    assert status["running"] is False


USAGE = [
    (["sim", "--seeds", "0"], "durable sim: Invalid value for '--seeds': 0 is not in the range x>=1."),
    (["sim", "--faults", "bogus"], "unknown fault kind 'bogus'"),
    (["sim", "--seed", "-1"], "durable sim: Invalid value for '--seed': -1 is not in the range x>=0."),
    (["demo", "-n", "0"], "durable demo: Invalid value for '--instances' / '-n'"),
    (["ls", "--dsn", "notadsn"], "Invalid value for '--dsn': 'notadsn' is not a PostgreSQL URI"),
    (["--dsn", "notadsn", "ls"], "Invalid value for '--dsn': 'notadsn' is not a PostgreSQL URI"),
    (["ls", "--bogus"], "durable ls: No such option '--bogus'"),
    (["ls", "--limit", "0"], "Invalid value for '--limit'"),
    (["show"], "durable show: Missing argument 'ID'."),
    (["worker"], "durable worker: Missing argument 'MODULE'."),
    (["worker", "examples.checkout", "--queue", "checkout=\u00b2"], "expected NAME=N with N a positive integer"),
    (["worker", "examples.checkout", "--queue", "checkout=" + "1" * 5000], "expected NAME=N with N a positive"),
    (["no-such-command"], "No such command 'no-such-command'"),
    (["--schema", "x", "sim"], "durable sim: --schema does not apply to this command"),
    (["--dsn", "postgresql://h/db", "db", "status"], "durable db status: --dsn does not apply to this command"),
    (["--schema", "bad name", "ls"], "invalid schema name 'bad name'"),
    (
        ["insert", "NoSuchMachine", "--step", "start"],
        "no definition of machine 'NoSuchMachine': give --module MODULE (where it is defined), or --queue",
    ),
    (["insert", "Nope", "--module", "examples.checkout"], "module 'examples.checkout' defines no machine 'Nope'"),
    (["console", "--port", "5"], "--port go with --web"),
    (["console", "--web", "--host", "0.0.0.0"], "refusing to serve the console on 0.0.0.0 without access control"),
    (["console", "--web", "--json"], "--json prints the queues once; it does not go with --web"),
    (["serve", "--host", "0.0.0.0"], "refusing to listen on 0.0.0.0 without access control"),
]


def test_every_usage_error_is_one_line_with_exit_2(cli: CLI) -> None:
    env = {**os.environ, "COLUMNS": "200", "DURABLE_DSN": cli.dsn, "DURABLE_SCHEMA": cli.schema}
    procs = [
        (
            args,
            wanted,
            subprocess.Popen(
                [DURABLE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
            ),
        )
        for args, wanted in USAGE
    ]
    for args, wanted, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (args, proc.returncode, out, err)
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
        assert wanted in lines[0], (args, err)
        assert out == "", (args, out)
    bad_env = durable("ls", env={"DURABLE_DSN": "host=/tmp dbname=x"}, code=2)
    assert bad_env.stderr.startswith("error: durable ls: Invalid value for $DURABLE_DSN")


def test_an_unreachable_database_is_exit_3() -> None:
    commands = [
        ["ls"],
        ["show", "1"],
        ["migrate"],
        ["queues", "--json"],
        ["insert", "m", "--step", "s", "--queue", "q"],
        ["demo", "-n", "1"],
        ["console", "--json"],
        ["sim", "--instances", "1"],
    ]
    env = {**os.environ, "DURABLE_SCHEMA": ""}
    procs = [
        (
            args,
            subprocess.Popen(
                [DURABLE, *args, "--dsn", UNREACHABLE],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=ROOT,
            ),
        )
        for args in commands
    ]
    for args, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 3, (args, proc.returncode, out, err)
        lines = err.strip().splitlines()
        assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, (args, err)
        assert "127.0.0.1" in err or "nobody" in err or "Connect call failed" in err, (args, err)


def leaves() -> Iterator[tuple[str, click.Command]]:
    group = LazyGroup()
    ctx = click.Context(main)
    for name in COMMANDS:
        cmd = group.get_command(ctx, name)
        assert cmd is not None
        if isinstance(cmd, click.Group):
            for sub in cmd.list_commands(ctx):
                leaf = cmd.get_command(ctx, sub)
                assert leaf is not None
                yield f"{name} {sub}", leaf
        else:
            yield name, cmd


def test_every_command_has_json() -> None:
    without = [
        name for name, cmd in leaves() if "--json" not in {o for p in cmd.params for o in getattr(p, "opts", ())}
    ]
    assert without == []


def test_json_before_the_command_reaches_commands_that_write_json_files(pg_dsn: str) -> None:
    out = durable("--json", "sim", "--seed", "5", "--instances", "2", "--dsn", pg_dsn).stdout
    runs = json.loads(out)  # stdout is the JSON alone; the report went to stderr
    assert [r["seed"] for r in runs] == [5] and runs[0]["ok"]


def test_gc_prints_one_line_and_nothing_else(cli: CLI) -> None:
    proc = cli("gc", "--older-than", "7d")
    assert proc.stdout == "deleted 0 instances (with their signals and history) older than 7d\n"
    assert proc.stderr == ""


def test_insert_by_name_needs_its_queue_and_q_prints_the_id(cli: CLI) -> None:
    made = cli("insert", "conv.named", "--step", "s", "--queue", "nobody", "-q").stdout
    assert made.strip().isdigit()
    inst = in_process(cli.dsn, cli.schema, lambda db: db.get(int(made)))
    assert (inst.machine, inst.step, inst.queue) == ("conv.named", "s", "nobody")


def shadow(tmp_path: Path, dotted: str) -> Path:
    """A folder whose ``dotted`` module fails to import as if it were not installed."""
    folder = tmp_path / "shadow"
    parts = dotted.split(".")
    where = folder.joinpath(*parts)
    where.mkdir(parents=True)
    (where / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{dotted}'\", name='{dotted}')\n")
    return folder


@pytest.mark.parametrize(
    "dotted, args, extra",
    [
        ("hypercorn", ["serve", "--port", "0"], "pip install 'durable[serve]'"),
        ("textual", ["console"], "pip install -e ."),
        ("opentelemetry.sdk", ["worker", "tiny_jobs", "--otlp", "grpc"], "pip install 'durable[otel]'"),
        ("opentelemetry.sdk", ["demo", "-n", "1"], "pip install 'durable[otel]'"),
    ],
)
def test_a_missing_dependency_names_its_extra(tmp_path: Path, dotted: str, args: list[str], extra: str) -> None:
    folder = shadow(tmp_path, dotted)
    (tmp_path / "tiny_jobs.py").write_text(
        "import durable\n\n@durable.job(queue='tiny')\nasync def tiny(args, ctx):\n    return 1\n"
    )
    env = {"PYTHONPATH": f"{folder}{os.pathsep}{tmp_path}", "OTEL_TRACES_EXPORTER": "otlp", "DURABLE_DSN": UNREACHABLE}
    proc = durable(*args, env=env, cwd=tmp_path, code=2)
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert extra in proc.stderr


def test_the_standard_otel_variables_export_the_demo_and_a_worker(pg_dsn: str, tmp_path: Path) -> None:
    from durable.otel.receiver import Receiver

    schema = f"t_conv_otel_{uuid.uuid4().hex[:8]}"
    with Receiver() as rx:
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.http_endpoint,
            "OTEL_METRICS_EXPORTER": "none",
        }
        try:
            durable("demo", "-n", "2", "--dsn", pg_dsn, "--schema", schema, env=env)
            names = {s.name for s in rx.spans if s.resource.get("service.name") == "durable-demo"}
            assert any(n.startswith("step Checkout.") for n in names), names  # flushed before the demo exited
            assert all(s.transport == "http" for s in rx.spans)
            grpc = {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": rx.grpc_endpoint,
                "OTEL_SERVICE_NAME": "conv-worker",
                "OTEL_METRICS_EXPORTER": "none",
            }
            (tmp_path / "conv_jobs.py").write_text(
                "import durable\n\n@durable.job(queue='conv')\nasync def conv_job(args, ctx):\n    return 1\n"
            )
            made = json.loads(
                durable(
                    "insert",
                    "conv_job",
                    "--module",
                    "conv_jobs",
                    "--dsn",
                    pg_dsn,
                    "--schema",
                    schema,
                    "--json",
                    cwd=tmp_path,
                ).stdout
            )
            worker = subprocess.Popen(
                [DURABLE, "worker", "conv_jobs", "--dsn", pg_dsn, "--schema", schema],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=tmp_path,
                env={**os.environ, **grpc},
            )
            try:
                wait_for(lambda: in_process(pg_dsn, schema, lambda db: db.get(made["id"])).status == "done", 60)
            finally:
                worker.terminate()  # drains, then flushes its spans on the way out
                _, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err
            assert any(
                s.resource.get("service.name") == "conv-worker" and s.name == "step conv_job.perform" for s in rx.spans
            ), {(s.resource.get("service.name"), s.name) for s in rx.spans}
        finally:
            in_process(pg_dsn, schema, lambda db: drop_schema(db.pool, schema))


def test_shell_completion_is_documented_and_works() -> None:
    assert "_DURABLE_COMPLETE=bash_source durable" in durable("--help").stdout
    docs = (ROOT / "docs" / "cli.md").read_text()
    for shell in ("bash", "zsh", "fish"):
        assert f"_DURABLE_COMPLETE={shell}_source durable" in docs
    script = durable(env={"_DURABLE_COMPLETE": "bash_source"}).stdout
    assert "complete " in script and "_durable_completion" in script
    words = durable(env={"_DURABLE_COMPLETE": "bash_complete", "COMP_WORDS": "durable wor", "COMP_CWORD": "1"}).stdout
    assert "plain,worker" in words and "plain,workers" in words


def test_wait_reports_how_instances_ended(cli: CLI) -> None:
    parked = cli.json("insert", "conv.wait", "--step", "s", "--queue", "nobody")["id"]
    still = cli("wait", str(parked), "--timeout", "0", code=1)
    assert still.stdout == "" and still.stderr == f"error: instance {parked} is still runnable (at s) after 0s\n"
    cli("cancel", str(parked), "--reason", "not needed")
    ended = cli("wait", str(parked), code=1)
    assert ended.stdout == f"{parked}: cancelled not needed\n"
    report = json.loads(cli("wait", str(parked), "--json", code=1).stdout)
    assert report == [{"id": parked, "status": "cancelled", "result": None, "error": "not needed", "ended": True}]
    assert "no instance with id 999999999" in cli("wait", "999999999", code=2).stderr
