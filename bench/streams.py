"""Durable Streams throughput: ``durable serve`` (PostgreSQL) vs the reference Node server
``@durable-streams/server`` (npm; in-memory and file-backed) on this machine, in one run.

    python -m bench.streams [--dsn DSN] [--seconds 5] [--writers 1,16] [--read-mb 32]

Every server gets the same load from the same client (httpx on trio, one connection per writer):
* appends/s: W writers each POST 100-byte appends to their own stream for ``--seconds``;
* read MB/s: one stream pre-filled with ``--read-mb`` MB in 64 KiB appends, read from the start to the
  tail chunk by chunk (catch-up GETs), twice.
The client shares the machine with the servers, so figures are relative, not absolute peaks.
Not part of the test suite.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import click
import httpx
import trio
from rich.console import Console
from rich.table import Table

REF_PACKAGE = "@durable-streams/server"
NODE_SCRIPT = """
import { DurableStreamTestServer } from "@durable-streams/server"
const dataDir = process.argv[2] || undefined
const server = new DurableStreamTestServer({ port: 0, host: "127.0.0.1", dataDir, longPollTimeout: 5000 })
const url = await server.start()
console.log("listening on " + url)
process.on("SIGTERM", async () => { await server.stop(); process.exit(0) })
"""


@dataclass
class Result:
    server: str
    appends: dict[int, float]  # writers -> appends/s
    read_mb_s: float


class Proc:
    """A server subprocess that prints ``listening on <url>``."""

    def __init__(self, cmd: list[str], cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = ""
        found = threading.Event()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                m = re.search(r"listening on (http://\S+)", line)
                if m and not self.url:
                    self.url = m.group(1)
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(60):
            self.stop()
            raise click.ClickException(f"server did not start: {' '.join(cmd)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def reference_dir() -> Path:
    """A folder with ``@durable-streams/server`` installed (npm install once, then reused)."""
    folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "durable-bench" / "dsref"
    if not (folder / "node_modules" / "@durable-streams" / "server").exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "package.json").write_text('{"name": "dsref", "private": true, "type": "module"}')
        subprocess.run(["npm", "install", "--silent", REF_PACKAGE], cwd=folder, check=True)
    (folder / "serve.mjs").write_text(NODE_SCRIPT)
    return folder


async def appends_per_second(url: str, writers: int, seconds: float) -> float:
    run = uuid.uuid4().hex[:8]
    body = b"x" * 100
    count = 0
    limits = httpx.Limits(max_connections=writers, max_keepalive_connections=writers)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:
        for w in range(writers):
            await http.put(f"/bench/{run}/{w}", headers={"content-type": "application/octet-stream"})

        async def writer(w: int, deadline: float) -> None:
            nonlocal count
            while trio.current_time() < deadline:
                r = await http.post(f"/bench/{run}/{w}", content=body,
                                    headers={"content-type": "application/octet-stream"})
                assert r.status_code in (200, 204), r.text
                count += 1

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for w in range(writers):
                nursery.start_soon(writer, w, start + seconds)
        return count / (trio.current_time() - start)


async def read_mb_per_second(url: str, megabytes: int) -> float:
    path = f"/bench/read-{uuid.uuid4().hex[:8]}"
    chunk = os.urandom(64 * 1024)
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        await http.put(path, headers={"content-type": "application/octet-stream"})
        for _ in range(megabytes * 16):
            await http.post(path, content=chunk, headers={"content-type": "application/octet-stream"})
        total = 0
        start = trio.current_time()
        for _ in range(2):
            offset = "-1"
            while True:
                r = await http.get(path, params={"offset": offset})
                total += len(r.content)
                offset = r.headers["stream-next-offset"]
                if r.headers.get("stream-up-to-date") == "true":
                    break
        assert total == 2 * megabytes * 16 * len(chunk), total
        return total / (1 << 20) / (trio.current_time() - start)


def measure(name: str, url: str, writers: list[int], seconds: float, read_mb: int, console: Console) -> Result:
    console.print(f"[bold]{name}[/] at {url}")
    appends = {}
    for w in writers:
        appends[w] = trio.run(appends_per_second, url, w, seconds)
        console.print(f"  {w:>3} writer(s): {appends[w]:,.0f} appends/s")
    mb = trio.run(read_mb_per_second, url, read_mb)
    console.print(f"  read: {mb:,.1f} MB/s")
    return Result(name, appends, mb)


@click.command()
@click.option("--dsn", envvar="DURABLE_BENCH_DSN", default=None,
              help="PostgreSQL for durable serve (default: the embedded server).")
@click.option("--seconds", default=5.0, show_default=True, help="Duration of each append measurement.")
@click.option("--writers", default="1,16", show_default=True, help="Comma-separated writer counts.")
@click.option("--read-mb", default=32, show_default=True, help="Size of the stream read back.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write figures here.")
def main(dsn: str | None, seconds: float, writers: str, read_mb: int, json_path: Path | None) -> None:
    """Appends/s and read MB/s: durable serve vs the reference Node server, in one run."""
    console = Console()
    counts = [int(w) for w in writers.split(",") if w.strip()]
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise click.UsageError("node and npm are needed for the reference server")
    results: list[Result] = []
    schema = f"bench_streams_{uuid.uuid4().hex[:8]}"
    durable_cmd = [sys.executable, "-c", "from durable.cli import main; main()", "serve", "--port", "0",
                   "--schema", schema] + (["--dsn", dsn] if dsn else [])
    servers: list[tuple[str, list[str], Path | None]] = [("durable serve (PostgreSQL)", durable_cmd, None)]
    ref = reference_dir()
    data_dir = Path(tempfile.mkdtemp(prefix="dsref-data-"))
    servers.append(("reference Node (memory)", ["node", "serve.mjs"], ref))
    servers.append(("reference Node (file-backed)", ["node", "serve.mjs", str(data_dir)], ref))
    try:
        for name, cmd, cwd in servers:
            proc = Proc(cmd, cwd)
            try:
                results.append(measure(name, proc.url, counts, seconds, read_mb, console))
            finally:
                proc.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
        trio.run(_drop_schema, dsn, schema)

    table = Table(title=f"Durable Streams throughput ({os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')})")
    table.add_column("server")
    for w in counts:
        table.add_column(f"appends/s, {w} writer{'s' if w > 1 else ''}", justify="right")
    table.add_column("read MB/s", justify="right")
    for r in results:
        table.add_row(r.server, *(f"{r.appends[w]:,.0f}" for w in counts), f"{r.read_mb_s:,.1f}")
    console.print(table)
    if json_path is not None:
        json_path.write_text(json.dumps([r.__dict__ for r in results], indent=2))


async def _drop_schema(dsn: str | None, schema: str) -> None:
    import durable
    from durable.migrate import drop_schema

    async with durable.connect(dsn, schema=schema, migrate=False) as db:
        await drop_schema(db.pool, schema)


if __name__ == "__main__":
    main()
