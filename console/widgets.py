"""Small widgets shared by the screens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
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
        for key, cells in rows:
            old = table.get_row(key)
            for col, new, was in zip(columns, cells, old, strict=False):
                if new != was:
                    table.update_cell(key, col, new, update_width=True)
        return
    selected: str | None = None
    if table.row_count and table.cursor_row >= 0:
        try:
            selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except RowDoesNotExist:
            selected = None
    scroll_y = table.scroll_y
    table.clear()
    for column in table.columns.values():  # let widths shrink to the new rows
        if column.auto_width:
            column.content_width = column.label.cell_len
    for key, cells in rows:
        table.add_row(*cells, key=key)
    if selected in keys:
        table.move_cursor(row=keys.index(selected), animate=False, scroll=False)
    table.scroll_to(y=scroll_y, animate=False)


def selected_key(table: DataTable[Any]) -> str | None:
    """The row key under the cursor, if any."""
    if not table.row_count:
        return None
    try:
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
    except RowDoesNotExist:
        return None
