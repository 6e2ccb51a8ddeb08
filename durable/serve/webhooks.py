"""Webhook delivery (protocol 7.1): the URL policy against SSRF, the signed POST of a wake, the reply
(``{"done": true}`` acks the wake's snapshot at once) and the retry backoff after a failure (1 s doubling
up to 60 s, 20 % jitter; the schedule is stored with the subscription, so a restarted server keeps it)."""

from __future__ import annotations

import ipaddress
import json
import random
from urllib.parse import quote, urlsplit

import httpx
import trio

from ..streams.errors import SubscriptionError
from ..streams.wakes import Wake, Wakes
from .signing import Signer

BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0
JITTER = 0.2


def rejected(message: str) -> SubscriptionError:
    """400 WEBHOOK_URL_REJECTED with ``message``."""
    return SubscriptionError(400, "WEBHOOK_URL_REJECTED", message)


def is_dev_host(host: str) -> bool:
    """The development exception: ``localhost`` and ``127.0.0.x``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network("127.0.0.0/24")
    except ValueError:
        return False


def check_webhook_url(url: str, *, allow_dev: bool = True) -> str:
    """``https://`` to a public host; ``http(s)://localhost`` or ``127.0.0.x`` only when ``allow_dev``.
    Private (RFC 1918), loopback, link-local and other non-global addresses are rejected (400
    ``WEBHOOK_URL_REJECTED``)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise rejected(f"invalid webhook URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise rejected("webhook URL must be an absolute https:// URL")
    if parts.username is not None or parts.password is not None:
        raise rejected("webhook URL must not carry credentials")
    if is_dev_host(host):
        if not allow_dev:
            raise rejected(f"local webhook targets ({host}) are disabled on this server")
        return url
    if parts.scheme != "https":
        raise rejected("webhook URL must use https:// (http:// only for localhost and 127.0.0.x)")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        lowered = host.lower().rstrip(".")
        if lowered.endswith((".localhost", ".local", ".internal", ".localdomain")) or "." not in lowered:
            raise rejected(f"webhook host {host!r} is a local network name") from None
        return url
    if not address.is_global:
        raise rejected(f"webhook host {host} is a private, loopback or link-local address")
    return url


async def check_resolved(url: str, *, allow_dev: bool) -> None:
    """At delivery: a host name must not resolve to a non-global address (DNS pointing inside)."""
    host = urlsplit(url).hostname or ""
    if is_dev_host(host) and allow_dev:
        return
    try:
        ipaddress.ip_address(host)
        return  # a literal, checked when the subscription was created
    except ValueError:
        pass
    infos = await trio.socket.getaddrinfo(host, None)
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise OSError(f"webhook host {host} resolves to non-global address {address}")


def backoff(failures: int) -> float:
    """Seconds before the next attempt after ``failures`` consecutive failed deliveries."""
    base = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** max(0, failures - 1))
    return base * random.uniform(1 - JITTER, 1 + JITTER)


def control_url(origin: str, root: str, *parts: str) -> str:
    """The URL of a control endpoint (``<origin><root>/__ds/<parts>``), each part quoted."""
    return origin + quote(root) + "/__ds/" + "/".join(quote(p, safe="") for p in parts)


class Deliverer:
    """Sends wakes to webhooks: signed POSTs (Ed25519) with a callback token, bounded by ``timeout``; the
    outcome is recorded through :class:`~durable.streams.wakes.Wakes`."""

    def __init__(
        self, wakes: Wakes, signer: Signer, http: httpx.AsyncClient, *, timeout: float, allow_dev: bool
    ) -> None:
        self.wakes = wakes
        self.signer = signer
        self.http = http
        self.timeout = timeout
        self.allow_dev = allow_dev

    def body(self, wake: Wake) -> bytes:
        """The JSON body of ``wake``'s webhook POST."""
        sub = wake.sub
        return json.dumps(
            {
                "subscription_id": sub.name,
                "wake_id": wake.wake_id,
                "generation": wake.generation,
                "streams": wake.streams_json(),
                "callback_url": control_url(sub.origin, sub.root, "subscriptions", sub.name, "callback"),
                "callback_token": wake.token,
            },
            separators=(",", ":"),
        ).encode()

    async def deliver(self, wake: Wake) -> bool:
        """POST the wake, signed. True when the receiver answered ``{"done": true}`` and the wake's
        snapshot was acked (the subscription is idle again); a failure schedules the retry."""
        url = wake.sub.webhook_url
        assert url is not None
        body = self.body(wake)
        headers = {"content-type": "application/json", "webhook-signature": self.signer.signature(body)}
        timeout = min(self.timeout, wake.sub.lease_ttl_ms / 1000)
        try:
            await check_resolved(url, allow_dev=self.allow_dev)
            response = await self.http.post(url, content=body, headers=headers, timeout=timeout)
        except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as exc:
            await self._failed(wake, f"{type(exc).__name__}: {exc}")
            return False
        if not 200 <= response.status_code < 300:
            await self._failed(wake, f"HTTP {response.status_code}")
            return False
        await self.wakes.delivered(wake)
        try:
            reply = response.json()
        except ValueError:
            reply = None
        if isinstance(reply, dict) and reply.get("done") is True:
            return await self.wakes.auto_ack(wake)
        return False  # asynchronous: the receiver calls back (or the lease expires)

    async def _failed(self, wake: Wake, error: str) -> None:
        delay = backoff(wake.sub.failed_attempts + 1)
        await self.wakes.delivery_failed(wake, int(delay * 1000), error)
