"""Administration commands: ``durable migrate``, ``durable db uri|status|stop`` (the embedded server) and
``durable worker MODULE`` (run the machines a module defines until Ctrl-C, then drain)."""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING

import click

from .cli import EXIT_UNREACHABLE, OneLineError, dsn_option, fail, json_option, schema_option, telemetry
from .cli_ops import Command, Group, emit_json, execute, load_machines, load_schedules
from .limits import decimal

if TYPE_CHECKING:
    from .runtime import Runtime


# -- migrate ----------------------------------------------------------------------------------------
@click.command(cls=Command)
@dsn_option
@schema_option
@click.option("--check", is_flag=True, help="Only report; exit status 1 when the schema is behind.")
@json_option
def migrate(dsn: str | None, schema: str, check: bool, as_json: bool) -> None:
    """Create the schema or bring it up to date (idempotent, safe to run from several processes)."""
    from .migrate import LATEST_VERSION

    async def body() -> None:
        import durable

        async with durable.connect(dsn, schema=schema, migrate=False, min_size=1, max_size=2) as db:
            before = await db.migrated_version()
            applied = [] if check else await db.migrate()
            after = await db.migrated_version()
        if as_json:
            emit_json(
                {"schema": schema, "before": before, "applied": applied, "version": after, "latest": LATEST_VERSION}
            )
        elif check:
            state = "up to date" if after >= LATEST_VERSION else f"behind (latest is {LATEST_VERSION})"
            click.echo(f"schema {schema!r} is at version {after}: {state}")
        elif applied:
            click.echo(f"schema {schema!r}: applied {', '.join(map(str, applied))}; now at version {after}")
        else:
            click.echo(f"schema {schema!r} is up to date (version {after})")
        if check and after < LATEST_VERSION:
            sys.exit(1)

    execute(body)


# -- db ---------------------------------------------------------------------------------------------
@click.group(cls=Group)
def db() -> None:
    """The embedded PostgreSQL in the user's data directory ($DURABLE_HOME overrides)."""


@db.command()
@json_option
def uri(as_json: bool) -> None:
    """Start the embedded server if needed (it keeps running) and print its connection URI."""
    from . import embedded
    from .errors import DurableError

    try:
        found = str(embedded.server(keep_running=True).get_uri())
    except DurableError as exc:
        fail(str(exc), EXIT_UNREACHABLE)
        return
    if as_json:
        emit_json({"uri": found, "data_dir": str(embedded.data_dir())})
    else:
        click.echo(found)


@db.command()
@json_option
def status(as_json: bool) -> None:
    """Whether the embedded server runs (never starts it)."""
    from . import embedded

    info = embedded.status()
    if as_json:
        emit_json(info)
    elif info["running"]:
        click.echo(f"running (pid {info['pid']}) in {info['data_dir']}")
    else:
        made = "initialized" if info["initialized"] else "not initialized"
        click.echo(f"not running ({made}) in {info['data_dir']}")


@db.command()
@json_option
def stop(as_json: bool) -> None:
    """Stop the embedded server now (processes using it lose their connections)."""
    from . import embedded

    stopped = embedded.stop()
    if as_json:
        emit_json({"stopped": stopped})
    else:
        click.echo("stopped" if stopped else "not running")


# -- worker -----------------------------------------------------------------------------------------
def parse_queues(specs: tuple[str, ...]) -> dict[str, int]:
    """``--queue NAME[=CONCURRENCY]`` options as a mapping queue -> concurrency."""
    queues: dict[str, int] = {}
    for spec in specs:
        name, sep, count = spec.partition("=")
        n = decimal(count, 18)  # ASCII digits only: "²" and 5000-digit numbers are refused here, not by int()
        if not sep or not name or n is None or n < 1:
            raise OneLineError(f"--queue {spec!r}: expected NAME=N with N a positive integer (checkout=5)")
        queues[name] = n
    return queues


@click.command(cls=Command)
@click.argument("module")
@dsn_option
@schema_option
@click.option(
    "--queue",
    "queue_specs",
    multiple=True,
    metavar="NAME=N",
    help="Serve queue NAME with N concurrent steps (repeatable; default: every queue of the "
    "module's machines at --concurrency).",
)
@click.option(
    "--concurrency",
    default=10,
    show_default=True,
    type=click.IntRange(1),
    help="Concurrency of queues not given with --queue.",
)
@click.option(
    "--lease",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Lease seconds of a claimed step (heartbeats extend it).",
)
@click.option(
    "--drain-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds running steps get to finish after Ctrl-C.",
)
@click.option("--retention", help="Also delete terminal instances older than this (7d) while running.")
@click.option(
    "--otlp",
    type=click.Choice(["grpc", "http"]),
    envvar="DURABLE_OTLP",
    default=None,
    help="Export traces and metrics over OTLP (needs durable[otel]; without it the standard "
    "OTEL_* variables are read, e.g. OTEL_TRACES_EXPORTER=otlp).",
)
@click.option("--otlp-endpoint", metavar="URL", default=None, help="OTLP receiver address.")
@click.option(
    "--service-name",
    default=None,
    help="Service name of the exported telemetry (default: $OTEL_SERVICE_NAME, else durable-worker).",
)
@click.option(
    "--default-gc",
    is_flag=True,
    help="Keep Python's default garbage-collector thresholds (by default the worker freezes its "
    "startup objects and collects less often: ~25% less CPU per step).",
)
@json_option
def worker(
    module: str,
    dsn: str | None,
    schema: str,
    queue_specs: tuple[str, ...],
    concurrency: int,
    lease: float,
    drain_timeout: float,
    retention: str | None,
    otlp: str | None,
    otlp_endpoint: str | None,
    service_name: str | None,
    default_gc: bool,
    as_json: bool,
) -> None:
    """Run the machines (Machine subclasses and @job functions) of MODULE until Ctrl-C or SIGTERM; the
    first signal drains (running steps finish, buffered claims go back), a second one stops at once."""
    from .cli_ops import parse_duration

    machines = load_machines(module)
    if not machines:
        raise OneLineError(f"module {module!r} defines no machines (Machine subclasses or @durable.job)")
    schedules = load_schedules(module)  # its durable.Schedule values: this worker fires them too
    queues = parse_queues(queue_specs)
    if not queues:
        queues = {m.queue: concurrency for m in machines}
    keep = parse_duration(retention, "--retention") if retention else None

    async def body() -> None:
        import trio

        # SIGTERM and Ctrl-C are read from the start, not once the worker runs: while it connects or migrates
        # (a database slow to answer, another migrator's lock) the first one stops it, exit 0 as a drained
        # worker (before, SIGTERM's default action killed it on the spot and Ctrl-C ended it with 'interrupted',
        # exit 130). Once it runs: the first drains, a second stops at once. While its runtime starts (its
        # statements shielded: freeing dead workers' claims, registering) the first drains it too (up to
        # --drain-timeout), and a second stops it at once.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            made: list[Runtime] = []  # the runtime, once made (its start may wait on the database)
            started: list[Runtime] = []  # the runtime, once it runs
            starting = trio.CancelScope()

            async def watch() -> None:
                async for received in signals:
                    if not started:
                        if not starting.cancel_called:
                            name = signal.Signals(received).name
                            click.echo(f"stopping ({name}): the worker has not started", err=True)
                            starting.cancel()
                        elif made and not made[0].killed:
                            click.echo("stopping now: the worker has not started", err=True)
                            made[0].kill()
                    elif not started[0].stopping:
                        click.echo(f"draining (up to {drain_timeout:g}s; again to stop now)", err=True)
                        started[0].stop()
                    else:
                        click.echo("stopping now: unfinished claims return when their leases expire", err=True)
                        started[0].kill()

            failed: Exception | None = None
            async with trio.open_nursery() as watching:
                watching.start_soon(watch)
                try:
                    with starting:
                        await run_worker(made, started)
                except Exception as exc:  # raised below, outside the nursery: not in an exception group
                    failed = exc
                watching.cancel_scope.cancel()
            if failed is not None:
                raise failed
            if not started:  # stopped while it connected, migrated or registered
                if as_json:
                    emit_json({"event": "stopped", "worker": None, "done": 0, "failed": 0})
                else:
                    click.echo("worker stopped before it started: 0 done, 0 failed", err=True)

    async def run_worker(made: list[Runtime], started: list[Runtime]) -> None:
        """Connect, migrate and run the worker until it has stopped; ``made`` gets its runtime once made,
        ``started`` once it runs."""
        import trio

        import durable

        from ._pg import redact

        async with durable.connect(dsn, schema=schema, machines=machines) as database:
            try:
                runtime = durable.Runtime(
                    database,
                    queues=queues,
                    lease=lease,
                    drain_timeout=drain_timeout,
                    retention=keep,
                    schedules=schedules,
                )
            except (TypeError, ValueError) as exc:  # a schedule this worker cannot run (DurableError: exit 2)
                raise OneLineError(f"module {module!r}: {exc}") from None
            made.append(runtime)
            if not default_gc:
                from .runtime.gc_tuning import tune_for_throughput

                tune_for_throughput()
            async with trio.open_nursery() as nursery:
                await nursery.start(runtime.run)
                started.append(runtime)
                served = ", ".join(f"{q}={n}" for q, n in queues.items())
                names = sorted(f"{m.name} v{m.version}" for m in machines)
                if as_json:  # one JSON line when it starts and one when it stops, on stdout
                    emit_json(
                        {
                            "event": "started",
                            "worker": runtime.worker_id,
                            "schema": schema,
                            "queues": queues,
                            "machines": names,
                            "schedules": [s.name for s in schedules],
                        }
                    )
                else:
                    fired = f"; schedules {', '.join(s.name for s in schedules)}" if schedules else ""
                    click.echo(
                        f"worker {runtime.worker_id} started on {redact(database.pool.dsn)} schema "
                        f"{schema!r}: queues {served}; machines {', '.join(names)}{fired}",
                        err=True,
                    )
                await runtime.wait_stopped()
                nursery.cancel_scope.cancel()
            stats = runtime.statistics()
            done = sum(q["done"] for q in stats["queues"].values())
            failed = sum(q["failed"] for q in stats["queues"].values())
            if as_json:
                emit_json({"event": "stopped", "worker": runtime.worker_id, "done": done, "failed": failed})
            else:
                click.echo(f"worker {runtime.worker_id} stopped: {done} done, {failed} failed", err=True)

    with telemetry(otlp, otlp_endpoint, service_name or os.environ.get("OTEL_SERVICE_NAME") or "durable-worker"):
        execute(body)
