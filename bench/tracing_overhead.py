"""What tracing costs: steps/s of one runtime draining a backlog of three-step instances, with
telemetry off (``DURABLE_TRACING=off``: not even the API is called), API only (no SDK: the
OpenTelemetry no-op), and the SDK exporting every span and metric over OTLP (gRPC, HTTP) to a
receiver in this process. Each run is a fresh subprocess (the SDK is process-global) on a fresh schema;
modes are interleaved over rounds and the median is printed.

    python -m durable.bench.tracing_overhead                     # $DURABLE_DSN, else the embedded server
    python -m durable.bench.tracing_overhead --instances 3000 --rounds 5
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import click
import trio

import durable
from durable import Done, Machine, Next, step

MODES = ("off", "api", "sdk-grpc", "sdk-http")
LABELS = {"off": "tracing off", "api": "API only, no SDK", "sdk-grpc": "SDK + OTLP/gRPC", "sdk-http": "SDK + OTLP/HTTP"}
STEPS_PER_INSTANCE = 3


class Three(Machine, queue="overhead", initial="a"):
    @step
    async def a(self, ctx: durable.Context) -> Next:
        return Next("b")

    @step
    async def b(self, ctx: durable.Context) -> Next:
        return Next("c")

    @step
    async def c(self, ctx: durable.Context) -> Done:
        return Done()


@dataclass
class Run:
    mode: str
    steps: int
    seconds: float
    flush_seconds: float
    spans: int = 0

    @property
    def rate(self) -> float:
        return self.steps / self.seconds


# -- one run (the child process) --------------------------------------------------------------------
async def drain(dsn: str | None, schema: str, instances: int, concurrency: int) -> tuple[int, float]:
    from durable.migrate import drop_schema

    expected = instances * STEPS_PER_INSTANCE
    done = trio.Event()
    count = 0

    def on_step(*_: Any) -> None:
        nonlocal count
        count += 1
        if count >= expected:
            done.set()

    async with durable.connect(dsn, schema=schema, machines=[Three], max_size=10) as db:
        try:
            for start in range(0, instances, 1000):
                batch = min(instances, start + 1000) - start
                await db.insert_many([durable.Insert(Three) for _ in range(batch)])
            async with trio.open_nursery() as nursery:
                began = trio.current_time()
                runtime = durable.Runtime(db, queues={"overhead": concurrency}, on_step=on_step)
                await nursery.start(runtime.run)
                with trio.fail_after(600):
                    await done.wait()
                elapsed = trio.current_time() - began
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await drop_schema(db.pool, schema)
    return count, elapsed


def run_child(mode: str, dsn: str | None, endpoint: str | None, instances: int, concurrency: int) -> dict[str, Any]:
    import durable.otel as otel

    if mode.startswith("sdk-"):
        protocol = mode.removeprefix("sdk-")
        otel.configure("tracing-overhead", otlp=protocol, endpoint=endpoint)  # type: ignore[arg-type]
    schema = f"bench_trace_{uuid.uuid4().hex[:8]}"
    steps, seconds = trio.run(drain, dsn, schema, instances, concurrency)
    began = time.perf_counter()
    otel.shutdown()
    return {"mode": mode, "steps": steps, "seconds": seconds, "flush_seconds": time.perf_counter() - began}


# -- the benchmark (the parent) ---------------------------------------------------------------------
def run_one(mode: str, dsn: str | None, receiver: Any, instances: int, concurrency: int) -> Run:
    endpoint = {"sdk-grpc": receiver.grpc_endpoint, "sdk-http": receiver.http_endpoint}.get(mode)
    env = dict(os.environ)
    env["DURABLE_TRACING"] = "off" if mode == "off" else "on"
    before = len(receiver.spans)
    args = [
        sys.executable,
        "-m",
        "durable.bench.tracing_overhead",
        "--child",
        mode,
        "--instances",
        str(instances),
        "--concurrency",
        str(concurrency),
    ]
    if dsn:
        args += ["--dsn", dsn]
    if endpoint:
        args += ["--endpoint", endpoint]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise click.ClickException(f"{mode} run failed:\n{proc.stderr.strip()[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return Run(mode, out["steps"], out["seconds"], out["flush_seconds"], len(receiver.spans) - before)


def report(runs: list[Run], instances: int) -> None:
    from rich.console import Console
    from rich.table import Table

    per_mode = len(runs) // len({r.mode for r in runs})
    table = Table(title=f"{instances} instances x {STEPS_PER_INSTANCE} steps, median of {per_mode} run(s)")
    for col in ("mode", "steps/s", "vs first", "added per step", "spans/step", "exit flush"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    base: float | None = None
    for mode in MODES:
        mine = [r for r in runs if r.mode == mode]
        if not mine:
            continue
        rate = statistics.median(r.rate for r in mine)
        base = base or rate
        spans = statistics.median(r.spans / r.steps for r in mine)
        table.add_row(
            LABELS[mode],
            f"{rate:,.0f}",
            f"{rate / base - 1:+.1%}",
            f"{(1 / rate - 1 / base) * 1e6:+,.0f} µs",
            f"{spans:.2f}" if mode.startswith("sdk") else "-",
            f"{statistics.median(r.flush_seconds for r in mine):.2f} s",
        )
    Console(width=max(Console().width, 100)).print(table)


@click.command()
@click.option("--dsn", envvar="DURABLE_DSN", default=None, help="PostgreSQL DSN (default: the embedded server).")
@click.option("--instances", default=2000, show_default=True, help="Instances per run (three steps each).")
@click.option("--concurrency", default=50, show_default=True, help="Steps at once.")
@click.option("--rounds", default=3, show_default=True, help="Runs per mode (interleaved); the median is shown.")
@click.option("--modes", default=",".join(MODES), show_default=True, help="Comma-separated subset of modes.")
@click.option("--child", type=click.Choice(MODES), hidden=True)
@click.option("--endpoint", hidden=True)
def main(
    dsn: str | None, instances: int, concurrency: int, rounds: int, modes: str, child: str | None, endpoint: str | None
) -> None:
    """Steps/s with tracing off, API only, and SDK + OTLP export."""
    if child is not None:
        print(json.dumps(run_child(child, dsn, endpoint, instances, concurrency)))
        return
    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in MODES]
    if unknown:
        raise click.UsageError(f"unknown mode(s) {', '.join(unknown)}: choose from {', '.join(MODES)}")
    from durable.otel.receiver import Receiver
    from rich.progress import Progress

    runs: list[Run] = []
    with Receiver() as receiver, Progress(transient=True) as progress:
        task = progress.add_task("runs", total=rounds * len(chosen))
        for r in range(rounds):
            for mode in chosen if r % 2 == 0 else reversed(chosen):
                progress.update(task, description=f"round {r + 1}/{rounds}: {LABELS[mode]}")
                runs.append(run_one(mode, dsn, receiver, instances, concurrency))
                progress.advance(task)
    report(runs, instances)


if __name__ == "__main__":
    main()
