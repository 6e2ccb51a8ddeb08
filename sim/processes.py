"""Chaos mode with ``--processes``: every worker slot is an OS process (``python -m durable.sim.worker``); the
seed's fault plan becomes signals and backend kills at planned moments: crash and commit_unknown ->
SIGKILL (restarted after half a lease), zombie -> SIGSTOP past the lease then SIGCONT, conn_* ->
pg_terminate_backend of the worker's connections. A fault strikes a running worker: it waits until the slot's
current process says it is ready (registered, its schedulers running), so what it hits does not depend on how
long a start takes on a loaded machine. Step-level faults and reaper delays need the worker's gate and are not
applied across processes (the report counts only what fired)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
import trio

from durable._pg import Pool
from durable.sql import Q

from .core import Run, StepRecord
from .plan import Fault

SPACING = 0.4  # real seconds between the n-th and (n+1)-th planned fault of a slot


class Workers:
    def __init__(self, run: Run, dsn: str, schema: str, lease: float, count: int, watch: Pool) -> None:
        self.run = run
        self.dsn = dsn
        self.schema = schema
        self.lease = lease
        self.count = count
        self.watch = watch
        self.folder = Path(tempfile.mkdtemp(prefix="durable-sim-"))
        self.procs: dict[int, trio.Process] = {}
        self.incarnation: dict[int, int] = {}
        self.stopping = False
        self.killed: set[int] = set()  # pids SIGKILLed on purpose
        # slot -> set once its current process is ready; replaced by an unset one when a fault kills it
        self.ready: dict[int, trio.Event] = {}
        self.nursery: trio.Nursery | None = None

    def remove(self) -> None:
        """Delete the run's folder of worker logs and step records (read by then; the report keeps the
        last error line of a worker that died)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def records(self) -> list[StepRecord]:
        out = []
        for path in sorted(self.folder.glob("*.jsonl")):
            for line in path.read_bytes().splitlines():
                out.append(StepRecord(**orjson.loads(line)))
        return out

    async def start(self, slot: int) -> None:
        ready = self.ready.get(slot)
        if ready is None or ready.is_set():
            ready = self.ready[slot] = trio.Event()
        self.incarnation[slot] = self.incarnation.get(slot, 0) + 1
        wid = f"w{slot}.{self.incarnation[slot]}"
        with open(self.folder / f"{wid}.err", "wb") as err:  # noqa: ASYNC230 (a local file, once)
            proc = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "durable.sim.worker",
                    self.dsn,
                    self.schema,
                    wid,
                    self.run.config.workload,
                    str(self.lease),
                    str(self.folder / f"{wid}.jsonl"),
                ],
                stdout=subprocess.PIPE,  # one line, "ready", once the runtime runs
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.procs[slot] = proc
        if self.stopping:  # stop() began while this one was starting
            proc.kill()
            await proc.wait()
            if proc.stdout is not None:
                await proc.stdout.aclose()
            return
        self.run.log.add(f"{wid} start (process)")
        assert self.nursery is not None
        self.nursery.start_soon(self.watchdog, slot, wid, proc)
        self.nursery.start_soon(self.until_ready, proc, ready)

    async def until_ready(self, proc: trio.Process, ready: trio.Event) -> None:
        """Set ``ready`` when the worker prints its "ready" line (its start is done); never if it dies first.
        Reads its standard output to the end (the pipe is closed with the process)."""
        assert proc.stdout is not None
        seen = b""
        async with proc.stdout:
            while chunk := await proc.stdout.receive_some():
                seen = (seen + chunk)[-64:]
                if b"ready" in seen:
                    ready.set()

    async def running(self, slot: int) -> trio.Process:
        """The slot's current process, once it is ready (a fault strikes a running worker, not its start:
        what a fault hits then does not depend on how long a start takes on a loaded machine, and a second
        crash would kill the dead process of the first and start an orphan beside the new one). A kill
        during a start is the dst fault conn_register, drawn from the seed."""
        while True:
            ready = self.ready[slot]
            await ready.wait()
            if self.ready[slot] is ready:
                return self.procs[slot]

    async def watchdog(self, slot: int, wid: str, proc: trio.Process) -> None:
        """A worker process that exits on its own (not SIGKILLed by a fault, not stopped) died of an
        engine error: report it and start a new one."""
        code = await proc.wait()
        if self.stopping or proc.pid in self.killed:
            return
        text = (self.folder / f"{wid}.err").read_text(errors="replace")
        lines = [line.strip(" |") for line in text.splitlines() if line.strip(" |")]  # its error: the last line
        self.run.violate(
            "workers_survive", f"worker process {wid} exited with status {code}: {lines[-1] if lines else 'no output'}"
        )
        await self.start(slot)

    async def supervise(self, plan: list[Fault]) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            for slot in range(1, self.count + 1):
                await self.start(slot)
            for fault in plan:
                if fault.slot is not None and fault.kind not in ("reaper_delay",):
                    nursery.start_soon(self.inject, fault)

    async def inject(self, fault: Fault) -> None:
        assert fault.slot is not None
        await trio.sleep(fault.nth * SPACING + fault.slot * SPACING / self.count)
        proc = await self.running(fault.slot)
        if not self.run.faults_on or self.stopping:
            return
        self.run.fire(fault, f" (process {fault.slot})")
        if fault.kind in ("crash", "commit_unknown"):
            self.ready[fault.slot] = trio.Event()  # the slot's next faults wait for its restart
            self.killed.add(proc.pid)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            await trio.sleep(self.lease / 2)
            if not self.stopping:
                await self.start(fault.slot)
        elif fault.kind == "zombie":
            proc.send_signal(signal.SIGSTOP)
            await trio.sleep(self.lease * 1.5)
            proc.send_signal(signal.SIGCONT)
        elif fault.kind.startswith("conn_"):
            app = f"sim-{self.schema}-w{fault.slot}"[:63]
            pids = [r["pid"] for r in await self.watch.fetch(Q.sim_backends_of, app)]
            await self.watch.fetchval(Q.sim_terminate_backends, pids)

    async def stop(self) -> None:
        self.stopping = True
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.lease * 3):
            for proc in self.procs.values():
                await proc.wait()
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if self.nursery is not None:  # planned faults still waiting for their moment
            self.nursery.cancel_scope.cancel()
