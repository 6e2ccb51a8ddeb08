"""The reserved ``__ds`` control API (protocol 6 and 7), routed before any stream operation.

    {root}/__ds/jwks.json                            GET     webhook signing keys (JWK Set)
    {root}/__ds/subscriptions/{id}                   PUT     create (201) / re-confirm (200) / 409
                                                     GET     the subscription with its stream cursors
                                                     DELETE  tombstone (204)
    {root}/__ds/subscriptions/{id}/streams           POST    add explicit streams (204)
    {root}/__ds/subscriptions/{id}/streams/{path}    DELETE  remove an explicit stream (204)
    {root}/__ds/subscriptions/{id}/callback          POST    webhook callback (callback token)
    {root}/__ds/subscriptions/{id}/claim             POST    pull-wake claim
    {root}/__ds/subscriptions/{id}/ack               POST    pull-wake ack / heartbeat (claim token)
    {root}/__ds/subscriptions/{id}/release           POST    pull-wake release (claim token)

``root`` is the URL path before the ``__ds`` segment; stream paths in bodies are relative to it. Errors
are ``{"error": {"code": ..., "message": ...}}`` with the protocol's status codes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import DatabaseUnavailable
from ..streams.errors import SubscriptionError, invalid
from ..streams.subscription_store import SubscriptionStore, View
from ..streams.subscriptions import check_id, check_relative, parse_config, parse_stream_list
from ..streams.text import load_json
from ..streams.tokens import CALLBACK
from ..streams.wakes import AckRequest, Wakes
from .dispatcher import Dispatcher
from .signing import ALG, Signer
from .webhooks import check_webhook_url, control_url

MAX_BODY = 1 << 20
ACTIONS = ("callback", "claim", "ack", "release")


@dataclass(frozen=True, slots=True)
class Call:
    """One request to a subscription: the request, its stream root, the subscription name, the origin."""

    request: Request
    root: str
    name: str
    origin: str


def method_not_allowed(allowed: str) -> SubscriptionError:
    """405 METHOD_NOT_ALLOWED naming the ``allowed`` methods (and an Allow header)."""
    return SubscriptionError(405, "METHOD_NOT_ALLOWED", f"method not allowed here (allowed: {allowed})", allow=allowed)


class SubscriptionEndpoints:
    """The subscription API under ``__ds`` (protocol 6-7): PUT/GET/DELETE a subscription, webhook
    callbacks, and pull-wake claim, ack and release."""

    def __init__(
        self,
        subs: SubscriptionStore,
        wakes: Wakes,
        signer: Signer,
        dispatcher: Dispatcher,
        *,
        allow_dev_webhooks: bool = True,
        public_url: str | None = None,
    ) -> None:
        self.subs = subs
        self.wakes = wakes
        self.signer = signer
        self.dispatcher = dispatcher
        self.allow_dev_webhooks = allow_dev_webhooks
        self.public_url = public_url.rstrip("/") if public_url else None

    async def __call__(self, request: Request, root: str, rest: list[str]) -> Response:
        try:
            return await self._route(request, root, rest)
        except SubscriptionError as exc:
            headers = {"allow": str(exc.extra["allow"])} if "allow" in exc.extra else None
            return JSONResponse(exc.body(), status_code=exc.status, headers=headers)
        except DatabaseUnavailable as exc:
            return JSONResponse(
                {"error": {"code": "UNAVAILABLE", "message": str(exc)}}, status_code=503, headers={"retry-after": "1"}
            )

    def origin(self, request: Request) -> str:
        """The base of callback and JWKS URLs: ``public_url``, else the request's own origin."""
        return self.public_url or f"{request.url.scheme}://{request.url.netloc}"

    async def _route(self, request: Request, root: str, rest: list[str]) -> Response:
        method = request.method
        if rest == ["jwks.json"]:
            if method not in ("GET", "HEAD"):
                raise method_not_allowed("GET, HEAD")
            return JSONResponse(
                self.signer.jwks(),
                media_type="application/jwk-set+json",
                headers={"cache-control": "public, max-age=300"},
            )
        if len(rest) < 2 or rest[0] != "subscriptions":
            raise SubscriptionError(404, "NOT_FOUND", "unknown control path under __ds")
        call = Call(request, root, check_id(rest[1]), self.origin(request))
        tail = rest[2:]
        if not tail:
            handlers: dict[str, Callable[[Call], Awaitable[Response]]] = {
                "PUT": self.put,
                "GET": self.get,
                "DELETE": self.delete,
            }
            if method not in handlers:
                raise method_not_allowed("PUT, GET, DELETE")
            return await handlers[method](call)
        if tail[0] == "streams":
            if len(tail) == 1:
                if method != "POST":
                    raise method_not_allowed("POST")
                await self.subs.add_streams(root, call.name, parse_stream_list(await _body(request)))
                return Response(status_code=204)
            if method != "DELETE":
                raise method_not_allowed("DELETE")
            await self.subs.remove_stream(root, call.name, check_relative("/".join(tail[1:])))
            return Response(status_code=204)
        if len(tail) == 1 and tail[0] in ACTIONS:
            if method != "POST":
                raise method_not_allowed("POST")
            response: Response = await getattr(self, tail[0])(call)
            return response
        raise SubscriptionError(404, "NOT_FOUND", f"unknown subscription endpoint {'/'.join(tail)!r}")

    # -- configuration ------------------------------------------------------------------------------
    async def put(self, call: Call) -> Response:
        """PUT: create the subscription, or match an existing one of the same configuration."""
        config = parse_config(await _body(call.request))
        if config.webhook_url is not None:
            check_webhook_url(config.webhook_url, allow_dev=self.allow_dev_webhooks)
        view, created = await self.subs.put(call.root, call.name, config, call.origin)
        self.dispatcher.kick(view.sub.id)
        return JSONResponse(self.render(view, call.origin), status_code=201 if created else 200)

    async def get(self, call: Call) -> Response:
        """GET: the subscription with its links."""
        return JSONResponse(self.render(await self.subs.get(call.root, call.name), call.origin))

    async def delete(self, call: Call) -> Response:
        """DELETE: remove the subscription."""
        await self.subs.delete(call.root, call.name)
        return Response(status_code=204)

    def render(self, view: View, origin: str) -> dict[str, object]:
        """The subscription as the protocol's JSON object."""
        sub = view.sub
        webhook: dict[str, object] | None = None
        if sub.webhook_url is not None:
            webhook = {
                "url": sub.webhook_url,
                "signing": {
                    "alg": ALG,
                    "kid": self.signer.active.kid,
                    "jwks_url": control_url(origin, sub.root, "jwks.json"),
                },
            }
        created = sub.created_at.astimezone(UTC)
        out: dict[str, object] = {
            "id": sub.name,
            "subscription_id": sub.name,
            "type": sub.type,
            "pattern": sub.pattern,
            "streams": [link.json(sub.root) for link in view.links],
            "webhook": webhook,
            "wake_stream": sub.wake_stream,
            "lease_ttl_ms": sub.lease_ttl_ms,
            "created_at": created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{created.microsecond // 1000:03d}Z",
            "status": sub.status,
            "description": sub.description,
            "generation": sub.generation,
        }
        if sub.last_error is not None:
            out["last_error"] = sub.last_error
        return out

    # -- delivery -----------------------------------------------------------------------------------
    async def callback(self, call: Call) -> Response:
        """A webhook consumer's callback (acks, done), checked against its callback token."""
        req = AckRequest.parse(await _body(call.request))
        auth = call.request.headers.get("authorization")
        next_wake, sub_id = await self.wakes.ack(call.root, call.name, auth, req, use=CALLBACK)
        if req.done and next_wake:
            self.dispatcher.kick(sub_id)  # the new wake goes out by webhook
        return JSONResponse({"ok": True, "next_wake": next_wake})

    async def claim(self, call: Call) -> Response:
        """Pull-wake: claim the subscription's pending wake (a lease for one holder)."""
        body = await _body(call.request)
        try:
            data = load_json(body) if body.strip() else None
        except ValueError as exc:
            raise invalid(str(exc)) from None
        worker = data.get("worker") if isinstance(data, dict) else None
        if not isinstance(worker, str) or not worker or len(worker) > 200:
            raise invalid('body must be {"worker": "<name>"} (1-200 characters)')
        wake = await self.wakes.claim(call.root, call.name, worker)
        return JSONResponse(
            {
                "wake_id": wake.wake_id,
                "generation": wake.generation,
                "token": wake.token,
                "streams": wake.streams_json(),
                "lease_ttl_ms": wake.sub.lease_ttl_ms,
            }
        )

    async def ack(self, call: Call) -> Response:
        """Pull-wake: acknowledge offsets of the claimed wake."""
        req = AckRequest.parse(await _body(call.request))
        next_wake, _ = await self.wakes.ack(call.root, call.name, call.request.headers.get("authorization"), req)
        return JSONResponse({"ok": True, "next_wake": next_wake})

    async def release(self, call: Call) -> Response:
        """Pull-wake: give the claimed wake back."""
        req = AckRequest.parse(await _body(call.request), release=True)
        await self.wakes.release(call.root, call.name, call.request.headers.get("authorization"), req)
        return Response(status_code=204)


async def _body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= MAX_BODY:
            chunks.append(chunk)
    if size > MAX_BODY:
        raise SubscriptionError(413, "TOO_LARGE", f"request body above {MAX_BODY} bytes")
    return b"".join(chunks)
