"""The engine endpoints of ``durable serve`` (history stream over SSE, signal errors), the reserved
``__ds`` prefix, and the command line's one-line errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import httpx
import pytest
import trio

import durable
from durable import Await, Machine, step

from .test_streams_util import ServeProcess, serving

pytestmark = pytest.mark.trio


class Parked(Machine, queue="parked"):
    @step
    async def wait(self, ctx):
        return Await("go", ctx.state)


@pytest.fixture(scope="module")
def server(pg_dsn: str) -> Iterator[ServeProcess]:
    with serving(pg_dsn, "--long-poll-timeout", "1") as s:
        yield s


async def sse_events(
    http: httpx.AsyncClient, url: str, params: dict[str, str], until: str, caught_up: trio.Event | None = None
) -> list[tuple[str, str]]:
    """SSE events (kind, data) up to the first data event containing ``until``; ``caught_up`` is set at the
    first control event (the catch-up has been sent)."""
    events: list[tuple[str, str]] = []
    async with http.stream("GET", url, params=params) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        kind, data = "", []
        async for line in r.aiter_lines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:])
            elif not line and kind:
                events.append((kind, "\n".join(data)))
                if kind == "control" and caught_up is not None:
                    caught_up.set()
                if kind == "data" and until in events[-1][1]:
                    return events
                kind, data = "", []
    return events


async def test_history_streams_live_over_sse(server: ServeProcess, pg_dsn: str) -> None:
    async with (
        durable.connect(pg_dsn, schema=server.schema, migrate=False) as db,
        httpx.AsyncClient(base_url=server.url, timeout=20) as http,
    ):
        iid = await db.insert(Parked, {"n": 1})
        url = f"/instances/{iid}/history"

        caught_up = trio.Event()

        async def send_signal_once_caught_up() -> None:
            await caught_up.wait()  # (a fixed 0.5 s could end before the catch-up on a loaded box)
            r = await http.post(
                f"/instances/{iid}/signals/go", content=b'{"ok": true}', headers={"Idempotency-Key": "k1"}
            )
            assert r.status_code == 201

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_signal_once_caught_up)
                params = {"offset": "-1", "live": "sse"}
                events = await sse_events(http, url, params, until='"signal"', caught_up=caught_up)
        kinds = [k for k, _ in events]
        assert kinds[0] == "data" and kinds[1] == "control"
        history = [e for k, d in events if k == "data" for e in json.loads(d)]
        assert [h["event"] for h in history] == ["inserted", "signal"]
        assert history[1]["detail"]["dedup_key"] == "k1"
        control = json.loads(events[1][1])
        assert control["upToDate"] is True and "streamCursor" in control

        # resuming at the first control offset yields only what came after it
        later = (await http.get(url, params={"offset": control["streamNextOffset"]})).json()
        assert [h["event"] for h in later] == ["signal"]
        assert (await http.head(url)).headers["stream-next-offset"] >= control["streamNextOffset"]


async def test_signal_errors_and_unknown_instances(server: ServeProcess, pg_dsn: str) -> None:
    async with (
        durable.connect(pg_dsn, schema=server.schema, migrate=False) as db,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        iid = await db.insert(Parked, {"n": 2})
        assert (await http.post(f"/instances/{iid}/signals/go", content=b"{not json")).status_code == 400
        assert iid is not None
        await db.cancel(iid)
        terminal = await http.post(f"/instances/{iid}/signals/go", json={"late": True})
        assert terminal.status_code == 409 and "cancelled" in terminal.json()["error"]
        assert (await http.get("/instances/987654/history")).status_code == 404
        assert (await http.put("/v1/__ds/subscriptions/s1", json={})).status_code == 400  # no "type"


async def test_cli_reports_bad_usage_in_one_line() -> None:
    cli = [sys.executable, "-c", "from durable.cli import main; main()", "serve"]
    bad_schema = await trio.run_process([*cli, "--schema", "no-dashes"], capture_stderr=True, check=False)
    assert bad_schema.returncode == 2 and b"invalid schema name" in bad_schema.stderr
    assert b"Traceback" not in bad_schema.stderr
    unreachable = await trio.run_process(
        [*cli, "--dsn", "postgresql://nobody@127.0.0.1:1/x"], capture_stderr=True, check=False
    )
    assert unreachable.returncode == 3  # docs/cli.md: a database that cannot be reached is exit 3
    assert unreachable.stderr.decode().strip().startswith("error: cannot reach PostgreSQL")
    assert b"Traceback" not in unreachable.stderr
