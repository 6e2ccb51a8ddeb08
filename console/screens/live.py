"""A screen that reloads its data about once a second in a worker, off the UI's critical path."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, cast

from textual import work
from textual.message import Message
from textual.screen import Screen

from ..messages import DatabaseDown, DatabaseUp
from ..source import QueryFailed, SchemaMissing, Source, Unreachable


class Host(Protocol):
    """What the screens read of the application that shows them (``ConsoleApp``): they never import it,
    so the console's modules import one way (app -> screens -> data -> source)."""

    source: Source
    now: datetime | None
    refresh_every: float | None
    gone_after: float


class LiveScreen(Screen[None]):
    """Subclasses implement :meth:`fetch` (returning the message to post to themselves).

    A tick starts a load only when none is running, so a slow database never piles up queries; an
    explicit :meth:`reload` (a new filter, a page turn) replaces the running one (exclusive worker)."""

    def __init__(self) -> None:
        super().__init__()
        self._loading_generation = 0  # generation of the load in progress, 0 = none
        self._generation = 0

    @property
    def console(self) -> Host:
        return cast(Host, self.app)  # the ConsoleApp, which has these attributes

    @property
    def source(self) -> Source:
        return self.console.source

    def on_mount(self) -> None:
        if self.console.refresh_every:
            self.set_interval(self.console.refresh_every, self.tick)
        self.reload()

    def on_screen_resume(self) -> None:
        if self._generation:  # not on the first show: on_mount loaded already
            self.reload()

    def tick(self) -> None:
        if self.is_current and not self._loading_generation:
            self.reload()

    def reload(self) -> None:
        self._generation += 1
        self._loading_generation = self._generation
        self._load(self._generation)

    @work(exclusive=True, group="load", exit_on_error=False)
    async def _load(self, generation: int) -> None:
        try:
            message = await self.fetch()
        except Unreachable as exc:
            self.app.post_message(DatabaseDown(banner_text(exc)))
        except Exception as exc:  # a console bug must not take the terminal down with a traceback
            self.app.post_message(DatabaseDown(f"console error, retrying · {type(exc).__name__}: {exc}"))
        else:
            self.app.post_message(DatabaseUp())
            self.post_message(message)
        finally:
            if self._loading_generation == generation:
                self._loading_generation = 0

    async def fetch(self) -> Message:
        raise NotImplementedError


def banner_text(exc: Unreachable) -> str:
    if isinstance(exc, SchemaMissing):
        return str(exc)
    if isinstance(exc, QueryFailed):
        return f"query failed, retrying · {exc}"
    return f"database unreachable, retrying · {exc}"
