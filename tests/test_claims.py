"""A claim is built from a pick row by position: the pick's leading columns are the claim's fields."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import durable
from durable.runtime.claim import Claim
from durable.sql import Q

pytestmark = pytest.mark.trio


@durable.job(queue="claims", name="claims_noop")
async def noop(args: Any, ctx: durable.Context) -> None:
    return None


async def test_the_pick_columns_are_the_claim_fields_in_order(db: durable.Database) -> None:
    db.registry.add(noop)
    iid = await db.insert(noop, {"a": 1}, partition_key="k")
    rows = await db.pool.fetch(Q.pick, "claims", 1, "w1", 60.0, db.clock.now())
    columns = list(rows[0].keys())
    fields = [f.name for f in dataclasses.fields(Claim)]
    positional = fields[:fields.index("signals")]
    assert [c if c != "state" else "state_json" for c in columns[:len(positional)]] == positional
    claim = Claim.from_row(rows[0])
    assert (claim.id, claim.machine, claim.partition_key, claim.state_json) == (iid, "claims_noop", "k", '{"a": 1}')
    assert claim.lease_token == rows[0]["lease_token"] and claim.signals == () and claim.children == ()
