"""Durable Streams throughput: ``durable serve`` (PostgreSQL) vs the reference Node server
``@durable-streams/server`` (npm; in-memory and file-backed) on this machine, in one run.

    python -m durable.bench.streams [--dsn DSN] [--seconds 5] [--writers 1,16] [--read-mb 32]
                                    [--stacks uvicorn,hypercorn] [--rounds 3] [--json FILE]

Every server gets the same load from the same client (a Node fetch load generator, one connection per
writer):
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
# the load generator: Node's fetch (undici) is lighter than a Python client, so more of the two CPUs
# go to the server under test
LOAD_SCRIPT = """
const [url, mode, a, b] = process.argv.slice(2)
const octets = { "content-type": "application/octet-stream" }
const run = Math.random().toString(36).slice(2)
if (mode === "append") {
  const writers = +a, seconds = +b, body = new Uint8Array(100)
  for (let w = 0; w < writers; w++) await fetch(`${url}/bench/${run}/${w}`, { method: "PUT", headers: octets })
  let count = 0
  const start = performance.now(), end = start + seconds * 1000
  await Promise.all(Array.from({ length: writers }, async (_, w) => {
    while (performance.now() < end) {
      const r = await fetch(`${url}/bench/${run}/${w}`, { method: "POST", headers: octets, body })
      await r.arrayBuffer()
      if (r.status !== 204 && r.status !== 200) throw new Error(`append: ${r.status}`)
      count++
    }
  }))
  console.log(JSON.stringify({ rate: count / ((performance.now() - start) / 1000) }))
} else {
  const mb = +a, path = `${url}/bench/read-${run}`, chunk = new Uint8Array(64 * 1024).map((_, i) => i)
  await fetch(path, { method: "PUT", headers: octets })
  for (let i = 0; i < mb * 16; i++) {
    await (await fetch(path, { method: "POST", headers: octets, body: chunk })).arrayBuffer()
  }
  let total = 0
  const start = performance.now()
  for (let round = 0; round < 2; round++) {
    let offset = "-1"
    for (;;) {
      const r = await fetch(`${path}?offset=${encodeURIComponent(offset)}`)
      total += (await r.arrayBuffer()).byteLength
      offset = r.headers.get("stream-next-offset")
      if (r.headers.get("stream-up-to-date") === "true") break
    }
  }
  if (total !== 2 * mb * 16 * chunk.length) throw new Error(`read ${total} bytes`)
  console.log(JSON.stringify({ rate: total / 1048576 / ((performance.now() - start) / 1000) }))
}
"""


@dataclass
class Result:
    server: str
    appends: dict[int, float]  # writers -> appends/s
    read_mb_s: float
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)  # the machine's load average after the server's run


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
    (folder / "load.mjs").write_text(LOAD_SCRIPT)
    return folder


def load(ref: Path, url: str, *args: object) -> float:
    """Run the Node load generator; its figure (appends/s or MB/s)."""
    out = subprocess.run(
        ["node", "load.mjs", url, *map(str, args)], cwd=ref, capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise click.ClickException(f"load generator failed: {out.stderr.strip()[-500:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["rate"])


def measure(
    name: str, url: str, ref: Path, writers: list[int], seconds: float, read_mb: int, console: Console
) -> Result:
    console.print(f"[bold]{name}[/] at {url}")
    appends = {}
    for w in writers:
        appends[w] = load(ref, url, "append", w, seconds)
        console.print(f"  {w:>3} writer(s): {appends[w]:,.0f} appends/s")
    mb = load(ref, url, "read", read_mb)
    console.print(f"  read: {mb:,.1f} MB/s")
    average = os.getloadavg()
    console.print(f"  load average: {average[0]:.2f} {average[1]:.2f} {average[2]:.2f}")
    return Result(name, appends, mb, average)


@click.command()
@click.option(
    "--dsn",
    envvar="DURABLE_BENCH_DSN",
    default=None,
    help="PostgreSQL for durable serve (default: the embedded server).",
)
@click.option("--seconds", default=5.0, show_default=True, help="Duration of each append measurement.")
@click.option("--writers", default="1,16", show_default=True, help="Comma-separated writer counts.")
@click.option("--read-mb", default=32, show_default=True, help="Size of the stream read back.")
@click.option(
    "--stacks",
    default="uvicorn",
    show_default=True,
    help="HTTP stacks of durable serve to measure, comma-separated: uvicorn (the default front), "
    "hypercorn (everything on trio); $DURABLE_SERVE_HTTP of the server.",
)
@click.option(
    "--rounds",
    default=1,
    show_default=True,
    type=click.IntRange(1, 20),
    help="Measure every server this many times, the servers interleaved (the machine's load drifts); "
    "the table shows each figure's median.",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write figures here.")
def main(
    dsn: str | None, seconds: float, writers: str, read_mb: int, stacks: str, rounds: int, json_path: Path | None
) -> None:
    """Appends/s and read MB/s: durable serve vs the reference Node server, in one run."""
    console = Console()
    counts = [int(w) for w in writers.split(",") if w.strip()]
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise click.UsageError("node and npm are needed for the reference server")
    results: list[Result] = []
    schema = f"bench_streams_{uuid.uuid4().hex[:8]}"
    durable_cmd = [
        sys.executable,
        "-c",
        "from durable.cli import main; main()",
        "serve",
        "--port",
        "0",
        "--schema",
        schema,
    ] + (["--dsn", dsn] if dsn else [])
    servers: list[tuple[str, list[str], Path | None]] = []
    for stack in (x.strip() for x in stacks.split(",") if x.strip()):
        if stack not in ("uvicorn", "hypercorn"):
            raise click.BadParameter(f"unknown stack {stack!r}", param_hint="--stacks")
        servers.append((f"durable serve ({stack})", ["env", f"DURABLE_SERVE_HTTP={stack}", *durable_cmd], None))
    ref = reference_dir()
    data_dir = Path(tempfile.mkdtemp(prefix="dsref-data-"))
    servers.append(("reference Node (memory)", ["node", "serve.mjs"], ref))
    servers.append(("reference Node (file-backed)", ["node", "serve.mjs", str(data_dir)], ref))
    every: list[Result] = []
    try:
        for round_ in range(rounds):
            if rounds > 1:
                console.print(f"[bold]round {round_ + 1} of {rounds}[/]")
            for name, cmd, cwd in servers:
                proc = Proc(cmd, cwd)
                try:
                    every.append(measure(name, proc.url, ref, counts, seconds, read_mb, console))
                finally:
                    proc.stop()
        results = [median_of([r for r in every if r.server == name], counts) for name, _, _ in servers]
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
    ratios = compare(results, counts)
    for line in ratios:
        console.print(line)
    if json_path is not None:
        json_path.write_text(
            json.dumps(
                {
                    "medians": [r.__dict__ for r in results],
                    "ratios": ratios,
                    "rounds": [r.__dict__ for r in every],
                    "seconds": seconds,
                    "read_mb": read_mb,
                    "cpus": os.cpu_count(),
                },
                indent=2,
            )
        )


def median_of(runs: list[Result], counts: list[int]) -> Result:
    """One server's figures over its rounds: the median of each."""

    def median(values: list[float]) -> float:
        ordered = sorted(values)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    return Result(
        runs[0].server,
        {w: median([r.appends[w] for r in runs]) for w in counts},
        median([r.read_mb_s for r in runs]),
        runs[-1].load,
    )


def compare(results: list[Result], counts: list[int]) -> list[str]:
    """The issue-20 targets as ratios within this run: durable's appends with 1 writer against the
    file-backed reference's, with the most writers against the in-memory reference's; reads against both."""
    by = {r.server: r for r in results}
    memory, file = by.get("reference Node (memory)"), by.get("reference Node (file-backed)")
    lines = []
    for r in results:
        if not r.server.startswith("durable") or memory is None or file is None:
            continue
        few, many = min(counts), max(counts)
        lines.append(
            f"{r.server}: {few} writer(s) {r.appends[few] / file.appends[few]:.2f}x file-backed (target >= 2), "
            f"{many} writers {r.appends[many] / memory.appends[many]:.2f}x in-memory (target >= 1), "
            f"read {r.read_mb_s / max(memory.read_mb_s, file.read_mb_s):.2f}x the faster reference (target >= 1)"
        )
    return lines


async def _drop_schema(dsn: str | None, schema: str) -> None:
    import durable
    from durable.migrate import drop_schema

    async with durable.connect(dsn, schema=schema, migrate=False) as db:
        await drop_schema(db.pool, schema)


if __name__ == "__main__":
    main()
