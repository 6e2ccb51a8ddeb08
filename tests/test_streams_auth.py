"""Access control of ``durable serve`` (``--token``, ``--protect-reads``, ``--insecure-no-auth``) against
real server subprocesses: writes need a bearer token, reads only with --protect-reads, CORS preflights
never, webhook callbacks and pull-wake acks and releases keep their own tokens, and a server without a
token refuses a non-loopback interface."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .test_streams_subscriptions import eventually, receiver, sub_url, unique, wake_events
from .test_streams_util import ServeProcess, new_schema, serving

pytestmark = pytest.mark.trio

ROOT = "/v1/stream"
TOKEN, OTHER = "s3cret-token", "another-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def guarded(pg_dsn: str) -> Iterator[ServeProcess]:
    """Writes need TOKEN or OTHER (two --token options); reads are open."""
    with serving(pg_dsn, "--long-poll-timeout", "0.5", "--token", TOKEN, "--token", OTHER) as s:
        yield s


@pytest.fixture(scope="module")
def locked(pg_dsn: str) -> Iterator[ServeProcess]:
    """--protect-reads, the tokens from DURABLE_SERVE_TOKEN (whitespace-separated)."""
    with serving(
        pg_dsn, "--long-poll-timeout", "0.5", "--protect-reads", env={"DURABLE_SERVE_TOKEN": f"{TOKEN} {OTHER}"}
    ) as s:
        yield s


def unauthorized(r: httpx.Response) -> bool:
    return (
        r.status_code == 401
        and r.headers.get("www-authenticate", "").startswith("Bearer")
        and r.headers.get("access-control-allow-origin") == "*"
    )


def preflight_ok(r: httpx.Response) -> bool:
    allowed = {h.strip().lower() for h in r.headers.get("access-control-allow-headers", "").split(",")}
    return r.status_code == 204 and "authorization" in allowed and "PUT" in r.headers["access-control-allow-methods"]


PREFLIGHT = {
    "origin": "https://app.example",
    "access-control-request-method": "PUT",
    "access-control-request-headers": "authorization, content-type",
}


async def test_writes_need_the_token_reads_do_not(guarded: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=guarded.url, timeout=10) as http:
        path = f"{ROOT}/{unique('auth')}"
        missing = await http.put(path, content=b"[]", headers=JSON)
        assert unauthorized(missing)
        assert missing.text.count("\n") <= 1 and "Bearer" in missing.text
        for bad in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN, "Bearer", f"Bearer  x{TOKEN}"):
            assert unauthorized(await http.put(path, content=b"[]", headers={**JSON, "authorization": bad})), bad
        assert (await http.head(path)).status_code == 404  # nothing was created

        created = await http.put(path, content=b"[]", headers={**JSON, **AUTH})
        assert created.status_code == 201, created.text
        other = {"authorization": f"bearer {OTHER}"}  # the second token; the scheme is case-insensitive
        assert unauthorized(await http.post(path, content=b'{"n":1}', headers=JSON))
        assert (await http.post(path, content=b'{"n":1}', headers={**JSON, **other})).status_code in (200, 204)

        # reads stay open: catch-up, HEAD, long-poll, SSE
        read = await http.get(path, params={"offset": "-1"})
        assert read.status_code == 200 and read.json() == [{"n": 1}]
        assert (await http.head(path)).status_code == 200
        tail = read.headers["stream-next-offset"]
        assert (await http.get(path, params={"offset": tail, "live": "long-poll"})).status_code == 204
        async with http.stream("GET", path, params={"offset": "-1", "live": "sse"}) as sse:
            assert sse.status_code == 200
            async for line in sse.aiter_lines():
                if line.startswith("event: control"):
                    break

        # preflights never need the token and allow Authorization
        assert preflight_ok(await http.options(path, headers=PREFLIGHT))

        assert unauthorized(await http.delete(path))
        assert (await http.delete(path, headers=AUTH)).status_code == 204

        # engine signals are writes too
        signal = "/instances/999999999/signals/go"
        assert unauthorized(await http.post(signal, json={"x": 1}))
        assert (await http.post(signal, json={"x": 1}, headers=AUTH)).status_code != 401


async def test_subscription_control_needs_the_token(guarded: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=guarded.url, timeout=10) as http:
        ns, name, pool = unique("pull"), unique("sub"), unique("wake")
        assert (await http.put(f"{ROOT}/{pool}", content=b"[]", headers={**JSON, **AUTH})).status_code == 201
        config = json.dumps({"type": "pull-wake", "pattern": f"{ns}/*", "wake_stream": pool, "lease_ttl_ms": 5000})
        denied = await http.put(sub_url(name), content=config, headers=JSON)
        assert unauthorized(denied) and denied.json()["error"]["code"] == "UNAUTHORIZED"
        assert (await http.put(sub_url(name), content=config, headers={**JSON, **AUTH})).status_code == 201
        assert (await http.get(sub_url(name))).status_code == 200  # a read
        assert (await http.get(f"{ROOT}/__ds/jwks.json")).status_code == 200

        extra = {"streams": ["other/x"]}
        assert unauthorized(await http.post(sub_url(name, "streams"), json=extra))
        assert (await http.post(sub_url(name, "streams"), json=extra, headers=AUTH)).status_code == 204
        assert unauthorized(await http.delete(sub_url(name, "streams", "other%2Fx")))
        assert (await http.delete(sub_url(name, "streams", "other%2Fx"), headers=AUTH)).status_code == 204

        # the claim needs the service token; ack and release carry the claim token instead
        r = await http.put(f"{ROOT}/{ns}/a", content=b'[{"n":1}]', headers={**JSON, **AUTH})
        tail = r.headers["stream-next-offset"]
        await eventually(lambda: wake_events(http, pool, name))
        assert unauthorized(await http.post(sub_url(name, "claim"), json={"worker": "w1"}))
        wrong = await http.post(sub_url(name, "claim"), json={"worker": "w1"}, headers={"authorization": "Bearer nope"})
        assert unauthorized(wrong)
        claim = await http.post(sub_url(name, "claim"), json={"worker": "w1"}, headers=AUTH)
        assert claim.status_code == 200, claim.text
        c = claim.json()
        current = {"wake_id": c["wake_id"], "generation": c["generation"]}
        by_claim = {"authorization": f"Bearer {c['token']}"}
        beat = await http.post(sub_url(name, "ack"), json=current, headers=by_claim)
        assert beat.status_code == 200, beat.text
        # the service token is not a claim token: the control API's own 401
        assert (await http.post(sub_url(name, "ack"), json=current, headers=AUTH)).status_code == 401
        assert (await http.post(sub_url(name, "release"), json=current, headers=by_claim)).status_code == 204
        c2 = (await http.post(sub_url(name, "claim"), json={"worker": "w2"}, headers=AUTH)).json()
        done = await http.post(
            sub_url(name, "ack"),
            headers={"authorization": f"Bearer {c2['token']}"},
            json={
                "wake_id": c2["wake_id"],
                "generation": c2["generation"],
                "acks": [{"stream": f"{ns}/a", "offset": tail}],
                "done": True,
            },
        )
        assert done.json() == {"ok": True, "next_wake": False}

        assert unauthorized(await http.delete(sub_url(name)))
        assert (await http.delete(sub_url(name), headers=AUTH)).status_code == 204


async def test_webhook_callbacks_keep_their_own_token(guarded: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=guarded.url, timeout=10) as http, receiver(guarded.url) as hook:
        ns, name = unique("cb"), unique("sub")
        hook.replies = [(200, {})]  # the receiver calls back later
        r = await http.put(
            sub_url(name),
            headers={**JSON, **AUTH},
            content=json.dumps(
                {"type": "webhook", "pattern": f"{ns}/*", "webhook": {"url": hook.url}, "lease_ttl_ms": 5000}
            ),
        )
        assert r.status_code == 201, r.text
        tail = (await http.put(f"{ROOT}/{ns}/a", content=b'[{"n":1}]', headers={**JSON, **AUTH})).headers[
            "stream-next-offset"
        ]
        first = await hook.next(1)
        assert first["verified"] is True  # the receiver fetched jwks.json without a token
        wake: Any = first["body"]
        done = await http.post(
            sub_url(name, "callback"),
            headers={"authorization": f"Bearer {wake['callback_token']}"},
            json={
                "wake_id": wake["wake_id"],
                "generation": wake["generation"],
                "acks": [{"stream": f"{ns}/a", "offset": tail}],
                "done": True,
            },
        )
        assert done.status_code == 200 and done.json() == {"ok": True, "next_wake": False}
        await http.delete(sub_url(name), headers=AUTH)


async def test_protect_reads(locked: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=locked.url, timeout=10) as http:
        path = f"{ROOT}/{unique('locked')}"
        assert unauthorized(await http.put(path, content=b"[1]", headers=JSON))
        assert (await http.put(path, content=b"[1]", headers={**JSON, **AUTH})).status_code == 201
        assert unauthorized(await http.get(path, params={"offset": "-1"}))
        head = await http.head(path)
        assert unauthorized(head) and head.content == b""
        assert unauthorized(await http.get(path, params={"offset": "-1", "live": "long-poll"}))
        assert unauthorized(await http.get(f"{ROOT}/__ds/jwks.json"))
        other = {"authorization": f"Bearer {OTHER}"}
        read = await http.get(path, params={"offset": "-1"}, headers=other)
        assert read.status_code == 200 and read.json() == [1]
        assert (await http.head(path, headers=AUTH)).status_code == 200
        assert (await http.get(f"{ROOT}/__ds/jwks.json", headers=AUTH)).status_code == 200
        assert preflight_ok(await http.options(path, headers=PREFLIGHT))
        # a claim-token endpoint still answers for itself (its 404: no such subscription), not with our 401
        ack = await http.post(
            sub_url(unique("none"), "ack"),
            json={"wake_id": "w", "generation": 1},
            headers={"authorization": "Bearer claim"},
        )
        assert "www-authenticate" not in ack.headers


def serve_cmd(pg_dsn: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DURABLE_SERVE_TOKEN"}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from durable.cli import main; main()",
            "serve",
            "--port",
            "0",
            "--dsn",
            pg_dsn,
            "--schema",
            new_schema(),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


@pytest.fixture
def insecure(pg_dsn: str) -> Iterator[ServeProcess]:
    """No token, every interface: --insecure-no-auth."""
    with serving(pg_dsn, "--host", "0.0.0.0", "--insecure-no-auth") as s:
        yield s


async def test_no_token_refuses_a_non_loopback_interface(pg_dsn: str, insecure: ServeProcess) -> None:
    for host in ("0.0.0.0", "::", "example.com"):
        refused = serve_cmd(pg_dsn, "--host", host)
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and host in lines[0], lines
        assert "--token" in lines[0] and "--insecure-no-auth" in lines[0]
    no_token = serve_cmd(pg_dsn, "--protect-reads")
    assert no_token.returncode == 2 and "--protect-reads needs --token" in no_token.stderr

    # --insecure-no-auth: it starts on every interface and takes writes without a token
    assert insecure.url.startswith("http://0.0.0.0:")
    port = insecure.url.rsplit(":", 1)[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        r = await http.put(f"{ROOT}/{unique('open')}", content=b"[]", headers=JSON)
        assert r.status_code == 201, r.text


async def test_a_refusal_before_the_body_closes_the_connection(guarded: ServeProcess) -> None:
    """A 401 answers before the request's body is read; hypercorn then closes the connection, so the answer
    says ``Connection: close`` (a client told nothing sent its next request into that close: "Server
    disconnected without sending a response", once under load). An answer after the body keeps it open."""
    async with httpx.AsyncClient(base_url=guarded.url, timeout=10) as http:
        path = f"{ROOT}/{unique('close')}"
        denied = await http.put(path, content=b'[{"n":1}]', headers=JSON)
        assert unauthorized(denied) and denied.headers.get("connection") == "close"
        created = await http.put(path, content=b'[{"n":1}]', headers={**JSON, **AUTH})
        assert created.status_code == 201 and created.headers.get("connection") != "close"
        read = await http.get(path, params={"offset": "-1"})  # no body: nothing to close for
        assert read.status_code == 200 and read.headers.get("connection") != "close"
