"""The explicit pipeline over HTTP (issue 18, item 2): a worker that is not Python drives a whole checkout
through ``durable serve`` with plain httpx (insert under a business id, claim, extend, transition, retry,
consume a signal, complete), every call fenced by its lease token (409 once the claim is gone, and the
history says ``fenced``), hostile input answered 4xx as JSON (never 500), the same bearer token rules as
every write, and an OpenAPI document at ``/openapi.json`` that validates as OpenAPI 3.1 and names every
engine route. The server is the real ``durable serve`` subprocess."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from durable.serve.claims import ACTIONS

from .test_streams_util import ServeProcess, serving

TOKEN = "claims-secret"
MAX_BODY = 64 << 10
HUGE = "99999999999999999999999"  # past 2^63-1


@pytest.fixture(scope="module")
def server(pg_dsn: str) -> Iterator[ServeProcess]:
    with serving(pg_dsn, "--token", TOKEN, "--max-append-bytes", str(MAX_BODY)) as s:
        yield s


@pytest.fixture
def http(server: ServeProcess) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.url, timeout=30, headers=headers) as client:
        yield client


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, (r.status_code, r.text)
    return r.json()


def refused(r: httpx.Response, status: int, words: str) -> dict[str, Any]:
    """A 4xx answer as JSON naming the problem: never a 500, never a traceback."""
    assert r.status_code == status, (r.status_code, r.text)
    assert "Traceback" not in r.text
    body = r.json()
    assert words in body["error"], body
    return body  # type: ignore[no-any-return]


def claim_one(http: httpx.Client, queue: str, **body: Any) -> dict[str, Any]:
    claims = ok(http.post(f"/queues/{queue}/claims", json={"limit": 5, "lease": 30, **body}))["claims"]
    assert len(claims) == 1, claims
    return claims[0]  # type: ignore[no-any-return]


def history(http: httpx.Client, iid: int) -> list[dict[str, Any]]:
    return ok(http.get(f"/instances/{iid}/history", params={"offset": "-1"}))  # type: ignore[no-any-return]


def test_a_checkout_driven_over_http(http: httpx.Client) -> None:
    order = {
        "machine": "checkout",
        "step": "reserve",
        "state": {"order": "order-1", "items": 2},
        "queue": "http-checkout",
        "unique_key": "order-1",
    }
    iid = ok(http.post("/instances", json=order), 201)["id"]
    assert ok(http.post("/instances", json=order)) == {"id": iid, "created": False}  # the business id holds

    c = claim_one(http, "http-checkout")
    assert (c["id"], c["machine"], c["step"], c["state"], c["attempt"], c["inbox"]) == (
        iid,
        "checkout",
        "reserve",
        {"order": "order-1", "items": 2},
        0,
        [],
    )
    assert ok(http.post("/queues/http-checkout/claims", json={}))["claims"] == []  # held: nothing else
    ext = ok(http.post(f"/instances/{iid}/extend", json={"lease_token": c["lease_token"], "lease": 120}))
    assert ext == {"id": iid, "lease_token": c["lease_token"], "cancel_requested": False}
    state = {**c["state"], "reserved": True}
    assert ok(
        http.post(f"/instances/{iid}/transition", json={"lease_token": c["lease_token"], "step": "pay", "state": state})
    ) == {"id": iid, "status": "runnable"}

    c = claim_one(http, "http-checkout", step="pay")
    assert (c["step"], c["state"]["reserved"]) == ("pay", True)
    r = http.post(f"/instances/{iid}/retry", json={"lease_token": c["lease_token"], "error": "gateway timeout"})
    assert ok(r)["status"] == "runnable"

    signal = ok(http.post(f"/instances/{iid}/signals/paid", json={"amount": 42}), 201)["signal_id"]
    c = claim_one(http, "http-checkout", machine="checkout")
    assert c["attempt"] == 1 and [(s["id"], s["name"], s["payload"]) for s in c["inbox"]] == [
        (signal, "paid", {"amount": 42})
    ]
    r = http.post(
        f"/instances/{iid}/transition", json={"lease_token": c["lease_token"], "step": "ship", "consume": [signal]}
    )
    assert ok(r)["status"] == "runnable"
    stale = c["lease_token"]

    c = claim_one(http, "http-checkout")
    assert c["step"] == "ship" and c["inbox"] == [] and c["state"]["reserved"]
    # a late call of the previous claim (a worker that timed out and came back): fenced, nothing changes
    late = refused(
        http.post(f"/instances/{iid}/complete", json={"lease_token": stale, "result": "late"}), 409, "fenced"
    )
    assert late["fenced"] is True
    assert ok(
        http.post(f"/instances/{iid}/complete", json={"lease_token": c["lease_token"], "result": {"shipped": True}})
    ) == {"id": iid, "status": "done"}
    events = [(e["event"], e["lease_token"]) for e in history(http, iid)]
    assert [e for e, _ in events] == ["inserted", "next", "retry", "signal", "next", "fenced", "done"]
    assert events[5] == ("fenced", stale)
    # every call once the claim has ended is fenced
    for action in ACTIONS:
        body: dict[str, Any] = {"lease_token": c["lease_token"], "step": "x", "reason": "x"}
        body = {
            k: v
            for k, v in body.items()
            if k == "lease_token" or (k == "step" and action == "transition") or (k == "reason" and action == "fail")
        }
        assert refused(http.post(f"/instances/{iid}/{action}", json=body), 409, "fenced")["fenced"] is True
    # a new order with the same business id after the first ended: a new instance
    assert ok(http.post("/instances", json=order), 201)["id"] != iid


def test_fail_and_release(http: httpx.Client) -> None:
    iid = ok(http.post("/instances", json={"machine": "job", "step": "run", "queue": "http-fail"}), 201)["id"]
    c = claim_one(http, "http-fail")
    assert ok(http.post(f"/instances/{iid}/release", json={"lease_token": c["lease_token"]}))["status"] == "runnable"
    c = claim_one(http, "http-fail")
    assert c["attempt"] == 0
    r = http.post(f"/instances/{iid}/fail", json={"lease_token": c["lease_token"], "reason": "no stock"})
    assert ok(r) == {"id": iid, "status": "failed"}


def test_writes_need_the_token(server: ServeProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        for path in ("/queues/http-auth/claims", "/instances", "/instances/1/complete"):
            assert anonymous.post(path, json={}).status_code == 401
            assert anonymous.post(path, json={}, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert anonymous.get("/openapi.json").status_code == 200  # a read


def test_hostile_input_is_a_4xx(http: httpx.Client) -> None:
    iid = ok(http.post("/instances", json={"machine": "job", "step": "run", "queue": "http-hostile"}), 201)["id"]
    claims = "/queues/http-hostile/claims"
    for body in ({"limit": 0}, {"limit": -1}, {"limit": 1001}, {"limit": 10**30}):
        refused(http.post(claims, json=body), 400, "limit")
    for body in ({"limit": "10"}, {"limit": True}, {"limit": 2.5}):
        refused(http.post(claims, json=body), 400, "limit must be int")
    for body in ({"lease": -5}, {"lease": 0}, {"lease": 10**12}):
        refused(http.post(claims, json=body), 400, "lease")
    refused(http.post(claims, json={"lease": "60"}), 400, "lease must be")
    refused(http.post(claims, json={"limt": 3}), 400, "unknown field")
    refused(http.post(claims, json=[1, 2]), 400, "JSON object")
    refused(http.post(claims, content=b"{not json"), 400, "JSON")
    refused(http.post(claims, json={"machine": "a\x00b"}), 400, "NUL")
    refused(http.post("/queues/a%00b/claims", json={}), 400, "NUL")
    refused(http.post(f"/queues/{'q' * 2000}/claims", json={}), 400, "bytes long")

    c = claim_one(http, "http-hostile")
    token = c["lease_token"]
    complete = f"/instances/{iid}/complete"
    refused(http.post(complete, json={}), 400, "lease_token is required")
    refused(http.post(complete, json={"lease_token": str(token)}), 400, "lease_token must be int")
    refused(http.post(complete, json={"lease_token": 0}), 400, "lease_token")
    refused(http.post(complete, json={"lease_token": 2**64}), 400, "lease_token")
    refused(http.post(complete, json={"lease_token": token + 1000}), 409, "fenced")  # a token never issued
    refused(http.post(f"/instances/{iid + 10**6}/complete", json={"lease_token": token}), 404, "no instance")
    refused(http.post(f"/instances/{HUGE}/complete", json={"lease_token": token}), 400, "out of range")
    refused(http.post(complete, json={"lease_token": token, "result": "a\x00b"}), 400, "NUL")
    refused(http.post(complete, json={"lease_token": token, "consume": ["x"]}), 400, "not the id")
    refused(http.post(complete, json={"lease_token": token, "consume": [10**12]}), 400, "not the id")
    refused(http.post(complete, json={"lease_token": token, "consume": 5}), 400, "consume must be list")
    transition = f"/instances/{iid}/transition"
    refused(http.post(transition, json={"lease_token": token}), 400, "step is required")
    refused(http.post(transition, json={"lease_token": token, "step": ""}), 400, "step")
    refused(http.post(transition, json={"lease_token": token, "step": "a\x00"}), 400, "NUL")
    refused(http.post(transition, json={"lease_token": token, "step": "b", "delay": -1}), 400, "delay")
    refused(http.post(transition, json={"lease_token": token, "step": "b", "delay": 1e300}), 400, "delay")
    big = {"lease_token": token, "step": "b", "state": {"blob": "x" * MAX_BODY}}
    refused(http.post(transition, json=big), 413, "above the limit")
    refused(http.post(f"/instances/{iid}/fail", json={"lease_token": token}), 400, "reason is required")
    refused(http.post(f"/instances/{iid}/extend", json={"lease_token": token, "lease": -1}), 400, "lease")
    refused(http.post(f"/instances/{iid}/extend", json={"lease_token": token, "lease": 1e300}), 400, "lease")
    refused(http.post("/instances", json={"machine": "job"}), 400, "required")
    refused(
        http.post("/instances", json={"machine": "job", "step": "run", "unique_key": "k", "unique_scope": ["bogus"]}),
        400,
        "bogus",
    )
    refused(http.post("/instances", json={"machine": "j\x00", "step": "run"}), 400, "NUL")
    refused(http.post("/instances", json={"machine": "job", "step": "run", "priority": 10**9}), 400, "priority")
    # none of it touched the claim: it completes
    assert ok(http.post(complete, json={"lease_token": token, "result": 1}))["status"] == "done"


def test_the_openapi_document(http: httpx.Client, server: ServeProcess) -> None:
    doc = ok(http.get("/openapi.json"))
    try:
        from openapi_spec_validator import validate
    except ImportError:  # a venv installed before the test extra named it: the structure, checked by hand
        validate = structurally_valid
    validate(doc)  # raises on a document that is not valid OpenAPI 3.1
    structurally_valid(doc)
    assert doc["openapi"].startswith("3.")
    paths = set(doc["paths"])
    assert {
        "/queues/{queue}/claims",
        "/instances",
        "/instances/{id}/signals/{name}",
        "/instances/{id}/history",
    } <= paths
    assert {f"/instances/{{id}}/{a}" for a in ACTIONS} <= paths
    # each documented operation answers here (not as a stream path): a bodiless POST is a JSON 4xx
    for path, ops in doc["paths"].items():
        if "post" in ops and path != "/instances/{id}/signals/{name}":
            url = path.replace("{queue}", "openapi-probe").replace("{id}", "1")
            r = http.post(url, content=b"[]")
            assert r.status_code == 400 and "error" in r.json(), (path, r.status_code, r.text)
    assert json.loads(http.get("/openapi.json").text) == doc


def structurally_valid(doc: dict[str, Any]) -> None:
    """What openapi-spec-validator checks first: the required fields, an operation's responses, and that
    every ``$ref`` resolves inside the document."""
    assert doc["openapi"].startswith("3.1") and doc["info"]["title"] and doc["info"]["version"]
    for path, ops in doc["paths"].items():
        assert path.startswith("/")
        for method, op in ops.items():
            assert method in ("get", "post", "put", "delete", "head", "patch", "options"), method
            assert op["responses"] and all(r["description"] for r in op["responses"].values()), (path, method)
            names = {p["name"] for p in op.get("parameters", []) if "name" in p}
            names |= {"id"} if any("$ref" in p for p in op.get("parameters", [])) else set()
            for segment in path.split("/"):
                if segment.startswith("{"):
                    assert segment.strip("{}") in names, (path, segment)

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    yield v
                else:
                    yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    for ref in refs(doc):
        target: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
