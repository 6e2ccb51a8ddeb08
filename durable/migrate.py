"""Versioned, idempotent schema migrations in a configurable PostgreSQL schema."""

from __future__ import annotations

import re

from ._pg import Pool
from .errors import SchemaError
from .sql import MIGRATIONS, Q, Query

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
LATEST_VERSION = MIGRATIONS[-1].version


def check_schema_name(schema: str) -> str:
    """``schema`` if it is a plain identifier PostgreSQL keeps as written; SchemaError otherwise."""
    if not _SCHEMA_NAME.match(schema):
        raise SchemaError(
            f"invalid schema name {schema!r}: use letters, digits and underscores (at most 63), "
            "not starting with a digit"
        )
    return schema


async def migrated_version(pool: Pool) -> int:
    """The highest schema version applied in the pool's schema (0 for an empty schema)."""
    if not await pool.fetchval(Q.schema_exists, pool.schema):
        return 0
    return int(await pool.fetchval(Q.migrated_version))


async def migrate(pool: Pool) -> list[int]:
    """Apply the missing migrations, each in its own transaction; returns the versions applied.
    Safe to run concurrently from several processes (an advisory lock serializes them)."""
    schema = check_schema_name(pool.schema)
    applied: list[int] = []
    async with pool.transaction() as conn:
        await conn.fetchval(Q.lock_migrations, schema)
        ddl = await conn.fetchval(Q.schema_ddl, schema)
        await conn.execute(Query("create_schema", ddl, ""))
        await conn.execute(Q.create_migrations_table)
        current = int(await conn.fetchval(Q.migrated_version))
        if current > LATEST_VERSION:
            raise SchemaError(
                f"schema {schema!r} is at version {current}, newer than this durable ({LATEST_VERSION}): "
                "upgrade durable"
            )
        for mig in MIGRATIONS:
            if mig.version <= current:
                continue
            await conn.execute(Query(f"migration_{mig.version:04d}", mig.text, mig.name))
            await conn.execute(Q.record_migration, mig.version, mig.name)
            applied.append(mig.version)
    return applied


async def drop_schema(pool: Pool, schema: str) -> None:
    """Drop durable's schema ``schema`` with everything in it (the demo's cleanup)."""
    ddl = await pool.fetchval(Q.drop_schema_ddl, check_schema_name(schema))
    await pool.execute(Query("drop_schema", ddl, ""))
