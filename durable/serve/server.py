"""The ASGI app and its hypercorn/trio runner (trio's start protocol: ``await nursery.start(serve, ...)``)."""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import nullcontext
from functools import partial
from typing import Any, NoReturn

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._pg import Pool
from ..client import Database, connect
from ..errors import DurableError
from ..streams.store import Store
from ..streams.subscription_store import SubscriptionStore
from ..streams.wakes import Wakes
from . import openapi
from .auth import AccessControl
from .claims import ACTIONS, ClaimEndpoints
from .dispatcher import Dispatcher
from .front import Front, TrioBridge, bind
from .guard import CloseUnread, Guard, exception_handlers
from .hub import Hub
from .instances import InstanceEndpoints
from .protocol import COMMON_HEADERS
from .signing import Signer
from .streams import Settings, StreamEndpoints
from .subscriptions import MAX_BODY as MAX_CONTROL_BODY
from .subscriptions import SubscriptionEndpoints
from .webhooks import Deliverer

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGI = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]


class CommonHeaders:
    """Adds the CORS and browser security headers to every response; answers CORS preflights (before
    any access control: a preflight never carries credentials)."""

    def __init__(self, app: ASGI) -> None:
        self.app = app
        self.raw = [(k.encode(), v.encode()) for k, v in COMMON_HEADERS.items()]

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            await send({"type": "http.response.start", "status": 204, "headers": self.raw})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *((k, v) for k, v in self.raw if k not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build_app(
    db: Database, store: Store, hub: Hub, settings: Settings, control: SubscriptionEndpoints | None = None
) -> ASGI:
    """Every endpoint with its middleware (the whole server on one trio loop, as with hypercorn)."""
    app = routes(db, store, hub, settings, control)
    return middleware(app, settings)


def routes(
    db: Database, store: Store, hub: Hub, settings: Settings, control: SubscriptionEndpoints | None = None
) -> ASGI:
    """The Starlette app of every endpoint, without the middleware of :func:`middleware`."""
    streams = StreamEndpoints(store, hub, settings, control)
    instances = InstanceEndpoints(db, settings)

    async def stream_route(request: Request) -> Response:
        return await streams(request)

    claims = ClaimEndpoints(db, settings)
    spec = JSONResponse(openapi.document())

    async def openapi_route(request: Request) -> Response:
        return spec

    return Starlette(
        routes=[
            Route("/instances/{id:int}/history", instances.history, methods=["GET", "HEAD"]),
            Route("/instances/{id:int}/signals/{name}", instances.signal, methods=["POST"]),
            # the explicit pipeline (durable/serve/claims.py): these paths are the engine's, not streams
            Route("/queues/{queue}/claims", claims.claim, methods=["POST"]),
            Route("/instances", claims.insert, methods=["POST"]),
            *(Route(f"/instances/{{id:int}}/{name}", claims.action(name), methods=["POST"]) for name in ACTIONS),
            Route("/openapi.json", openapi_route, methods=["GET", "HEAD"]),
            Route("/{path:path}", stream_route, methods=ALL_METHODS),
        ],
        exception_handlers=exception_handlers(),
    )


def middleware(app: ASGI, settings: Settings) -> ASGI:
    """The request guard, the access control (with tokens) and the common headers around ``app``."""
    guarded: ASGI = Guard(
        app, max_body=settings.max_append_bytes, max_control_body=MAX_CONTROL_BODY, body_timeout=settings.body_timeout
    )
    if settings.tokens:
        guarded = AccessControl(guarded, settings.tokens, protect_reads=settings.protect_reads)
    return CommonHeaders(CloseUnread(guarded))


class Server:
    """A running ``durable serve``: its URL and its store."""

    def __init__(self, url: str, store: Store, front_store: Store | None = None) -> None:
        self.url = url
        self.store = store
        self.front_store = front_store  # the HTTP front's (appends, catch-up reads), None under hypercorn


STOP_TIMEOUT = 30.0  # seconds a stop may take: serve()'s stop_timeout, durable serve --stop-timeout


class StopTimeout(DurableError):
    """:func:`serve` was stopped and its stop took longer than its ``stop_timeout``: a statement of a request
    in flight waited on the database, and the server's connections were closed at once."""


class _StopBound:
    """Bounds a stop of :func:`serve`: once the server is cancelled, waits ``timeout`` seconds for it to end
    (``done``), then closes the connections of ``pool`` and of the HTTP front (``front``) at once. A
    request's statement is shielded from cancellation (a cut would leave its connection mid-protocol), as
    is a group commit's batch on the front, so one waiting on a lock, or on a database that does not
    answer, held the stop for as long; closed, its connection ends it with an error, and PostgreSQL (14+,
    client_connection_check_interval) ends the statement."""

    def __init__(self, pool: Pool, timeout: float) -> None:
        self.pool = pool
        self.timeout = timeout
        self.done = trio.Event()
        self.timed_out = False
        self.front: Front | None = None  # the HTTP front, whose own connections are closed too

    async def watch(self) -> None:
        """Run beside the server until it is cancelled (or fails), then bound its end."""
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self.timeout):
                    await self.done.wait()
                if not self.done.is_set():
                    self.timed_out = True
                    self.pool.terminate()
                    if self.front is not None:
                        self.front.terminate()


async def serve(
    dsn: str | None,
    schema: str,
    host: str = "127.0.0.1",
    port: int = 4437,
    *,
    settings: Settings | None = None,
    stop_timeout: float = STOP_TIMEOUT,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve Durable Streams until cancelled; ``started`` with the :class:`Server` once listening. A stop
    (cancellation) lets the requests in flight end; after ``stop_timeout`` seconds the server's connections
    are closed at once (a statement waiting on a lock or on a database that does not answer then ends with
    them) and :class:`StopTimeout` is raised."""
    if isinstance(stop_timeout, bool) or not isinstance(stop_timeout, (int, float)) or not 0 < stop_timeout < math.inf:
        raise ValueError(f"stop_timeout must be a positive, finite number of seconds, not {stop_timeout!r}")
    settings = settings or Settings()
    # client_check: a statement of a server that was killed does not run to its end after it (durable/_pg.py)
    async with connect(dsn, schema=schema, max_size=settings.connections + 8, client_check=True) as db:
        bound = _StopBound(db.pool, stop_timeout)
        try:
            async with trio.open_nursery() as bounding:
                bounding.start_soon(bound.watch)
                try:
                    await _serve(db, schema, host, port, settings, bound, task_status)
                finally:
                    bound.done.set()
        except BaseException as exc:
            if bound.timed_out:
                raise StopTimeout(
                    f"durable serve did not stop within {stop_timeout:g}s (a statement waited on the database; "
                    "its connections were closed)"
                ) from exc
            raise
    raise AssertionError("unreachable")


async def _serve(
    db: Database,
    schema: str,
    host: str,
    port: int,
    settings: Settings,
    bound: _StopBound,
    task_status: trio.TaskStatus[Server],
) -> NoReturn:
    """:func:`serve` on the open database ``db``: until cancelled (``bound`` closes the HTTP front's
    connections too)."""
    store = Store(db.pool)
    hub = Hub()
    # the trio side answers creates, deletes, live reads and the control API; appends and catch-up
    # reads go to the HTTP front (own pool) unless everything runs on hypercorn
    kept = settings.connections if http_stack() == "hypercorn" else max(2, settings.connections // 4)
    # LISTEN: with the HTTP front, on the front's loop, which hands the hub only the notifications it
    # wants (durable/serve/front.py: Front._listen); under hypercorn, or behind a transaction pooler
    # (LISTEN goes through the pool's direct connections), on the trio side
    front_listens = http_stack() == "uvicorn" and db.pool.pooler is None
    async with (
        nullcontext() if front_listens else hub.listening(db.pool, store.channel),
        store.pinned(kept),
        httpx.AsyncClient(follow_redirects=False) as http,
    ):
        config = Config()
        config.bind = [f"{host}:{port}"]
        config.accesslog = None
        config.errorlog = "-"
        config.keep_alive_timeout = 75
        config.graceful_timeout = 1
        wakes = await Wakes.load(store)
        signer = await Signer.load(store)
        deliverer = Deliverer(
            wakes, signer, http, timeout=settings.webhook_timeout, allow_dev=settings.allow_dev_webhooks
        )
        dispatcher = Dispatcher(wakes, deliverer, sweep_interval=settings.sweep_interval)
        hub.watch(dispatcher.stream_changed, interest=lambda: dispatcher.active)
        control = SubscriptionEndpoints(
            SubscriptionStore(store),
            wakes,
            signer,
            dispatcher,
            allow_dev_webhooks=settings.allow_dev_webhooks,
            public_url=settings.public_url,
        )
        inner = routes(db, store, hub, settings, control)

        async with trio.open_nursery() as nursery:
            await nursery.start(dispatcher.run)  # wakes and webhook deliveries
            if http_stack() == "hypercorn":
                binds: list[str] = await nursery.start(
                    partial(hypercorn_serve, middleware(inner, settings), config, mode="asgi")  # type: ignore[arg-type]
                )
                task_status.started(Server(binds[0], store))
                await trio.sleep_forever()
            sock, url = bind(host, port)
            bridge = TrioBridge(inner, trio.lowlevel.current_trio_token(), nursery)
            front = Front(
                db.pool.dsn,
                schema,
                settings,
                sock,
                partial(middleware, settings=settings),
                bridge,
                pooler=db.pool.pooler,
                hub=hub if front_listens else None,
            )
            bound.front = front
            try:
                await front.start()
                task_status.started(Server(url, store, front.store))
                await front.wait()
            finally:
                await front.stop()
                sock.close()
    raise AssertionError("unreachable")


def http_stack() -> str:
    """``uvicorn`` (the default: the front of durable/serve/front.py) or ``hypercorn`` (everything on trio),
    from ``$DURABLE_SERVE_HTTP``; PERFORMANCE.md has the measurements behind the default."""
    stack = os.environ.get("DURABLE_SERVE_HTTP", "uvicorn")
    if stack not in ("uvicorn", "hypercorn"):
        raise ValueError(f"DURABLE_SERVE_HTTP must be uvicorn or hypercorn, not {stack!r}")
    return stack
