"""Home: per queue counts by status, throughput with a sparkline, and saturation from the workers."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Footer, Header, Static

from .. import render
from ..data import Overview, OverviewLoader
from ..messages import OverviewLoaded
from ..widgets import Banner, selected_key, sync_table
from .live import LiveScreen

QUEUE_COLUMNS = (
    ("queue", "queue"),
    ("due", "due"),
    ("scheduled", "later"),
    ("executing", "exec"),
    ("awaiting_signal", "await sig"),
    ("awaiting_children", "await kids"),
    ("done", "done"),
    ("failed", "failed"),
    ("cancelled", "cancel"),
    ("rate", "step/s"),
    ("trend", "5 min"),
    ("in_flight", "in flight"),
    ("buffered", "buffer"),
    ("workers", "wkrs"),
)
WORKER_COLUMNS = (
    ("worker", "worker"),
    ("host", "host"),
    ("pid", "pid"),
    ("queue", "queue"),
    ("in_flight", "in flight"),
    ("buffered", "buffered"),
    ("steps", "steps"),
    ("done", "done"),
    ("failed", "failed"),
    ("fenced", "fenced"),
    ("seen", "seen"),
    ("state", "state"),
)
SCHEDULE_COLUMNS = (
    ("name", "schedule"),
    ("cron", "cron"),
    ("tz", "tz"),
    ("machine", "machine"),
    ("last_run", "last run"),
    ("instance", "instance"),
    ("status", "status"),
    ("next_run", "next run"),
)
STATE_STYLE = {"live": "green", "gone": "bold red", "stopped": "dim"}


def queue_rows(overview: Overview) -> list[tuple[str, list[Any]]]:
    rows = []
    for q in overview.queues:
        s = q.saturation
        rows.append(
            (
                q.queue,
                [
                    q.queue,
                    render.count(q.due),
                    render.count(q.scheduled),
                    render.count(q.executing),
                    render.count(q.awaiting_signal),
                    render.count(q.awaiting_children),
                    render.count(q.done),
                    render.count(q.failed),
                    render.count(q.cancelled),
                    render.rate(q.rate),
                    render.spark(q.trend),
                    render.ratio(s.in_flight, s.concurrency),
                    render.ratio(s.buffered, s.prefetch),
                    str(s.workers),
                ],
            )
        )
    return rows


def worker_rows(overview: Overview) -> list[tuple[str, list[Any]]]:
    rows = []
    for w in overview.workers:
        for q, g in w.gauges.items() or [("-", None)]:
            cells: list[Any] = [w.id, w.host, str(w.pid), q]
            if g is None:
                cells += ["-"] * 6
            else:
                cells += [
                    render.ratio(g.in_flight, g.concurrency),
                    render.ratio(g.buffered, g.prefetch),
                    f"{g.steps:,}",
                    f"{g.done:,}",
                    f"{g.failed:,}",
                    f"{g.fenced:,}",
                ]
            cells += [render.ago(w.seen_ago), Text(w.state, style=STATE_STYLE.get(w.state, ""))]
            rows.append((f"{w.id}\x00{q}", cells))
    return rows


def schedule_rows(overview: Overview) -> list[tuple[str, list[Any]]]:
    rows = []
    for s in overview.schedules:
        last = "-" if s.last_run is None else render.relative(s.last_run, overview.now)
        upcoming = "-"
        if s.next_run is not None:
            when = "due now" if s.next_run <= overview.now else render.relative(s.next_run, overview.now)
            upcoming = f"{render.short_clock(s.next_run)} ({when})"
        rows.append(
            (
                s.name,
                [
                    s.name,
                    s.cron,
                    s.tz,
                    s.machine,
                    last,
                    "-" if s.last_instance_id is None else f"#{s.last_instance_id}",
                    render.status(s.last_status),
                    upcoming,
                ],
            )
        )
    return rows


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


class QueuesScreen(LiveScreen):
    BINDINGS = [
        Binding("enter", "open_queue", "Instances of queue"),
        Binding("i", "instances", "All instances"),
        Binding("w", "focus_workers", "Workers", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.loader = OverviewLoader()
        self.overview: Overview | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Banner(id="banner")
        yield Static("loading…", id="summary")
        yield DataTable(id="queues", cursor_type="row", zebra_stripes=True)
        yield Static("", id="queue-detail")
        yield Static("Workers", classes="section")
        yield DataTable(id="workers", cursor_type="row", zebra_stripes=True)
        yield Static("Schedules", classes="section", id="schedules-title")  # shown when there are any
        yield DataTable(id="schedules", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.loader.gone_after = self.console.gone_after
        self.sub_title = f"schema {self.source.schema}"
        queues = self.query_one("#queues", DataTable)
        for key, label in QUEUE_COLUMNS:
            queues.add_column(label, key=key)
        workers = self.query_one("#workers", DataTable)
        for key, label in WORKER_COLUMNS:
            workers.add_column(label, key=key)
        schedules = self.query_one("#schedules", DataTable)
        for key, label in SCHEDULE_COLUMNS:
            schedules.add_column(label, key=key)
        self.show_schedules(False)
        super().on_mount()

    def show_schedules(self, shown: bool) -> None:
        for widget in (self.query_one("#schedules-title"), self.query_one("#schedules", DataTable)):
            widget.display = shown

    async def fetch(self) -> Message:
        return OverviewLoaded(await self.loader.load(self.source, self.console.now))

    def on_overview_loaded(self, message: OverviewLoaded) -> None:
        ov = self.overview = message.overview
        sync_table(self.query_one("#queues", DataTable), queue_rows(ov))
        sync_table(self.query_one("#workers", DataTable), worker_rows(ov))
        sync_table(self.query_one("#schedules", DataTable), schedule_rows(ov))
        self.show_schedules(bool(ov.schedules))
        self.query_one("#schedules-title", Static).update(f"Schedules · {len(ov.schedules)}")
        self.show_selected()
        live = sum(1 for w in ov.workers if w.state == "live")
        gone = sum(1 for w in ov.workers if w.state == "gone")
        total = sum(q.rate for q in ov.queues)
        self.query_one("#summary", Static).update(
            f"{plural(len(ov.queues), 'queue')} · {plural(live, 'live worker')}"
            + (f" · [bold red]{gone} gone[/]" if gone else "")
            + f" · {render.rate(total)} steps/s · at {ov.now.strftime('%H:%M:%S')}"
        )

    def show_selected(self) -> None:
        """One line on the queue under the cursor: its backlog's age and its saturation in words."""
        queue = selected_key(self.query_one("#queues", DataTable))
        row = next((q for q in self.overview.queues if q.queue == queue), None) if self.overview else None
        if row is None:
            self.query_one("#queue-detail", Static).update("")
            return
        s = row.saturation
        waited = "nothing due" if row.lag is None else f"oldest due row waiting {render.duration(row.lag)}"
        self.query_one("#queue-detail", Static).update(
            f"[b]{escape(row.queue)}[/b] · {waited} · {render.rate(row.rate)} steps/s"
            f" · {plural(s.workers, 'live worker')} · in flight {s.in_flight}/{s.concurrency}"
            f" · buffered {s.buffered}/{s.prefetch}"
        )

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "queues":
            self.show_selected()

    def action_open_queue(self) -> None:
        from .instances import InstancesScreen

        queue = selected_key(self.query_one("#queues", DataTable))
        self.app.push_screen(InstancesScreen(queue=queue))

    def action_instances(self) -> None:
        from .instances import InstancesScreen

        self.app.push_screen(InstancesScreen())

    def action_focus_workers(self) -> None:
        self.query_one("#workers", DataTable).focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "queues":
            self.action_open_queue()
