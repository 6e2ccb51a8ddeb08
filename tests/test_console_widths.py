"""DataTable columns fit their cells from the moment sync_table fills them (console/widgets.py: fit_columns).

Textual's DataTable measures new and updated cells when it next idles, and caches each row's rendering
under an update count that does not change then. A frame drawn between the change and that idle (a loaded
box, a busy app) cached the rows at the old widths and kept showing them cut: a snapshot of the instance
screen showed its history as "2030  inser  perf" for 15 s. Here the frame is drawn on purpose, by a
screenshot taken before the table idles."""

from __future__ import annotations

import pytest
from durable.console.widgets import sync_table
from textual.app import App, ComposeResult
from textual.widgets import DataTable

from .helpers import native_asyncio

pytestmark = pytest.mark.asyncio

LONG = "a cell far wider than its label"


class OneTable(App[None]):
    def compose(self) -> ComposeResult:
        yield DataTable(id="t")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_column("id", key="id")
        table.add_column("note", key="note")
        table.add_column("n", key="n")


@pytest.fixture(autouse=True)
def _native() -> None:
    native_asyncio()


async def test_rows_drawn_before_the_table_idles_are_not_cut() -> None:
    app = OneTable()
    async with app.run_test(size=(100, 10)) as pilot:
        table = app.query_one(DataTable)
        await pilot.pause()
        sync_table(table, [("1", ["first", LONG, 3.14159])])  # the rows rebuilt
        app.export_screenshot()  # a frame drawn before the table's idle
        await pilot.pause()
        await pilot.pause()
        text = app.export_screenshot(simplify=True)
        assert LONG.replace(" ", "&#160;") in text, "the new row is cut to the label's width"
        assert "3.14" in text

        wider = LONG + " and then some more"
        sync_table(table, [("1", ["first", wider, 3.14159])])  # the same keys: cells updated in place
        app.export_screenshot()
        await pilot.pause()
        await pilot.pause()
        assert wider.replace(" ", "&#160;") in app.export_screenshot(simplify=True), "the updated cell is cut"

        widest = wider + " and a new row"
        sync_table(table, [("2", ["second", widest, 2.5])])  # other keys: the rows rebuilt
        app.export_screenshot()
        await pilot.pause()
        await pilot.pause()
        assert widest.replace(" ", "&#160;") in app.export_screenshot(simplify=True), "the rebuilt row is cut"
