"""``durable console --web``: the same Textual app served to browsers by textual-serve.

Each browser tab (one websocket) gets its own ``durable console`` process, started by textual-serve with
Textual's web driver; the database target travels in the environment (``DURABLE_DSN``/``DURABLE_SCHEMA``),
never on a command line.

Access follows ``durable serve``: without a token the server listens on loopback only (``--insecure-no-auth``
overrides); with ``--token`` every request needs it (``?token=`` once, then an HttpOnly cookie; or
``Authorization: Bearer``). The websocket also refuses a cross-site ``Origin``, so a web page open in the
same browser cannot drive a loopback console.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import shlex
import socket
import sys
from typing import Any
from urllib.parse import urlsplit

import click
from aiohttp import web
from textual_serve.server import Server

COOKIE = "durable_console_token"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_access(host: str, token: str | None, insecure_no_auth: bool) -> None:
    """The token rule of ``durable serve``: beyond loopback only with a token or an explicit opt-out."""
    if not token and not insecure_no_auth and not is_loopback(host):
        raise ValueError(
            f"refusing to serve the console on {host} without access control: pass --token TOKEN "
            "(or set DURABLE_CONSOLE_TOKEN), or --insecure-no-auth"
        )


class ConsoleServer(Server):
    """textual-serve's server with durable's access rules, links built from the request's own address
    (so any interface works), one startup line instead of the logo, and ``port=0`` (any free port)."""

    def __init__(self, command: str, host: str, port: int, token: str | None, title: str) -> None:
        super().__init__(command, host=host, port=port, title=title)
        self.token = token
        self.listening: socket.socket | None = None

    def initialize_logging(self) -> None:  # textual-serve's rich log handler would print every session
        pass

    def bind(self) -> str:
        """Listen now (so ``port=0`` resolves) and return the URL."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        sock.setblocking(False)
        self.listening = sock
        self.port = sock.getsockname()[1]
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.public_url = f"http://{shown}:{self.port}"
        return self.public_url

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(self._guard)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/ws":
            origin = request.headers.get("Origin")
            if origin is not None and urlsplit(origin).netloc != request.host:
                raise web.HTTPForbidden(text="cross-origin websocket refused")
        if self.token is None:
            return await handler(request)
        offered = request.query.get("token")
        if offered is not None and _same(offered, self.token):
            # once in the URL, then a cookie (and the token leaves the address bar)
            target = request.rel_url.without_query_params("token")
            response = web.HTTPFound(str(target))
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict")
            raise response
        auth = request.headers.get("Authorization", "")
        bearer = auth[7:] if auth.startswith("Bearer ") else None
        cookie = request.cookies.get(COOKIE)
        if any(v is not None and _same(v, self.token) for v in (bearer, cookie)):
            return await handler(request)
        raise web.HTTPUnauthorized(text="durable console: token required (open the URL with ?token=TOKEN)")

    async def handle_index(self, request: web.Request) -> Any:
        self.public_url = f"{request.scheme}://{request.host}"  # the address the browser used
        return await super().handle_index(request)

    async def on_startup(self, app: web.Application) -> None:
        pass

    def serve(self, debug: bool = False) -> None:
        import asyncio
        import signal

        assert self.listening is not None, "bind() first"
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_exit)
        web.run_app(
            self._make_app(),
            sock=self.listening,
            handle_signals=False,
            loop=loop,
            print=lambda *args: None,
            shutdown_timeout=5,
        )


def _same(offered: str, token: str) -> bool:
    return hmac.compare_digest(offered.encode(), token.encode())


def session_command(refresh: float, gone_after: float, timeout: float) -> str:
    """What textual-serve runs for each browser tab: this Python, ``durable console`` in the foreground."""
    return shlex.join(
        [
            sys.executable,
            "-m",
            "durable.console",
            "--refresh",
            f"{refresh:g}",
            "--gone-after",
            f"{gone_after:g}",
            "--timeout",
            f"{timeout:g}",
        ]
    )


def serve(
    dsn: str, schema: str, *, host: str, port: int, token: str | None, refresh: float, gone_after: float, timeout: float
) -> None:
    os.environ["DURABLE_DSN"] = dsn  # inherited by each tab's console process (not on its command line)
    os.environ["DURABLE_SCHEMA"] = schema
    os.environ.pop("DURABLE_CONSOLE_TOKEN", None)
    server = ConsoleServer(
        session_command(refresh, gone_after, timeout), host, port, token, title=f"durable console ({schema})"
    )
    try:
        url = server.bind()
    except OSError as exc:
        click.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        sys.exit(1)
    access = (
        "token required" if token else "no access control: loopback only" if is_loopback(host) else "no access control"
    )
    click.echo(f"durable console: serving on {url}/ (schema {schema}; {access}); Ctrl-C stops", err=True)
    server.serve()
