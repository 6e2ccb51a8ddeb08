"""What stands between hostile input and a 500: checks every request passes before it is routed, and the
answers to errors that escape an endpoint.

:class:`Guard` (ASGI middleware) answers ``400`` to a path with NUL (``%00``) or whose percent-encoding
is not UTF-8 (it would be silently changed to U+FFFD), ``413`` to a ``Content-Length`` above the limit
at once, before any of the body is read (what still comes is discarded, so the client can read the
answer), and ``408`` to a body that has not fully arrived within
``body_timeout`` seconds of the request (a trickling body, slowloris); the connection is then closed.
An answer that starts before its request's body was read (a 401, an error raised before the body) says
``Connection: close``: the server closes such a connection once the answer ends, and a client told nothing
would send its next request into that close ("Server disconnected without sending a response").
A slow request head is bounded by the keep-alive timeout (75 s): a connection counts as idle until its
request head is complete (hypercorn's ``keep_alive_timeout``; on the uvicorn front,
:func:`durable.serve.front.bounded_heads`).

:func:`exception_handlers` answer what escapes an endpoint: a :class:`StreamError` with its status,
a PostgreSQL data error (SQLSTATE class 22: a value it cannot take, e.g. NUL, out of range) ``400``,
a program limit (class 54) ``413``, an unreachable database ``503``, and anything else ``500`` with a
one-line body (the traceback goes to the log, never to the client).

Errors are rendered as each surface renders its own (:func:`problem`): the control API as
``{"error": {"code", "message"}}``, the signal endpoint as ``{"error": message}``, streams and an
instance's history as a ``text/plain`` message (the protocol asks clients not to parse it), the explicit
pipeline's routes (durable/serve/claims.py) as ``{"error": message}``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .._pg import ProgramLimitExceededError, ServerDataError
from ..errors import DatabaseUnavailable
from ..streams.errors import RequestTimeout, StreamError
from ..streams.subscriptions import RESERVED
from ..streams.text import parse_decimal

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGI = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("durable.serve")

SIGNAL_ROUTE = re.compile(r"/instances/[0-9]+/signals/[^/]*")
# the explicit pipeline's routes (durable/serve/claims.py): their errors are JSON, like a signal's
CLAIM_ROUTE = re.compile(
    r"/queues/[^/]+/claims|/instances"
    r"|/instances/[0-9]+/(transition|complete|retry|fail|release|extend)"
)
CONTROL_CODES = {
    400: "INVALID_REQUEST",
    404: "NOT_FOUND",
    408: "REQUEST_TIMEOUT",
    409: "CONFLICT",
    410: "GONE",
    413: "TOO_LARGE",
    500: "INTERNAL_ERROR",
    503: "UNAVAILABLE",
}


def is_control(path: str) -> bool:
    """Whether ``path`` is under a reserved ``__ds`` control segment (the subscription API)."""
    return RESERVED in path.split("/")


def problem(path: str, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error response in the format of the surface ``path`` belongs to."""
    if is_control(path):
        code = CONTROL_CODES.get(status, "ERROR")
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)
    if SIGNAL_ROUTE.fullmatch(path) or CLAIM_ROUTE.fullmatch(path):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return Response(message, status_code=status, headers=headers, media_type="text/plain")


def content_length(scope: Scope) -> int | None:
    """The request's Content-Length (None when absent)."""
    for name, value in scope.get("headers", ()):
        if bytes(name).lower() == b"content-length":
            # h11 already refused a malformed one; one past 2^63-1 is simply too large
            length = parse_decimal(bytes(value).decode("latin-1").strip())
            return 1 << 63 if length is None else length
    return None


def path_problem(scope: Scope) -> str | None:
    """Why the request path cannot name anything, or None."""
    if "\x00" in scope["path"]:
        return "the request path contains NUL (%00)"
    raw = scope.get("raw_path")
    if raw:
        try:
            unquote_to_bytes(bytes(raw)).decode("utf-8")
        except UnicodeDecodeError:
            return "the request path is not UTF-8 once percent-decoded"
    return None


class CloseUnread:
    """ASGI middleware (outermost): an answer that starts while its request's body is still unread says
    ``Connection: close`` (see the module's docstring)."""

    def __init__(self, app: ASGI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", ())
        pending = (content_length(scope) or 0) > 0 or any(bytes(k).lower() == b"transfer-encoding" for k, _ in headers)

        async def receive_tracked() -> Message:
            nonlocal pending
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                pending = False
            return message

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and pending:
                kept = [(k, v) for k, v in message.get("headers", ()) if bytes(k).lower() != b"connection"]
                message = {**message, "headers": [*kept, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive_tracked, send_closing)


class Guard:
    """The checks every HTTP request passes before it is routed (see the module's docstring).
    ``max_body``: the limit of stream and signal bodies; ``max_control_body``: of ``__ds`` bodies."""

    def __init__(self, app: ASGI, *, max_body: int, max_control_body: int, body_timeout: float) -> None:
        self.app = app
        self.max_body = max_body
        self.max_control_body = max_control_body
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        bad_path = path_problem(scope)
        if bad_path is not None:
            await problem(path, 400, bad_path)(scope, receive, send)
            return
        limit = self.max_control_body if is_control(path) else self.max_body
        length = content_length(scope)
        if length is not None and length > limit:
            message = f"request body of {length} bytes is above the limit of {limit} bytes"
            await self._refuse(problem(path, 413, message, {"connection": "close"}), receive, send)
            return
        await self.app(scope, self._in_time(receive), send)

    async def _refuse(self, response: Response, receive: Receive, send: Send) -> None:
        """Answer at once, before any of the body is read, then discard what the client still sends
        (until the body deadline) before ending the answer: a client that writes its body without
        waiting (no ``Expect: 100-continue``) would otherwise hit a closed connection and never read it
        (RFC 9112 9.6, "lingering close"). Nothing is buffered."""
        await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body, "more_body": True})
        with anyio.CancelScope(deadline=anyio.current_time() + self.body_timeout):
            while True:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _in_time(self, receive: Receive) -> Receive:
        """``receive`` that raises RequestTimeout when the body is not complete by the deadline;
        after the body (a disconnect watch of a long-poll or SSE answer) it waits as long as it must."""
        deadline = anyio.current_time() + self.body_timeout
        complete = False

        async def receive_in_time() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            with anyio.CancelScope(deadline=deadline):
                message = await receive()
                complete = message["type"] != "http.request" or not message.get("more_body", False)
                return message
            complete = True
            raise RequestTimeout(f"request body not complete within {self.body_timeout:g} s", {"connection": "close"})

        return receive_in_time


async def _stream_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StreamError)
    return problem(request.url.path, exc.status, exc.message, exc.headers)


async def _unavailable(request: Request, exc: Exception) -> Response:
    return problem(request.url.path, 503, str(exc), {"retry-after": "1"})


async def _data_error(request: Request, exc: Exception) -> Response:
    """PostgreSQL (or the driver, encoding a parameter) refused a value: it came from the request."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    log.info("%s %s: a value PostgreSQL refused: %s", request.method, request.url.path, message)
    return problem(request.url.path, 400, f"invalid input: {message}")


async def _limit_error(request: Request, exc: Exception) -> Response:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    log.info("%s %s: input past a PostgreSQL limit: %s", request.method, request.url.path, message)
    return problem(request.url.path, 413, f"input too large for PostgreSQL: {message}")


async def _server_error(request: Request, exc: Exception) -> Response:
    # the traceback is logged by the server (Starlette re-raises after this answer)
    return problem(request.url.path, 500, "internal server error (logged on the server)")


def exception_handlers() -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """Starlette's handlers of what escapes an endpoint: a StreamError with its status, an unreachable
    database as 503, a value or size PostgreSQL refuses as a client error, anything else as a 500; each
    in the error format of its surface (:func:`problem`)."""
    return {
        StreamError: _stream_error,
        DatabaseUnavailable: _unavailable,
        ServerDataError: _data_error,
        ProgramLimitExceededError: _limit_error,
        Exception: _server_error,
    }
