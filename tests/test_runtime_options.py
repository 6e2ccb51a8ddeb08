"""Runtime options are grouped in frozen values (Leases, Polling, Flushing, Retention); the flat keywords are
shorthand for their fields, and one option given both ways is refused."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import pytest

import durable
from durable.client import Database
from durable.clock import DatabaseClock
from durable.machine import Registry
from durable.runtime import Flushing, Leases, Polling, Retention, Runtime


def database() -> Database:
    # the constructor only stores the pool: nothing here runs SQL
    return Database(cast(Any, None), clock=DatabaseClock(), registry=Registry())


def test_groups_and_shorthand_give_the_same_runtime() -> None:
    grouped = Runtime(
        database(),
        queues=["q"],
        leases=Leases(lease=30, heartbeat=5),
        polling=Polling(poll_max=2.0, chain=3),
        flushing=Flushing(max_batch=100, linger=0.01),
        retention=Retention(older_than=3600),
    )
    flat = Runtime(
        database(),
        queues=["q"],
        lease=30,
        heartbeat=5,
        poll_max=2.0,
        chain=3,
        flush_max=100,
        flush_linger=0.01,
        retention=3600,
    )
    assert grouped.options == flat.options
    for rt in (grouped, flat):
        assert (rt.lease, rt.heartbeat_every, rt.reap_every, rt.poll_max, rt.chain) == (30.0, 5, 15.0, 2.0, 3)
        assert (rt.flusher.max_batch, rt.retention, rt.retention_every) == (100, 3600, 60.0)
    defaults = Runtime(database(), queues=["q"]).options
    assert defaults.leases == Leases() and defaults.polling == Polling() and defaults.flushing == Flushing()
    assert defaults.retention == Retention()
    with pytest.raises(dataclasses.FrozenInstanceError):
        defaults.leases.lease = 1  # type: ignore[misc]


def test_an_option_given_both_ways_or_out_of_range_is_refused() -> None:
    with pytest.raises(TypeError, match="leases= or its shorthand keywords \\(lease\\)"):
        Runtime(database(), queues=["q"], leases=Leases(), lease=5)
    with pytest.raises(TypeError, match="retention= or its shorthand keywords \\(every\\)"):
        Runtime(database(), queues=["q"], retention=Retention(older_than=1), retention_every=5)
    with pytest.raises(TypeError, match="polling must be a durable.runtime.Polling"):
        Runtime(database(), queues=["q"], polling=Leases())  # type: ignore[arg-type]
    for bad, message in [
        ({"lease": 0}, "lease must be a positive number"),
        ({"lease": durable.MAX_DELAY * 2}, "lease must be a positive number"),
        ({"heartbeat": True}, "heartbeat must be a positive number"),
        ({"lease": "60"}, "lease must be a positive number"),
        ({"poll_max": float("nan")}, "poll_max must be a positive number"),
        ({"poll_min": -1}, "poll_min must be a positive number"),
        ({"flush_max": 0}, "flush_max must be an integer of at least 1"),
        ({"flush_linger": -0.5}, "flush_linger must be a non-negative number"),
        ({"chain": -1}, "chain must be an integer of at least 0"),
        ({"retention": -1}, "retention must be a non-negative number"),
    ]:
        with pytest.raises(durable.DefinitionError, match=message):
            Runtime(database(), queues=["q"], **bad)
