"""DBOS: the five-step workload as a DBOS workflow of five ``@DBOS.step`` calls. N workflows are
enqueued first through ``DBOSClient`` (DBOS has no batch enqueue: one transaction each), then DBOS is
launched in this process with a queue of ``worker_concurrency`` workflows and a short
``polling_interval_sec`` (its documented knobs for queue throughput); timed until every workflow of
the run has committed SUCCESS."""

from __future__ import annotations

import threading
import time
from typing import Any

from ..cpu import own_cpu, server_cpu
from .common import emit, options, version

QUEUE = "bench"


def main(opts: dict[str, Any]) -> dict[str, Any]:
    import logging

    from dbos import DBOS, DBOSClient

    dsn, n = opts["dsn"], int(opts["instances"])
    concurrency = int(opts.get("concurrency", 50))
    poll = float(opts.get("poll", 0.05))
    logging.getLogger("dbos").setLevel(logging.WARNING)
    DBOS(
        config={
            "name": "bench",
            "system_database_url": dsn,
            "log_level": "WARNING",
            "sys_db_pool_size": concurrency + 10,
        }
    )
    steps_run = 0
    lock = threading.Lock()

    @DBOS.step()
    def one_step() -> None:
        nonlocal steps_run
        with lock:
            steps_run += 1

    @DBOS.workflow(name="five_steps")
    def five_steps() -> None:
        for _ in range(5):
            one_step()

    DBOS.listen_queues([QUEUE])
    DBOS.launch()
    client = DBOSClient(system_database_url=dsn)
    start = time.perf_counter()
    handles: list[Any] = [client.enqueue({"queue_name": QUEUE, "workflow_name": "five_steps"}) for _ in range(n)]
    insert_s = time.perf_counter() - start
    start, cpu0, pg0 = time.perf_counter(), own_cpu(), server_cpu(opts.get("postmaster"))
    DBOS.register_queue(QUEUE, worker_concurrency=concurrency, polling_interval_sec=poll)
    for h in handles:  # in enqueue order; each returns once that workflow committed SUCCESS
        h.get_result(polling_interval_sec=0.01)
    seconds = time.perf_counter() - start
    cpu_s, pg1 = own_cpu() - cpu0, server_cpu(opts.get("postmaster"))
    client.destroy()
    DBOS.destroy()
    if steps_run < 5 * n:
        raise RuntimeError(f"DBOS ran {steps_run} of {5 * n} steps")
    return {
        "engine": "dbos",
        "version": version("dbos"),
        "instances": n,
        "steps": 5 * n,
        "seconds": seconds,
        "cpu_s": cpu_s,
        "pg_cpu_s": None if pg0 is None or pg1 is None else pg1 - pg0,
        "per_s": 5 * n / seconds,
        "insert_rows_per_s": n / insert_s,
        "settings": {
            "worker_concurrency": concurrency,
            "polling_interval_sec": poll,
            "sys_db_pool_size": concurrency + 10,
            "workflow": "sync, 5 steps",
        },
    }


if __name__ == "__main__":
    emit(main(options()))
