"""Operator commands: ``durable ls|show|tail|signal|insert|retry|cancel|workers|queues|gc``.

Tables (rich) for people, ``--json`` for scripts. A wrong argument (unknown id, malformed JSON, unknown
status, bad duration) is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from .cli import OneLineError, SubGroup, dsn_option, json_option, run, schema_option
from .errors import DurableError, SchemaError
from .outcomes import TERMINAL
from .workers import GONE_AFTER, worker_state

if TYPE_CHECKING:
    from .filters import InstanceFilter

T = TypeVar("T")


# -- plumbing shared with cli_admin -------------------------------------------------------------------
# click errors are made one line by the root command (durable.cli.DurableGroup); these names stay for
# the command modules that use them.
Command = click.Command
Group = SubGroup


def execute(body: Callable[[], Awaitable[T]]) -> T:
    """Run a command body under trio (durable.cli.run); a server-side error is one line, exit 1."""
    from ._pg import PostgresError  # the driver, only once a command runs

    async def main() -> T:
        try:
            return await body()
        except PostgresError as exc:
            click.echo(f"error: PostgreSQL: {exc}", err=True)
            sys.exit(1)

    return run(main)


@asynccontextmanager
async def connect(dsn: str | None, schema: str) -> AsyncIterator[Any]:
    """A small pool on an existing durable schema (never creates or migrates it)."""
    import durable

    async with durable.connect(dsn, schema=schema, migrate=False, min_size=1, max_size=3) as db:
        if await db.migrated_version() == 0:
            raise SchemaError(f"no durable schema {schema!r} in this database: run `durable migrate` first")
        yield db


def parse_json(text: str | None, what: str) -> Any:
    """The value of JSON ``text`` (None stays None); a one-line usage error naming ``what`` otherwise."""
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise OneLineError(f"{what} is not valid JSON: {exc}") from None


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, what: str) -> float:
    """Seconds from '90', '90s', '10m', '2h', '7d', '1w', '250ms'."""
    m = _DURATION.match(text)
    if m is None:
        raise OneLineError(f"{what}: {text!r} is not a duration (like 90s, 10m, 2h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_attrs(given: tuple[str, ...] | None, what: str = "--attr") -> dict[str, str] | None:
    """Repeated ``--attr NAME=VALUE`` options as an attributes filter (None when none is given); the name is
    what comes before the first '='."""
    if not given:
        return None
    from .errors import InvalidArgument
    from .limits import check_attributes

    out: dict[str, str] = {}
    for item in given:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise OneLineError(f"{what} takes NAME=VALUE (e.g. tenant=acme), not {item!r}")
        if name in out and out[name] != value:
            raise OneLineError(f"{what}: {name!r} given twice with different values ({out[name]!r}, {value!r})")
        out[name] = value
    try:
        return check_attributes(out, what)
    except InvalidArgument as exc:
        raise OneLineError(str(exc)) from None


def parse_when(text: str | None, what: str) -> datetime | timedelta | None:
    """An ISO timestamp (naive = UTC) or a duration meaning 'that long ago'."""
    if text is None:
        return None
    if _DURATION.match(text):
        return timedelta(seconds=parse_duration(text, what))
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise OneLineError(f"{what}: {text!r} is neither an ISO timestamp nor a duration (10m, 2h)") from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def emit_json(value: Any) -> None:
    """Write ``value`` to stdout as one line of JSON (datetimes as ISO 8601, records by their to_json)."""
    sys.stdout.write(orjson.dumps(value, default=_json_default).decode() + "\n")
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "to_json"):
        return value.to_json()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def console() -> Any:
    """stdout for tables; piped output is not cut to 80 columns (COLUMNS still wins)."""
    from rich.console import Console

    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 240
    return Console(highlight=False, soft_wrap=False, width=wide)


def short(value: Any, width: int = 40) -> str:
    """``value`` as text (JSON unless a string), cut to ``width`` characters with an ellipsis."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


def ago(when: datetime | None, now: datetime | None = None) -> str:
    """How long before ``now`` ``when`` was (``5s ago``), or how far ahead (``in 2m``); empty for None."""
    if when is None:
        return ""
    secs = ((now or datetime.now(UTC)) - when).total_seconds()
    future = secs < 0
    secs = abs(secs)
    if secs < 1:
        text = f"{secs * 1000:.0f}ms"
    elif secs < 120:
        text = f"{secs:.0f}s"
    elif secs < 7200:
        text = f"{secs / 60:.0f}m"
    elif secs < 172800:
        text = f"{secs / 3600:.0f}h"
    else:
        text = f"{secs / 86400:.0f}d"
    return f"in {text}" if future else f"{text} ago"


STATUS_STYLE = {
    "done": "green",
    "failed": "red",
    "cancelled": "magenta",
    "executing": "cyan",
    "runnable": "yellow",
    "awaiting_signal": "blue",
    "awaiting_children": "blue",
}


def styled(status: str) -> str:
    """``status`` in rich markup, coloured by what it means."""
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


# -- ls ---------------------------------------------------------------------------------------------
@click.command(cls=Command)
@dsn_option
@schema_option
@click.option("--id", "ids", type=int, multiple=True, help="Instance id (repeatable).")
@click.option(
    "--status", "statuses", multiple=True, help="Status or comma list (repeatable); also terminal, active, awaiting."
)
@click.option("--machine", help="Machine name.")
@click.option("--prefix", "machine_prefix", help="Machine-name prefix (a family, e.g. 'billing.').")
@click.option("--version", type=int, help="Machine version.")
@click.option("--queue", help="Queue name.")
@click.option("--partition-key", help="Partition key.")
@click.option("--unique-key", help="Unique key.")
@click.option("--parent", "parent_id", type=int, help="Parent instance id.")
@click.option("--inserted-after", help="ISO timestamp or duration ago (10m, 2h, 7d).")
@click.option("--inserted-before", help="ISO timestamp or duration ago.")
@click.option("--updated-after", help="ISO timestamp or duration ago.")
@click.option("--updated-before", help="ISO timestamp or duration ago.")
@click.option("--state", help="JSON the state must contain, e.g. '{\"order\": 42}'.")
@click.option(
    "--attr",
    "attrs",
    multiple=True,
    metavar="NAME=VALUE",
    help="An attribute the instance carries (repeatable: all must match), e.g. tenant=acme.",
)
@click.option("--order", default="id", show_default=True, type=click.Choice(["id", "-id", "updated", "-updated"]))
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--after", help="Cursor printed with the previous page.")
@json_option
def ls(
    dsn: str | None,
    schema: str,
    ids: tuple[int, ...],
    statuses: tuple[str, ...],
    state: str | None,
    inserted_after: str | None,
    inserted_before: str | None,
    updated_after: str | None,
    updated_before: str | None,
    as_json: bool,
    **filters: Any,
) -> None:
    """List instances matching every filter, one keyset page at a time."""
    order, limit, after = filters.pop("order"), filters.pop("limit"), filters.pop("after")
    flt = instance_filter(
        {
            **filters,
            "ids": ids,
            "statuses": statuses,
            "state": state,
            "inserted_after": inserted_after,
            "inserted_before": inserted_before,
            "updated_after": updated_after,
            "updated_before": updated_before,
        }
    )

    async def body() -> None:
        async with connect(dsn, schema) as db:
            page = await db.query(flt, order=order, limit=limit, after=after)
        if as_json:
            from .records import LISTED

            emit_json({"items": [r.to_json(LISTED) for r in page.items], "next": page.next})
            return
        from rich.table import Table

        table = Table(box=None, header_style="bold")
        for col in ("id", "machine", "step", "status", "queue", "att", "updated", "state"):
            table.add_column(col, justify="right" if col in ("id", "att") else "left", no_wrap=col != "state")
        now = datetime.now(UTC)
        for r in page.items:
            name = r.machine if r.version == 1 else f"{r.machine} v{r.version}"
            table.add_row(
                str(r.id),
                name,
                r.step,
                styled(r.status),
                r.queue,
                str(r.attempt),
                ago(r.updated_at, now),
                short(r.state),
            )
        out = console()
        if page.items:
            out.print(table)
        else:
            out.print("no instances match")
        if page.next:
            click.echo(f"more: --after {page.next}", err=True)

    execute(body)


# -- instance references: an id, or key:KEY --------------------------------------------------------
class InstanceRef(click.ParamType[Any]):
    """An instance id, or ``key:KEY``: the instance unique key KEY addresses (``Database.by_key``)."""

    name = "ID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """``(id, None)`` for an id, ``(None, KEY)`` for ``key:KEY``; a usage error otherwise."""
        if isinstance(value, tuple):
            return value
        text = str(value)
        if text.startswith("key:"):
            if len(text) == 4:
                self.fail("key: needs a key after it (key:order:42)", param, ctx)
            return (None, text[4:])
        try:
            return (int(text), None)
        except ValueError:
            self.fail(f"{text!r} is not a valid integer: give an instance id, or key:KEY", param, ctx)


INSTANCE = InstanceRef()


async def resolve(db: Any, ref: tuple[int | None, str | None]) -> int:
    """The id an InstanceRef names (NoSuchInstance for a key no instance ever had)."""
    iid, key = ref
    return int(await db.by_key(key, iid))


# -- show -------------------------------------------------------------------------------------------
@click.command(cls=Command)
@dsn_option
@schema_option
@click.argument("ref", metavar="ID", type=INSTANCE)
@click.option("--no-history", is_flag=True, help="Leave the history out.")
@json_option
def show(dsn: str | None, schema: str, ref: tuple[int | None, str | None], no_history: bool, as_json: bool) -> None:
    """One instance (ID: an id, or key:KEY for the instance holding unique key KEY, else the latest that had
    it): state, step, status, lease, awaited signal, inbox, children, result or error, history."""

    async def body() -> None:
        async with connect(dsn, schema) as db:
            instance_id = await resolve(db, ref)
            inst = await db.get(instance_id)
            history = [] if no_history else await db.history(instance_id)
            values = await db.values.list(instance_id)  # names, sizes and digests: never the bytes
        if as_json:
            data = {k: getattr(inst, k) for k in inst.__dataclass_fields__}
            emit_json(
                {
                    **data,
                    "values": [
                        {
                            "name": v.name,
                            "size": v.size,
                            "sha256": v.sha256,
                            "lease_token": v.lease_token,
                            "written_at": v.written_at,
                        }
                        for v in values
                    ],
                    "history": [{k: getattr(e, k) for k in e.__dataclass_fields__} for e in history],
                }
            )
            return
        from rich.table import Table

        out = console()
        now = datetime.now(UTC)
        facts = Table.grid(padding=(0, 2))
        facts.add_column(style="bold")
        facts.add_column()
        name = f"{inst.machine} v{inst.version}"
        rows: list[tuple[str, str]] = [
            ("instance", f"{inst.id}  {name}"),
            ("status", styled(inst.status) + ("  (cancel requested)" if inst.cancel_requested else "")),
            ("step", f"{inst.step}  attempt {inst.attempt}"),
            ("queue", f"{inst.queue}  priority {inst.priority}"),
        ]
        if inst.status == "runnable":  # a future time: a durable timer, a retry's delay or a scheduled insert
            rows.append(
                (
                    "wakes" if inst.eligible_at > now else "eligible",
                    f"{inst.eligible_at.isoformat()} ({ago(inst.eligible_at, now)})"
                    + ("  its await timed out" if inst.timed_out else ""),
                )
            )
        if inst.worker_id:
            rows.append(
                ("lease", f"{inst.worker_id} until {inst.lease_expires_at} ({ago(inst.lease_expires_at, now)})")
            )
        if inst.awaits:
            rows.append(("awaits", ", ".join(inst.awaits_any or [inst.awaits])))
        if inst.timeout_at is not None and inst.status == "awaiting_signal":
            rows.append(
                (
                    "timeout",
                    f"{inst.timeout_at.isoformat()} ({ago(inst.timeout_at, now)}), then step "
                    f"{inst.timeout_step or inst.step}",
                )
            )
        if inst.partition_key:
            rows.append(("partition", inst.partition_key))
        if inst.unique_key:
            rows.append(("unique", f"{inst.unique_key} in {','.join(inst.unique_scope)}"))
        if inst.attributes:
            rows.append(("attributes", " ".join(f"{k}={v}" for k, v in inst.attributes.items())))
        if inst.parent_id is not None:
            rows.append(("parent", str(inst.parent_id)))
        if inst.children or inst.children_pending:
            rows.append(("children", f"{len(inst.children)} ({inst.children_pending} pending)"))
        rows.append(("state", orjson.dumps(inst.state).decode()))
        if inst.result is not None or inst.status == "done":
            rows.append(("result", orjson.dumps(inst.result).decode()))
        if inst.last_error:
            rows.append(("error", inst.last_error))
        rows.append(("inserted", f"{inst.inserted_at.isoformat()} ({ago(inst.inserted_at, now)})"))
        rows.append(("updated", f"{inst.updated_at.isoformat()} ({ago(inst.updated_at, now)})"))
        for k, v in rows:
            facts.add_row(k, v)
        out.print(facts)
        if inst.inbox:
            inbox = Table(title="inbox", title_justify="left", box=None, header_style="bold")
            for col in ("signal", "name", "payload", "dedup", "received"):
                inbox.add_column(col)
            for s in inst.inbox:
                inbox.add_row(
                    str(s["id"]), s["name"], short(s["payload"], 60), s["dedup_key"] or "", ago(s["inserted_at"], now)
                )
            out.print(inbox)
        if inst.children:
            kids = Table(title="children", title_justify="left", box=None, header_style="bold")
            for col in ("id", "machine", "step", "status", "result / error"):
                kids.add_column(col)
            for c in inst.children:
                outcome = c["last_error"] if c["status"] in ("failed", "cancelled") else c["result"]
                kids.add_row(
                    str(c["id"]),
                    c["machine"],
                    c["step"],
                    styled(c["status"]),
                    short(outcome, 60) if outcome is not None else "",
                )
            out.print(kids)
        if values:
            named = Table(title="values", title_justify="left", box=None, header_style="bold")
            for col in ("name", "size", "sha256", "written"):
                named.add_column(col, justify="right" if col == "size" else "left")
            for v in values:
                named.add_row(v.name, f"{v.size:,}", v.sha256, ago(v.written_at, now))
            out.print(named)
        if history:
            hist = Table(title="history", title_justify="left", box=None, header_style="bold")
            for col in ("#", "at", "event", "step", "att", "status", "worker", "detail"):
                hist.add_column(col, no_wrap=col != "detail")
            for e in history:
                hist.add_row(
                    str(e.id),
                    e.at.strftime("%H:%M:%S.%f")[:-3],
                    e.event,
                    e.step or "",
                    "" if e.attempt is None else str(e.attempt),
                    styled(e.status or ""),
                    e.worker_id or "",
                    short(e.detail, 60) if e.detail is not None else "",
                )
            out.print(hist)

    execute(body)


# -- wait -------------------------------------------------------------------------------------------


@click.command(cls=Command)
@dsn_option
@schema_option
@click.argument("instance_ids", metavar="ID...", type=int, nargs=-1, required=True)
@click.option(
    "--timeout", default=60.0, show_default=True, type=click.FloatRange(0), help="Seconds to wait for (0: look once)."
)
@click.option("--poll", default=0.2, show_default=True, type=click.FloatRange(0.01, 60), help="Seconds between looks.")
@json_option
def wait(
    dsn: str | None, schema: str, instance_ids: tuple[int, ...], timeout: float, poll: float, as_json: bool
) -> None:
    """Wait until every ID has ended (done, failed or cancelled) and print each outcome: the result, or the
    error. Exit 0 when all are done, 1 when one failed or was cancelled or is still running at --timeout."""

    async def body() -> None:
        import trio

        async with connect(dsn, schema) as db:
            deadline = trio.current_time() + timeout
            latest: dict[int, Any] = {}
            while True:
                for iid in instance_ids:
                    if iid not in latest or latest[iid].status not in TERMINAL:
                        latest[iid] = await db.get(iid)
                left = deadline - trio.current_time()
                if all(o.status in TERMINAL for o in latest.values()) or left <= 0:
                    break
                await trio.sleep(min(poll, left))
        outcomes: list[Any] = [latest[i] for i in instance_ids]
        if as_json:
            emit_json(
                [
                    {
                        "id": o.id,
                        "status": o.status,
                        "result": o.result,
                        "error": o.last_error,
                        "ended": o.status in TERMINAL,
                    }
                    for o in outcomes
                ]
            )
        else:
            for o in outcomes:
                if o.status == "done":
                    click.echo(f"{o.id}: done {orjson.dumps(o.result).decode()}")
                elif o.status in TERMINAL:
                    click.echo(f"{o.id}: {o.status} {o.last_error or ''}".rstrip())
            for o in outcomes:
                if o.status not in TERMINAL:
                    click.echo(f"error: instance {o.id} is still {o.status} (at {o.step}) after {timeout:g}s", err=True)
        if any(o.status != "done" for o in outcomes):
            sys.exit(1)

    execute(body)


# -- result -----------------------------------------------------------------------------------------
@click.command(cls=Command)
@dsn_option
@schema_option
@click.argument("ref", metavar="ID", type=INSTANCE)
@click.option(
    "--wait",
    "wait_for",
    metavar="SECONDS",
    help="Wait up to this long for it to end (90, 90s, 10m, 2h; default: look once).",
)
@json_option
def result(
    dsn: str | None, schema: str, ref: tuple[int | None, str | None], wait_for: str | None, as_json: bool
) -> None:
    """Print the result of instance ID (an id, or key:KEY) once it has ended, woken by the commit that ends
    it (Database.result). Exit 0 when it is done, 1 when it failed, was cancelled or had not ended within
    --wait (the error on stderr)."""
    from .errors import InstanceCancelled, InstanceFailed

    seconds = parse_duration(wait_for, "--wait") if wait_for is not None else 0.0

    async def body() -> None:
        async with connect(dsn, schema) as db:
            iid = await resolve(db, ref)
            value, error = None, None
            try:
                value = await db.result(iid, timeout=seconds)
                status = "done"
            except (InstanceFailed, InstanceCancelled) as exc:
                status = "failed" if isinstance(exc, InstanceFailed) else "cancelled"
                error = exc.last_error
            except TimeoutError:
                status = (await db.get(iid)).status
        if as_json:
            emit_json({"id": iid, "status": status, "result": value, "error": error, "ended": status in TERMINAL})
        elif status == "done":
            click.echo(orjson.dumps(value).decode())
        elif status == "failed":
            click.echo(f"error: instance {iid} failed: {error}", err=True)
        elif status == "cancelled":
            click.echo(f"error: instance {iid} was cancelled: {error}", err=True)
        else:
            waited = f"after {seconds:g}s" if seconds else "(give --wait SECONDS to wait for it)"
            click.echo(f"error: instance {iid} is still {status} {waited}", err=True)
        if status != "done":
            sys.exit(1)

    execute(body)


# -- tail -------------------------------------------------------------------------------------------
@click.command(cls=Command)
@dsn_option
@schema_option
@click.option(
    "--from",
    "start",
    default="-1",
    show_default=True,
    help="Offset to start after: -1 (the beginning), now (the end) or a printed offset.",
)
@click.option("--follow", "-f", is_flag=True, help="Keep waiting for new events.")
@click.option("--instance", type=int, help="Only this instance's events.")
@click.option("--machine", help="Only this machine's events.")
@click.option(
    "--attr",
    "attrs",
    multiple=True,
    metavar="NAME=VALUE",
    help="Only events of instances carrying this attribute (repeatable), e.g. tenant=acme.",
)
@click.option(
    "--poll",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0.01, 60),
    help="Seconds between polls with --follow.",
)
@click.option("--limit", type=click.IntRange(1), help="Stop after this many events.")
@json_option
def tail(
    dsn: str | None,
    schema: str,
    start: str,
    follow: bool,
    instance: int | None,
    machine: str | None,
    attrs: tuple[str, ...],
    poll: float,
    limit: int | None,
    as_json: bool,
) -> None:
    """Print history events in commit order; each line starts with its offset (resume with --from)."""
    if start not in ("-1", "now") and not _valid_offset(start):
        raise OneLineError(f"--from: malformed offset {start!r} (use -1, now, or an offset printed by tail)")
    attributes = parse_attrs(attrs)

    async def body() -> None:
        n = 0
        async with (
            connect(dsn, schema) as db,
            aclosing(
                db.tail(
                    after=start, follow=follow, instance=instance, machine=machine, attributes=attributes, poll=poll
                )
            ) as events,
        ):
            async for ev in events:
                if as_json:
                    emit_json(ev.to_json())
                else:
                    detail = "" if ev.detail is None else " " + orjson.dumps(ev.detail).decode()
                    click.echo(
                        f"{ev.offset} {ev.at.isoformat(timespec='milliseconds')} "
                        f"{ev.instance_id} {ev.machine} {ev.event} {ev.step or '-'} "
                        f"{ev.status or '-'}{detail}"
                    )
                    sys.stdout.flush()
                n += 1
                if limit is not None and n >= limit:
                    return

    execute(body)


def _valid_offset(text: str) -> bool:
    from .ops import InvalidArgument, parse_offset

    try:
        parse_offset(text)
    except InvalidArgument:
        return False
    return True


# -- nudges -----------------------------------------------------------------------------------------
@click.command(cls=Command)
@dsn_option
@schema_option
@click.argument("ref", metavar="ID", type=INSTANCE)
@click.argument("name")
@click.option("--payload", help="JSON payload (default null).")
@click.option("--dedup", "dedup_key", help="Dedup key: a second signal with the same key is dropped.")
@json_option
def signal(
    dsn: str | None,
    schema: str,
    ref: tuple[int | None, str | None],
    name: str,
    payload: str | None,
    dedup_key: str | None,
    as_json: bool,
) -> None:
    """Send signal NAME to instance ID (an id, or key:KEY for the instance unique key KEY addresses)."""
    value = parse_json(payload, "--payload")

    async def body() -> None:
        async with connect(dsn, schema) as db:
            instance_id = await resolve(db, ref)
            sid = await db.signal(instance_id, name, value, dedup_key=dedup_key)
            status = (await db.get(instance_id)).status
        if as_json:
            emit_json({"signal_id": sid, "duplicate": sid is None, "status": status})
        elif sid is None:
            click.echo(f"duplicate: dedup key {dedup_key!r} was already delivered to {instance_id} ({status})")
        else:
            click.echo(f"signal {sid} delivered to {instance_id} ({status})")

    execute(body)


@click.command(cls=Command)
@dsn_option
@schema_option
@click.argument("machine")
@click.option("--state", default="{}", show_default=True, help="Initial state (JSON).")
@click.option("--step", help="First step (default: the module's definition; required without --module).")
@click.option("--module", help="Import this module and use its machine definition (initial step, queue).")
@click.option("--version", type=click.IntRange(1), help="Machine version (default 1, or the module's latest).")
@click.option("--queue", help="Queue (default: the module's definition; required without --module).")
@click.option("--priority", type=int, help="Lower runs earlier (default 0).")
@click.option("--partition-key", help="At most one executing step per key.")
@click.option("--unique-key", help="Skip the insert when a live instance holds this key.")
@click.option("--schedule-in", help="Delay before the first step (90s, 10m, 2h).")
@click.option(
    "--attr",
    "attrs",
    multiple=True,
    metavar="NAME=VALUE",
    help="An attribute to filter on later (durable ls --attr), e.g. tenant=acme (repeatable).",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the new id (id=$(durable insert ... -q)).")
@json_option
def insert(
    dsn: str | None,
    schema: str,
    machine: str,
    state: str,
    step: str | None,
    module: str | None,
    version: int | None,
    queue: str | None,
    priority: int | None,
    partition_key: str | None,
    unique_key: str | None,
    schedule_in: str | None,
    attrs: tuple[str, ...],
    quiet: bool,
    as_json: bool,
) -> None:
    """Insert an instance of MACHINE. The CLI has no registry: give --module (the machine's definition:
    first step, queue, state type), or name the first step and the queue with --step and --queue."""
    value = parse_json(state, "--state")
    attributes = parse_attrs(attrs)
    delay = parse_duration(schedule_in, "--schedule-in") if schedule_in else None
    machines = load_machines(module) if module else []
    known = [m for m in machines if m.name == machine and (version is None or m.version == version)]
    if module and not known:
        defined = ", ".join(sorted(f"{m.name} v{m.version}" for m in machines)) or "none"
        raise OneLineError(
            f"module {module!r} defines no machine {machine!r}"
            f"{'' if version is None else f' version {version}'} (it defines: {defined})"
        )
    if not module and (step is None or queue is None):
        # without a definition, a typo would land on some default queue and wait there forever
        missing = " and ".join(f for f, v in (("--step", step), ("--queue", queue)) if v is None)
        raise OneLineError(
            f"no definition of machine {machine!r}: give --module MODULE (where it is defined), "
            f"or {missing} to insert it by name"
        )
    if known:
        latest = max(known, key=lambda m: m.version)
        first_step, target_queue, inserted_version = step or latest.initial, queue or latest.queue, latest.version
    else:
        assert step is not None and queue is not None
        first_step, target_queue, inserted_version = step, queue, version or 1

    async def body() -> None:
        async with connect(dsn, schema) as db:
            for m in machines:
                if (m.name, m.version) not in db.registry:
                    db.registry.add(m)
            iid = await db.insert(
                machine,
                value,
                step=step,
                version=version,
                queue=queue,
                priority=priority,
                partition_key=partition_key,
                unique_key=unique_key,
                schedule_in=delay,
                attributes=attributes,
            )
        # what was inserted, not what the row holds now: a worker may already have moved it on
        if as_json:
            emit_json(
                {
                    "id": iid,
                    "duplicate": iid is None,
                    "queue": target_queue if iid else None,
                    "step": first_step if iid else None,
                }
            )
        elif iid is None:
            if not quiet:
                click.echo(f"duplicate: unique key {unique_key!r} is held by a live instance; nothing inserted")
        elif quiet:
            click.echo(str(iid))
        else:
            click.echo(f"inserted {iid} ({machine} v{inserted_version} at {first_step} on queue {target_queue})")

    execute(body)


def load_machines(module_name: str) -> list[Any]:
    """The machines (Machine subclasses and @job classes) a module defines or imports."""
    from .machine import Machine

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `durable worker examples.checkout` from the project folder
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise OneLineError(f"cannot import module {module_name!r}: {exc}") from None
    except (DurableError, ValueError) as exc:  # ValueError: e.g. a durable.Schedule it defines is refused
        raise OneLineError(f"module {module_name!r}: {exc}") from None
    found: list[Any] = []
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, Machine)
            and value is not Machine
            and getattr(value, "steps", None)
            and value not in found
        ):
            found.append(value)
    return found


def load_schedules(module_name: str) -> list[Any]:
    """The recurring schedules a module defines: its ``durable.Schedule`` values and the items of a
    module-level ``schedules`` list (`durable worker` runs them)."""
    from .schedules import Schedule

    module = importlib.import_module(module_name)
    listed = getattr(module, "schedules", None)
    found: list[Any] = [v for v in vars(module).values() if isinstance(v, Schedule)]
    if isinstance(listed, list | tuple):
        found += [v for v in listed if isinstance(v, Schedule)]
    return list({id(s): s for s in found}.values())


def bulk_filters(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The filters of ``durable ls`` for a bulk cancel or retry (no order, limit or cursor: it pages itself)."""
    options = [
        click.option(
            "--status",
            "statuses",
            multiple=True,
            help="Status or comma list (runnable, failed, ..., or terminal/active/awaiting).",
        ),
        click.option("--machine", help="Machine name."),
        click.option("--prefix", "machine_prefix", help="Machine-name prefix (a family, e.g. 'billing.')."),
        click.option("--version", type=int, help="Machine version."),
        click.option("--queue", help="Queue name."),
        click.option("--partition-key", help="Partition key."),
        click.option("--unique-key", help="Unique key."),
        click.option("--parent", "parent_id", type=int, help="Parent instance id."),
        click.option("--inserted-after", help="ISO timestamp or duration ago (10m, 2h, 7d)."),
        click.option("--inserted-before", help="ISO timestamp or duration ago."),
        click.option("--updated-after", help="ISO timestamp or duration ago."),
        click.option("--updated-before", help="ISO timestamp or duration ago."),
        click.option("--state", help="JSON the state must contain, e.g. '{\"order\": 42}'."),
        click.option(
            "--attr",
            "attrs",
            multiple=True,
            metavar="NAME=VALUE",
            help="An attribute the instance carries (repeatable: all must match), e.g. tenant=acme.",
        ),
        click.option("--yes", "-y", is_flag=True, help="Do not ask before a bulk change (needed without a terminal)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def instance_filter(given: dict[str, Any]) -> InstanceFilter:
    """The :class:`~durable.InstanceFilter` of the filter options of ``durable ls`` / ``cancel`` / ``retry``
    (``statuses`` and ``ids`` as click gives them, times and ``state`` as text); a bad one is a usage error
    naming its option."""
    from .errors import InvalidArgument
    from .filters import InstanceFilter, parse_statuses

    try:
        status = parse_statuses(",".join(given["statuses"])) if given["statuses"] else None
    except InvalidArgument as exc:
        raise OneLineError(f"--status: {exc}") from None
    state = parse_json(given["state"], "--state") if given["state"] is not None else None
    if state is not None and not isinstance(state, (dict, list)):
        raise OneLineError("--state must be a JSON object, e.g. '{\"order\": 42}'")
    times = {
        name: parse_when(given[name], "--" + name.replace("_", "-"))
        for name in ("inserted_after", "inserted_before", "updated_after", "updated_before")
    }
    try:
        return InstanceFilter(
            ids=(tuple(given["ids"]) or None) if "ids" in given else None,
            status=status,
            machine=given["machine"],
            machine_prefix=given["machine_prefix"],
            version=given["version"],
            queue=given["queue"],
            partition_key=given["partition_key"],
            unique_key=given["unique_key"],
            parent_id=given["parent_id"],
            state=state,
            attributes=parse_attrs(given.get("attrs")),
            **times,
        )
    except InvalidArgument as exc:
        raise OneLineError(str(exc)) from None


def bulk_query(command: str, instance_id: int | None, given: dict[str, Any]) -> InstanceFilter | None:
    """The filter of a bulk ``cancel``/``retry`` (None: one instance by ID). An ID and filters together, or
    neither, is a usage error."""
    used = {k: v for k, v in given.items() if v not in (None, ())}
    if instance_id is not None:
        if used:
            flags = ", ".join(
                "--" + k.replace("_", "-").replace("statuses", "status").replace("attrs", "attr") for k in used
            )
            raise OneLineError(f"{command} takes an ID or filters, not both (got ID {instance_id} and {flags})")
        return None
    if not used:
        raise OneLineError(f"{command} needs an ID or at least one filter (--status, --machine, --queue, ...)")
    return instance_filter(given)


async def confirm_bulk(db: Any, flt: InstanceFilter, verb: str, note: str, yes: bool, as_json: bool) -> int:
    """Count what a bulk change would touch and say it; ask on a terminal unless ``yes``. Returns the count
    (0: nothing to do). Without a terminal and without --yes: refused (exit 2), nothing changed."""
    from .errors import InvalidArgument
    from .ops import count

    n = await count(db, flt)
    if n == 0:
        return 0
    what = f"{n} instance{'s' if n != 1 else ''}"
    if yes:
        click.echo(f"{what} match: {verb} them{note}", err=True)
        return n
    if not sys.stdin.isatty():
        raise InvalidArgument(f"{what} match: pass --yes to {verb} them (no terminal to confirm on); nothing changed")
    if not click.confirm(f"{what} match. {verb.capitalize()} them{note}?", err=True, default=False):
        click.echo("nothing changed", err=True)
        sys.exit(1)
    return n


@click.command(cls=Command)
@dsn_option
@schema_option
@click.argument("instance_id", metavar="[ID]", type=int, required=False)
@bulk_filters
@json_option
def retry(dsn: str | None, schema: str, instance_id: int | None, yes: bool, as_json: bool, **given: Any) -> None:
    """Put a failed (or cancelled) instance back to runnable at the step where it ended; with filters
    instead of an ID (durable retry --status failed --machine X), every match, after a confirmation."""
    filters = bulk_query("retry", instance_id, given)

    async def bulk(flt: InstanceFilter) -> None:
        async with connect(dsn, schema) as db:
            matched = await confirm_bulk(db, flt, "retry", " (the failed and cancelled ones)", yes, as_json)
            result = await db.retry_many(flt) if matched else None
        if as_json:
            from .ops import Bulk

            emit_json((result or Bulk()).to_json())  # nothing matched: the empty report
        elif result is None:
            click.echo("no instances match")
        else:
            click.echo(
                f"retried {result.changed} of {result.matched} matched (skipped {result.skipped}: not "
                "failed or cancelled, or their unique key is held)"
            )

    async def body() -> None:
        if filters is not None:
            return await bulk(filters)
        assert instance_id is not None
        async with connect(dsn, schema) as db:
            before = (await db.get(instance_id)).status
            after = await db.retry(instance_id)
        if as_json:
            emit_json({"id": instance_id, "before": before, "after": after})
        elif before == after:
            click.echo(
                f"error: instance {instance_id} is {after}: only failed or cancelled instances can be retried", err=True
            )
            sys.exit(2)
        else:
            click.echo(f"{instance_id}: {before} -> {after}")

    execute(body)


@click.command(cls=Command)
@dsn_option
@schema_option
@click.argument("instance_id", metavar="[ID]", type=int, required=False)
@click.option("--reason", default="cancelled by operator", show_default=True)
@bulk_filters
@json_option
def cancel(
    dsn: str | None, schema: str, instance_id: int | None, reason: str, yes: bool, as_json: bool, **given: Any
) -> None:
    """Cancel an instance and its live descendants: idle ones at once, executing ones at their worker's next
    heartbeat (their step is cancelled; on_cancel runs). With filters instead of an ID (durable cancel
    --status runnable --machine X), every match, after a confirmation."""
    filters = bulk_query("cancel", instance_id, given)

    async def bulk(flt: InstanceFilter) -> None:
        async with connect(dsn, schema) as db:
            matched = await confirm_bulk(db, flt, "cancel", " (and their live descendants)", yes, as_json)
            result = await db.cancel_many(reason, flt) if matched else None
        if as_json:
            from .ops import Bulk

            emit_json((result or Bulk()).to_json())  # nothing matched: the empty report
        elif result is None:
            click.echo("no instances match")
        else:
            click.echo(
                f"cancelled {result.changed} (with descendants), cancel requested for {result.requested} "
                f"executing, skipped {result.skipped} of {result.matched} matched"
            )
            if result.too_large:
                click.echo(
                    f"error: trees too large to cancel at once (nothing changed there): "
                    f"{', '.join(map(str, result.too_large))}",
                    err=True,
                )
                sys.exit(1)

    async def body() -> None:
        if filters is not None:
            return await bulk(filters)
        assert instance_id is not None
        async with connect(dsn, schema) as db:
            before = (await db.get(instance_id)).status
            after = await db.cancel(instance_id, reason)
        pending = after == "executing"
        if as_json:
            emit_json({"id": instance_id, "before": before, "after": after, "pending": pending})
        elif pending:
            click.echo(f"{instance_id}: cancel requested; it ends cancelled when its current step ends")
        elif before == after == "cancelled":
            click.echo(f"{instance_id} is already cancelled")
        elif before == after:
            click.echo(f"error: instance {instance_id} is {after}: nothing to cancel", err=True)
            sys.exit(2)
        else:
            click.echo(f"{instance_id}: {before} -> {after}")

    execute(body)


# -- workers and queues -----------------------------------------------------------------------------
async def fetch_workers(db: Any, gone_after: float) -> list[dict[str, Any]]:
    """The registered workers (list_workers) with their decoded gauges and their state."""
    from .sql import Q

    rows = [dict(r) for r in await db.pool.fetch(Q.list_workers, db.clock.now())]
    for r in rows:
        r["gauges"] = orjson.loads(r["gauges"]) if r["gauges"] else {}
        r["state"] = worker_state(
            seen_ago=float(r["seen_ago"]),
            stopped=r["stopped_at"] is not None,
            gauges=r["gauges"],
            gone_after=gone_after,
        )
    return rows


gone_option = click.option(
    "--gone-after",
    default=GONE_AFTER,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds without a heartbeat after which a worker that reports no heartbeat "
    "period is shown as gone (one that does: after three of its periods).",
)


@click.command(cls=Command)
@dsn_option
@schema_option
@gone_option
@click.option("--all", "show_all", is_flag=True, help="Include stopped and gone workers.")
@json_option
def workers(dsn: str | None, schema: str, gone_after: float, show_all: bool, as_json: bool) -> None:
    """Registered workers with their per-queue load (live first; stale heartbeats shown as gone)."""

    async def body() -> None:
        async with connect(dsn, schema) as db:
            rows = await fetch_workers(db, gone_after)
        if not show_all:
            rows = [r for r in rows if r["state"] == "live"]
        if as_json:
            emit_json(rows)
            return
        from rich.table import Table

        table = Table(box=None, header_style="bold")
        for col in (
            "worker",
            "host",
            "pid",
            "state",
            "seen",
            "queue",
            "in flight",
            "buffered",
            "done",
            "failed",
            "fenced",
        ):
            table.add_column(col, no_wrap=True)
        now = datetime.now(UTC)
        for r in rows:
            state = {"live": "[green]live[/]", "gone": "[red]gone[/]"}.get(r["state"], r["state"])
            first = True
            for q in r["queues"] or [""]:
                g = r["gauges"].get(q, {})
                head = (r["id"], r["host"], str(r["pid"]), state, ago(r["seen_at"], now)) if first else ("",) * 5
                table.add_row(
                    *head,
                    q,
                    f"{g.get('in_flight', 0)}/{g.get('concurrency', 0)}",
                    f"{g.get('buffered', 0)}/{g.get('prefetch', 0)}",
                    str(g.get("done", 0)),
                    str(g.get("failed", 0)),
                    str(g.get("fenced", 0)),
                )
                first = False
        out = console()
        out.print(table if rows else "no live workers" + ("" if show_all else " (--all shows stopped ones)"))

    execute(body)


COUNT_COLUMNS = ("due", "scheduled", "executing", "awaiting_signal", "awaiting_children")
TERMINAL_COLUMNS = ("done", "failed", "cancelled")


def saturation(counts: Iterable[dict[str, Any]], worker_rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per queue: counts by status (runnable split into due/scheduled), the oldest due row, and the
    capacity of live workers (in flight / concurrency, buffered / prefetch)."""
    queues: dict[str, dict[str, Any]] = {}

    def entry(q: str) -> dict[str, Any]:
        return queues.setdefault(
            q,
            {
                "counts": {},
                "oldest_due": None,
                "workers": [],
                "in_flight": 0,
                "concurrency": 0,
                "buffered": 0,
                "prefetch": 0,
            },
        )

    for c in counts:
        e = entry(c["queue"])
        e["counts"][c["status"]] = c["n"]
        if c["status"] == "due":
            e["oldest_due"] = c["oldest"]
    for w in worker_rows:
        if w["state"] != "live":
            continue
        for q, g in w["gauges"].items():
            e = entry(q)
            e["workers"].append({"worker": w["id"], **g})
            for k in ("in_flight", "concurrency", "buffered", "prefetch"):
                e[k] += int(g.get(k, 0))
    return dict(sorted(queues.items()))


@click.command(cls=Command)
@dsn_option
@schema_option
@gone_option
@click.option("--all", "with_terminal", is_flag=True, help="Also count done, failed and cancelled rows.")
@json_option
def queues(dsn: str | None, schema: str, gone_after: float, with_terminal: bool, as_json: bool) -> None:
    """Queue saturation: rows by status per queue, and what live workers are doing with them."""

    async def body() -> None:
        from .sql import Q

        async with connect(dsn, schema) as db:
            counts = [dict(r) for r in await db.pool.fetch(Q.queue_counts, db.clock.now(), with_terminal)]
            worker_rows = await fetch_workers(db, gone_after)
        data = saturation(counts, worker_rows)
        if as_json:
            emit_json({"queues": data, "workers": worker_rows})
            return
        from rich.table import Table

        table = Table(box=None, header_style="bold")
        cols = [
            "queue",
            *COUNT_COLUMNS,
            *(TERMINAL_COLUMNS if with_terminal else ()),
            "oldest due",
            "workers",
            "in flight",
            "buffered",
            "busy",
        ]
        for col in cols:
            table.add_column(
                col.replace("awaiting_", "await "), justify="left" if col == "queue" else "right", no_wrap=True
            )
        now = datetime.now(UTC)
        for q, e in data.items():
            busy = f"{100 * e['in_flight'] / e['concurrency']:.0f}%" if e["concurrency"] else "-"
            counts_row = [str(e["counts"].get(s, 0)) for s in COUNT_COLUMNS]
            if with_terminal:
                counts_row += [str(e["counts"].get(s, 0)) for s in TERMINAL_COLUMNS]
            table.add_row(
                q,
                *counts_row,
                ago(e["oldest_due"], now) if e["oldest_due"] else "-",
                str(len(e["workers"])),
                f"{e['in_flight']}/{e['concurrency']}",
                f"{e['buffered']}/{e['prefetch']}",
                busy,
            )
        out = console()
        out.print(table if data else "no queues: nothing inserted and no live workers")
        if any(e["workers"] for e in data.values()):
            per = Table(title="live workers", title_justify="left", box=None, header_style="bold")
            for col in ("queue", "worker", "in flight", "buffered", "done", "failed"):
                per.add_column(col, no_wrap=True)
            for q, e in data.items():
                for w in e["workers"]:
                    per.add_row(
                        q,
                        w["worker"],
                        f"{w.get('in_flight', 0)}/{w.get('concurrency', 0)}",
                        f"{w.get('buffered', 0)}/{w.get('prefetch', 0)}",
                        str(w.get("done", 0)),
                        str(w.get("failed", 0)),
                    )
            out.print(per)
        gone = [w for w in worker_rows if w["state"] == "gone"]
        if gone:
            out.print(f"[red]gone[/] (no heartbeat for {gone_after:.0f}s): " + ", ".join(w["id"] for w in gone))

    execute(body)


# -- retention --------------------------------------------------------------------------------------
@click.command(cls=Command)
@dsn_option
@schema_option
@click.option("--older-than", required=True, help="Age of the last change (7d, 12h, 30m).")
@click.option(
    "--batch",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Instances deleted per transaction.",
)
@json_option
def gc(dsn: str | None, schema: str, older_than: str, batch: int, as_json: bool) -> None:
    """Delete done, failed and cancelled instances older than --older-than with their signals and
    history (a terminal child whose parent is still live is kept)."""
    age = parse_duration(older_than, "--older-than")

    async def body() -> None:
        from .cli_progress import Ticker

        async with connect(dsn, schema) as db:
            with Ticker("gc", None, "instances deleted", console=_stderr_console(), quiet=as_json) as progress:
                deleted = await db.gc(older_than=age, batch=batch, progress=lambda n: progress.update(n))
        if as_json:
            emit_json({"deleted": deleted, "older_than": age})
        else:
            click.echo(f"deleted {deleted} instances (with their signals and history) older than {older_than}")

    execute(body)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


# -- recurring schedules ----------------------------------------------------------------------------
@click.command(cls=Command)
@dsn_option
@schema_option
@json_option
def schedules(dsn: str | None, schema: str, as_json: bool) -> None:
    """Recurring schedules (Runtime(schedules=...)): each one's cron, time zone, last and next run."""

    async def body() -> None:
        from .sql import Q

        async with connect(dsn, schema) as db:
            rows = [dict(r) for r in await db.pool.fetch(Q.list_schedules)]
        if as_json:
            emit_json({"schedules": rows})
            return
        if not rows:
            click.echo("no schedules: none has been run by a Runtime(schedules=[...]) in this schema")
            return
        from rich.table import Table

        table = Table(box=None, header_style="bold")
        for col in ("name", "cron", "tz", "machine", "catch up", "last run", "instance", "status", "next run"):
            table.add_column(col, no_wrap=True)
        now = datetime.now(UTC)
        for r in rows:
            last = f"{r['last_run']:%Y-%m-%d %H:%M:%S}Z ({ago(r['last_run'], now)})" if r["last_run"] else "-"
            upcoming = "-"
            if r["next_tick"] is not None:
                when = "overdue" if r["next_tick"] <= now else ago(r["next_tick"], now)
                upcoming = f"{r['next_tick']:%Y-%m-%d %H:%M:%S}Z ({when})"
            table.add_row(
                r["name"],
                r["cron"],
                r["tz"],
                r["machine"],
                r["catch_up"],
                last,
                str(r["last_instance_id"] or "-"),
                r["last_status"] or "-",
                upcoming,
            )
        console().print(table)

    execute(body)
