"""``durable console [--dsn ...] [--schema ...]``."""

from __future__ import annotations

import sys

import click

from durable.cli import dsn_option, schema_option


@click.command(name="console")
@dsn_option
@schema_option
@click.option("--refresh", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--gone-after", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="A worker whose last heartbeat is older than this many seconds is shown as gone "
                   "(about 3 heartbeats; the default heartbeat is lease/3 = 20 s).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True,
              help="Seconds a database call may take before the console reports it unreachable.")
def command(dsn: str | None, schema: str, refresh: float, gone_after: float, timeout: float) -> None:
    """Live terminal console: queues, workers, instances and their history."""
    from durable.embedded import resolve_dsn
    from durable.errors import DurableError
    from durable.migrate import check_schema_name

    try:
        check_schema_name(schema)
    except DurableError as exc:
        raise click.BadParameter(str(exc), param_hint="--schema") from None
    try:
        if dsn is None:
            from rich.console import Console

            with Console(stderr=True).status("starting the embedded PostgreSQL…"):
                target = resolve_dsn(None)
        else:
            target = dsn
    except DurableError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)

    from .app import ConsoleApp, run
    from .source import Source

    run(ConsoleApp(Source(target, schema, timeout=timeout), refresh_every=refresh, gone_after=gone_after))
