"""Administration commands: ``durable migrate``, ``durable db uri|status|stop`` (the embedded server) and
``durable worker MODULE`` (run the machines a module defines until Ctrl-C, then drain)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from .cli import dsn_option, schema_option
from .cli_ops import Command, Group, OneLineError, emit_json, execute, json_option, load_machines


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
            emit_json({"schema": schema, "before": before, "applied": applied, "version": after,
                       "latest": LATEST_VERSION})
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
def uri() -> None:
    """Start the embedded server if needed (it keeps running) and print its connection URI."""
    from . import embedded
    from .errors import DurableError

    try:
        click.echo(embedded.server(keep_running=True).get_uri())
    except DurableError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


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
def stop() -> None:
    """Stop the embedded server now (processes using it lose their connections)."""
    from . import embedded

    click.echo("stopped" if embedded.stop() else "not running")


# -- worker -----------------------------------------------------------------------------------------
def parse_queues(specs: tuple[str, ...]) -> dict[str, int]:
    queues: dict[str, int] = {}
    for spec in specs:
        name, sep, count = spec.partition("=")
        if not sep or not name or not count.isdigit() or int(count) < 1:
            raise OneLineError(f"--queue {spec!r}: expected NAME=N with N a positive integer (checkout=5)")
        queues[name] = int(count)
    return queues


@contextmanager
def telemetry(otlp: str | None, endpoint: str | None, service_name: str) -> Iterator[None]:
    """Configure OpenTelemetry export (the optional ``otel`` package) for the duration of the worker."""
    if otlp is None:
        if endpoint:
            raise OneLineError("--otlp-endpoint needs --otlp grpc or --otlp http")
        yield
        return
    try:
        import otel
    except ImportError as exc:
        raise OneLineError(f"--otlp needs the 'otel' package and the OpenTelemetry SDK ({exc}); "
                           "install durable[otel]") from None
    try:
        configured: Any = otel.configure(service_name, otlp=otlp, endpoint=endpoint)  # type: ignore[arg-type]
    except Exception as exc:  # otel.ConfigurationError and SDK errors: a bad setting, not a crash
        raise OneLineError(f"--otlp {otlp}: {exc}") from None
    try:
        yield
    finally:
        shutdown = getattr(configured, "shutdown", None)
        if callable(shutdown):
            shutdown()


@click.command(cls=Command)
@click.argument("module")
@dsn_option
@schema_option
@click.option("--queue", "queue_specs", multiple=True, metavar="NAME=N",
              help="Serve queue NAME with N concurrent steps (repeatable; default: every queue of the "
                   "module's machines at --concurrency).")
@click.option("--concurrency", default=10, show_default=True, type=click.IntRange(1),
              help="Concurrency of queues not given with --queue.")
@click.option("--lease", default=60.0, show_default=True, type=click.FloatRange(0.1),
              help="Lease seconds of a claimed step (heartbeats extend it).")
@click.option("--drain-timeout", default=30.0, show_default=True, type=click.FloatRange(0),
              help="Seconds running steps get to finish after Ctrl-C.")
@click.option("--retention", help="Also delete terminal instances older than this (7d) while running.")
@click.option("--otlp", type=click.Choice(["grpc", "http"]), envvar="DURABLE_OTLP", default=None,
              help="Export traces and metrics over OTLP (needs the otel package).")
@click.option("--otlp-endpoint", metavar="URL", default=None, help="OTLP receiver address.")
@click.option("--service-name", default="durable-worker", show_default=True)
@click.option("--default-gc", is_flag=True,
              help="Keep Python's default garbage-collector thresholds (by default the worker freezes its "
                   "startup objects and collects less often: ~25% less CPU per step).")
def worker(module: str, dsn: str | None, schema: str, queue_specs: tuple[str, ...], concurrency: int,
           lease: float, drain_timeout: float, retention: str | None, otlp: str | None,
           otlp_endpoint: str | None, service_name: str, default_gc: bool) -> None:
    """Run the machines (Machine subclasses and @job functions) of MODULE until Ctrl-C or SIGTERM; the
    first signal drains (running steps finish, buffered claims go back), a second one stops at once."""
    from .cli_ops import parse_duration

    machines = load_machines(module)
    if not machines:
        raise OneLineError(f"module {module!r} defines no machines (Machine subclasses or @durable.job)")
    queues = parse_queues(queue_specs)
    if not queues:
        queues = {m.queue: concurrency for m in machines}
    keep = parse_duration(retention, "--retention") if retention else None

    async def body() -> None:
        import trio

        import durable

        from ._pg import redact

        async with durable.connect(dsn, schema=schema, machines=machines) as database:
            runtime = durable.Runtime(database, queues=queues, lease=lease, drain_timeout=drain_timeout,
                                      retention=keep)
            if not default_gc:
                from .runtime.gc_tuning import tune_for_throughput

                tune_for_throughput()
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    await nursery.start(runtime.run)
                    served = ", ".join(f"{q}={n}" for q, n in queues.items())
                    names = ", ".join(sorted(f"{m.name} v{m.version}" for m in machines))
                    click.echo(f"worker {runtime.worker_id} started on {redact(database.pool.dsn)} schema "
                               f"{schema!r}: queues {served}; machines {names}", err=True)

                    async def watch() -> None:
                        async for _ in signals:
                            if not runtime.stopping:
                                click.echo(f"draining (up to {drain_timeout:g}s; again to stop now)", err=True)
                                runtime.stop()
                            else:
                                click.echo("stopping now: unfinished claims return when their leases "
                                           "expire", err=True)
                                runtime.kill()

                    nursery.start_soon(watch)
                    await runtime.wait_stopped()
                    nursery.cancel_scope.cancel()
            stats = runtime.statistics()
            done = sum(q["done"] for q in stats["queues"].values())
            failed = sum(q["failed"] for q in stats["queues"].values())
            click.echo(f"worker {runtime.worker_id} stopped: {done} done, {failed} failed", err=True)

    with telemetry(otlp, otlp_endpoint, service_name):
        execute(body)
