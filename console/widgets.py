"""Small widgets shared by the screens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.protocol import is_renderable
from rich.text import Text
from textual.render import measure
from textual.widgets import DataTable, Static
from textual.widgets.data_table import RowDoesNotExist


class Banner(Static):
    """Says when the database is unreachable; hidden otherwise. Follows ``app.db_error``."""

    def on_mount(self) -> None:
        self.watch(self.app, "db_error", self.show_error)

    def show_error(self, reason: str | None) -> None:
        self.display = reason is not None
        if reason is not None:
            self.update(Text(reason))  # not markup: the reason may hold brackets


def sync_table(table: DataTable[Any], rows: Sequence[tuple[str, Sequence[Any]]]) -> None:
    """Make ``table`` show ``rows`` (key, cells) without flicker: when the keys are unchanged only the
    changed cells are written; otherwise the rows are rebuilt and the cursor stays on its row key."""
    # DataTable reads a str cell as markup: user data (payloads, errors, names) must stay literal
    rows = [(key, [Text(c) if isinstance(c, str) else c for c in cells]) for key, cells in rows]
    keys = [k for k, _ in rows]
    current = [rk.value for rk in table.rows]
    columns = list(table.columns)
    if keys == current:
        changed = False
        for key, cells in rows:
            old = table.get_row(key)
            for col, new, was in zip(columns, cells, old, strict=False):
                if new != was:
                    table.update_cell(key, col, new, update_width=True)
                    changed = True
        if changed:  # the console refreshes every second: measure the cells only when one is new
            fit_columns(table, rows)
        return
    selected: str | None = None
    if table.row_count and table.cursor_row >= 0:
        try:
            selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except RowDoesNotExist:
            selected = None
    scroll_y = table.scroll_y
    table.clear()
    fit_columns(table, rows)  # widths shrink to the new rows too
    for key, cells in rows:
        table.add_row(*cells, key=key)
    if selected in keys:
        table.move_cursor(row=keys.index(selected), animate=False, scroll=False)
    table.scroll_to(y=scroll_y, animate=False)


def cell_width(table: DataTable[Any], cell: Any) -> int:
    """The terminal cells ``cell`` takes, as DataTable shows it (a renderable as is, a float with two
    decimals, anything else as str())."""
    if isinstance(cell, float):
        cell = f"{cell:.2f}"
    renderable = cell if is_renderable(cell) and not isinstance(cell, str) else Text(str(cell))
    return measure(table.app.console, renderable, 1)


def fit_columns(table: DataTable[Any], rows: Sequence[tuple[str, Sequence[Any]]]) -> None:
    """Set each auto-width column to its label's or widest cell's width now, not when the table next idles.
    DataTable measures new and updated cells on idle, while its render caches are keyed by an update count
    that does not change then: a frame drawn between the change and that idle (a loaded box, or a busy
    app) caches the rows at the old widths and keeps showing them cut (a snapshot of the instance screen
    showed its history as "2030  inser  perf" for 15 s)."""
    for index, column in enumerate(table.ordered_columns):
        if column.auto_width:
            widths = [cell_width(table, cells[index]) for _, cells in rows if index < len(cells)]
            column.content_width = max([column.label.cell_len, *widths])


def selected_key(table: DataTable[Any]) -> str | None:
    """The row key under the cursor, if any."""
    if not table.row_count:
        return None
    try:
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
    except RowDoesNotExist:
        return None
