"""A PgBouncer in transaction mode in front of the test server, for tests/test_pgbouncer.py.

PgBouncer is Debian's ``pgbouncer`` package (`.ci/run` installs it). It refuses to run as root, so as root it
runs as the owner of the server's socket folder (the embedded server's own user), which may connect to it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CANDIDATES = ("pgbouncer", "/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
PORT_TRIES = 5  # free ports tried when another process takes the one chosen before PgBouncer binds it


def binary() -> str | None:
    """The pgbouncer executable, or None where it is not installed."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@contextmanager
def pgbouncer(server_dsn: str, connect_query: str | None = None, pool_size: int = 2) -> Iterator[str]:
    """Run PgBouncer (``pool_mode = transaction``, ``pool_size`` server connections) in front of
    ``server_dsn``'s database; yields the DSN that reaches it through PgBouncer. ``connect_query`` runs on
    every server connection PgBouncer opens (the search_path durable needs there)."""
    exe = binary()
    assert exe is not None
    parts = urllib.parse.urlsplit(server_dsn)
    query = urllib.parse.parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "localhost"])[0]
    port = query.get("port", [str(parts.port or 5432)])[0]
    user = urllib.parse.unquote(parts.username or "postgres")
    password = urllib.parse.unquote(parts.password or "")
    dbname = parts.path.lstrip("/") or user
    target = f"host={host} port={port} dbname={dbname} user={user}"
    if password:
        target += f" password={password}"
    if connect_query:
        target += f" connect_query={_quote(connect_query)}"
    folder = Path(tempfile.mkdtemp(prefix="durable-pgbouncer-"))
    os.chmod(folder, 0o777)  # PgBouncer may run as another user (below)
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    argv = [exe]
    if os.getuid() == 0:
        owner = os.stat(host).st_uid if host.startswith("/") else pwd.getpwnam("nobody").pw_uid
        argv += ["-u", pwd.getpwuid(owner).pw_name]
    argv.append(str(folder / "pgbouncer.ini"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        # the free port is closed again before PgBouncer binds it: another process may take it meanwhile (a
        # client socket's ephemeral port, another test's server), and PgBouncer then exits ("nowhere to listen
        # on") or a connection would reach the other listener. Up means its log says it listens on the port.
        for _ in range(PORT_TRIES):
            listen = _free_port()
            (folder / "pgbouncer.pid").unlink(missing_ok=True)  # an exited try's, if it left one
            _write_config(folder, dbname, target, listen, pool_size)
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if _up(proc, folder, listen):
                break
            proc.wait()
        else:
            log = folder / "pgbouncer.log"
            raise RuntimeError(f"pgbouncer did not start: {log.read_text() if log.exists() else ''}")
        yield f"postgresql://{urllib.parse.quote(user)}@127.0.0.1:{listen}/{dbname}"
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _write_config(folder: Path, dbname: str, target: str, listen: int, pool_size: int) -> None:
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{dbname} = {target}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {listen}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {folder / 'users.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        "max_client_conn = 200\n"
        f"logfile = {folder / 'pgbouncer.log'}\n"
        f"pidfile = {folder / 'pgbouncer.pid'}\n"
        # asyncpg sends it at connect; PgBouncer 1.18 does not know it
        "ignore_startup_parameters = extra_float_digits\n"
    )
    for f in folder.iterdir():
        os.chmod(f, 0o644)


def _up(proc: subprocess.Popen[bytes], folder: Path, listen: int) -> bool:
    """Wait until PgBouncer listens on ``listen`` (True) or has exited (False: the port was taken); 20 s
    guard against a hang."""
    log = folder / "pgbouncer.log"
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            return False
        text = log.read_text() if log.exists() else ""
        if f"listening on 127.0.0.1:{listen}\n" in text:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", listen), timeout=1).close()
                return True
        if time.monotonic() > deadline:
            raise RuntimeError(f"pgbouncer did not start: {text}")
        time.sleep(0.05)
