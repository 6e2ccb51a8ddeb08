"""Instances: a filtered, sorted, keyset-paged table (one page in memory, never the whole table)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Footer, Header, Input, Static

from .. import render
from ..data import Cursor, FilterError, InstanceFilter, Page, load_page
from ..messages import PageLoaded
from ..widgets import Banner, selected_key, sync_table
from .live import LiveScreen

COLUMNS = (
    ("id", "id"),
    ("queue", "queue"),
    ("machine", "machine"),
    ("version", "v"),
    ("step", "step"),
    ("status", "status"),
    ("attempt", "attempt"),
    ("awaits", "awaits"),
    ("partition_key", "key"),
    ("worker_id", "worker"),
    ("updated_at", "updated"),
    ("last_error", "last error"),
)
SORTABLE = {"id": "id", "updated_at": "updated"}
PAGE_SIZE = 50


def instance_rows(page: Page) -> list[tuple[str, list[Any]]]:
    return [
        (
            str(r["id"]),
            [
                str(r["id"]),
                r["queue"],
                r["machine"],
                str(r["version"]),
                r["step"],
                render.status(r["status"]),
                str(r["attempt"]),
                r["awaits"] or "",
                r["partition_key"] or "",
                r["worker_id"] or "",
                render.short_clock(r["updated_at"]),
                render.one_line(r["last_error"], 40),
            ],
        )
        for r in page.rows
    ]


class InstancesScreen(LiveScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("slash", "focus_filter", "Filter"),
        Binding("o", "sort", "Sort id/updated"),
        Binding("r", "reverse", "Reverse"),
        Binding("n,right", "next_page", "Next page"),
        Binding("p,left", "previous_page", "Prev page"),
    ]

    def __init__(
        self, *, queue: str | None = None, flt: InstanceFilter | None = None, page_size: int = PAGE_SIZE
    ) -> None:
        super().__init__()
        self.filter = flt or InstanceFilter(queue=queue)
        self.sort = "id"
        self.descending = True
        self.page_size = page_size
        self.starts: list[Cursor | None] = [None]  # the cursor each page starts after
        self.page: Page | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Banner(id="banner")
        yield Input(
            value=self.filter.text(),
            id="filter",
            placeholder="filter: queue:orders status:failed,cancelled machine:Checkout version:1 "
            "key:<partition> unique:<key> id:12 parent:3",
        )
        yield Static("", id="pageinfo")
        yield DataTable(id="instances", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"schema {self.source.schema} · instances"
        table = self.query_one("#instances", DataTable)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        table.focus()
        super().on_mount()

    async def fetch(self) -> Message:
        page = await load_page(
            self.source, self.filter, self.sort, self.descending, self.starts[-1], self.page_size, len(self.starts)
        )
        return PageLoaded(page)

    def on_page_loaded(self, message: PageLoaded) -> None:
        self.page = message.page
        sync_table(self.query_one("#instances", DataTable), instance_rows(message.page))
        self.show_info()

    def show_info(self) -> None:
        page = self.page
        arrow = "↓" if self.descending else "↑"
        rows = len(page.rows) if page else 0
        more = "more: n →" if page and page.has_more else "last page"
        flt = self.filter.text() or "no filter"
        self.query_one("#pageinfo", Static).update(
            f"page {len(self.starts)} · {rows} rows · sorted by {self.sort} {arrow} · {more} · {flt}"
        )

    def restart(self) -> None:
        self.starts = [None]
        self.reload()

    # -- filter ------------------------------------------------------------------------------------
    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            self.filter = InstanceFilter.parse(event.value)
        except FilterError as exc:
            self.notify(escape(str(exc)), severity="error")
            return
        self.restart()
        # move to the table once this key press is fully handled (the Enter must not reach the table)
        self.call_after_refresh(self.query_one("#instances", DataTable).focus)

    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    # -- sorting and paging ------------------------------------------------------------------------
    def action_sort(self) -> None:
        self.sort = "updated" if self.sort == "id" else "id"
        self.restart()

    def action_reverse(self) -> None:
        self.descending = not self.descending
        self.restart()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        sort = SORTABLE.get(str(event.column_key.value))
        if sort is None:
            self.notify("sortable by id and updated", severity="warning")
            return
        if sort == self.sort:
            self.descending = not self.descending
        else:
            self.sort = sort
        self.restart()

    def action_next_page(self) -> None:
        if self.page is not None and self.page.has_more and self.page.last is not None:
            self.starts.append(self.page.last)
            self.reload()

    def action_previous_page(self) -> None:
        if len(self.starts) > 1:
            self.starts.pop()
            self.reload()

    # -- navigation --------------------------------------------------------------------------------
    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        key = event.row_key.value
        if key is not None:
            from .instance import InstanceScreen

            self.app.push_screen(InstanceScreen(int(key)))

    def action_back(self) -> None:
        if self.app.screen_stack.__len__() > 2:
            self.app.pop_screen()

    def selected(self) -> int | None:
        key = selected_key(self.query_one("#instances", DataTable))
        return int(key) if key else None
