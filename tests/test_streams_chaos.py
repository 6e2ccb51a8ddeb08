"""Steps append to streams under crash and zombie faults; every stream must equal the model.

Two runtimes share the work: a healthy one and a flaky one whose heartbeat never comes in time, so
its slow steps lose their lease mid-step while the healthy runtime reaps and re-executes them. The engine
cancels a step whose lease passed at its next checkpoint, so half the steps here shield their output from
cancellation (code that cannot be interrupted, as a blocked loop would be): those keep running as zombies,
and the streams' fencing must refuse their appends. Steps also fail at random (a retry re-executes them)
and runtimes are killed mid-step and replaced. Each stream must hold exactly the model's tokens, once each, in order.
"""

from __future__ import annotations

import json
import random

import pytest
import trio

import durable
from durable import Done, Machine, Next, Retry, step, streams
from durable.streams import Fenced, Store

from .helpers import wait_for

pytestmark = pytest.mark.trio

STEPS = ("one", "two", "three")
PER_STEP = 6
FAULTS = {"fenced": 0, "duplicate": 0, "failed": 0}
RNG = random.Random(8)


def model(iid: int) -> list[str]:
    return [f"{iid}:{s}:{k}" for s in STEPS for k in range(PER_STEP)]


async def speak(ctx: durable.Context, name: str) -> None:
    out = streams.Stream(ctx, f"/chaos/{ctx.id}", start=STEPS.index(name) * PER_STEP, content_type="application/json")
    with trio.CancelScope(shield=RNG.random() < 0.5):  # uninterruptible: a zombie once its lease is lost
        for k in range(PER_STEP):
            await trio.sleep(RNG.random() * 0.06)
            try:
                result = await out.append(f"{ctx.id}:{name}:{k}")
            except Fenced:
                FAULTS["fenced"] += 1
                raise
            if result.status == "duplicate":
                FAULTS["duplicate"] += 1
            if RNG.random() < 0.04:
                FAULTS["failed"] += 1
                raise RuntimeError("step failed mid-output")


class Chatty(Machine, queue="chaos"):
    @step
    async def one(self, ctx):
        await speak(ctx, "one")
        return Next("two", {})

    @step
    async def two(self, ctx):
        await speak(ctx, "two")
        return Next("three", {})

    @step
    async def three(self, ctx):
        await speak(ctx, "three")
        return Done({"ok": True})

    async def handle(self, error, ctx):
        return Retry(delay=0, error=str(error))


async def test_stream_output_is_exactly_once_under_crashes_and_zombies(db: durable.Database) -> None:
    for key in FAULTS:
        FAULTS[key] = 0
    ids = [i for i in await db.insert_many([durable.Insert(Chatty, {}) for _ in range(12)]) if i is not None]

    async def done() -> bool:
        rows = [await db.get(i) for i in ids]
        return all(r.status == "done" for r in rows)

    async with trio.open_nursery() as nursery:
        healthy = durable.Runtime(
            db, machines=[Chatty], queues={"chaos": 4}, lease=3, heartbeat=0.3, reap_every=0.1, poll_max=0.1
        )
        await nursery.start(healthy.run)
        for _ in range(4):
            # a flaky worker: leases of 0.15 s and no heartbeat in time, so slow steps turn zombie
            flaky = durable.Runtime(
                db, machines=[Chatty], queues={"chaos": 4}, lease=0.15, heartbeat=30, reap_every=30, poll_max=0.1
            )
            async with trio.open_nursery() as inner:
                await inner.start(flaky.run)
                await trio.sleep(0.6)
                flaky.kill()  # then it crashes mid-step: its claims are left to the reaper
        await wait_for(done, timeout=60)
        nursery.cancel_scope.cancel()

    store = Store(db.pool)
    for iid in ids:
        page = await store.read(f"/chaos/{iid}", 0)
        assert page.up_to_date
        assert json.loads(page.body()) == model(iid), f"instance {iid}'s stream differs from the model"
    print(f"\nchaos faults: {FAULTS}")
    assert FAULTS["fenced"] > 0, "no zombie append was attempted"
    assert FAULTS["duplicate"] > 0, "no re-executed append was deduplicated"
