"""One instance, followed live: facts, state, inbox, parent and children, history; and the actions."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Footer, Header, Static

from .. import data, render
from ..data import Detail
from ..messages import ActionDone, DetailLoaded
from ..source import Unreachable
from ..widgets import Banner, selected_key, sync_table
from .dialogs import ConfirmDialog, SignalDialog, SignalRequest
from .live import LiveScreen

HISTORY_COLUMNS = (
    ("at", "time"),
    ("event", "event"),
    ("step", "step"),
    ("attempt", "attempt"),
    ("status", "status"),
    ("worker", "worker"),
    ("duration", "duration"),
    ("note", "error / note"),
)
CHILD_COLUMNS = (("id", "id"), ("machine", "machine"), ("step", "step"), ("status", "status"), ("error", "last error"))
INBOX_COLUMNS = (("id", "id"), ("name", "name"), ("payload", "payload"), ("dedup", "dedup key"), ("at", "received"))


def facts(d: Detail) -> Table:
    r = d.instance
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    lease = "-"
    if r["worker_id"]:
        expires = render.until(r["lease_expires_at"], d.now)
        lease = f"{r['worker_id']} · token {r['lease_token']} · expires {expires}"
    parent = "-" if r["parent_id"] is None else f"#{r['parent_id']} ({d.parent_status})"
    eligible: tuple[str, Any] = ("eligible", render.clock(r["eligible_at"]))
    if r["status"] == "runnable":  # a future time: a durable timer (Next delay/at), a retry's delay, schedule_in
        label = "wakes" if r["eligible_at"] > d.now else "eligible"
        eligible = (
            label,
            f"{render.clock(r['eligible_at'])} ({render.relative(r['eligible_at'], d.now)})"
            + ("  · its await timed out" if r["timed_out"] else ""),
        )
    awaits = ", ".join(r["awaits_any"] or [r["awaits"]]) if r["awaits"] else "-"
    timeout: list[tuple[str, Any]] = []
    if r["status"] == "awaiting_signal" and r["timeout_at"] is not None:
        timeout = [
            (
                "timeout",
                f"{render.clock(r['timeout_at'])} ({render.relative(r['timeout_at'], d.now)})"
                f" → step {r['timeout_step'] or r['step']}",
            )
        ]
    rows: list[tuple[str, Any]] = [
        ("instance", f"#{r['id']}  {r['machine']} v{r['version']}"),
        (
            "status",
            render.status(r["status"])
            + (Text("  cancel requested", style="bold red") if r["cancel_requested"] else Text()),
        ),
        ("step", r["step"]),
        ("attempt", str(r["attempt"])),
        ("queue", f"{r['queue']} · priority {r['priority']}"),
        eligible,
        ("lease", lease),
        ("awaits", awaits),
        *timeout,
        ("partition key", r["partition_key"] or "-"),
        ("unique key", r["unique_key"] or "-"),
        *attributes(r["attributes"]),
        *named_values(d.values),
        ("parent", parent),
        ("children", f"{len(d.children)} ({r['children_pending']} pending)"),
        ("inserted", render.clock(r["inserted_at"])),
        ("updated", render.clock(r["updated_at"])),
        ("last error", Text(r["last_error"] or "-", style="red" if r["last_error"] else "")),
    ]
    if r["result"] is not None:
        rows.append(("result", render.short_json(r["result"], 80)))
    for k, v in rows:
        t.add_row(k, v)
    return t


def attributes(text: str | None) -> list[tuple[str, Any]]:
    """The instance's attributes as one facts row (none: no row)."""
    if not text:
        return []
    attrs = json.loads(text)
    return [("attributes", Text(" ".join(f"{k}={v}" for k, v in attrs.items())))]


VALUES_SHOWN = 20  # named values listed in the facts (the rest counted)


def named_values(values: list[Any]) -> list[tuple[str, Any]]:
    """The instance's named values (name, size, sha256) as one facts row (none: no row)."""
    if not values:
        return []
    lines = [f"{v['name']}  {render.size(v['size'])}  sha256 {v['sha256'][:16]}…" for v in values[:VALUES_SHOWN]]
    if len(values) > VALUES_SHOWN:
        lines.append(f"… and {len(values) - VALUES_SHOWN} more")
    return [(f"values ({len(values)})", Text("\n".join(lines)))]


HISTORY_SHOWN = 500  # the newest events in the table; the UI stays light for very long histories
CHILDREN_SHOWN = 200  # the first children in the table; the title counts all by status


def children_summary(d: Detail) -> str:
    by_status = Counter(str(c["status"]) for c in d.children)
    parts = ", ".join(f"{n:,} {s}" for s, n in sorted(by_status.items(), key=lambda kv: (-kv[1], kv[0])))
    shown = f" · first {CHILDREN_SHOWN}" if len(d.children) > CHILDREN_SHOWN else ""
    return f"Children · {len(d.children):,}" + (f" ({parts})" if parts else "") + shown


def history_rows(d: Detail) -> list[tuple[str, list[Any]]]:
    return [
        (
            str(h["id"]),
            [
                render.clock(h["at"]),
                h["event"],
                h["step"] or "",
                "" if h["attempt"] is None else str(h["attempt"]),
                render.status(h["status"]),
                h["worker_id"] or "",
                render.millis(data.duration_ms(h["detail"])),
                note(h["detail"]),
            ],
        )
        for h in d.history[-HISTORY_SHOWN:]
    ]


def note(detail: str | None) -> Text:
    """An event's error in red, then what else its detail says (a wake time, a timeout, who cancelled)."""
    text = Text(render.one_line(data.detail_error(detail), 60), style="red")
    extra = data.detail_note(detail)
    if extra:
        text.append((" · " if text.plain else "") + extra)
    return text


class InstanceScreen(LiveScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("s", "signal", "Signal"),
        Binding("R", "retry", "Retry now"),
        Binding("x", "cancel", "Cancel"),
        Binding("u", "parent", "Parent"),
        Binding("f", "toggle_follow", "Follow"),
    ]

    def __init__(self, instance_id: int) -> None:
        super().__init__()
        self.instance_id = instance_id
        self.detail: Detail | None = None
        self.follow = True

    def compose(self) -> ComposeResult:
        yield Header()
        yield Banner(id="banner")
        with Horizontal(id="top"):
            with VerticalScroll(id="facts-pane"):
                yield Static("loading…", id="facts")
            with Vertical(id="state-pane"):
                yield Static("State", classes="section")
                with VerticalScroll(id="state-scroll"):
                    yield Static("", id="state")
        with Horizontal(id="lists"):
            with Vertical(id="inbox-pane"):
                yield Static("Inbox", classes="section", id="inbox-title")
                yield DataTable(id="inbox", cursor_type="row")
            with Vertical(id="children-pane"):
                yield Static("Children", classes="section", id="children-title")
                yield DataTable(id="children", cursor_type="row")
        yield Static("History", classes="section", id="history-title")
        yield DataTable(id="history", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"schema {self.source.schema} · instance #{self.instance_id}"
        for table_id, columns in (
            ("#history", HISTORY_COLUMNS),
            ("#children", CHILD_COLUMNS),
            ("#inbox", INBOX_COLUMNS),
        ):
            table = self.query_one(table_id, DataTable)
            for key, label in columns:
                table.add_column(label, key=key)
        self.query_one("#history", DataTable).focus()
        super().on_mount()

    async def fetch(self) -> Message:
        return DetailLoaded(self.instance_id, await data.load_detail(self.source, self.instance_id, self.console.now))

    def on_detail_loaded(self, message: DetailLoaded) -> None:
        d = self.detail = message.detail
        if d is None:
            missing = Text(f"no instance #{self.instance_id}", style="bold red")
            self.query_one("#facts", Static).update(missing)
            return
        self.query_one("#facts", Static).update(facts(d))
        self.query_one("#state", Static).update(
            Syntax(render.pretty_json(d.instance["state"]), "json", theme="ansi_dark", background_color="default")
        )
        sync_table(
            self.query_one("#inbox", DataTable),
            [
                (
                    str(s["id"]),
                    [
                        str(s["id"]),
                        s["name"],
                        render.short_json(s["payload"], 30),
                        s["dedup_key"] or "",
                        render.clock(s["inserted_at"]),
                    ],
                )
                for s in d.inbox
            ],
        )
        self.query_one("#inbox-title", Static).update(f"Inbox · {len(d.inbox)} pending signals")
        self.query_one("#children-title", Static).update(children_summary(d))
        sync_table(
            self.query_one("#children", DataTable),
            [
                (
                    str(c["id"]),
                    [
                        str(c["id"]),
                        c["machine"],
                        c["step"],
                        render.status(c["status"]),
                        render.one_line(c["last_error"], 30),
                    ],
                )
                for c in d.children[:CHILDREN_SHOWN]
            ],
        )
        history = self.query_one("#history", DataTable)
        at_end = history.row_count == 0 or history.cursor_row >= history.row_count - 1
        sync_table(history, history_rows(d))
        self.query_one("#history-title", Static).update(
            f"History · {len(d.history):,} events"
            + (f" · the last {HISTORY_SHOWN}" if len(d.history) > HISTORY_SHOWN else "")
            + (" · following" if self.follow else "")
        )
        if self.follow and at_end and history.row_count:  # moving the cursor up pauses following
            history.move_cursor(row=history.row_count - 1, animate=False)

    # -- navigation --------------------------------------------------------------------------------
    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "children" and event.row_key.value is not None:
            self.app.push_screen(InstanceScreen(int(event.row_key.value)))

    def action_parent(self) -> None:
        if self.detail is not None and self.detail.instance["parent_id"] is not None:
            self.app.push_screen(InstanceScreen(int(self.detail.instance["parent_id"])))
        else:
            self.notify("this instance has no parent")

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        self.notify("following live" if self.follow else "not following")

    def selected_child(self) -> int | None:
        key = selected_key(self.query_one("#children", DataTable))
        return int(key) if key else None

    # -- actions -----------------------------------------------------------------------------------
    def action_signal(self) -> None:
        awaits = self.detail.instance["awaits"] if self.detail else None

        def confirm(request: SignalRequest | None) -> None:
            if request is None:
                return
            text = (
                f"Send signal [b]{escape(request.name)}[/b] with payload {escape(request.payload)} "
                f"to #{self.instance_id}?"
            )

            def send(ok: bool | None) -> None:
                if ok:
                    self._act(
                        lambda: data.send_signal(
                            self.source,
                            self.instance_id,
                            request.name,
                            request.payload,
                            request.dedup_key,
                            self.console.now,
                        )
                    )

            self.app.push_screen(ConfirmDialog(text), send)

        self.app.push_screen(SignalDialog(self.instance_id, awaits or ""), confirm)

    def status(self) -> str | None:
        return str(self.detail.instance["status"]) if self.detail is not None else None

    def action_retry(self) -> None:
        if self.status() not in ("failed", "cancelled"):
            self.notify(
                f"#{self.instance_id} is {self.status()}: only a failed or cancelled instance can be retried",
                severity="warning",
            )
            return

        def retry(ok: bool | None) -> None:
            if ok:
                self._act(lambda: data.retry_now(self.source, self.instance_id, self.console.now))

        self.app.push_screen(ConfirmDialog(f"Retry #{self.instance_id} now (back to runnable, attempt 0)?"), retry)

    def action_cancel(self) -> None:
        if self.status() in ("done", "failed", "cancelled"):
            self.notify(f"#{self.instance_id} is {self.status()}: nothing to cancel", severity="warning")
            return

        def cancel(ok: bool | None) -> None:
            if ok:
                self._act(
                    lambda: data.cancel(self.source, self.instance_id, "cancelled from the console", self.console.now)
                )

        self.app.push_screen(ConfirmDialog(f"Cancel #{self.instance_id}?"), cancel)

    @work(group="action")
    async def _act(self, run: Callable[[], Awaitable[str]]) -> None:
        try:
            text = await run()
        except Unreachable as exc:
            self.post_message(ActionDone(f"not done, the database is unreachable: {exc}", ok=False))
        else:
            self.post_message(ActionDone(text))

    def on_action_done(self, message: ActionDone) -> None:
        self.notify(escape(message.text), severity="information" if message.ok else "error")
        self.reload()
