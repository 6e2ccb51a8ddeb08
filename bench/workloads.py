"""The durable workloads, importable by the orchestrator and by the worker subprocess alike.

* ``noop``: the one-step job (``@durable.job``) that does nothing;
* ``FiveStep``: a machine of five steps (four ``Next`` then ``Done``), state unchanged between steps;
* ``probe``: a one-step job that records its pickup latency, insert -> step start, from the wall-clock
  time the producer wrote into its arguments just before the insert.
"""

from __future__ import annotations

import time
from typing import Any

import durable
from durable import UNCHANGED, Done, Machine, Next, step

ONE_STEP_QUEUE = "bench_jobs"
FIVE_STEP_QUEUE = "bench_steps"
PROBE_QUEUE = "bench_probe"

latencies: list[float] = []  # seconds, appended by ``probe`` in the process that runs it
starts: list[tuple[float, float, int]] = []  # (stamp, step start, instance id) per probe step, likewise


@durable.job(queue=ONE_STEP_QUEUE, name="bench_noop")
async def noop(args: Any, ctx: durable.Context) -> None:
    return None


@durable.job(queue=PROBE_QUEUE, name="bench_probe")
async def probe(args: Any, ctx: durable.Context) -> None:
    now = time.time()
    latencies.append(now - args["t"])
    starts.append((args["t"], now, ctx.id))
    return None


class FiveStep(Machine, queue=FIVE_STEP_QUEUE, name="bench_five", initial="s1"):
    @step
    async def s1(self, ctx: durable.Context) -> Next:
        return Next("s2", UNCHANGED)

    @step
    async def s2(self, ctx: durable.Context) -> Next:
        return Next("s3", UNCHANGED)

    @step
    async def s3(self, ctx: durable.Context) -> Next:
        return Next("s4", UNCHANGED)

    @step
    async def s4(self, ctx: durable.Context) -> Next:
        return Next("s5", UNCHANGED)

    @step
    async def s5(self, ctx: durable.Context) -> Done:
        return Done(None)


MACHINES: list[type[Machine]] = [noop, FiveStep, probe]  # type: ignore[list-item]
QUEUE_OF = {"onestep": ONE_STEP_QUEUE, "fivestep": FIVE_STEP_QUEUE, "probe": PROBE_QUEUE}
STEPS_PER_INSTANCE = {"onestep": 1, "fivestep": 5, "probe": 1}


def specs(workload: str, n: int) -> list[durable.Insert]:
    """``n`` insert specs of a workload (probe rows stamp the time at creation)."""
    if workload == "onestep":
        return [durable.Insert(noop, {}) for _ in range(n)]
    if workload == "fivestep":
        return [durable.Insert(FiveStep, {}) for _ in range(n)]
    now = time.time()
    return [durable.Insert(probe, {"t": now}) for _ in range(n)]
