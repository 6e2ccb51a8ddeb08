"""The ``durable`` command. Subcommands live in their own modules and are imported only when used,
so ``durable --help`` stays fast and ``durable`` itself never imports Textual, the web stack or the
OpenTelemetry SDK.

One convention for every subcommand (docs/cli.md):

- ``--dsn``, ``--schema`` and ``--json`` are accepted before the subcommand (``durable --dsn URI ls``) or
  after it (``durable ls --dsn URI``); after wins, then before, then ``$DURABLE_DSN`` / ``$DURABLE_SCHEMA``,
  then the default. A command that has no use for one of them refuses it instead of ignoring it.
- A usage error (click's own validation included) is one ``error:`` line on stderr, exit status 2.
- A database that cannot be reached is one ``error:`` line, exit status 3.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, TypeVar

import click

T = TypeVar("T")

EXIT_FAILED = 1  # the command ran and reports a failure (a sim seed failed, a server-side error)
EXIT_USAGE = 2  # the input was wrong
EXIT_UNREACHABLE = 3  # the database could not be reached

# name -> ("module:attribute" of a click command, help line, extra that installs its dependencies)
COMMANDS: dict[str, tuple[str, str, str | None]] = {
    "demo": ("durable.demo:command", "Run a sample checkout workload on the embedded database.", None),
    "migrate": ("durable.cli_admin:migrate", "Create or upgrade the schema.", None),
    "db": ("durable.cli_admin:db", "Manage the embedded PostgreSQL (uri, status, stop).", None),
    "worker": ("durable.cli_admin:worker", "Run a worker for machines defined in a Python module.", None),
    "ls": ("durable.cli_ops:ls", "List instances (filters, keyset paging).", None),
    "show": ("durable.cli_ops:show", "Show one instance: state, inbox, children, history.", None),
    "tail": ("durable.cli_ops:tail", "Print history events from an offset, optionally following.", None),
    "signal": ("durable.cli_ops:signal", "Send a signal to an instance.", None),
    "wait": ("durable.cli_ops:wait", "Wait until instances end; print their results or errors.", None),
    "result": ("durable.cli_ops:result", "Print an instance's result once it ends (or its error).", None),
    "insert": ("durable.cli_ops:insert", "Insert an instance.", None),
    "retry": ("durable.cli_ops:retry", "Put a failed instance back to runnable.", None),
    "cancel": ("durable.cli_ops:cancel", "Cancel an instance.", None),
    "workers": ("durable.cli_ops:workers", "List registered workers.", None),
    "queues": ("durable.cli_ops:queues", "Queue saturation as text.", None),
    "gc": ("durable.cli_ops:gc", "Delete old terminal instances, their signals and history.", None),
    "schedules": ("durable.cli_ops:schedules", "List recurring schedules: last and next run.", None),
    "sim": ("durable.sim.cli:command", "Deterministic simulation with fault injection.", None),
    "console": ("durable.console.cli:command", "Live console, in the terminal or (--web) in a browser.", None),
    "serve": ("durable.serve.cli:command", "Durable Streams server over HTTP.", "serve"),
    "bench": ("durable.bench.cli:command", "Benchmarks against peer engines.", "bench"),
}

GLOBAL_FLAGS = {"dsn": "--dsn", "schema": "--schema", "as_json": "--json"}


class OneLineError(click.ClickException):
    """A usage error printed as one line (``error: ...``) with exit status 2."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]

    def show(self, file: IO[Any] | None = None) -> None:
        """Print ``error: <message>`` on stderr."""
        click.echo(f"error: {self.format_message()}", err=True)


def one_line(exc: click.ClickException) -> click.ClickException:
    """Any click error as one ``error:`` line: usage errors (bad option values, unknown options and
    commands, missing arguments) exit 2, other click errors keep their status."""
    from click.exceptions import NoArgsIsHelpError

    if isinstance(exc, (OneLineError, NoArgsIsHelpError)):
        return exc
    message = " ".join(exc.format_message().split())
    if isinstance(exc, click.UsageError):
        ctx = exc.ctx
        if ctx is not None and ctx.parent is not None:
            message = f"{ctx.command_path}: {message}"
        return OneLineError(message, EXIT_USAGE)
    return OneLineError(message, exc.exit_code)


def unavailable(name: str, help_text: str, missing: str, extra: str | None) -> click.Command:
    """A stand-in for a command whose optional dependencies are not installed: it says which extra
    installs them."""
    install = f"pip install 'durable[{extra}]'" if extra else "pip install -e . (or pip install durable)"

    @click.command(name=name, help=help_text, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def stand_in(args: tuple[str, ...]) -> None:
        raise OneLineError(f"'durable {name}' needs {missing!r}, which is not installed: {install}")

    return stand_in


def check_globals(ctx: click.Context, cmd: click.Command) -> None:
    """A global option given before a subcommand that has no such option is refused, not ignored."""
    if isinstance(cmd, click.Group):
        return
    root = ctx.find_root()
    accepted = {opt for p in cmd.params for opt in getattr(p, "opts", ())}
    for name, flag in GLOBAL_FLAGS.items():
        if root.params.get(name) and flag not in accepted:
            raise OneLineError(f"{ctx.command_path} {cmd.name}: {flag} does not apply to this command")


class LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every subcommand's name, sorted (no module imported)."""
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """The subcommand ``name``, its module imported now; a stand-in naming the missing package when
        that module cannot be imported (an optional extra not installed)."""
        entry = COMMANDS.get(name)
        if entry is None:
            return None
        target, help_text, extra = entry
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            return unavailable(name, help_text, getattr(exc, "name", None) or str(exc), extra)
        cmd = getattr(module, attr)
        assert isinstance(cmd, click.Command)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The help's command list, from the one-line helps of COMMANDS (no module imported)."""
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class DurableGroup(LazyGroup):
    """The root command: every click error below it becomes one line (see :func:`one_line`)."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        """click's context, a usage error turned into one line."""
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.ClickException as exc:
            raise one_line(exc) from None

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        """click's resolution, then the check that global options given after it apply to it."""
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None:
            check_globals(ctx, cmd)
        return name, cmd, rest

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, a click error turned into one line."""
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            raise one_line(exc) from None


class SubGroup(click.Group):
    """A group below the root (``durable db``): its leaves get the global-option check too."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        """click's resolution, then the check that global options given after it apply to it."""
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None:
            check_globals(ctx, cmd)
        return name, cmd, rest


# -- the global options, inherited by every subcommand -------------------------------------------------
def _root_value(ctx: click.Context, name: str) -> Any:
    root = ctx.find_root()
    return root.params.get(name) if root is not ctx else None


def inherit_global(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A callback for a command's own option of a global name: its value, else the one given before the
    command (``durable --dsn URI bench``)."""
    return value if value else (_root_value(ctx, param.name or "") or value)


def check_dsn(dsn: str, where: str) -> str:
    """A DSN asyncpg can use: a postgresql:// or postgres:// URI (a malformed one is a usage error, not an
    unreachable database)."""
    from urllib.parse import urlsplit

    try:
        scheme = urlsplit(dsn).scheme
    except ValueError:
        scheme = ""
    if scheme not in ("postgresql", "postgres"):
        shown = dsn if "@" not in dsn else dsn.split("://")[0] + "://…"
        raise click.BadParameter(
            f"{shown!r} is not a PostgreSQL URI (postgresql://user:password@host:port/db)", param_hint=where
        )
    return dsn


def _dsn_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value:
        return check_dsn(value, "'--dsn'")
    inherited = _root_value(ctx, "dsn")
    if inherited:
        return check_dsn(inherited, "'--dsn'")
    env = os.environ.get("DURABLE_DSN")
    return check_dsn(env, "$DURABLE_DSN") if env else None


def _schema_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    where = "'--schema'"
    if not value:
        value = _root_value(ctx, "schema")
    if not value:
        value, where = os.environ.get("DURABLE_SCHEMA") or None, "$DURABLE_SCHEMA"
    if not value:
        return DEFAULT_SCHEMA
    from .errors import SchemaError
    from .migrate import check_schema_name

    try:
        return check_schema_name(value)
    except SchemaError as exc:
        raise click.BadParameter(str(exc), param_hint=where) from None


def _json_callback(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    return bool(value or _root_value(ctx, "as_json"))


DEFAULT_SCHEMA = "durable"

dsn_option = click.option(
    "--dsn",
    default=None,
    callback=_dsn_callback,
    metavar="URI",
    help="PostgreSQL URI (default: $DURABLE_DSN, else the embedded server). Also accepted before the command.",
)
schema_option = click.option(
    "--schema",
    default=None,
    callback=_schema_callback,
    help=f"Schema holding durable's tables (default: $DURABLE_SCHEMA, else {DEFAULT_SCHEMA!r}). Also accepted "
    "before the command.",
)


def schema_option_with(help_text: str) -> Callable[[T], T]:
    """``--schema`` (inherited like :data:`schema_option`) with a command's own help text."""
    return click.option(
        "--schema",
        default=None,
        callback=_schema_callback,  # type: ignore[return-value]
        help=f"{help_text} Default: $DURABLE_SCHEMA, else {DEFAULT_SCHEMA!r}.",
    )


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    default=False,
    callback=_json_callback,
    help="Machine-readable JSON on stdout. Also accepted before the command.",
)


STDOUT = "-"


def _json_file_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return value if value is not None else (STDOUT if _root_value(ctx, "as_json") else None)


def json_file_option(what: str) -> Callable[[T], T]:
    """``--json`` for a command whose JSON may be long: alone (or before the command) it goes to stdout
    like everywhere else, ``--json PATH`` writes it to a file."""
    return click.option(  # type: ignore[return-value]
        "--json",
        "json_path",
        is_flag=False,
        flag_value=STDOUT,
        default=None,
        metavar="[PATH]",
        type=click.Path(dir_okay=False, allow_dash=True),
        callback=_json_file_callback,
        help=f"{what} as JSON: on stdout (--json, also accepted before the command), or into PATH.",
    )


def write_json(target: str, text: str) -> None:
    """``text`` to stdout (target ``-``) or to the file ``target``."""
    if target == STDOUT:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    else:
        from pathlib import Path

        Path(target).write_text(text)


# -- running a command ------------------------------------------------------------------------------
def fail(message: str, code: int) -> None:
    """Print ``error: <message>`` on stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run a trio coroutine for a command; durable errors become one line on stderr, never a traceback:
    exit 3 when the database cannot be reached, 2 for wrong input."""
    import trio

    from .errors import DatabaseUnavailable, DurableError

    try:
        return trio.run(main)
    except DatabaseUnavailable as exc:
        fail(str(exc), EXIT_UNREACHABLE)
        raise  # unreachable: fail exits
    except DurableError as exc:
        fail(str(exc), EXIT_USAGE)
        raise
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


@contextmanager
def telemetry(otlp: str | None = None, endpoint: str | None = None, service_name: str = "durable") -> Iterator[None]:
    """OpenTelemetry export for a command that runs steps, flushed at its end: ``--otlp`` (explicit), else
    the standard environment (``OTEL_TRACES_EXPORTER=otlp``, ``OTEL_EXPORTER_OTLP_ENDPOINT``,
    ``OTEL_EXPORTER_OTLP_PROTOCOL``, ``OTEL_SERVICE_NAME``...; see ``otel.from_environment``). Nothing is
    configured (and the SDK is not imported) when neither asks for it."""
    wanted_by_env = otlp is None and _otel_env_asks()
    if otlp is None and not wanted_by_env:
        if endpoint:
            raise OneLineError("--otlp-endpoint needs --otlp grpc or --otlp http")
        yield
        return
    what = f"--otlp {otlp}" if otlp else "the OTEL_* environment"
    try:
        from opentelemetry import sdk  # noqa: F401  (the SDK is the optional part)

        import durable.otel as otel
    except ImportError as exc:
        raise OneLineError(f"{what} needs the OpenTelemetry SDK ({exc}): pip install 'durable[otel]'") from None
    try:
        if otlp is not None:
            configured: Any = otel.configure(service_name, otlp=otlp, endpoint=endpoint)
        else:
            configured = otel.from_environment(os.environ.get("OTEL_SERVICE_NAME") or service_name)
    except ImportError as exc:
        raise OneLineError(f"{what} needs the OpenTelemetry SDK ({exc}): pip install 'durable[otel]'") from None
    except Exception as exc:  # otel.ConfigurationError and SDK errors: a bad setting, not a crash
        raise OneLineError(f"{what}: {exc}") from None
    try:
        yield
    finally:
        shutdown = getattr(configured, "shutdown", None)
        if callable(shutdown):
            shutdown()


def _otel_env_asks() -> bool:
    """Whether the standard OpenTelemetry variables ask for exported traces (the same reading as
    ``otel.from_environment``, without importing anything)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip().lower() for e in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()}
    if exporters:
        return bool(exporters - {"none"})
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


@click.group(cls=DurableGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="durable")
@click.option(
    "--dsn",
    default=None,
    metavar="URI",
    help="PostgreSQL URI for the command (default: $DURABLE_DSN, else the embedded server).",
)
@click.option(
    "--schema", default=None, help=f"Schema for the command (default: $DURABLE_SCHEMA, else {DEFAULT_SCHEMA!r})."
)
@click.option("--json", "as_json", is_flag=True, default=False, help="Machine-readable JSON on stdout.")
def main(dsn: str | None, schema: str | None, as_json: bool) -> None:
    """durable: durable state machines on PostgreSQL, for trio.

    --dsn, --schema and --json may come before or after the command. Usage errors exit 2, an unreachable
    database exits 3 (docs/cli.md). Shell completion: eval "$(_DURABLE_COMPLETE=bash_source durable)"."""
