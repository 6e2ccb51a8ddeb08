"""Subscriptions of ``durable serve`` (protocol 6-7) against a real server subprocess and PostgreSQL:
configuration and validation, JWKS, signed webhooks received by a real HTTP server that verifies them,
callbacks with generation fencing, lease expiry and retry re-delivery, pull-wake claim/ack/release, and
state that survives a SIGKILL of the server."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
import pytest
import trio

import durable
from durable._pg import Pool
from durable.sql import Query
from durable.streams import CreateSpec, Store
from durable.streams.subscription_store import SubscriptionStore
from durable.streams.subscriptions import Config

from .test_streams_util import ServeProcess, WebhookReceiver, drop, new_schema, serving

pytestmark = pytest.mark.trio
T = TypeVar("T")

ROOT = "/v1/stream"
# The lease of the tests that wait for one to expire. A holder's requests between two renewals (up to six,
# and a webhook's delivery with its receiver's JWKS fetch) must fit in it: 1 s left a loaded box little
# slack (a webhook delivery's timeout is its lease, too), so 3 s.
SHORT_MS = 3000
LEASE_MS = 30000  # where no expiry is awaited


def sub_url(name: str, *rest: str) -> str:
    return "/".join([f"{ROOT}/__ds/subscriptions/{name}", *rest])


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def server(pg_dsn: str) -> Iterator[ServeProcess]:
    with serving(pg_dsn, "--long-poll-timeout", "1") as s:
        yield s


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    """The first truthy result of ``check``, polled until ``timeout``."""
    with trio.fail_after(timeout):
        while True:
            result = await check()
            if result:
                return result
            await trio.sleep(0.05)


@asynccontextmanager
async def receiver(base_url: str) -> AsyncIterator[WebhookReceiver]:
    async with trio.open_nursery() as nursery:
        hook = await nursery.start(WebhookReceiver(f"{base_url}{ROOT}/__ds/jwks.json").run)
        try:
            yield hook
        finally:
            nursery.cancel_scope.cancel()


async def put_json(http: httpx.AsyncClient, path: str, value: object) -> httpx.Response:
    return await http.put(path, content=json.dumps(value), headers={"content-type": "application/json"})


async def append(http: httpx.AsyncClient, stream: str, value: object) -> str:
    r = await http.post(f"{ROOT}/{stream}", content=json.dumps(value), headers={"content-type": "application/json"})
    assert r.status_code in (200, 204), r.text
    return r.headers["stream-next-offset"]


async def create_stream(http: httpx.AsyncClient, stream: str, value: object | None = None) -> str:
    r = await put_json(http, f"{ROOT}/{stream}", value if value is not None else [])
    assert r.status_code == 201, r.text
    return r.headers["stream-next-offset"]


def forge(token: str) -> str:
    """``token`` with its MAC's first character changed: always another MAC (that character carries six bits)."""
    payload, mac = token.split(".")
    return f"{payload}.{'B' if mac[0] == 'A' else 'A'}{mac[1:]}"


def error_code(r: httpx.Response) -> str:
    return r.json()["error"]["code"]  # type: ignore[no-any-return]


async def test_configuration_membership_validation_and_jwks(server: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        ns = unique("cfg")
        old_tail = await create_stream(http, f"{ns}/old", {"n": 1})
        name = unique("sub")
        config = {
            "type": "webhook",
            "pattern": f"{ns}/*",
            "streams": [f"{ns}/old", "elsewhere/x"],
            "webhook": {"url": "https://hooks.example.com/in"},
            "lease_ttl_ms": 5000,
            "description": "cfg test",
        }
        created = await put_json(http, sub_url(name), config)
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["id"] == body["subscription_id"] == name and body["status"] == "active"
        assert body["webhook"]["url"] == "https://hooks.example.com/in"
        signing = body["webhook"]["signing"]
        assert signing["alg"] == "ed25519" and signing["kid"].startswith("ds_")
        assert signing["jwks_url"] == f"{server.url}{ROOT}/__ds/jwks.json"
        assert "secret" not in created.text and body["wake_stream"] is None
        links = {s["path"]: s for s in body["streams"]}
        # the existing stream is linked at its tail (no replay), explicit wins over glob
        assert links[f"{ns}/old"] == {"path": f"{ns}/old", "link_type": "explicit", "acked_offset": old_tail}
        assert links["elsewhere/x"]["link_type"] == "explicit"

        # re-confirmation compares the normalized config: stream order and duplicates do not matter
        again = {**config, "streams": ["elsewhere/x", f"{ns}/old", "elsewhere/x"]}
        assert (await put_json(http, sub_url(name), again)).status_code == 200
        changed = await put_json(http, sub_url(name), {**config, "description": "other"})
        assert changed.status_code == 409 and error_code(changed) == "SUBSCRIPTION_EXISTS"

        # explicit membership: add (idempotent), remove (the glob link stays), remove absent (idempotent)
        for _ in range(2):
            assert (await put_json(http, sub_url(name), config)).status_code == 200
            r = await http.post(sub_url(name, "streams"), json={"streams": ["manual/a", "manual/b"]})
            assert r.status_code == 204
        for path in (f"{ns}/old", "manual/b", "manual/never"):
            assert (await http.delete(sub_url(name, "streams", path.replace("/", "%2F")))).status_code == 204
        got = (await http.get(sub_url(name))).json()
        kinds = {s["path"]: s["link_type"] for s in got["streams"]}
        assert kinds == {f"{ns}/old": "glob", "elsewhere/x": "explicit", "manual/a": "explicit"}
        # a stream created later that matches the glob is linked at its start
        await create_stream(http, f"{ns}/new")
        got = (await http.get(sub_url(name))).json()
        assert {"path": f"{ns}/new", "link_type": "glob", "acked_offset": "0000000000000000_0000000000000000"} in got[
            "streams"
        ]

        jwks = await http.get(f"{ROOT}/__ds/jwks.json")
        assert jwks.status_code == 200
        assert jwks.headers["content-type"].startswith("application/jwk-set+json")
        assert jwks.headers["cache-control"] == "public, max-age=300"
        key = next(k for k in jwks.json()["keys"] if k["kid"] == signing["kid"])
        assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
        assert "d" not in key  # the private part never leaves the server
        head = await http.head(f"{ROOT}/__ds/jwks.json")
        assert head.status_code == 200 and head.content == b""

        bad: list[tuple[dict[str, Any], str, str]] = [
            ({"pattern": "a/*", "webhook": {"url": "https://h.example.com"}}, "INVALID_REQUEST", "type is required"),
            ({"type": "webhook", "webhook": {"url": "https://h.example.com"}}, "INVALID_REQUEST", "pattern or streams"),
            ({"type": "webhook", "pattern": "a/*"}, "INVALID_REQUEST", "webhook.url"),
            ({"type": "pull-wake", "pattern": "a/*"}, "INVALID_REQUEST", "wake_stream"),
            (
                {"type": "pull-wake", "pattern": "a/*", "wake_stream": "w", "lease_ttl_ms": 500},
                "INVALID_REQUEST",
                "lease_ttl_ms",
            ),
            ({"type": "pull-wake", "pattern": "/a/*", "wake_stream": "w"}, "INVALID_REQUEST", "stream-root-relative"),
            ({"type": "pull-wake", "pattern": "a/x**", "wake_stream": "w"}, "INVALID_REQUEST", "whole segment"),
            ({"type": "pull-wake", "streams": "a", "wake_stream": "w"}, "INVALID_REQUEST", "array"),
            ({"type": "pull-wake", "pattern": "a", "wake_stream": "w", "extra": 1}, "INVALID_REQUEST", "'extra'"),
        ]
        for url in (
            "http://10.0.0.1/hook",
            "https://192.168.1.20/hook",
            "https://169.254.169.254/latest",
            "http://hooks.example.com/in",
            "https://[::1]/hook",
            "https://10.1.2.3:8443/x",
            "https://intranet/hook",
            "ftp://hooks.example.com/",
        ):
            bad.append(({"type": "webhook", "pattern": "a/*", "webhook": {"url": url}}, "WEBHOOK_URL_REJECTED", ""))
        for config_bad, code, words in bad:
            r = await put_json(http, sub_url(unique("bad")), config_bad)
            assert r.status_code == 400 and error_code(r) == code, (config_bad, r.text)
            assert words in r.json()["error"]["message"], r.text
        assert (await http.put(sub_url("bad"), content=b"{nope")).status_code == 400
        assert error_code(await put_json(http, sub_url("bad id!"), config)) == "INVALID_REQUEST"
        assert (await http.get(sub_url("never"))).status_code == 404
        assert (await http.get(f"{ROOT}/__ds/nothing")).status_code == 404
        assert (await http.patch(sub_url(name))).status_code == 405
        # the dev exception: localhost and 127.0.0.x over plain http
        for url in ("http://localhost:9/hook", "http://127.0.0.7:9/hook"):
            dev = await put_json(
                http, sub_url(unique("dev")), {"type": "webhook", "pattern": "zz/*", "webhook": {"url": url}}
            )
            assert dev.status_code == 201, dev.text
            assert (await http.delete(sub_url(dev.json()["id"]))).status_code == 204

        # a subscription at the server's root ("/__ds/...") sees root-relative paths too
        top = await put_json(http, f"/__ds/subscriptions/{name}", {**config, "pattern": f"v1/stream/{ns}/*"})
        assert top.status_code == 201
        assert f"v1/stream/{ns}/old" in {s["path"] for s in top.json()["streams"]}

        assert (await http.delete(sub_url(name))).status_code == 204
        assert (await http.get(sub_url(name))).status_code == 404
        assert (await http.delete(sub_url(name))).status_code == 204  # tombstoned: idempotent
        assert (await http.post(sub_url(name, "streams"), json={"streams": ["a"]})).status_code == 404


async def test_webhook_signed_done_auto_acks_and_wakes_again(server: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http, receiver(server.url) as hook:
        hook.default = (200, {"done": True})
        ns, name = unique("sync"), unique("sub")
        r = await put_json(
            http,
            sub_url(name),
            # the lease only has to outlast the delivery and its {"done": true}: no expiry is awaited here
            {"type": "webhook", "pattern": f"{ns}/**", "webhook": {"url": hook.url}, "lease_ttl_ms": LEASE_MS},
        )
        assert r.status_code == 201
        tail = await create_stream(http, f"{ns}/deep/a", {"event": "created"})
        first = await hook.next(1)
        assert first["verified"] is True
        body: Any = first["body"]
        assert body["subscription_id"] == name and body["generation"] == 1
        assert body["callback_url"] == f"{server.url}{sub_url(name, 'callback')}"
        assert body["streams"] == [
            {
                "path": f"{ns}/deep/a",
                "link_type": "glob",
                "acked_offset": "0000000000000000_0000000000000000",
                "tail_offset": tail,
                "has_pending": True,
            }
        ]
        # the signature covers the exact body: a changed byte no longer verifies
        raw: bytes = first["raw"]  # type: ignore[assignment]
        assert not await hook.verify(raw.replace(b'"generation":1', b'"generation":2'), str(first["signature"]))

        async def acked(offset: str) -> bool:
            got = (await http.get(sub_url(name))).json()
            return got["streams"][0]["acked_offset"] == offset and got["status"] == "active"

        await eventually(lambda: acked(tail))
        tail2 = await append(http, f"{ns}/deep/a", {"event": "second"})
        second: Any = (await hook.next(2))["body"]
        assert second["generation"] == 2 and second["wake_id"] != body["wake_id"]
        assert second["streams"][0]["acked_offset"] == tail and second["streams"][0]["tail_offset"] == tail2
        await eventually(lambda: acked(tail2))
        await trio.sleep(0.6)  # nothing pending: no further wake
        assert len(hook.received) == 2
        await http.delete(sub_url(name))


async def test_webhook_callback_fencing_lease_expiry_and_retry(server: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http, receiver(server.url) as hook:
        ns, name = unique("cb"), unique("sub")
        await create_stream(http, f"{ns}/a")
        hook.replies = [(200, {})]  # asynchronous: the receiver calls back later
        r = await put_json(
            http,
            sub_url(name),
            {"type": "webhook", "streams": [f"{ns}/a"], "webhook": {"url": hook.url}, "lease_ttl_ms": SHORT_MS},
        )
        assert r.status_code == 201
        tail = await append(http, f"{ns}/a", {"n": 1})
        wake: Any = (await hook.next(1))["body"]
        auth = {"authorization": f"Bearer {wake['callback_token']}"}
        ack = {"stream": f"{ns}/a", "offset": tail}

        async def callback(body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
            return await http.post(sub_url(name, "callback"), json=body, headers=auth if headers is None else headers)

        heartbeat = await callback({"wake_id": wake["wake_id"], "generation": wake["generation"]})
        assert heartbeat.status_code == 200 and heartbeat.json() == {"ok": True, "next_wake": False}
        stale_gen = await callback({"wake_id": wake["wake_id"], "generation": wake["generation"] - 1})
        assert stale_gen.status_code == 409 and error_code(stale_gen) == "FENCED"
        other_wake = await callback({"wake_id": "w_other", "generation": wake["generation"]})
        assert other_wake.status_code == 409 and error_code(other_wake) == "FENCED"
        forged = await callback(
            {"wake_id": wake["wake_id"], "generation": wake["generation"]},
            {"authorization": "Bearer " + forge(wake["callback_token"])},
        )
        assert forged.status_code == 401 and error_code(forged) == "UNAUTHORIZED"
        assert (await callback({"wake_id": wake["wake_id"], "generation": 1}, {})).status_code == 401
        beyond = await callback(
            {
                "wake_id": wake["wake_id"],
                "generation": wake["generation"],
                "acks": [{"stream": f"{ns}/a", "offset": "0000000000000000_0000000000099999"}],
            }
        )
        assert beyond.status_code == 400 and "beyond the tail" in beyond.text
        unlinked = await callback(
            {
                "wake_id": wake["wake_id"],
                "generation": wake["generation"],
                "acks": [{"stream": "not/linked", "offset": tail}],
            }
        )
        assert unlinked.status_code == 400 and "not linked" in unlinked.text

        # no done within the lease: the lease expires and the work is delivered again, a new generation;
        # the retry's answer waits until the test has seen the failed status (its only window: from the 500
        # to the retry's answer, about a second of backoff)
        hook.replies = [(500, {"error": "busy"}), (200, {})]
        hook.holds[3] = answer_retry = trio.Event()
        failed: Any = await hook.next(2)
        assert failed["body"]["generation"] == wake["generation"] + 1
        assert failed["body"]["streams"][0]["acked_offset"] == "0000000000000000_0000000000000000"
        late = await callback(
            {"wake_id": wake["wake_id"], "generation": wake["generation"], "acks": [ack], "done": True}
        )
        assert late.status_code == 409 and error_code(late) == "FENCED"  # nothing acked by the zombie

        # the 500 is retried after about a second (backoff with jitter); meanwhile the status is failed
        async def failing() -> Any:
            got = (await http.get(sub_url(name))).json()
            return got if got["status"] == "failed" else None

        assert "HTTP 500" in (await eventually(failing))["last_error"]
        answer_retry.set()
        retried: Any = await hook.next(3)
        assert retried["at"] - failed["at"] >= 0.75  # type: ignore[operator]
        assert retried["body"]["generation"] == wake["generation"] + 2

        async def active() -> bool:  # once the server has the receiver's answer
            return (await http.get(sub_url(name))).json()["status"] == "active"

        await eventually(active)
        auth = {"authorization": f"Bearer {retried['body']['callback_token']}"}
        current = {"wake_id": retried["body"]["wake_id"], "generation": retried["body"]["generation"]}
        done = await callback({**current, "acks": [ack], "done": True})
        assert done.status_code == 200 and done.json() == {"ok": True, "next_wake": False}
        replay = await callback({**current, "acks": [ack], "done": True})
        assert replay.status_code == 409 and error_code(replay) == "FENCED"
        got = (await http.get(sub_url(name))).json()
        assert got["streams"][0]["acked_offset"] == tail and got["generation"] == wake["generation"] + 2
        await http.delete(sub_url(name))


async def wake_events(http: httpx.AsyncClient, stream: str, name: str) -> list[dict[str, Any]]:
    events = (await http.get(f"{ROOT}/{stream}", params={"offset": "-1"})).json()
    return [e for e in events if e["subscription_id"] == name]


async def test_pull_wake_claim_ack_release_and_lease_expiry(server: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        ns, name, pool = unique("pull"), unique("sub"), unique("wake")
        await create_stream(http, pool)
        r = await put_json(
            http,
            sub_url(name),
            {"type": "pull-wake", "pattern": f"{ns}/*", "wake_stream": pool, "lease_ttl_ms": SHORT_MS},
        )
        assert r.status_code == 201 and r.json()["wake_stream"] == pool and r.json()["webhook"] is None
        nothing = await http.post(sub_url(name, "claim"), json={"worker": "w1"})
        assert nothing.status_code == 409 and error_code(nothing) == "NO_PENDING_WORK"
        first = await create_stream(http, f"{ns}/a", {"n": 1})
        second = await append(http, f"{ns}/a", {"n": 2})
        events = await eventually(lambda: wake_events(http, pool, name))
        assert events[0]["type"] == "wake" and events[0]["stream"] == f"{ns}/a"
        generation = events[0]["generation"]

        claim = await http.post(sub_url(name, "claim"), json={"worker": "w1"})
        assert claim.status_code == 200, claim.text
        c = claim.json()
        assert c["generation"] == generation and c["lease_ttl_ms"] == SHORT_MS
        assert c["streams"][0]["has_pending"] is True
        busy = await http.post(sub_url(name, "claim"), json={"worker": "w2"})
        assert busy.status_code == 409
        assert busy.json()["error"]["code"] == "ALREADY_CLAIMED"
        assert busy.json()["error"]["current_holder"] == "w1" and busy.json()["error"]["generation"] == generation
        assert (await http.post(sub_url(name, "claim"), json={})).status_code == 400
        auth = {"authorization": f"Bearer {c['token']}"}
        current = {"wake_id": c["wake_id"], "generation": generation}

        # heartbeats keep the claim beyond its lease: four, a third of the lease apart
        for _ in range(4):
            await trio.sleep(SHORT_MS / 3000)
            beat = await http.post(sub_url(name, "ack"), json=current, headers=auth)
            assert beat.status_code == 200, beat.text
        stale = await http.post(sub_url(name, "ack"), json={**current, "generation": generation - 1}, headers=auth)
        assert stale.status_code == 409 and error_code(stale) == "FENCED"
        # done with only the first message acked: work remains, a new wake event is written at once
        partial = await http.post(
            sub_url(name, "ack"),
            headers=auth,
            json={**current, "acks": [{"stream": f"{ns}/a", "offset": first}], "done": True},
        )
        assert partial.json() == {"ok": True, "next_wake": True}
        events = await wake_events(http, pool, name)
        assert events[-1]["generation"] == generation + 1

        c2 = (await http.post(sub_url(name, "claim"), json={"worker": "w2"})).json()
        assert c2["generation"] == generation + 1
        assert c2["streams"][0]["acked_offset"] == first and c2["streams"][0]["tail_offset"] == second
        old_token = await http.post(sub_url(name, "release"), json=current, headers=auth)
        assert old_token.status_code == 409 and error_code(old_token) == "FENCED"
        auth2 = {"authorization": f"Bearer {c2['token']}"}
        released = await http.post(
            sub_url(name, "release"), headers=auth2, json={"wake_id": c2["wake_id"], "generation": c2["generation"]}
        )
        assert released.status_code == 204
        assert (await wake_events(http, pool, name))[-1]["generation"] == generation + 2  # still pending

        # a claim whose worker goes silent: the lease expires, a new wake event, the old token is fenced
        c3 = (await http.post(sub_url(name, "claim"), json={"worker": "w3"})).json()
        assert c3["generation"] == generation + 2
        await eventually(lambda: _generation_seen(http, pool, name, generation + 3))
        auth3 = {"authorization": f"Bearer {c3['token']}"}
        zombie = await http.post(
            sub_url(name, "ack"),
            headers=auth3,
            json={
                "wake_id": c3["wake_id"],
                "generation": c3["generation"],
                "acks": [{"stream": f"{ns}/a", "offset": second}],
                "done": True,
            },
        )
        assert zombie.status_code == 409 and error_code(zombie) == "FENCED"
        c4 = (await http.post(sub_url(name, "claim"), json={"worker": "w4"})).json()
        assert c4["generation"] == generation + 3 and c4["streams"][0]["acked_offset"] == first
        auth4 = {"authorization": f"Bearer {c4['token']}"}
        wrong_kind = await http.post(
            sub_url(name, "callback"), headers=auth4, json={"wake_id": c4["wake_id"], "generation": c4["generation"]}
        )
        assert wrong_kind.status_code == 401  # a claim token is not a callback token
        finished = await http.post(
            sub_url(name, "ack"),
            headers=auth4,
            json={
                "wake_id": c4["wake_id"],
                "generation": c4["generation"],
                "acks": [{"stream": f"{ns}/a", "offset": second}],
                "done": True,
            },
        )
        assert finished.json() == {"ok": True, "next_wake": False}
        assert (await http.get(sub_url(name))).json()["streams"][0]["acked_offset"] == second

        # deleted while claimed: the ack fails and moves nothing
        third = await append(http, f"{ns}/a", {"n": 3})
        c5 = await eventually(lambda: _claim(http, name, "w5"))
        assert (await http.delete(sub_url(name))).status_code == 204
        gone = await http.post(
            sub_url(name, "ack"),
            headers={"authorization": f"Bearer {c5['token']}"},
            json={
                "wake_id": c5["wake_id"],
                "generation": c5["generation"],
                "acks": [{"stream": f"{ns}/a", "offset": third}],
                "done": True,
            },
        )
        assert gone.status_code == 404
        # re-created under the same id: a new life, linked at the tail, old tokens stay fenced
        again = await put_json(
            http,
            sub_url(name),
            {"type": "pull-wake", "pattern": f"{ns}/*", "wake_stream": pool, "lease_ttl_ms": SHORT_MS},
        )
        assert again.status_code == 201 and again.json()["streams"][0]["acked_offset"] == third
        assert again.json()["generation"] >= c5["generation"]


async def _generation_seen(http: httpx.AsyncClient, pool: str, name: str, generation: int) -> bool:
    return any(e["generation"] == generation for e in await wake_events(http, pool, name))


async def _claim(http: httpx.AsyncClient, name: str, worker: str) -> dict[str, Any] | None:
    r = await http.post(sub_url(name, "claim"), json={"worker": worker})
    return r.json() if r.status_code == 200 else None  # type: ignore[no-any-return]


async def test_state_survives_a_server_kill(pg_dsn: str) -> None:
    schema = new_schema()
    first = ServeProcess(pg_dsn, schema, "--long-poll-timeout", "1")
    second = ServeProcess(pg_dsn, schema, "--long-poll-timeout", "1")
    try:
        await trio.to_thread.run_sync(first.start)
        async with httpx.AsyncClient(base_url=first.url, timeout=10) as http:
            pool = unique("wake")
            await create_stream(http, pool)
            r = await put_json(
                http,
                sub_url("keep"),
                {"type": "pull-wake", "streams": ["kept/a"], "wake_stream": pool, "lease_ttl_ms": 60000},
            )
            assert r.status_code == 201
            tail = await create_stream(http, "kept/a", {"n": 1})
            claim = await eventually(lambda: _claim(http, "keep", "w1"))
            kid = (await http.get(f"{ROOT}/__ds/jwks.json")).json()["keys"][0]["kid"]
        first.kill()
        await trio.to_thread.run_sync(second.start)
        async with httpx.AsyncClient(base_url=second.url, timeout=10) as http:
            got = (await http.get(sub_url("keep"))).json()
            assert got["generation"] == claim["generation"] and got["streams"][0]["path"] == "kept/a"
            busy = await http.post(sub_url("keep", "claim"), json={"worker": "w2"})
            assert busy.status_code == 409 and busy.json()["error"]["current_holder"] == "w1"
            assert (await http.get(f"{ROOT}/__ds/jwks.json")).json()["keys"][0]["kid"] == kid
            # the claim token of the killed server is still valid (the token key is in PostgreSQL)
            done = await http.post(
                sub_url("keep", "ack"),
                headers={"authorization": f"Bearer {claim['token']}"},
                json={
                    "wake_id": claim["wake_id"],
                    "generation": claim["generation"],
                    "acks": [{"stream": "kept/a", "offset": tail}],
                    "done": True,
                },
            )
            assert done.status_code == 200 and done.json() == {"ok": True, "next_wake": False}
            assert (await http.get(sub_url("keep"))).json()["streams"][0]["acked_offset"] == tail
    finally:
        first.stop()
        second.stop()
        await trio.to_thread.run_sync(drop, pg_dsn, schema)


# -- a stream created concurrently with a subscription is linked whichever commits first ------------------

WAITING_FOR_LINK_LOCK = Query(
    "test_waiting_for_link_lock",
    """
select exists (
  select 1 from pg_locks l
  where l.locktype = 'advisory' and not l.granted and l.objsubid = 1
    and l.database = (select oid from pg_database where datname = current_database())
    and ((l.classid::bigint << 32) | l.objid::bigint) = ds_link_lock_key()
)
""",
    "a transaction waits for this schema's subscription link lock",
)


class PauseAfter:
    """A pool gate that runs the first ``name`` statement and then holds its caller, and so the caller's
    open transaction, until ``release`` is set."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.reached = trio.Event()
        self.release = trio.Event()

    async def call(self, name: str, run: Callable[[], Awaitable[T]]) -> T:
        result = await run()
        if name == self.name and not self.reached.is_set():
            self.reached.set()
            await self.release.wait()
        return result


async def waits_for_link_lock(pool: Pool, done: trio.Event) -> bool:
    """True once a transaction of the schema waits for the link lock; False if ``done`` comes first
    (the operation went through without waiting)."""
    with trio.fail_after(10):
        while not done.is_set():
            if await pool.fetchval(WAITING_FOR_LINK_LOCK):
                return True
            await trio.sleep(0.01)
    return False


def race_config() -> Config:
    return Config(
        type="webhook",
        pattern="race/*",
        streams=(),
        webhook_url="https://hooks.example.com/in",
        wake_stream=None,
        lease_ttl_ms=30000,
        description=None,
    )


@pytest.mark.parametrize("first", ["stream", "subscription"])
async def test_a_concurrent_stream_creation_is_linked_whichever_commits_first(db: durable.Database, first: str) -> None:
    """The stream's transaction (insert + link trigger) and the subscription's (insert + backfill) overlap;
    either one is held open by a gate right after its linking statement while the other runs into it.
    Without the link lock neither sees the other's uncommitted row and the stream is never linked."""
    store = Store(db.pool)
    subs = SubscriptionStore(store)
    path = f"{ROOT}/race/a"
    put_done, create_done = trio.Event(), trio.Event()

    async def put() -> None:
        await subs.put(ROOT, "racer", race_config(), "http://test")
        put_done.set()

    async def create() -> None:
        await store.create(path, CreateSpec(content_type="application/json", body=b"[1]"))
        create_done.set()

    gate = PauseAfter("stream_insert" if first == "stream" else "sub_link_glob")
    original, db.pool.gate = db.pool.gate, gate
    try:
        async with trio.open_nursery() as nursery:
            try:
                nursery.start_soon(create if first == "stream" else put)
                await gate.reached.wait()  # the first transaction has linked and is still open
                nursery.start_soon(put if first == "stream" else create)
                # the second one waits for the first to commit instead of missing it
                assert await waits_for_link_lock(db.pool, put_done if first == "stream" else create_done)
            finally:
                gate.release.set()  # (the held transaction is shielded: never leave it waiting)
    finally:
        db.pool.gate = original

    [link] = (await subs.get(ROOT, "racer")).links
    assert (link.path, link.glob, link.explicit) == (path, True, False)
    tail = (await store.get(path)).tail
    if first == "stream":
        assert link.acked == tail  # an existing stream is linked at its tail
    else:
        assert link.acked == 0 and link.pending  # a new stream at its start: its first data is pending


async def test_a_concurrent_stream_deletion_leaves_no_glob_link(db: durable.Database) -> None:
    """The mirror case: a stream deleted (uncommitted) while a subscription backfills is not linked."""
    store = Store(db.pool)
    subs = SubscriptionStore(store)
    path = f"{ROOT}/race/gone"
    await store.create(path, CreateSpec(content_type="application/json"))
    put_done = trio.Event()

    async def put() -> None:
        await subs.put(ROOT, "racer", race_config(), "http://test")
        put_done.set()

    gate = PauseAfter("stream_delete")
    original, db.pool.gate = db.pool.gate, gate
    try:
        async with trio.open_nursery() as nursery:
            try:
                nursery.start_soon(store.delete, path)
                await gate.reached.wait()  # deleted (and unlinked) but not committed
                nursery.start_soon(put)
                assert await waits_for_link_lock(db.pool, put_done)
            finally:
                gate.release.set()
    finally:
        db.pool.gate = original
    assert (await subs.get(ROOT, "racer")).links == []
