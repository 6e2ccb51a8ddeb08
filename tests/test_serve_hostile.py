"""``durable serve`` never answers 500 to hostile input: each request below gets a 4xx whose body names
the problem in the format of its surface (streams: text/plain, signals: ``{"error": ...}``, the ``__ds``
control API: ``{"error": {"code", "message"}}``), stores nothing, and a server fault is a 500 without a
traceback. The server is the real ``durable serve`` subprocess; requests go over real sockets (raw ones
where the point is what happens before or while the body arrives)."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

import durable
from durable import Await, Machine, step

from .test_streams_util import ServeProcess, serving

MAX_BODY = 256 << 10  # --max-append-bytes of the server under test (DEEP fits)
CONTROL_MAX_BODY = 1 << 20
DEEP = b"[" * 100_000 + b"]" * 100_000  # a RecursionError for Python's JSON parser
HUGE = "99999999999999999999999"  # past 2^63-1
HUGE_OFFSET = "99999999999999999999_99999999999999999999"


class HostileParked(Machine, queue="hostile"):
    @step
    async def wait(self, ctx):
        return Await("go", ctx.state)


@pytest.fixture(scope="module")
def server(pg_dsn: str) -> Iterator[ServeProcess]:
    # the body timeout comes from the environment: a server without the option still starts
    with serving(
        pg_dsn, "--long-poll-timeout", "1", "--max-append-bytes", str(MAX_BODY), env={"DURABLE_SERVE_BODY_TIMEOUT": "1"}
    ) as s:
        yield s


@pytest.fixture
def http(server: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def on_db(server: ServeProcess, work: Any) -> Any:
    async def main() -> Any:
        async with durable.connect(server.dsn, schema=server.schema, migrate=False) as db:
            return await work(db)

    return trio.run(main)


def parked(server: ServeProcess) -> int:
    return on_db(server, lambda db: db.insert(HostileParked, {"n": 1}))  # type: ignore[no-any-return]


def inbox(server: ServeProcess, iid: int) -> list[Any]:
    async def work(db: durable.Database) -> list[Any]:
        return (await db.get(iid)).inbox

    return on_db(server, work)  # type: ignore[no-any-return]


def problem(r: httpx.Response, status: int, words: str) -> None:
    """A ``status`` answer whose body (for a request with a body) names the problem, never a traceback."""
    assert r.status_code == status, (r.status_code, r.text)
    assert "Traceback" not in r.text and "Internal Server Error" not in r.text, r.text
    if r.request.method == "HEAD":
        return
    if "/__ds/" in r.request.url.path:
        assert words in r.json()["error"]["message"], r.text
    elif "/signals/" in r.request.url.path:
        assert words in r.json()["error"], r.text
    else:
        assert r.headers["content-type"].startswith("text/plain") and words in r.text, r.text


def raw_exchange(server: ServeProcess, head: bytes, trickle: int = 0) -> tuple[bytes, int]:
    """Send a request head over a raw socket, then up to ``trickle`` body bytes one at a time, 0.1 s
    apart, until the server answers; the answer (read until the server closes) and the bytes sent."""
    url = urlsplit(server.url)
    assert url.hostname is not None and url.port is not None
    with socket.create_connection((url.hostname, url.port), timeout=15) as sock:
        sock.sendall(head)
        sent = 0
        while sent < trickle:
            try:
                sock.sendall(b"x")
            except OSError:
                break  # closed by the server: its answer is waiting
            sent += 1
            if select.select([sock], [], [], 0.1)[0]:
                break
        answer = b""
        while True:  # a server that waits for the body never answers: the socket timeout fails the test
            chunk = sock.recv(65536)
            if not chunk:
                return answer, sent
            answer += chunk


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def test_nul_or_non_utf8_in_a_path_is_a_400(http: httpx.Client, server: ServeProcess) -> None:
    for method in ("PUT", "POST", "GET", "HEAD", "DELETE"):
        r = http.request(
            method, "/hostile/a%00b", content=b"x" if method == "POST" else None, headers={"content-type": "text/plain"}
        )
        problem(r, 400, "NUL")
    # would be silently renamed to U+FFFD: /t/a%ffb and /t/a%feb would be one stream
    problem(http.put("/hostile/a%ffb"), 400, "not UTF-8")
    problem(http.put("/hostile/a%ed%a0%80b"), 400, "not UTF-8")  # an encoded lone surrogate
    problem(
        http.put("/v%00/__ds/subscriptions/s1", json={"type": "pull-wake", "pattern": "*", "wake_stream": "w"}),
        400,
        "NUL",
    )
    iid = parked(server)
    problem(http.post(f"/instances/{iid}/signals/a%00b", json={}), 400, "NUL")
    assert inbox(server, iid) == []
    # a path beyond latin-1 is a fine stream; its Location header is the path as the client encoded it
    created = http.put("/hostile/%E2%9C%93", headers={"content-type": "text/plain"})
    assert created.status_code == 201, created.text
    assert created.headers["location"].endswith("/hostile/%E2%9C%93")
    assert http.get("/hostile/%E2%9C%93", params={"offset": "-1"}).status_code == 200


def test_instance_ids_past_bigint_are_a_400(http: httpx.Client) -> None:
    problem(http.post(f"/instances/{HUGE}/signals/go", json={"x": 1}), 400, "out of range")
    problem(http.post(f"/instances/{2**63}/signals/go", json={}), 400, "out of range")
    problem(http.get(f"/instances/{HUGE}/history"), 400, "out of range")
    problem(http.head(f"/instances/{HUGE}/history"), 400, "")
    for live in ("long-poll", "sse"):
        problem(http.get(f"/instances/{HUGE}/history", params={"offset": "-1", "live": live}), 400, "out of range")
    assert http.get(f"/instances/{2**63 - 1}/history").status_code == 404  # in range: simply unknown


def test_signal_bodies_postgresql_cannot_store_are_a_400(http: httpx.Client, server: ServeProcess) -> None:
    iid = parked(server)
    url = f"/instances/{iid}/signals/go"
    problem(http.post(url, content=b'{"text": "a\\u0000b"}'), 400, "NUL")
    problem(http.post(url, content=b'{"a\\u0000b": 1}'), 400, "NUL")  # in a key
    problem(http.post(url, content=DEEP), 400, "nested too deeply")
    problem(http.post(url, content=b'{"x": NaN}'), 400, "NaN is not JSON")  # would be stored as null
    problem(http.post(url, content=b'{"x": 1e999}'), 400, "out of range")  # inf: also null
    assert inbox(server, iid) == []
    ok = http.post(url, content=b'{"text": "a\\\\u0000b"}')  # an escaped backslash: no NUL
    assert ok.status_code == 201, ok.text
    assert [s["payload"] for s in inbox(server, iid)] == [{"text": "a\\u0000b"}]


def test_out_of_range_expiry_is_a_400(http: httpx.Client) -> None:
    for ttl in (str(10**30), str(2**63), str(10**13)):
        problem(http.put("/hostile/ttl", headers={"stream-ttl": ttl}), 400, "Stream-TTL")
    for at in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-14:00"):
        problem(http.put("/hostile/exp", headers={"stream-expires-at": at}), 400, "Stream-Expires-At")
    assert http.head("/hostile/ttl").status_code == 404 and http.head("/hostile/exp").status_code == 404
    assert http.put("/hostile/ttl", headers={"stream-ttl": str(36525 * 86400)}).status_code == 201


def test_deeply_nested_json_is_a_400(http: httpx.Client) -> None:
    json_type = {"content-type": "application/json"}
    problem(http.put("/hostile/deep", content=DEEP, headers=json_type), 400, "invalid JSON")
    assert http.put("/hostile/deep", headers=json_type).status_code == 201
    problem(http.post("/hostile/deep", content=DEEP, headers=json_type), 400, "invalid JSON")
    problem(http.post("/hostile/deep", content=b'["\\ud800"]', headers=json_type), 400, "invalid JSON")
    assert http.get("/hostile/deep", params={"offset": "-1"}).json() == []
    problem(http.put("/hostile/__ds/subscriptions/s1", content=DEEP), 400, "nested too deeply")
    problem(http.post("/hostile/__ds/subscriptions/s1/claim", content=DEEP), 400, "nested too deeply")


def test_nul_in_control_api_json_is_a_400(http: httpx.Client) -> None:
    json_type = {"content-type": "application/json"}
    assert http.put("/hostile/wake", headers=json_type).status_code == 201
    config = {"type": "pull-wake", "pattern": "a\u0000/*", "wake_stream": "wake"}
    problem(http.put("/hostile/__ds/subscriptions/s2", json=config), 400, "NUL")
    config = {"type": "pull-wake", "pattern": "a/*", "wake_stream": "wake", "description": "x\u0000"}
    problem(http.put("/hostile/__ds/subscriptions/s2", json=config), 400, "NUL")
    assert http.get("/hostile/__ds/subscriptions/s2").status_code == 404


def test_offsets_past_bigint_and_unknown_live_modes_are_a_400(http: httpx.Client, server: ServeProcess) -> None:
    assert http.put("/hostile/read", content=b"abc", headers={"content-type": "text/plain"}).status_code == 201
    problem(http.get("/hostile/read", params={"offset": HUGE_OFFSET}), 400, "offset")
    for live in ("long-poll", "sse"):
        problem(http.get("/hostile/read", params={"offset": HUGE_OFFSET, "live": live}), 400, "offset")
    problem(http.get("/hostile/read", params={"offset": "-1", "live": "bogus"}), 400, "live")
    problem(http.get("/hostile/read", params={"offset": "\u0660_\u0660"}), 400, "offset")  # Arabic-Indic zeros
    iid = parked(server)
    problem(http.get(f"/instances/{iid}/history", params={"offset": HUGE_OFFSET}), 400, "offset")
    problem(http.get(f"/instances/{iid}/history", params={"offset": "1" * 5000 + "_1"}), 400, "offset")
    problem(http.get(f"/instances/{iid}/history", params={"live": "bogus"}), 400, "live")
    problem(
        http.put(
            "/hostile/fork", headers={"stream-forked-from": "/hostile/read", "stream-fork-sub-offset": "9" * 5000}
        ),
        400,
        "Sub-Offset",
    )
    problem(
        http.post(
            "/hostile/read",
            content=b"x",
            headers={
                "content-type": "text/plain",
                "producer-id": "p",
                "producer-epoch": "9" * 5000,
                "producer-seq": "0",
            },
        ),
        400,
        "Producer-Epoch",
    )


OVERSIZED = [
    (
        b"PUT /hostile/big HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
        % (MAX_BODY + 1),
        b"above the limit",
    ),
    (
        b"POST /hostile/big HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 1000000000000000\r\n\r\n",
        b"above the limit",
    ),
    (
        b"POST /instances/1/signals/go HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1),
        b"above the limit",
    ),
    (
        b"PUT /hostile/__ds/subscriptions/s3 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
        % (CONTROL_MAX_BODY + 1),
        b"TOO_LARGE",
    ),
]


def test_an_oversized_content_length_is_refused_before_the_body(server: ServeProcess, http: httpx.Client) -> None:
    for head, words in OVERSIZED:
        answer, _ = raw_exchange(server, head)  # no body is ever sent
        assert status_of(answer) == 413, answer[:300]
        assert words in answer and b"connection: close" in answer.lower()
    assert http.head("/hostile/big").status_code == 404
    # a client that sends the body anyway (no Expect: 100-continue) still reads the answer
    r = http.post("/hostile/big", content=b"x" * (4 * MAX_BODY), headers={"content-type": "text/plain"})
    problem(r, 413, "above the limit")


def test_a_trickling_body_times_out(server: ServeProcess, http: httpx.Client) -> None:
    length = 300  # 30 s at one byte per 0.1 s: far past the server's 1 s body timeout
    head = b"PUT /hostile/slow HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % length
    answer, sent = raw_exchange(server, head, trickle=length)
    assert sent < length, "the server waited for the whole trickling body"
    assert status_of(answer) == 408, answer[:300]
    assert b"not complete within 1 s" in answer
    assert http.head("/hostile/slow").status_code == 404
    # the same for a signal: the body timeout is the server's, not a stream endpoint's
    answer, sent = raw_exchange(
        server, b"POST /instances/1/signals/go HTTP/1.1\r\nHost: x\r\nContent-Length: 300\r\n\r\n", trickle=300
    )
    assert sent < 300 and status_of(answer) == 408, answer[:300]


@pytest.mark.trio
async def test_driver_errors_are_a_400_and_server_faults_a_500_without_traceback(db: durable.Database) -> None:
    """The last line of defence, for input no endpoint check caught: the guard and the exception handlers
    of ``durable serve`` around endpoints that hand PostgreSQL what it refuses, and one that crashes."""
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from durable.serve.guard import Guard, exception_handlers
    from durable.sql import Q

    async def out_of_range(request: Request) -> Response:  # refused by the driver (int64)
        await db.pool.fetchval(Q.history_instance_exists, 2**70)
        return Response("unreachable")

    async def nul(request: Request) -> Response:  # refused by PostgreSQL (SQLSTATE 22021)
        await db.pool.fetchrow(Q.stream_get, "/a\x00b")
        return Response("unreachable")

    async def crash(request: Request) -> Response:
        raise RuntimeError("secret detail of the server")

    app = Starlette(
        routes=[
            Route("/range", out_of_range),
            Route("/nul", nul),
            Route("/x/__ds/crash", crash),
            Route("/crash", crash),
        ],
        exception_handlers=exception_handlers(),
    )
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        guarded = Guard(app, max_body=MAX_BODY, max_control_body=CONTROL_MAX_BODY, body_timeout=5)
        binds = await nursery.start(partial(hypercorn_serve, guarded, config, mode="asgi"))  # type: ignore[arg-type]
        async with httpx.AsyncClient(base_url=binds[0]) as client:
            for path in ("/range", "/nul"):
                r = await client.get(path)
                assert r.status_code == 400 and r.text.startswith("invalid input: "), r.text
            r = await client.get("/crash")
            assert r.status_code == 500 and r.text == "internal server error (logged on the server)"
            r = await client.get("/x/__ds/crash")
            assert r.status_code == 500 and r.json()["error"]["code"] == "INTERNAL_ERROR"
            assert "secret" not in r.text and "Traceback" not in r.text
        nursery.cancel_scope.cancel()
