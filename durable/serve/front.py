"""``durable serve``'s HTTP front: uvicorn (httptools, uvloop when installed) on a plain asyncio loop in a
thread of its own, with a native asyncpg pool (:meth:`durable._pg.Pool.open_native`, pinned connections,
group commit of appends).

Why: hypercorn on trio costs 0.46-0.71 ms of CPU per request for an empty answer, uvicorn on uvloop
0.09-0.15 ms (PERFORMANCE.md, "Durable Streams: the HTTP stack"), and the trio-asyncio bridge adds its own
per statement. So the hot path of the protocol runs on the front: appends and closes (POST), catch-up
reads (GET without ``live``) and HEAD, through the same :class:`~durable.streams.store.Store` and the same
:class:`~durable.serve.streams.StreamEndpoints` code as before. Every other request (creates, deletes,
long-poll and SSE reads, the ``__ds`` subscription API, the engine's ``/instances`` and ``/queues`` routes)
is handed to the trio side's app, unchanged, by :class:`TrioBridge`: the trio side keeps the hub of live
readers, the webhook dispatcher and the engine's Database. Appends NOTIFY as before; the front LISTENs
(:meth:`Front._listen`) and hands the trio side's hub the notifications it wants (a reader waits on the
stream, or the dispatcher is active), so an append nobody waits for does not wake the trio thread. The
access control, the request guard and the common headers run on the front, once, for every request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import sniffio
import trio

from .._pg import LISTEN_CHECK, Pool, connection_closed
from ..streams.store import Store
from ..streams.subscriptions import RESERVED
from .hub import Handover, Hub, stream_id
from .streams import Settings, StreamEndpoints

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGI = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("durable.serve")
ENGINE_PREFIXES = ("/instances", "/queues", "/openapi.json")


def on_front(scope: Scope) -> bool:
    """Whether the front answers this request itself: an append or close, a catch-up read or a HEAD of
    a stream. ``live`` anywhere in the query (long-poll, SSE) goes to the trio side, which waits on the
    hub; so do the engine's routes and the ``__ds`` API."""
    if scope["type"] != "http" or scope["method"] not in ("POST", "GET", "HEAD"):
        return False
    path: str = scope["path"]
    if path.startswith(ENGINE_PREFIXES) or RESERVED in path.split("/"):
        return False
    return not (scope["method"] == "GET" and b"live" in scope.get("query_string", b""))


class Unwatched(Hub):
    """The front's hub: nothing waits on the front (live reads are the trio side's), so nothing is kept."""

    def subscribe(self, stream_id: int) -> trio.Event:
        """A fresh event nothing keeps."""
        return trio.Event()

    def notify(self, stream_id: int) -> None:
        """Nothing waits here: nothing to do."""
        pass


async def from_asyncio(loop: asyncio.AbstractEventLoop, call: Awaitable[Any]) -> Any:
    """In trio: run ``call`` (a coroutine) on the front's asyncio loop and wait for its result."""
    future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(call, loop)  # type: ignore[arg-type]
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def settled(_: concurrent.futures.Future[Any]) -> None:
        try:
            token.run_sync_soon(done.set)
        except trio.RunFinishedError:
            pass

    future.add_done_callback(settled)
    try:
        await done.wait()
    except trio.Cancelled:
        future.cancel()
        raise
    return future.result()


class TrioBridge:
    """An ASGI app on the front that runs ``app`` (an ASGI app of the trio side) in the trio thread, in
    ``nursery``: its ``receive`` and ``send`` come back to the front's loop. A request the front drops
    (the client went away, the front stops) cancels its trio task."""

    def __init__(self, app: ASGI, token: trio.lowlevel.TrioToken, nursery: trio.Nursery) -> None:
        self.app = app
        self.token = token
        self.nursery = nursery
        # the context of the trio task that made the bridge (it holds trio-asyncio's loop): the request
        # tasks are spawned in a copy of it, not in run_sync_soon's bare one
        self.context = contextvars.copy_context()

    def _spawn(self, task: Callable[[], Awaitable[None]]) -> None:
        self.context.copy().run(self.nursery.start_soon, task)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        scopes: list[trio.CancelScope] = []

        def settle(error: BaseException | None) -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        async def in_trio() -> None:
            with trio.CancelScope() as cancel:
                scopes.append(cancel)

                async def trio_receive() -> Message:
                    return await from_asyncio(loop, receive())  # type: ignore[no-any-return]

                async def trio_send(message: Message) -> None:
                    await from_asyncio(loop, send(message))

                try:
                    await self.app(scope, trio_receive, trio_send)
                except trio.Cancelled:
                    loop.call_soon_threadsafe(settle, asyncio.CancelledError())
                    raise
                except BaseException as exc:  # answered (500) by the app's error middleware; the front logs it
                    loop.call_soon_threadsafe(settle, exc)
                    return
                loop.call_soon_threadsafe(settle, None)
            if cancel.cancelled_caught:
                loop.call_soon_threadsafe(settle, asyncio.CancelledError())

        try:
            self.token.run_sync_soon(self._spawn, in_trio)
        except trio.RunFinishedError:
            await send({"type": "http.response.start", "status": 503, "headers": [(b"retry-after", b"1")]})
            await send({"type": "http.response.body", "body": b"server stopping"})
            return
        try:
            await done
        except asyncio.CancelledError:

            def cancel() -> None:
                for cancel_scope in scopes:
                    cancel_scope.cancel()

            try:
                self.token.run_sync_soon(cancel)
            except trio.RunFinishedError:
                pass
            raise


class Router:
    """The front's router: :func:`on_front` requests to ``here``, the rest to ``there`` (the bridge)."""

    def __init__(self, here: ASGI, there: ASGI) -> None:
        self.here = here
        self.there = there

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if on_front(scope):
            await self.here(scope, receive, send)
        else:
            await self.there(scope, receive, send)


class CutOff:
    """A request the server's stop cuts off: answered ``503`` (``Retry-After: 1``, "server stopping") when
    nothing of its answer was sent yet, its answer ended when it was, instead of uvicorn's ``500`` and a
    traceback logged as a server fault. Only the stop cancels a request: uvicorn cancels the front's own
    requests after its graceful second, the trio side's nursery its requests at once (the bridge hands
    their cancellation back); a client that goes away cancels nothing."""

    def __init__(self, app: ASGI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = ended = False

        async def tracked(message: Message) -> None:
            nonlocal started, ended
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                ended = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if ended:
                return
            with contextlib.suppress(Exception):  # the connection may be gone already
                if not started:
                    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"1")]
                    await send({"type": "http.response.start", "status": 503, "headers": headers})
                    await send({"type": "http.response.body", "body": b"server stopping"})
                else:
                    await send({"type": "http.response.body", "body": b""})


def bounded_heads() -> type:
    """uvicorn's httptools protocol with hypercorn's bound on a request head: a connection counts as idle
    from when it opens, or its last answer ends, until its next request head is complete, and is closed
    after the keep-alive timeout (75 s) of that. uvicorn alone times out only the gap after an answer,
    and any byte restarts it: a head sent a byte at a time (slowloris) would hold its connection forever."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHeads(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

    return BoundedHeads


def bind(host: str, port: int) -> tuple[socket.socket, str]:
    """A listening socket on ``host:port`` (port 0: any free one) and the server's URL."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if family == socket.AF_INET6 else bound_host
    return sock, f"http://{shown}:{bound_port}"


class Front:
    """The front's thread: :meth:`start` (from trio) runs it until :meth:`stop`. ``wrap`` puts the
    access control, the guard and the common headers around the front's router. With ``hub`` (the
    trio side's), the front LISTENs on the schema's channel and hands the hub the notifications it
    wants (:meth:`_listen`)."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        settings: Settings,
        sock: socket.socket,
        wrap: Callable[[ASGI], ASGI],
        bridge: ASGI,
        pooler: str | None = None,
        hub: Hub | None = None,
    ) -> None:
        self.dsn = dsn
        self.hub = hub
        self.token = trio.lowlevel.current_trio_token()
        self.pooler = pooler
        self.schema = schema
        self.settings = settings
        self.sock = sock
        self.wrap = wrap
        self.bridge = bridge
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.store: Store | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._pool: Pool | None = None
        self._terminated = False
        self._thread = threading.Thread(target=self._run, name="durable-serve-front", daemon=True)

    async def start(self) -> None:
        """Start the thread and wait until it listens; its start-up error (PostgreSQL unreachable) is raised."""
        self._thread.start()
        await trio.to_thread.run_sync(self.started.wait, abandon_on_cancel=True)
        if self.error is not None:
            raise self.error

    async def wait(self) -> None:
        """Until the front's thread ends (it does only when stopped or broken): then raise."""
        await trio.to_thread.run_sync(self._thread.join, abandon_on_cancel=True)
        raise RuntimeError("durable serve: the HTTP front stopped (see the log above)")

    async def stop(self) -> None:
        """Stop listening, finish (at most 1 s) the requests in flight, close the pool, join the thread
        (15 s at most: then its connections are closed at once, and it gets 5 s more)."""
        loop, server = self._loop, self._server
        if loop is not None and server is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(setattr, server, "should_exit", True)
            except RuntimeError:  # the loop already ended
                pass
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join, 15)
            if self._thread.is_alive():  # a statement waits on a lock, or on a database that does not answer
                self.terminate()
                await trio.to_thread.run_sync(self._thread.join, 5)

    def terminate(self) -> None:
        """Close the front's connections at once (serve()'s stop_timeout, from the trio side): a statement
        that keeps the front's stop waiting (a group commit's batch behind a row lock, written shielded
        after uvicorn cut its requests off) then ends with an error, and PostgreSQL ends it on its side
        (client_connection_check_interval). A pool opened later is closed as soon as it opens."""
        self._terminated = True
        loop, pool = self._loop, self._pool
        if loop is None or pool is None:
            return
        try:
            loop.call_soon_threadsafe(pool.terminate)
        except RuntimeError:  # the loop already ended
            pass

    def _run(self) -> None:
        # this thread runs asyncio only: say so to sniffio, which anyio asks on every call (the store's
        # events, cancel scopes and clocks). Unset, it sniffs with asyncio.current_task(), which
        # trio-asyncio replaces process-wide by a function that first tries trio's current task and
        # raises and catches a RuntimeError here: 14 % of the front's samples under 1 writer's appends
        sniffio.thread_local.name = "asyncio"
        loop: asyncio.AbstractEventLoop
        try:
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:
            if not self.started.is_set():
                self.error = exc
            else:
                log.exception("durable serve: the HTTP front stopped")
        finally:
            self.started.set()
            loop.close()

    async def _main(self) -> None:
        import uvicorn

        settings = self.settings
        pool = await Pool.open_native(
            self.dsn,
            self.schema,
            min_size=1,
            max_size=settings.connections + 3,
            pooler=self.pooler,
            client_check=True,
        )
        self._pool = pool
        if self._terminated:  # the stop's bound passed while the pool opened
            pool.terminate()
        listening: asyncio.Future[None] | None = None
        try:
            store = self.store = Store(pool)
            if self.hub is not None:
                ready = asyncio.Event()
                listening = asyncio.ensure_future(self._listen(pool, store.channel, self.hub, ready))
                await asyncio.wait_for(ready.wait(), 60)
            async with store.pinned(settings.connections, group_commit=True):
                here = StreamEndpoints(store, Unwatched(), settings, None)

                from starlette.requests import Request

                from .guard import exception_handlers

                handlers = exception_handlers()

                async def stream_route(scope: Scope, receive: Receive, send: Send) -> None:
                    request = Request(scope, receive)
                    try:
                        response = await here(request)
                    except Exception as exc:  # the trio side's Starlette handlers, in the same order
                        handler = next(h for kind, h in handlers.items() if isinstance(exc, kind))
                        response = await handler(request, exc)
                        if handler is handlers[Exception]:
                            log.error("%s %s", scope["method"], scope["path"], exc_info=exc)
                    await response(scope, receive, send)

                app = self.wrap(CutOff(Router(stream_route, self.bridge)))
                config = uvicorn.Config(
                    app,
                    http=bounded_heads(),
                    loop="none",
                    lifespan="off",
                    access_log=False,
                    log_config=None,
                    log_level="warning",
                    timeout_keep_alive=75,
                    timeout_graceful_shutdown=1,
                    server_header=False,
                    date_header=True,
                    proxy_headers=False,
                )
                server = self._server = uvicorn.Server(config)
                serving = asyncio.ensure_future(server.serve(sockets=[self.sock]))
                while not server.started and not serving.done():  # noqa: ASYNC110 (uvicorn has no started event)
                    await asyncio.sleep(0.005)
                self.started.set()
                await serving
        finally:
            if listening is not None:
                listening.cancel()
                await asyncio.gather(listening, return_exceptions=True)
            await pool.close_native()

    def _to_trio(self, call: Callable[..., None], *args: Any) -> None:
        try:
            self.token.run_sync_soon(call, *args)
        except trio.RunFinishedError:  # the trio side is stopping
            pass

    async def _listen(self, pool: Pool, channel: str, hub: Hub, ready: asyncio.Event) -> None:
        """LISTEN on ``channel`` on a connection of the front's pool until cancelled (again after a lost
        connection, then every reader is woken: anything may have been appended meanwhile), and hand
        the trio side's hub each notification :meth:`Hub.wants`: a reader waits on that stream, or the
        subscription dispatcher is active. The rest is dropped here, on the front's loop: with nobody
        waiting, an append's NOTIFY no longer wakes the trio thread (which then held the GIL 0.3 ms per
        append, py-spy --gil, one writer). Through a :class:`Handover`: one callback in trio at a time,
        however many NOTIFYs arrive."""
        handover = Handover(hub, self._to_trio)

        def notified(_con: object, _pid: int, _channel: str, payload: str) -> None:
            if (sid := stream_id(payload)) is not None and hub.wants(sid):
                handover.notify(sid)

        while True:
            lost = asyncio.Event()
            try:
                con = await pool.raw.acquire()
            except Exception as exc:  # the server is away: readers poll meanwhile (long-poll timeouts)
                log.warning("durable serve: cannot LISTEN (%s); trying again in 1 s", exc)
                await asyncio.sleep(1)
                continue
            try:
                con.add_termination_listener(lambda _con, lost=lost: lost.set())
                await con.add_listener(channel, notified)
                handover.notify_all()  # whatever was appended while nobody listened
                ready.set()
                while not connection_closed(con) and not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), LISTEN_CHECK)
                    except TimeoutError:
                        pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("durable serve: LISTEN failed (%s); trying again in 1 s", exc)
                await asyncio.sleep(1)
            finally:
                # never back to the pool with a listener on it: terminated, the pool replaces it; a lost
                # connection's proxy asyncpg already took back refuses both calls
                with contextlib.suppress(Exception):
                    con.terminate()
                with contextlib.suppress(Exception):
                    await pool.raw.release(con)
