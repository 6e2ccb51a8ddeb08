"""Pure formatting for the console's cells: numbers, ratios, ages, sparklines, JSON."""

from __future__ import annotations

import json
from datetime import datetime

from rich.text import Text

BARS = "▁▂▃▄▅▆▇█"

STATUS_STYLE = {
    "runnable": "cyan",
    "executing": "bold yellow",
    "awaiting_signal": "magenta",
    "awaiting_children": "blue",
    "done": "green",
    "failed": "bold red",
    "cancelled": "dim",
}


def spark(values: tuple[int, ...] | list[int]) -> str:
    """One bar per value, scaled to the largest; a flat line when idle."""
    top = max(values, default=0)
    if top <= 0:
        return BARS[0] * len(values)
    return "".join(BARS[min(len(BARS) - 1, (v * (len(BARS) - 1) + top - 1) // top)] for v in values)


def count(n: int | None) -> str:
    return "…" if n is None else f"{n:,}"


def rate(steps_per_second: float) -> str:
    if steps_per_second == 0:
        return "0"
    if steps_per_second < 10:
        return f"{steps_per_second:.1f}"
    return f"{steps_per_second:,.0f}"


def ratio(used: int, capacity: int) -> Text:
    """``used/capacity``, yellow from 80% and red when full."""
    text = f"{used}/{capacity}"
    if capacity <= 0:
        return Text(text, style="dim")
    share = used / capacity
    return Text(text, style="bold red" if share >= 1 else "yellow" if share >= 0.8 else "")


def duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def ago(seconds: float) -> str:
    return f"{duration(seconds)} ago"


def until(then: datetime | None, now: datetime) -> str:
    """A lease expiry relative to now."""
    if then is None:
        return "-"
    s = (then - now).total_seconds()
    return f"in {int(s)}s" if s >= 0 else f"expired {int(-s)}s ago"


def relative(then: datetime, now: datetime) -> str:
    """A time relative to now: ``in 4m05s`` or ``12s ago``."""
    s = (then - now).total_seconds()
    return f"in {duration(s)}" if s >= 0 else ago(-s)


def clock(at: datetime | None) -> str:
    return "-" if at is None else at.strftime("%Y-%m-%d %H:%M:%S.") + f"{at.microsecond // 1000:03d}"


def short_clock(at: datetime | None) -> str:
    """Month, day and time to the second: enough for a table column."""
    return "-" if at is None else at.strftime("%m-%d %H:%M:%S")


def status(value: str | None) -> Text:
    return Text(value or "-", style=STATUS_STYLE.get(value or "", ""))


def pretty_json(text: str | None) -> str:
    if text is None:
        return "null"
    try:
        return json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False)
    except json.JSONDecodeError:
        return text


def short_json(text: str | None, width: int = 60) -> str:
    if text is None:
        return ""
    try:
        flat = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    except json.JSONDecodeError:
        flat = text
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def millis(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.1f} ms" if value < 1000 else f"{value / 1000:,.2f} s"


def one_line(text: str | None, width: int = 80) -> str:
    if not text:
        return ""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def size(n: int) -> str:
    """A byte count: 512 B, 1.5 KiB, 3.0 MiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
