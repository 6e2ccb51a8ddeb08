"""The console's pure parts: throughput bookkeeping, filters, saturation, cell formatting."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from durable.console import render
from durable.console.data import FilterError, Gauge, InstanceFilter, Throughput, WorkerInfo, saturation


def test_throughput_reads_the_window_once_then_only_the_overlap() -> None:
    t = Throughput(window=60, overlap=5, bucket=10, rate_over=10)
    assert t.next_range(1000) == (940, 1001)
    t.merge(940, 1001, [("q", 995, 4), ("q", 999, 6), ("other", 950, 1)])
    assert t.next_range(1001) == (996, 1002)  # the last 5 s again, for rows that committed late
    # a re-read replaces the seconds it covers (no double counting) and adds late arrivals
    t.merge(996, 1002, [("q", 999, 7), ("q", 1001, 2)])
    assert t.counts["q"] == {995: 4, 999: 7, 1001: 2}
    assert t.rate("q", 1001) == (4 + 7) / 10  # complete seconds 991..1000
    trend = t.trend("q", 1001)
    assert trend == (0, 0, 0, 0, 0, 13)  # the last bucket is 992..1001
    t.merge(1100, 1200, [])  # seconds older than the window are dropped
    assert t.counts["q"] == {} and t.queues() == set()


def test_filters_parse_and_print_back() -> None:
    f = InstanceFilter.parse(
        "queue:orders status:failed,cancelled machine:Checkout version:2 key:o:1 unique:u-1 parent:7 12"
    )
    assert f == InstanceFilter(
        ids=(12,),
        status=("failed", "cancelled"),
        machine="Checkout",
        version=2,
        queue="orders",
        partition_key="o:1",
        unique_key="u-1",
        parent_id=7,
    )
    assert InstanceFilter.parse(f.text()) == f
    assert f.args()[:9] == [[12], ["failed", "cancelled"], "Checkout", None, 2, "orders", "o:1", "u-1", 7]
    assert InstanceFilter.parse("") == InstanceFilter()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("status:sleeping", "unknown status 'sleeping'"),
        ("version:two", "version must be a number"),
        ("colour:red", "unknown filter 'colour:red'"),
        ("queue:", "needs a value"),
    ],
)
def test_bad_filters_say_why(text: str, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        InstanceFilter.parse(text)


def test_saturation_sums_live_workers_only() -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)

    def worker(wid: str, state: str, **gauges: Gauge) -> WorkerInfo:
        return WorkerInfo(wid, "h", 1, tuple(gauges), gauges, at, None, 0.0, state)

    sums = saturation(
        [
            worker("a", "live", q=Gauge(concurrency=4, prefetch=4, in_flight=3, buffered=1)),
            worker("b", "live", q=Gauge(concurrency=2, prefetch=2, in_flight=2, buffered=2), r=Gauge(concurrency=1)),
            worker("c", "gone", q=Gauge(concurrency=8, prefetch=8, in_flight=8, buffered=8)),
        ]
    )
    assert (sums["q"].in_flight, sums["q"].concurrency, sums["q"].buffered, sums["q"].prefetch, sums["q"].workers) == (
        5,
        6,
        3,
        6,
        2,
    )
    assert sums["r"].concurrency == 1 and sums["r"].workers == 1
    assert Gauge.parse({"in_flight": 2, "unknown": 9, "steps": "x"}) == Gauge(in_flight=2)


def test_cells() -> None:
    assert render.spark([0, 0]) == "▁▁"
    assert render.spark([0, 5, 10]) == "▁▅█"
    assert render.ratio(10, 10).style == "bold red" and render.ratio(1, 10).style == ""
    assert render.ago(59) == "59s ago" and render.ago(61) == "1m01s ago" and render.ago(3700) == "1h01m ago"
    assert render.millis(12.25) == "12.2 ms" and render.millis(1500) == "1.50 s"
    assert render.pretty_json('{"b":1,"a":[1]}') == '{\n  "a": [\n    1\n  ],\n  "b": 1\n}'


def test_gone_after_three_of_the_workers_own_heartbeats_when_reported() -> None:
    import json

    from durable.console.data import parse_workers

    at = datetime(2030, 1, 1, tzinfo=UTC)

    def row(wid: str, seen_ago: float, gauges: dict[str, object], stopped: bool = False) -> dict[str, object]:
        return {
            "id": wid,
            "host": "h",
            "pid": 1,
            "queues": list(gauges),
            "gauges": json.dumps(gauges),
            "seen_at": at,
            "stopped_at": at if stopped else None,
            "seen_ago": seen_ago,
        }

    workers = parse_workers(
        [
            row("fast", 7.0, {"q": {"in_flight": 1, "heartbeat": 2}}),  # 3 x 2 s < 7 s: gone
            row("slow", 7.0, {"q": {"in_flight": 1, "heartbeat": 5}}),  # 3 x 5 s > 7 s: live
            row("silent", 61.0, {"q": {"in_flight": 1}}),  # no period reported: the 60 s default
            row("quiet", 59.0, {"q": {}}),
            row("done", 10.0, {"q": {}}, stopped=True),
            row("long-done", 400.0, {"q": {}}, stopped=True),  # stopped long ago: not listed
        ],
        gone_after=60.0,
    )
    assert {w.id: w.state for w in workers} == {
        "fast": "gone",
        "slow": "live",
        "silent": "gone",
        "quiet": "live",
        "done": "stopped",
    }
    assert [w.id for w in workers][:2] == ["quiet", "slow"]  # live first


def test_long_fan_outs_and_histories_are_summed_up_not_all_drawn() -> None:
    from durable.console.data import Detail
    from durable.console.screens.instance import CHILDREN_SHOWN, HISTORY_SHOWN, children_summary, history_rows

    at = datetime(2030, 1, 1, tzinfo=UTC)
    kids = [{"status": "done" if i % 4 else "failed"} for i in range(1000)]
    events = [
        {
            "id": i,
            "at": at,
            "event": "next",
            "step": "s",
            "attempt": 0,
            "status": "runnable",
            "worker_id": "w",
            "detail": '{"duration_ms": 1.5}',
        }
        for i in range(2000)
    ]
    d = Detail(now=at, instance={}, parent_status=None, inbox=[], children=kids, history=events)  # type: ignore[arg-type]
    assert children_summary(d) == f"Children · 1,000 (750 done, 250 failed) · first {CHILDREN_SHOWN}"
    rows = history_rows(d)
    assert len(rows) == HISTORY_SHOWN and rows[-1][0] == "1999"  # the newest
    assert rows[0][1][6] == "1.5 ms"


def test_detail_note_tells_wake_times_timeouts_and_who_cancelled() -> None:
    from durable.console.data import detail_note

    assert detail_note('{"next": "later", "wake_at": "2030-01-01T13:00:00+00:00"}') == "wakes 01-01 13:00:00"
    assert detail_note('{"timeout_at": "2030-01-01T14:00:00.5+01:00", "signal": "paid"}') == "timeout 01-01 13:00:00"
    assert detail_note('{"reason": "withdrawn", "by": 12}') == "by 12"
    assert detail_note('{"wake_at": "not a time"}') == "wakes not a time"
    assert detail_note(None) == detail_note("[1]") == detail_note("{bad") == ""
