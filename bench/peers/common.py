"""What every peer process shares: read options, time a drain, print one JSON line.
No durable import here: peers run on plain asyncio (uvloop where the peer's own benchmark uses it)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

INSERT_CHUNK = 10_000


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def options() -> dict[str, Any]:
    return json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, default=str), flush=True)


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start
