"""``durable serve``: the Durable Streams protocol over HTTP, stored in PostgreSQL."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING, NoReturn

import click

from ..cli import EXIT_UNREACHABLE, dsn_option, json_option, run, schema_option

if TYPE_CHECKING:
    import trio


@click.command(name="serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port",
    default=4437,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port (0 = any free port; the URL is printed).",
)
@dsn_option
@schema_option
@click.option(
    "--long-poll-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0.05, 300),
    help="Seconds a long-poll (or an idle SSE interval) waits for data.",
)
@click.option(
    "--max-append-bytes",
    default=8 << 20,
    show_default=True,
    type=click.IntRange(1),
    help="Largest accepted stream or signal body (413 above; a larger Content-Length is refused "
    "before the body is read).",
)
@click.option(
    "--body-timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0.1, 3600),
    envvar="DURABLE_SERVE_BODY_TIMEOUT",
    help="Seconds a request body may take to arrive in full after the request's head (408 after; "
    "env DURABLE_SERVE_BODY_TIMEOUT).",
)
@click.option(
    "--public-url",
    default=None,
    metavar="URL",
    help="Base URL of callback and JWKS links in subscriptions (default: the request's origin).",
)
@click.option(
    "--dev-webhooks/--no-dev-webhooks",
    default=True,
    show_default=True,
    help="Allow webhook URLs on localhost and 127.0.0.x (plain http:// included).",
)
@click.option(
    "--token",
    "tokens",
    multiple=True,
    envvar="DURABLE_SERVE_TOKEN",
    metavar="TOKEN",
    help="Require 'Authorization: Bearer TOKEN' on every request that creates, modifies or deletes "
    "(repeat for several tokens; env DURABLE_SERVE_TOKEN, whitespace-separated).",
)
@click.option("--protect-reads", is_flag=True, help="Require the token on reads (GET, HEAD) too.")
@click.option("--insecure-no-auth", is_flag=True, help="Allow listening on a non-loopback interface without --token.")
@click.option(
    "--stop-timeout",
    default=30.0,  # serve()'s STOP_TIMEOUT (the web stack is imported only once the command runs)
    show_default=True,
    type=click.FloatRange(1, 3600),
    help="Seconds a graceful stop (SIGTERM, Ctrl-C) may take before the server's connections are closed "
    "at once (exit 1).",
)
@json_option
def command(
    host: str,
    port: int,
    dsn: str | None,
    schema: str,
    long_poll_timeout: float,
    max_append_bytes: int,
    body_timeout: float,
    public_url: str | None,
    dev_webhooks: bool,
    tokens: tuple[str, ...],
    protect_reads: bool,
    insecure_no_auth: bool,
    stop_timeout: float,
    as_json: bool,
) -> None:
    """Serve Durable Streams with subscriptions (and /instances/{id}/history, /instances/{id}/signals/{name}).

    Without --token anyone who can reach the server may write: it then listens only on loopback
    (127.0.0.0/8, ::1, localhost) unless --insecure-no-auth is given."""
    import orjson
    import trio

    from ..errors import DatabaseUnavailable, DurableError, SchemaError
    from ..migrate import check_schema_name
    from .auth import is_loopback
    from .server import serve
    from .streams import Settings

    try:
        check_schema_name(schema)
    except SchemaError as exc:
        raise click.UsageError(str(exc)) from None
    if any(not t.strip() for t in tokens):
        raise click.UsageError("--token must not be empty")
    if protect_reads and not tokens:
        raise click.UsageError("--protect-reads needs --token")
    if not tokens and not insecure_no_auth and not is_loopback(host):
        click.echo(
            f"error: refusing to listen on {host} without access control: pass --token TOKEN (or set "
            "DURABLE_SERVE_TOKEN), or --insecure-no-auth to serve without authentication",
            err=True,
        )
        sys.exit(2)
    settings = Settings(
        long_poll_timeout=long_poll_timeout,
        max_append_bytes=max_append_bytes,
        body_timeout=body_timeout,
        public_url=public_url,
        allow_dev_webhooks=dev_webhooks,
        tokens=tuple(t.strip() for t in tokens),
        protect_reads=protect_reads,
    )

    async def main() -> None:
        # SIGTERM (what a container runtime or systemd sends) and Ctrl-C stop the server gracefully: it stops
        # listening, finishes the requests in flight (1 s at most), cancels the statements of those it cut
        # off and closes its pools. Without a handler SIGTERM killed the process on the spot, and an append
        # waiting on its stream's row lock outlived it and landed later. The signals are read from the start,
        # not once the server listens: a start that waits (a migration behind another migrator's lock, a
        # slow database) is stopped too. A stop that waits on the database (a shielded statement behind a
        # lock) ends after --stop-timeout (serve() closes its connections: StopTimeout, exit 1); the watcher,
        # outside the server's scope, ends the process at a second signal, or if even that stop hangs.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as watching:
                server_scope = trio.CancelScope()
                watching.start_soon(_stop_on_signals, signals, server_scope, stop_timeout)
                with server_scope:
                    async with trio.open_nursery() as nursery:
                        server = await nursery.start(
                            partial(serve, dsn, schema, host, port, settings=settings, stop_timeout=stop_timeout)
                        )
                        access = (
                            ("token required for writes and reads" if protect_reads else "token required for writes")
                            if tokens
                            else "no access control"
                        )
                        if as_json:  # one line for scripts (with --port 0: the port it got)
                            click.echo(orjson.dumps({"url": server.url, "schema": schema, "access": access}).decode())
                        else:
                            click.echo(
                                f"durable serve: listening on {server.url} (schema {schema}; {access})", err=True
                            )
                watching.cancel_scope.cancel()  # stopped

    try:
        run(main)
    except BaseExceptionGroup as group:
        # a failure inside the nursery: report the first durable error as one line
        leaf = _first_leaf(group)
        if isinstance(leaf, DurableError):
            click.echo(f"error: {leaf}", err=True)
            sys.exit(EXIT_UNREACHABLE if isinstance(leaf, DatabaseUnavailable) else 1)
        if isinstance(leaf, OSError):
            click.echo(f"error: cannot listen on {host}:{port}: {leaf.strerror or leaf}", err=True)
            sys.exit(1)
        raise


# after serve()'s own stop_timeout, which closes its connections: its HTTP front's thread gets 15 s to
# end, 5 more once its connections are closed (durable/serve/front.py, Front.stop), its pools 10 s each
STOP_GRACE = 40.0


async def _stop_on_signals(signals: AsyncIterator[int], server: trio.CancelScope, timeout: float) -> None:
    """Stop the server (started or still starting) at the first signal; end the process at once at a
    second one (exit 130), or when the stop takes longer than ``timeout`` seconds and STOP_GRACE more
    (exit 1): serve() itself ends a stop that waits on the database after ``timeout`` seconds. A statement
    still waiting in PostgreSQL then is ended by PostgreSQL 14+ within about a second, as after SIGKILL
    (durable._pg.CLIENT_CHECK_MS)."""
    import trio

    async for received in signals:
        click.echo(f"durable serve: stopping ({signal.Signals(received).name}; again to stop now)", err=True)
        server.cancel()
        break
    timeout += STOP_GRACE
    with trio.move_on_after(timeout):
        async for received in signals:
            click.echo(f"durable serve: stopping now ({signal.Signals(received).name})", err=True)
            _exit_now(130)
    click.echo(f"error: durable serve did not stop within {timeout:g}s", err=True)
    _exit_now(1)


def _exit_now(code: int) -> NoReturn:
    """End the process without waiting for anything (its statements in flight, its threads)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
