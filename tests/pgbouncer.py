"""A PgBouncer in transaction mode in front of the test server, for tests/test_pgbouncer.py.

PgBouncer is Debian's ``pgbouncer`` package (`.ci/run` installs it). It refuses to run as root, so as root it
runs as the owner of the server's socket folder (the embedded server's own user), which may connect to it.
"""

from __future__ import annotations

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
    listen = _free_port()
    (folder / "users.txt").write_text(f'"{user}" ""\n')
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
    argv = [exe]
    if os.getuid() == 0:
        owner = os.stat(host).st_uid if host.startswith("/") else pwd.getpwnam("nobody").pw_uid
        argv += ["-u", pwd.getpwuid(owner).pw_name]
    argv.append(str(folder / "pgbouncer.ini"))
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:  # up once it accepts connections
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=1).close()
                break
            except OSError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = folder / "pgbouncer.log"
                    raise RuntimeError(f"pgbouncer did not start: {log.read_text() if log.exists() else ''}") from exc
                time.sleep(0.05)
        yield f"postgresql://{urllib.parse.quote(user)}@127.0.0.1:{listen}/{dbname}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)
