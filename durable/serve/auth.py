"""Access control of ``durable serve`` (protocol 12.1): shared bearer tokens (``--token``).

With tokens configured, every request that creates, modifies or deletes something (any method but
GET, HEAD and OPTIONS) needs ``Authorization: Bearer <token>``; with ``protect_reads`` GET and HEAD need
it too. CORS preflights (OPTIONS) never do: :class:`durable.serve.server.CommonHeaders` answers them
before this runs. The webhook callback and the pull-wake ack and release carry their own callback or
claim token in ``Authorization`` (checked by the control API), so they are exempt; the claim endpoint
is not (its ``Authorization`` is the protocol's service token).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ..streams.subscriptions import RESERVED

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGI = Callable[[Scope, Receive, Send], Awaitable[None]]

READ_METHODS = frozenset({"GET", "HEAD"})
OWN_TOKEN_ACTIONS = frozenset({"callback", "ack", "release"})  # callback or claim token, checked later
MESSAGE = "unauthorized: send Authorization: Bearer <token> (a token given to durable serve --token)"


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 and ::1 (brackets allowed)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def own_token_endpoint(path: str) -> bool:
    """``{root}/__ds/subscriptions/{id}/callback|ack|release``: authorized by its own token."""
    segments = path.split("/")
    if RESERVED not in segments:
        return False
    rest = segments[segments.index(RESERVED) + 1 :]
    return len(rest) == 3 and rest[0] == "subscriptions" and rest[2] in OWN_TOKEN_ACTIONS


def bearer(scope: Scope) -> bytes | None:
    """The token of the request's ``Authorization: Bearer <token>``, or None."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            scheme, _, token = bytes(value).strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


class AccessControl:
    """ASGI middleware: 401 (``WWW-Authenticate: Bearer``) for a protected request without a valid token."""

    def __init__(self, app: ASGI, tokens: Iterable[str], *, protect_reads: bool = False) -> None:
        self.app = app
        self.tokens = [t.encode("utf-8") for t in tokens]
        self.protect_reads = protect_reads

    def needs_token(self, scope: Scope) -> bool:
        """Whether this request needs a bearer token (writes; reads too with ``protect_reads``)."""
        method = scope["method"]
        if method == "OPTIONS":
            return False
        if method in READ_METHODS and not self.protect_reads:
            return False
        return not own_token_endpoint(scope["path"])

    def authorized(self, scope: Scope) -> bool:
        """Whether the request carries one of the configured tokens (compared in constant time)."""
        given = bearer(scope)
        if given is None:
            return False
        ok = False
        for token in self.tokens:  # every token compared: the time does not tell which one matched
            ok |= hmac.compare_digest(given, token)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.tokens or not self.needs_token(scope) or self.authorized(scope):
            await self.app(scope, receive, send)
            return
        if RESERVED in scope["path"].split("/"):  # the control API answers errors as JSON
            body = json.dumps({"error": {"code": "UNAUTHORIZED", "message": MESSAGE}}).encode()
            content_type = b"application/json"
        else:
            body = MESSAGE.encode() + b"\n"
            content_type = b"text/plain; charset=utf-8"
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"www-authenticate", b'Bearer realm="durable"'),
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
