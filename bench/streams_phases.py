"""Where one ``durable serve`` append's time goes (issue 20, item 3): the same 100-byte append measured
layer by layer, one writer back to back, in one run on this machine.

    python -m durable.bench.streams_phases [--dsn DSN] [--seconds 5] [--rounds 2] [--json FILE]

Layers (each a figure of its own, the rounds interleaved; the table shows each one's median):
* ``commit``: a one-row INSERT and its commit through asyncpg (uvloop), back to back: PostgreSQL's
  durable commit, the floor of any acknowledged append;
* ``ds_append``: the ``stream_append`` statement (``ds_append`` and its commit), the same way;
* ``store.append``: :meth:`durable.streams.store.Store.append` on a native pool with group commit, as
  the HTTP front runs it (its Python: the lane, the pinned connection, the verdict);
* ``HTTP, empty app``: the bench's Node load generator against uvicorn (httptools, uvloop, as the front
  runs it) with an ASGI app that answers 204 at once: the HTTP round trip and the client;
* ``durable serve``: the load generator against ``durable serve``: the whole append.

For each: the mean time per append (1 / rate) and the CPU per append of the server process (or of this
process for the first three) and of every PostgreSQL process. What the whole append costs beyond the
sum of ``HTTP, empty app`` and ``store.append`` is the cost of running them in one process and one
machine (the HTTP front's request handling, the trio side's NOTIFY listener, wake-ups). Not part of
the test suite.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .streams import Proc, reference_dir

HZ = os.sysconf("SC_CLK_TCK")
BODY = b"x" * 100
EMPTY_APP = """
import asyncio, socket, uvicorn, uvloop

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})

sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(1024)
print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
config = uvicorn.Config(app, http="httptools", loop="none", lifespan="off", access_log=False, log_config=None)
uvloop.run(uvicorn.Server(config).serve(sockets=[sock]))
"""


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and all its threads."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def parent_of(pid: int) -> int:
    """The parent process of ``pid``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[1])


def children_cpu(parent: int) -> dict[int, float]:
    """CPU seconds of each child process of ``parent`` (PostgreSQL's backends and helpers), by pid."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[1]) == parent:
            found[int(entry)] = (int(fields[11]) + int(fields[12])) / HZ
    return found


def spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds PostgreSQL's processes used between two :func:`children_cpu` (a backend that ended
    meanwhile is not counted; one that started is, from zero)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


@dataclass
class Figure:
    layer: str
    ms: float  # mean wall time per append
    server_cpu_ms: float  # CPU per append of the process serving it (this one for in-process layers)
    pg_cpu_ms: float  # CPU per append of all PostgreSQL processes
    load: float


async def in_process(dsn: str, schema: str, seconds: float, postmaster: int) -> list[Figure]:
    """``commit``, ``ds_append`` and ``store.append`` in this process, on uvloop (as the front runs)."""
    import asyncpg

    from durable._pg import SESSION_SETTINGS, Pool
    from durable.sql import Q
    from durable.streams.store import CreateSpec, Store

    settings = SESSION_SETTINGS | {"search_path": f"{schema},public"}
    con = await asyncpg.connect(dsn, server_settings=settings)
    pool = await Pool.open_native(dsn, schema, min_size=1, max_size=4)
    store = Store(pool)
    figures = []
    try:
        await con.execute("create table if not exists phase_commit (x int)")
        path = f"/phases/{uuid.uuid4().hex[:8]}"
        async with store.pinned(2, group_commit=True):
            await store.create(path, CreateSpec(content_type="application/octet-stream"))
            args = (path, BODY, "application/octet-stream", False, None, None, None, False, None, None, store.channel)

            async def commit() -> None:
                await con.execute("insert into phase_commit values (1)")

            async def ds_append() -> None:
                await con.fetchrow(Q.stream_append.text, *args, None, None)

            async def store_append() -> None:
                await store.append(path, BODY, content_type="application/octet-stream")

            for layer, call in (("commit", commit), ("ds_append", ds_append), ("store.append", store_append)):
                for _ in range(50):  # warm: prepared statements, cached plans
                    await call()
                me, pg, start, n = time.process_time(), children_cpu(postmaster), time.perf_counter(), 0
                end = start + seconds
                while time.perf_counter() < end:
                    await call()
                    n += 1
                wall = time.perf_counter() - start
                figures.append(
                    Figure(
                        layer,
                        wall / n * 1e3,
                        (time.process_time() - me) / n * 1e3,
                        spent(pg, children_cpu(postmaster)) / n * 1e3,
                        os.getloadavg()[0],
                    )
                )
        await con.execute("drop table phase_commit")
    finally:
        await con.close()
        await pool.close_native()
    return figures


def over_http(layer: str, proc: Proc, ref: Path, seconds: float, postmaster: int) -> Figure:
    """The Node load generator, one writer, against ``proc``."""
    server, pg = cpu_of(proc.proc.pid), children_cpu(postmaster)
    command = ["node", "load.mjs", proc.url, "append", "1", str(seconds)]
    out = subprocess.run(command, cwd=ref, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise click.ClickException(f"load generator failed: {out.stderr.strip()[-500:]}")
    rate = float(json.loads(out.stdout.strip().splitlines()[-1])["rate"])
    n = rate * seconds
    return Figure(
        layer,
        1e3 / rate,
        (cpu_of(proc.proc.pid) - server) / n * 1e3,
        spent(pg, children_cpu(postmaster)) / n * 1e3,
        os.getloadavg()[0],
    )


@click.command()
@click.option("--dsn", envvar="DURABLE_BENCH_DSN", default=None, help="PostgreSQL (default: the embedded server).")
@click.option("--seconds", default=5.0, show_default=True, help="Duration of each figure.")
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(1, 20), help="Interleaved rounds.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write figures here.")
def main(dsn: str | None, seconds: float, rounds: int, json_path: Path | None) -> None:
    """One append's time, layer by layer (see the module's docstring)."""
    import trio

    import durable
    from durable.embedded import resolve_dsn
    from durable.migrate import drop_schema

    console = Console()
    target = resolve_dsn(dsn)
    schema = f"bench_phases_{uuid.uuid4().hex[:8]}"

    async def prepare() -> None:
        async with durable.connect(target, schema=schema):  # migrated
            pass

    async def server_pid() -> int:
        """The postmaster's pid: a backend's parent (a server on this machine)."""
        import asyncpg

        con = await asyncpg.connect(target)
        try:
            return parent_of(con.get_server_pid())
        finally:
            await con.close()

    trio.run(prepare)
    postmaster = asyncio.run(server_pid())
    ref = reference_dir()
    empty = Path(ref) / "empty_app.py"
    empty.write_text(EMPTY_APP)
    every: list[Figure] = []
    try:
        for round_ in range(rounds):
            console.print(f"[bold]round {round_ + 1} of {rounds}[/] (load {os.getloadavg()[0]:.2f})")
            figures = asyncio.run(in_process(target, schema, seconds, postmaster))
            proc = Proc([sys.executable, str(empty)])
            try:
                figures.append(over_http("HTTP, empty app", proc, ref, seconds, postmaster))
            finally:
                proc.stop()
            serve = [sys.executable, "-c", "from durable.cli import main; main()", "serve", "--port", "0"]
            proc = Proc([*serve, "--schema", schema, "--dsn", target])
            try:
                figures.append(over_http("durable serve", proc, ref, seconds, postmaster))
            finally:
                proc.stop()
            for f in figures:
                console.print(
                    f"  {f.layer:16} {f.ms:6.3f} ms/append  server CPU {f.server_cpu_ms:6.3f} ms  "
                    f"PostgreSQL CPU {f.pg_cpu_ms:6.3f} ms  load {f.load:.2f}"
                )
            every.extend(figures)
    finally:
        trio.run(_drop, target, schema, drop_schema)

    def median(values: list[float]) -> float:
        ordered = sorted(values)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    layers = list(dict.fromkeys(f.layer for f in every))
    table = Table(title=f"One append, layer by layer ({os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')})")
    for column in ("layer", "ms per append", "server CPU ms", "PostgreSQL CPU ms"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    medians = {}
    for layer in layers:
        runs = [f for f in every if f.layer == layer]
        medians[layer] = {
            "ms": median([f.ms for f in runs]),
            "server_cpu_ms": median([f.server_cpu_ms for f in runs]),
            "pg_cpu_ms": median([f.pg_cpu_ms for f in runs]),
        }
        m = medians[layer]
        table.add_row(layer, f"{m['ms']:.3f}", f"{m['server_cpu_ms']:.3f}", f"{m['pg_cpu_ms']:.3f}")
    console.print(table)
    if json_path is not None:
        json_path.write_text(
            json.dumps({"medians": medians, "rounds": [f.__dict__ for f in every], "seconds": seconds}, indent=2)
        )


async def _drop(dsn: str, schema: str, drop_schema: object) -> None:
    import durable

    async with durable.connect(dsn, schema=schema, migrate=False) as db:
        await drop_schema(db.pool, schema)  # type: ignore[operator]


if __name__ == "__main__":
    main()
