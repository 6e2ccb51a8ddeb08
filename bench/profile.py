"""Where a durable drain spends its time: py-spy samples the worker process (``--format raw``:
collapsed stacks) and this module ranks functions by self and inclusive samples."""

from __future__ import annotations

import collections
import re
import shutil
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<fn>.+?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def frame_key(frame: str) -> str:
    """``fn (path/to/module.py:12)`` -> ``fn (module.py)``: lines merged, paths shortened to the
    package-relative tail."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/work/main/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('fn')} ({path})"


def rank(collapsed: str, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares of the busiest functions in collapsed-stack text."""
    self_n: collections.Counter[str] = collections.Counter()
    incl_n: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_key(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += n
        self_n[frames[-1]] += n
        for f in set(frames):
            incl_n[f] += n

    def share(c: collections.Counter[str]) -> list[dict[str, Any]]:
        return [{"function": f, "share": round(k / total, 4)} for f, k in c.most_common(top)]

    return {"samples": total, "self": share(self_n), "inclusive": share(incl_n)}


def py_spy() -> str | None:
    return shutil.which("py-spy")


def record_argv(pid: int, out: Path, rate: int = 250) -> list[str]:
    exe = py_spy()
    assert exe is not None
    return [
        exe,
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--rate",
        str(rate),
        "--nonblocking",
        "--output",
        str(out),
    ]
