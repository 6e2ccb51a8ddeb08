"""One rule for a worker's state (durable/workers.py): ``durable workers``/``durable queues`` and the console
read the same registry rows and must call each worker the same (they used to disagree about "gone")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from durable.console.data import parse_workers

import durable
from durable.cli_ops import fetch_workers
from durable.sql import Q
from durable.workers import GONE_AFTER, worker_state

WORKERS = {  # id: (seconds since its last heartbeat, gauges, stopped, the state both must show)
    "fast": (7.0, {"q": {"in_flight": 1, "heartbeat": 2}}, False, "gone"),  # 3 x 2 s < 7 s
    "slow": (70.0, {"q": {"in_flight": 1, "heartbeat": 30}}, False, "live"),  # 3 x 30 s > 70 s > 60 s
    "silent": (90.0, {"q": {"in_flight": 1}}, False, "gone"),  # no period reported: gone_after
    "quiet": (30.0, {"q": {}}, False, "live"),
    "done": (10.0, {"q": {}}, True, "stopped"),
}


@pytest.mark.trio
async def test_the_cli_and_the_console_agree_on_every_workers_state(db: durable.Database) -> None:
    now = datetime.now(UTC)
    for wid, (ago, gauges, stopped, _) in WORKERS.items():
        seen = now - timedelta(seconds=ago)
        await db.pool.execute(Q.register_worker, wid, "h", 1, list(gauges), orjson.dumps(gauges).decode(), seen)
        if stopped:
            await db.pool.execute(Q.stop_worker, wid, orjson.dumps(gauges).decode(), seen)
    expected = {wid: w[3] for wid, w in WORKERS.items()}
    cli = {r["id"]: r["state"] for r in await fetch_workers(db, GONE_AFTER)}
    console = {w.id: w.state for w in parse_workers(await db.pool.fetch(Q.list_workers, None), GONE_AFTER)}
    assert cli == expected
    assert console == expected


def test_the_rule() -> None:
    beat = {"q": {"heartbeat": 10}}
    assert worker_state(seen_ago=29.0, stopped=False, gauges=beat) == "live"
    assert worker_state(seen_ago=31.0, stopped=False, gauges=beat) == "gone"
    assert worker_state(seen_ago=59.0, stopped=False, gauges={}) == "live"
    assert worker_state(seen_ago=61.0, stopped=False, gauges={}, gone_after=GONE_AFTER) == "gone"
    assert worker_state(seen_ago=5.0, stopped=False, gauges={"q": {"heartbeat": "x"}}, gone_after=4) == "gone"
    assert worker_state(seen_ago=1e9, stopped=True, gauges=beat) == "stopped"
