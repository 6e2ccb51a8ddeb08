"""Click options for commands that export telemetry (``durable worker --otlp grpc``).

@click.command()
@otlp_option
def worker(..., otlp: str | None, otlp_endpoint: str | None) -> None:
    with telemetry(otlp, otlp_endpoint, service_name="durable-worker"):
        run(main)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import click

from . import PROTOCOLS, ConfigurationError, Protocol, Telemetry, configure

F = TypeVar("F", bound=Callable[..., Any])


def otlp_option(fn: F) -> F:
    """Add ``--otlp [grpc|http]`` (env ``DURABLE_OTLP``) and ``--otlp-endpoint URL``; the command
    receives them as ``otlp`` and ``otlp_endpoint``."""
    fn = click.option(
        "--otlp-endpoint",
        metavar="URL",
        default=None,
        help="OTLP receiver base address (default: $OTEL_EXPORTER_OTLP_ENDPOINT, "
        "else http://localhost:4317 for grpc, http://localhost:4318 for http).",
    )(fn)
    fn = click.option(
        "--otlp",
        type=click.Choice(PROTOCOLS),
        envvar="DURABLE_OTLP",
        default=None,
        help="Export traces and metrics over OTLP/gRPC or OTLP/HTTP (env DURABLE_OTLP).",
    )(fn)
    return fn


def configure_from_options(
    otlp: str | None, otlp_endpoint: str | None, *, service_name: str = "durable"
) -> Telemetry | None:
    """Configure the SDK as the options ask; None when no export was asked for. Bad combinations are
    usage errors (exit status 2)."""
    if otlp is None:
        if otlp_endpoint:
            raise click.UsageError("--otlp-endpoint needs --otlp grpc or --otlp http")
        return None
    try:
        return configure(
            os.environ.get("OTEL_SERVICE_NAME") or service_name,
            otlp=cast(Protocol, otlp),
            endpoint=otlp_endpoint or None,
        )
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None


@contextmanager
def telemetry(
    otlp: str | None, otlp_endpoint: str | None, *, service_name: str = "durable"
) -> Iterator[Telemetry | None]:
    """Configure for the duration of a command and flush on the way out."""
    configured = configure_from_options(otlp, otlp_endpoint, service_name=service_name)
    try:
        yield configured
    finally:
        if configured is not None:
            configured.shutdown()
