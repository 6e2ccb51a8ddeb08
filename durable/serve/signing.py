"""Webhook signing (protocol 6.5 and 7.1): the server's Ed25519 keys, kept in PostgreSQL (private keys
never leave the server; they survive restarts and are shared by every server on the schema), the JWK
Set that publishes the public keys, and the ``Webhook-Signature`` header.

    Webhook-Signature: t=<unix seconds>,kid=<key id>,ed25519=<base64url signature of "<t>.<raw body>">
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..sql import Q
from ..streams.store import Store

ALG = "ed25519"


def b64url(data: bytes) -> str:
    """``data`` in base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint_kid(x: str) -> str:
    """``ds_`` + the RFC 7638 thumbprint of the Ed25519 public key ``x``: stable, derived from the key."""
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True)
    return "ds_" + b64url(hashlib.sha256(canonical.encode()).digest())


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One Ed25519 webhook signing key: its key id, private key and public ``x``."""

    kid: str
    private: Ed25519PrivateKey
    x: str

    def jwk(self) -> dict[str, str]:
        """The public key as a JWK."""
        return {"kty": "OKP", "crv": "Ed25519", "kid": self.kid, "use": "sig", "alg": "EdDSA", "x": self.x}


class Signer:
    """Signs with the oldest live key; publishes every live key."""

    def __init__(self, keys: list[SigningKey]) -> None:
        assert keys
        self.keys = keys
        self.active = keys[0]

    @classmethod
    async def load(cls, store: Store) -> Signer:
        """The signer of the schema's keys (one is generated and stored when there is none)."""
        rows = await store.one("fetch", Q.signing_keys)
        if not rows:
            private = Ed25519PrivateKey.generate()
            raw = private.private_bytes_raw()
            x = b64url(private.public_key().public_bytes_raw())
            await store.one("execute", Q.signing_key_insert, thumbprint_kid(x), raw, x)
            rows = await store.one("fetch", Q.signing_keys)
        return cls(
            [SigningKey(r["kid"], Ed25519PrivateKey.from_private_bytes(bytes(r["private_key"])), r["x"]) for r in rows]
        )

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """Every live public key, as a JWKS document."""
        return {"keys": [k.jwk() for k in self.keys]}

    def signature(self, body: bytes, timestamp: int | None = None) -> str:
        """The ``Webhook-Signature`` header value for ``body``."""
        t = int(time.time()) if timestamp is None else timestamp
        sig = self.active.private.sign(f"{t}.".encode() + body)
        return f"t={t},kid={self.active.kid},{ALG}={b64url(sig)}"
