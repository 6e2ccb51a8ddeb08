"""The console application: holds the database source, the shared connection state and the screens."""

from __future__ import annotations

from datetime import datetime

from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive

from durable.workers import GONE_AFTER

from .messages import DatabaseDown, DatabaseUp
from .screens.dialogs import HelpScreen
from .screens.queues import QueuesScreen
from .source import Source


class ConsoleApp(App[None]):
    """``durable console``. ``now`` freezes the clock every figure is measured against (snapshots);
    ``refresh_every=None`` loads each screen once (no live refresh)."""

    CSS_PATH = "console.tcss"
    TITLE = "durable console"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
    ]

    db_error: reactive[str | None] = reactive(None)

    def __init__(
        self,
        source: Source,
        *,
        now: datetime | None = None,
        refresh_every: float | None = 1.0,
        gone_after: float = GONE_AFTER,
    ) -> None:
        super().__init__()
        self.source = source
        self.now = now
        self.refresh_every = refresh_every
        self.gone_after = gone_after

    def on_mount(self) -> None:
        self.push_screen(QueuesScreen())

    async def on_unmount(self) -> None:
        await self.source.close()

    def on_database_down(self, message: DatabaseDown) -> None:
        self.db_error = message.reason

    def on_database_up(self, message: DatabaseUp) -> None:
        self.db_error = None

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())


def run(app: ConsoleApp) -> None:
    app.run()
