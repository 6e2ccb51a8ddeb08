"""Results of the console's database workers, posted to the screen (or app) that shows them."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from .data import Detail, Overview, Page


@dataclass
class DatabaseDown(Message):
    """A load failed: the database is unreachable (or not migrated); ``reason`` is one line."""

    reason: str


@dataclass
class DatabaseUp(Message):
    """A load succeeded."""


@dataclass
class OverviewLoaded(Message):
    overview: Overview


@dataclass
class PageLoaded(Message):
    page: Page


@dataclass
class DetailLoaded(Message):
    instance_id: int
    detail: Detail | None  # None: no such instance


@dataclass
class ActionDone(Message):
    """An action (signal, retry, cancel) finished; ``text`` says how."""

    text: str
    ok: bool = True
