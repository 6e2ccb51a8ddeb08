"""A simulator worker as its own OS process (chaos mode ``--processes``): runs the workload's machines
on a Runtime until SIGTERM (graceful) or SIGKILL (a crash), appending one JSON line per finished step
execution to a records file so the parent can check partition keys.

    python -m durable.sim.worker DSN SCHEMA WORKER_ID WORKLOAD LEASE RECORDS
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import asdict

import asyncpg
import orjson
import trio
import trio_asyncio

from durable import Registry, Runtime
from durable._pg import Pool, asyncio_loop
from durable.clock import DatabaseClock

from .core import SIM_VALUE_BYTES, Run, SimConfig, SimDatabase, StepRecord
from .workloads import workloads


async def die_with_parent(parent: int) -> None:
    """Exit at once, like a crash, when the simulator that started this worker is gone: no worker
    outlives its run, whatever ended the run."""
    while os.getppid() == parent:  # noqa: ASYNC110 - nothing signals a parent's exit
        await trio.sleep(0.5)
    os._exit(3)


async def main(dsn: str, schema: str, worker_id: str, workload: str, lease: float, records: str) -> None:
    run = Run(SimConfig(workload=workload, mode="chaos"), [])
    run.phase = "chaos"
    run.now = time.time  # comparable across processes
    machines = [m for w in workloads(workload) for m in w.machines]
    with open(records, "ab") as sink:  # noqa: ASYNC230 (opened once, before the run starts)

        def record(rec: StepRecord) -> None:
            sink.write(orjson.dumps(asdict(rec)) + b"\n")
            sink.flush()

        run.sink = record
        async with asyncio_loop():
            raw = await trio_asyncio.aio_as_trio(asyncpg.create_pool)(
                dsn,
                min_size=1,
                max_size=4,
                server_settings={
                    "search_path": f"{schema},public",
                    "application_name": f"sim-{schema}-{worker_id.split('.')[0]}"[:63],
                },
            )
            db = SimDatabase(
                Pool(raw, dsn, schema),
                clock=DatabaseClock(),
                registry=Registry(machines),
                max_value_bytes=SIM_VALUE_BYTES,
            )
            db.run = run
            db.slot_name = worker_id
            rt = Runtime(
                db,
                machines=machines,
                queues={"sim": 4},
                lease=lease,
                heartbeat=lease / 3,
                reap_every=lease / 3,
                poll_min=0.02,
                poll_max=0.2,
                drain_timeout=lease,
                worker_id=worker_id,
                on_error=lambda m: None,
            )
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(die_with_parent, os.getppid())
                    await nursery.start(rt.run)
                    print("ready", flush=True)
                    async for _ in signals:
                        rt.stop()
                        break
            await db.pool.close()


if __name__ == "__main__":
    dsn, schema, worker_id, workload, lease, records = sys.argv[1:7]
    trio.run(main, dsn, schema, worker_id, workload, float(lease), records)
