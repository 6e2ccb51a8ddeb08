"""Callback and claim tokens (durable/streams/tokens.py): one spelling per token, bound to its secret,
subscription and use; anything else is 401 UNAUTHORIZED."""

from __future__ import annotations

import base64
import string

import pytest

from durable.streams.errors import SubscriptionError
from durable.streams.tokens import CALLBACK, CLAIM, Token, issue, verify

SECRET = b"s" * 32
ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def rejected(authorization: str | None, subscription: int = 7, use: str = CALLBACK) -> str:
    with pytest.raises(SubscriptionError) as caught:
        verify(SECRET, authorization, subscription, use)
    assert caught.value.status == 401 and caught.value.code == "UNAUTHORIZED"
    return str(caught.value)


def test_an_issued_token_verifies_as_what_it_was_issued_for() -> None:
    token = Token(7, 3, "w_1", CALLBACK)
    assert verify(SECRET, f"Bearer {issue(SECRET, token)}", 7, CALLBACK) == token
    assert verify(SECRET, f"bearer  {issue(SECRET, token)} ", 7, CALLBACK) == token


def test_every_other_spelling_of_the_mac_is_rejected() -> None:
    """The MAC's last base64 character has unused low bits: spellings that decode to the same bytes are
    still not the token (CI once saw a forged token answered 200 this way)."""
    text = issue(SECRET, Token(7, 3, "w_1", CALLBACK))
    payload, mac = text.split(".")
    same_bytes = [c for c in ALPHABET if c != mac[-1] and _decoded(mac[:-1] + c) == _decoded(mac)]
    assert same_bytes, "a 32-byte MAC leaves unused bits in its last character"
    for c in same_bytes:
        rejected(f"Bearer {payload}.{mac[:-1]}{c}")
    for i in range(len(mac)):
        other = "B" if mac[i] == "A" else "A"
        rejected(f"Bearer {payload}.{mac[:i]}{other}{mac[i + 1 :]}")
    rejected(f"Bearer {payload}.{mac}=")
    rejected(f"Bearer {payload}.{mac[:-1]}")


def _decoded(mac: str) -> bytes:
    return base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4))


def test_foreign_tampered_and_malformed_tokens_are_rejected() -> None:
    token = issue(SECRET, Token(7, 3, "w_1", CALLBACK))
    payload, mac = token.split(".")
    assert "invalid token" in rejected(f"Bearer {issue(b'other' * 8, Token(7, 3, 'w_1', CALLBACK))}")
    tampered = base64.urlsafe_b64encode(b'{"sid":7,"gen":4,"wid":"w_1","use":"callback"}').rstrip(b"=").decode()
    assert "invalid token" in rejected(f"Bearer {tampered}.{mac}")
    for bad in (None, "", "Bearer", "Bearer ", "Basic abc", f"Bearer {payload}", "Bearer ...", "Bearer é.é"):
        rejected(bad)
    assert "another subscription" in rejected(f"Bearer {token}", subscription=8)
    assert f"needs a {CLAIM} token" in rejected(f"Bearer {token}", use=CLAIM)
