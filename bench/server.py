"""The one PostgreSQL server every measurement of a run uses: embedded (a data folder of the
benchmark's own, so other durable processes do not share it) or ``--dsn``. Each engine gets a database
of its own on it."""

from __future__ import annotations

import os
import platform
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from .cpu import postmaster_pid
from .sql import B


def default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("durable")) / "bench-pgdata"


def start_embedded(folder: Path) -> str:
    """Start (or join) the benchmark's embedded server; returns its DSN."""
    from durable import embedded

    return embedded.embedded_dsn(folder)


def with_database(dsn: str, database: str) -> str:
    """The same server, another database (keeps host/port/socket, user and query)."""
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path="/" + database))


@dataclass
class Server:
    dsn: str  # the maintenance database's DSN

    async def recreate_database(self, name: str) -> str:
        """Drop and create database ``name`` (a fresh one per engine per run); returns its DSN."""
        conn = await asyncpg.connect(self.dsn)
        try:
            for q in (B.drop_database_ddl, B.create_database_ddl):
                await conn.execute(await conn.fetchval(q.text, name))
        finally:
            await conn.close()
        return with_database(self.dsn, name)

    async def drop_database(self, name: str) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(await conn.fetchval(B.drop_database_ddl.text, name))
        finally:
            await conn.close()

    async def postmaster(self) -> int | None:
        """The server's postmaster pid when it runs on this machine and we may read its files."""
        conn = await asyncpg.connect(self.dsn)
        try:
            folder = await conn.fetchval(B.data_directory.text)
        except asyncpg.PostgresError:
            return None
        finally:
            await conn.close()
        return postmaster_pid(folder)

    async def wal_lsn(self) -> str:
        conn = await asyncpg.connect(self.dsn)
        try:
            return str(await conn.fetchval(B.wal_lsn.text))
        finally:
            await conn.close()

    async def wal_since(self, lsn: str) -> int:
        """WAL bytes the whole server wrote since ``lsn`` (every database: run one stage at a time)."""
        conn = await asyncpg.connect(self.dsn)
        try:
            return int(await conn.fetchval(B.wal_since.text, lsn))
        finally:
            await conn.close()

    async def describe(self) -> dict[str, Any]:
        conn = await asyncpg.connect(self.dsn)
        try:
            version = await conn.fetchval(B.server_version.text)
            rows = await conn.fetch(B.server_settings.text)
        finally:
            await conn.close()
        return {"version": version, "settings": {r["name"]: f"{r['setting']}{r['unit']}" for r in rows}}


def machine() -> dict[str, Any]:
    """What this machine is: cores, memory, CPU model, Python."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        meminfo = Path("/proc/meminfo").read_text()
        kb = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemTotal")))
        info["memory_gib"] = round(kb / 1024 / 1024, 1)
    except (OSError, StopIteration, ValueError):
        pass
    try:
        cpu = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        info["loadavg_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info
