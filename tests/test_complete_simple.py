"""``complete_simple`` (the lean outcome commit for plain batches) changes rows and writes history
exactly as ``complete`` does: the same outcomes go through both forms on twin instances and the results
are compared column by column, including fenced outcomes and a cancel requested mid-step."""

from __future__ import annotations

from typing import Any

import pytest

import durable
from durable import Done, Machine, step
from durable.runtime.claim import Claim, Encoded
from durable.runtime.flusher import Flusher, _Pending, _plain

from .helpers import pick, row

pytestmark = pytest.mark.trio


class Twin(Machine, queue="twins", name="twin"):
    @step
    async def first(self, ctx: durable.Context) -> Done:
        return Done(None)


# (label, outcome, cancel requested during the step, fenced: a stale lease token)
CASES: list[tuple[str, Encoded, bool, bool]] = [
    ("next", Encoded("next", step="second", state='{"n": 2}', detail={"next": "second"}), False, False),
    ("next, state unchanged", Encoded("next", step="second", detail={"next": "second"}), False, False),
    ("retry", Encoded("retry", state='{"n": 3}', delay=30.0, error="boom", detail={"delay": 30.0}), False, False),
    ("retry, no error", Encoded("retry", delay=0.5, detail={"delay": 0.5}), False, False),
    ("done", Encoded("done", result='{"ok": true}'), False, False),
    ("stop", Encoded("stop", error="gave up", detail={"error": "gave up"}), False, False),
    ("cancel", Encoded("cancel", error="by the step", detail={"reason": "x"}), False, False),
    ("done, cancel requested", Encoded("done", result='{"ok": 1}'), True, False),
    ("retry, cancel requested", Encoded("retry", delay=1.0, error="e", detail={}), True, False),
    ("next, cancel requested", Encoded("next", step="second", detail={}), True, False),
    ("done, fenced", Encoded("done", result='{"late": true}'), False, True),
]

COLUMNS = (
    "status",
    "step",
    "state",
    "result",
    "last_error",
    "attempt",
    "awaits",
    "worker_id",
    "lease_token",
    "lease_expires_at",
    "cancel_requested",
    "children_pending",
    "traceparent",
    "tracestate",
)


async def outcome_of(
    db: durable.Database, flusher: Flusher, simple: bool, outcome: Encoded, cancel: bool, fenced: bool
) -> tuple[dict[str, Any], list[tuple[Any, ...]], Any]:
    queue = "twins-lean" if simple else "twins-full"
    iid = await db.insert(Twin, {"n": 1}, queue=queue)
    assert iid is not None
    claims = await pick(db, queue, 1)
    assert [c.id for c in claims] == [iid]
    claim: Claim = claims[0]
    if cancel:
        await db.cancel(iid, "operator")
    if fenced:
        claim.lease_token -= 1  # a zombie's claim: its token is not the row's any more
    pending = _Pending(claim, Encoded(**{f: getattr(outcome, f) for f in outcome.__slots__}))
    assert _plain(pending)
    run = flusher._execute_simple if simple else flusher._execute_full
    rows = await run([pending])
    committed = Flusher.results([pending], rows)[0]
    after = await row(db, iid)
    history = [
        (e.event, e.step, e.attempt, e.status, e.worker_id, e.detail)
        for e in await db.history(iid)
        if e.event != "inserted"
    ]  # the insert's detail names its queue and time
    # a live claim's token and expiry differ between twins by nature: compare whether there is one
    for c in ("lease_token", "lease_expires_at"):
        after[c] = after[c] is not None
    return (
        {c: after[c] for c in COLUMNS} | {"eligible_moved": after["eligible_at"] > after["inserted_at"]},
        history,
        (committed.status, committed.fenced),
    )


@pytest.mark.parametrize(("label", "outcome", "cancel", "fenced"), CASES, ids=[c[0] for c in CASES])
async def test_both_forms_of_complete_agree(
    db: durable.Database, label: str, outcome: Encoded, cancel: bool, fenced: bool
) -> None:
    db.registry.add(Twin)
    flusher = Flusher(db.pool, "w1", db.clock)
    full = await outcome_of(db, flusher, False, outcome, cancel, fenced)
    db.pool.statement_counts.clear()
    lean = await outcome_of(db, flusher, True, outcome, cancel, fenced)
    assert db.pool.statement_counts["complete_simple"] == 1
    assert lean == full, label
    state, history, (status, was_fenced) = lean
    assert was_fenced is fenced
    assert history[-1][0] == ("fenced" if fenced else outcome.kind)
    if fenced:
        assert state["status"] == "executing" and status is None
    elif cancel:
        assert state["status"] == "cancelled" == status


async def test_only_plain_outcomes_take_the_lean_form() -> None:
    claim = Claim(
        id=1,
        machine="m",
        version=1,
        step="s",
        state_json="{}",
        attempt=0,
        queue="q",
        priority=0,
        partition_key=None,
        lease_token=1,
        signal_seq=0,
        awaits=None,
        parent_id=None,
        cancel_requested=False,
        traceparent=None,
        tracestate=None,
        signals=(),
        children=(),
    )
    assert _plain(_Pending(claim, Encoded("done")))
    assert not _plain(_Pending(claim, Encoded("await", awaits="go")))
    assert not _plain(_Pending(claim, Encoded("spawn", step="join")))
    assert not _plain(_Pending(claim, Encoded("next", step="b", hold=True)))
    child = Claim(**{**{f: getattr(claim, f) for f in Claim.__slots__}, "parent_id": 7})
    assert not _plain(_Pending(child, Encoded("done")))
    shown = Claim(
        **{
            **{f: getattr(claim, f) for f in Claim.__slots__},
            "signals": (durable.context.Signal(1, "go", None, None, None),),
        }
    )
    assert not _plain(_Pending(shown, Encoded("done")))
