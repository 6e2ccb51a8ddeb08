"""The ``durable`` command. Subcommands live in their own modules and are imported only when used,
so ``durable --help`` stays fast and ``durable`` itself never imports Textual, the web stack or the
OpenTelemetry SDK."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

T = TypeVar("T")

# name -> "module:attribute" of a click command
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("durable.demo:command", "Run a sample checkout workload on the embedded database."),
    "migrate": ("durable.cli_admin:migrate", "Create or upgrade the schema."),
    "db": ("durable.cli_admin:db", "Manage the embedded PostgreSQL (uri, status, stop)."),
    "worker": ("durable.cli_admin:worker", "Run a worker for machines defined in a Python module."),
    "ls": ("durable.cli_ops:ls", "List instances (filters, keyset paging)."),
    "show": ("durable.cli_ops:show", "Show one instance: state, inbox, children, history."),
    "tail": ("durable.cli_ops:tail", "Print history events from an offset, optionally following."),
    "signal": ("durable.cli_ops:signal", "Send a signal to an instance."),
    "insert": ("durable.cli_ops:insert", "Insert an instance."),
    "retry": ("durable.cli_ops:retry", "Put a failed instance back to runnable."),
    "cancel": ("durable.cli_ops:cancel", "Cancel an instance."),
    "workers": ("durable.cli_ops:workers", "List registered workers."),
    "queues": ("durable.cli_ops:queues", "Queue saturation as text."),
    "gc": ("durable.cli_ops:gc", "Delete old terminal instances, their signals and history."),
    "sim": ("sim.cli:command", "Deterministic simulation with fault injection."),
    "console": ("console.cli:command", "Live terminal console."),
    "serve": ("durable.serve.cli:command", "Durable Streams server over HTTP."),
    "bench": ("bench.cli:command", "Benchmarks against peer engines."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        entry = COMMANDS.get(name)
        if entry is None:
            return None
        target, help_text = entry
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or str(exc)

            @click.command(name=name, help=help_text, context_settings={"ignore_unknown_options": True})
            @click.argument("args", nargs=-1, type=click.UNPROCESSED)
            def unavailable(args: tuple[str, ...]) -> None:
                raise click.UsageError(
                    f"'durable {name}' needs {missing!r}, which is not installed "
                    "(pip install 'durable[test]' installs every extra)"
                )

            return unavailable
        cmd = getattr(module, attr)
        assert isinstance(cmd, click.Command)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


dsn_option = click.option("--dsn", envvar="DURABLE_DSN", default=None,
                          help="PostgreSQL DSN (default: $DURABLE_DSN, else the embedded server).")
schema_option = click.option("--schema", envvar="DURABLE_SCHEMA", default="durable", show_default=True,
                             help="PostgreSQL schema holding durable's tables.")


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run a trio coroutine for a command; durable errors become one line on stderr (exit 1, or 2 when
    the user's input was wrong), never a traceback."""
    import trio

    from .errors import DatabaseUnavailable, DurableError

    try:
        return trio.run(main)
    except DatabaseUnavailable as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except DurableError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="durable")
def main() -> None:
    """durable: durable state machines on PostgreSQL, for trio."""

