"""Callback and claim tokens (protocol 7.1-7.3): ``base64url(json).base64url(hmac-sha256)``, scoped to
one subscription (its row id), one generation and one wake. A token proves only that this server issued
it for that wake; whether the wake is still current is checked against the subscription's state, so a
token of an old wake is answered ``409 FENCED`` and a forged or foreign one ``401``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass

from .errors import SubscriptionError

CALLBACK = "callback"  # a webhook wake's callback_token
CLAIM = "claim"  # a pull-wake claim's token


@dataclass(frozen=True, slots=True)
class Token:
    """What a callback or wake token grants: one subscription, generation, wake id and use."""

    subscription: int
    generation: int
    wake_id: str
    use: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(secret: bytes, token: Token) -> str:
    """``token`` signed with ``secret`` (HMAC-SHA256) as ``payload.mac`` in base64url."""
    payload = _b64(
        json.dumps(
            {"sid": token.subscription, "gen": token.generation, "wid": token.wake_id, "use": token.use},
            separators=(",", ":"),
        ).encode()
    )
    mac = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def unauthorized(message: str) -> SubscriptionError:
    """401 UNAUTHORIZED with ``message``."""
    return SubscriptionError(401, "UNAUTHORIZED", message)


def verify(secret: bytes, authorization: str | None, subscription: int, use: str) -> Token:
    """The token of an ``Authorization: Bearer`` header, checked for this subscription and use."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise unauthorized("Authorization: Bearer <token> is required")
    text = authorization[7:].strip()
    payload, _, mac = text.partition(".")
    # The MAC is compared as text with its one canonical spelling: base64 decoding ignores the unused low bits
    # of the last character, so comparing decoded bytes would accept several spellings of one token.
    expected = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())
    good = hmac.compare_digest(mac.encode(), expected.encode())
    try:
        data = json.loads(_unb64(payload)) if good else None
    except (ValueError, TypeError):
        good, data = False, None
    if not good or not isinstance(data, dict):
        raise unauthorized("invalid token")
    token = Token(data.get("sid"), data.get("gen"), data.get("wid"), data.get("use"))  # type: ignore[arg-type]
    if token.subscription != subscription:
        raise unauthorized("the token is for another subscription")
    if token.use != use:
        raise unauthorized(f"this endpoint needs a {use} token")
    return token
