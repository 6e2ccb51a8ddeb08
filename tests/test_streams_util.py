"""Helpers for the stream tests (no tests here): ``durable serve`` as a real subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import trio

import durable
from durable.migrate import drop_schema


class ServeProcess:
    """``durable serve --port 0`` in its own process; ``url`` once it listens. ``env``: variables added
    to the server's environment."""

    def __init__(self, dsn: str, schema: str, *extra: str, env: dict[str, str] | None = None) -> None:
        self.dsn = dsn
        self.schema = schema
        self.extra = extra
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.log: list[str] = []

    def start(self, timeout: float = 30.0) -> str:
        found = self.launch()
        if not found.wait(timeout):
            self.stop()
            raise RuntimeError("durable serve did not start:\n" + "".join(self.log))
        return self.url

    def launch(self) -> threading.Event:
        """Start the process without waiting for it: the event is set once it listens (``url``)."""
        cmd = [
            sys.executable,
            "-c",
            "from durable.cli import main; main()",
            "serve",
            "--port",
            "0",
            "--dsn",
            self.dsn,
            "--schema",
            self.schema,
            *self.extra,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        found = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"listening on (http://\S+)", line)
                if m:
                    self.url = m.group(1)
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        return found

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def new_schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def drop(dsn: str, schema: str) -> None:
    async def main() -> None:
        async with durable.connect(dsn, schema=schema, migrate=False) as db:
            await drop_schema(db.pool, schema)

    trio.run(main)


@contextmanager
def serving(
    dsn: str, *extra: str, schema: str | None = None, env: dict[str, str] | None = None
) -> Iterator[ServeProcess]:
    """A server on a fresh schema, dropped afterwards."""
    schema = schema or new_schema()
    server = ServeProcess(dsn, schema, *extra, env=env)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        drop(dsn, schema)


TS_READER = """\
import { stream } from "@durable-streams/client"
const [url, offset] = process.argv.slice(2)
const res = await stream({ url, offset: offset || undefined, live: false })
const items = await res.json()
console.log(JSON.stringify({ items, offset: res.offset, closed: res.streamClosed }))
"""


def ts_reader() -> Path:
    """A Node script reading a JSON stream with the official TypeScript client (npm
    ``@durable-streams/client``, installed once into the user's cache folder)."""
    folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "durable-tests" / "ts-client"
    if not (folder / "node_modules" / "@durable-streams" / "client").exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "package.json").write_text('{"name": "ts-client", "private": true, "type": "module"}')
        subprocess.run(
            ["npm", "install", "--silent", "--no-audit", "--no-fund", "@durable-streams/client"],
            cwd=folder,
            check=True,
            timeout=300,
        )
    script = folder / "read.mjs"
    script.write_text(TS_READER)
    return script


def ts_read(url: str, offset: str | None = None) -> dict[str, object]:
    """Catch-up read with the TypeScript client: ``{"items", "offset", "closed"}``."""
    import json

    out = subprocess.run(
        ["node", str(ts_reader()), url, offset or ""], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


class WebhookReceiver:
    """A real HTTP server (hypercorn on trio) receiving webhooks: each request is verified against the
    server's JWKS (Ed25519 over ``<t>.<raw body>``, kid from the header, 5-minute window) and recorded.
    Replies come from ``replies`` (status, JSON body) in order, then ``default``; the reply to the n-th
    request (1-based) waits until ``holds[n]`` is set, when there is one."""

    def __init__(self, jwks_url: str | None = None) -> None:
        self.jwks_url = jwks_url
        self.received: list[dict[str, object]] = []
        self.replies: list[tuple[int, object]] = []
        self.default: tuple[int, object] = (200, {})
        self.holds: dict[int, trio.Event] = {}
        self.url = ""
        self._arrived = trio.Event()

    async def app(self, scope: dict[str, object], receive: object, send: object) -> None:
        import json

        if scope["type"] == "lifespan":
            while True:
                event = await receive()  # type: ignore[operator]
                kind = event["type"].rsplit(".", 1)[-1]
                await send({"type": f"{event['type']}.complete"})  # type: ignore[operator]
                if kind == "shutdown":
                    return
        body = b""
        while True:
            message = await receive()  # type: ignore[operator]
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}  # type: ignore[attr-defined]
        signature = headers.get("webhook-signature", "")
        self.received.append(
            {
                "body": json.loads(body),
                "raw": body,
                "signature": signature,
                "verified": await self.verify(body, signature),
                "at": trio.current_time(),
            }
        )
        self._arrived.set()
        status, reply = self.replies.pop(0) if self.replies else self.default
        hold = self.holds.get(len(self.received))
        if hold is not None:
            await hold.wait()
        await send(
            {
                "type": "http.response.start",
                "status": status,  # type: ignore[operator]
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(reply).encode()})  # type: ignore[operator]

    async def verify(self, body: bytes, header: str) -> bool:
        import base64
        import time

        import httpx
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        m = re.fullmatch(r"t=(\d+),kid=([^,]+),ed25519=([A-Za-z0-9_-]+)", header)
        if not m or self.jwks_url is None:
            return False
        t, kid, sig = m.groups()
        if abs(time.time() - int(t)) > 300:
            return False
        async with httpx.AsyncClient() as http:
            keys = (await http.get(self.jwks_url)).json()["keys"]
        key = next((k for k in keys if k["kid"] == kid), None)
        if key is None:
            return False

        def unb64(s: str) -> bytes:
            return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

        try:
            Ed25519PublicKey.from_public_bytes(unb64(key["x"])).verify(unb64(sig), f"{t}.".encode() + body)
        except InvalidSignature:
            return False
        return True

    async def next(self, count: int, timeout: float = 20.0) -> dict[str, object]:
        """The ``count``-th request (1-based), waiting for it."""
        with trio.fail_after(timeout):
            while len(self.received) < count:
                self._arrived = trio.Event()
                await self._arrived.wait()
        return self.received[count - 1]

    async def run(self, *, task_status: trio.TaskStatus[WebhookReceiver] = trio.TASK_STATUS_IGNORED) -> None:
        from hypercorn.config import Config
        from hypercorn.trio import serve

        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 0.1

        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, self.app, config, mode="asgi"))  # type: ignore[arg-type]
            self.url = binds[0] + "/hook"
            task_status.started(self)
