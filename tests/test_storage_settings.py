"""Schema version 12: the storage settings instances ships with (PERFORMANCE.md, "Sustained throughput")."""

from __future__ import annotations

import pytest

import durable
from durable._pg import aio

pytestmark = pytest.mark.trio


async def reloptions(db: durable.Database, table: str) -> dict[str, str]:
    async def read() -> list[str]:
        async with db.pool.raw.acquire() as con:  # type: ignore[attr-defined]
            return list(
                await con.fetchval(
                    "select coalesce(c.reloptions, '{}') from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                    "where n.nspname = $1 and c.relname = $2",
                    db.pool.schema,
                    table,
                )
            )

    return dict(option.split("=", 1) for option in await aio(read)())


async def test_instances_is_vacuumed_by_its_churn_unthrottled_and_never_truncated(db: durable.Database) -> None:
    """Without migration 0012 instances has no storage parameters: vacuum then waits for dead versions worth
    20 % of the (mostly finished) live rows, sleeps 2 ms per 200 cost units, and truncates a drained tail
    under an ACCESS EXCLUSIVE lock."""
    assert await reloptions(db, "instances") == {
        "autovacuum_vacuum_scale_factor": "0.01",
        "autovacuum_vacuum_threshold": "1000",
        "autovacuum_vacuum_cost_delay": "0",
        "vacuum_truncate": "false",
    }
    assert await reloptions(db, "history") == {}  # append-only: the defaults suit it
