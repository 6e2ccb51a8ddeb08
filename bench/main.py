"""Start (or reach) the server, run the plan, judge the targets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import asyncpg
import trio
import trio_asyncio
from rich.console import Console

from durable import tracing
from durable._pg import asyncio_loop, redact
from durable.errors import DatabaseUnavailable

from . import server as srv
from .report import targets
from .run import Plan, Runner


async def main(plan: Plan, dsn: str | None, data_dir: Path | None, console: Console) -> dict[str, Any]:
    # the targets are for tracing off: this process (the in-process pickup) and every worker process
    tracing.set_enabled(False)
    os.environ["DURABLE_TRACING"] = "off"
    if dsn is None:
        folder = data_dir or srv.default_data_dir()
        with console.status(f"starting the embedded PostgreSQL in {folder}"):
            dsn = await trio.to_thread.run_sync(srv.start_embedded, folder)
    async with asyncio_loop():
        server = srv.Server(dsn)
        try:
            await trio_asyncio.aio_as_trio(server.describe)()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailable(f"cannot reach PostgreSQL at {redact(dsn)}: {exc}") from exc
        results = await Runner(server, plan, console).run()
    results["targets"] = targets(results)
    return results
