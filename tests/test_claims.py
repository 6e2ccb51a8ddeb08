"""A claim is built from a pick row by column name: every column the claim reads is one the pick returns."""

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


async def test_a_claim_reads_the_pick_row_by_column_name(db: durable.Database) -> None:
    db.registry.add(noop)
    iid = await db.insert(noop, {"a": 1}, partition_key="k")
    rows = await db.pool.fetch(Q.pick, "claims", 1, "w1", 60.0, db.clock.now(), None, None)
    columns = set(rows[0].keys())
    fields = [f.name for f in dataclasses.fields(Claim)]
    read = fields[: fields.index("attributes") + 1]  # the rest is the runtime's bookkeeping
    assert {"state" if f == "state_json" else f for f in read} <= columns
    reordered = dict(reversed(list(dict(rows[0]).items())))  # by name: the columns' order does not matter
    assert Claim.from_row(reordered).__repr__() == Claim.from_row(rows[0]).__repr__()
    claim = Claim.from_row(rows[0])
    for name in read:  # each field holds its own column (from_row passes them in field order)
        if name not in ("state_json", "signals", "children", "attributes"):
            assert getattr(claim, name) == rows[0][name], name
    assert (claim.id, claim.machine, claim.partition_key, claim.state_json) == (iid, "claims_noop", "k", '{"a": 1}')
    assert claim.lease_token == rows[0]["lease_token"] and claim.signals == () and claim.children == ()


async def test_the_planner_expects_the_pick_to_stop_after_its_batch(db: durable.Database) -> None:
    """The busy-key skip must not look selective: when the planner took it for the 0.5 % default, a LIMIT
    of 500 looked like a scan of the whole backlog, and a plan that sorts the whole backlog (84 ms at 100k
    rows instead of ~8) could win. The estimate of the candidate scan must be most of the backlog."""
    import json

    from durable._pg import aio

    db.registry.add(noop)
    await db.insert_many([durable.Insert(noop, {}) for _ in range(4000)])

    async def plan() -> Any:
        async with db.pool.raw.acquire() as con:
            await con.execute("analyze instances")
            tx = con.transaction()
            await tx.start()
            try:
                await con.execute(f"prepare p as {Q.pick.text}")
                return json.loads(
                    await con.fetchval("explain (format json) execute p('claims', 500, 'w', 60, null, null, null)")
                )
            finally:
                await tx.rollback()
                await con.execute("deallocate p")

    def nodes(node: dict[str, Any]) -> Any:
        yield node
        for child in node.get("Plans", []):
            yield from nodes(child)

    root = (await aio(plan)())[0]["Plan"]
    candidate = next(n for n in nodes(root) if n.get("Subplan Name") == "CTE candidate")
    below_limit = candidate["Plans"][0]  # Limit -> the locked, filtered candidate rows
    assert below_limit["Plan Rows"] > 2000, below_limit["Plan Rows"]
    assert not any(n["Node Type"] == "Sort" for n in nodes(candidate))
