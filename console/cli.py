"""``durable console [--dsn ...] [--schema ...] [--web [--host H] [--port N] [--token T]] [--json]``."""

from __future__ import annotations

import sys

import click
import textual  # noqa: F401  (a base dependency; when missing, `durable console` says how to install it)

from durable.cli import EXIT_UNREACHABLE, EXIT_USAGE, OneLineError, dsn_option, fail, json_option, schema_option
from durable.workers import GONE_AFTER

WEB_PORT = 4438  # `durable serve` is 4437


@click.command(name="console")
@dsn_option
@schema_option
@click.option(
    "--refresh", type=click.FloatRange(min=0.1), default=1.0, show_default=True, help="Seconds between refreshes."
)
@click.option(
    "--gone-after",
    type=click.FloatRange(min=1),
    default=GONE_AFTER,
    show_default=True,
    help="Seconds without a heartbeat after which a worker that reports no heartbeat period is shown as gone "
    "(one that does: after three of its periods; the default heartbeat is lease/3 = 20 s).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=3.0,
    show_default=True,
    help="Seconds a database call may take before the console reports it unreachable.",
)
@click.option(
    "--web",
    is_flag=True,
    help="Serve the console over HTTP (textual-serve) for a browser instead of "
    "running it in this terminal: every browser tab gets its own console.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="--web: interface to listen on (beyond loopback only with --token or --insecure-no-auth).",
)
@click.option(
    "--port",
    default=WEB_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="--web: TCP port (0 = any free port; the URL is printed).",
)
@click.option(
    "--token",
    envvar="DURABLE_CONSOLE_TOKEN",
    default=None,
    metavar="TOKEN",
    help="--web: require this token (open URL/?token=TOKEN once: a cookie keeps it; or send "
    "'Authorization: Bearer TOKEN'); env DURABLE_CONSOLE_TOKEN.",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="--web: allow a non-loopback --host without --token (anyone who reaches it can signal, retry and cancel).",
)
@json_option
def command(
    dsn: str | None,
    schema: str,
    refresh: float,
    gone_after: float,
    timeout: float,
    web: bool,
    host: str,
    port: int,
    token: str | None,
    insecure_no_auth: bool,
    as_json: bool,
) -> None:
    """Live console: queues, workers, instances and their history, with signal, retry and cancel.

    In this terminal by default; --web serves it to a browser on loopback (127.0.0.1:4438). --json prints
    the queues screen once as JSON (for scripts) instead."""
    from durable.errors import DurableError

    web_only = [
        flag
        for flag, given in (
            ("--host", host != "127.0.0.1"),
            ("--port", port != WEB_PORT),
            ("--token", token is not None),
            ("--insecure-no-auth", insecure_no_auth),
        )
        if given
    ]
    if web_only and not web:
        raise OneLineError(f"{', '.join(web_only)} go with --web")
    if web and as_json:
        raise OneLineError("--json prints the queues once; it does not go with --web")
    if token is not None and not token.strip():
        raise OneLineError("--token must not be empty")
    if web:
        try:
            from .web import check_access
        except ImportError as exc:  # textual-serve and aiohttp are base dependencies
            raise OneLineError(
                f"--web needs {exc.name or exc}, which is not installed: pip install -e . (or pip install durable)"
            ) from None

        try:
            check_access(host, token, insecure_no_auth)
        except ValueError as exc:
            raise OneLineError(str(exc)) from None
    try:
        target = _resolve(dsn, quiet=as_json)
    except DurableError as exc:
        fail(str(exc), EXIT_UNREACHABLE)
        return

    if as_json:
        sys.exit(_print_overview(target, schema, timeout, gone_after))
    if web:
        from .web import serve

        serve(
            target, schema, host=host, port=port, token=token, refresh=refresh, gone_after=gone_after, timeout=timeout
        )
        return

    from .app import ConsoleApp, run
    from .source import Source

    run(ConsoleApp(Source(target, schema, timeout=timeout), refresh_every=refresh, gone_after=gone_after))


def _resolve(dsn: str | None, quiet: bool) -> str:
    """The DSN to use: the given one, else the embedded server's (started if needed, with a spinner)."""
    from durable.embedded import resolve_dsn

    if dsn is not None:
        return dsn
    if quiet:
        return resolve_dsn(None)
    from rich.console import Console

    with Console(stderr=True).status("starting the embedded PostgreSQL…"):
        return resolve_dsn(None)


def _print_overview(dsn: str, schema: str, timeout: float, gone_after: float) -> int:
    """The queues screen, once, as JSON: queues (counts, steps/s, saturation, oldest due) and workers."""
    import asyncio
    from dataclasses import asdict

    from durable.cli_ops import emit_json

    from .data import OverviewLoader
    from .source import SchemaMissing, Source, Unreachable

    async def load() -> object:
        source = Source(dsn, schema, timeout=timeout)
        try:
            return await OverviewLoader(gone_after=gone_after).load(source)
        finally:
            await source.close()

    try:
        overview = asyncio.run(load())
    except SchemaMissing as exc:
        fail(str(exc), EXIT_USAGE)
    except Unreachable as exc:
        fail(str(exc), EXIT_UNREACHABLE)
    emit_json(asdict(overview))  # type: ignore[call-overload]
    return 0
