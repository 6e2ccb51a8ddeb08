"""One benchmark run: every measurement, in order, against one server; a failing stage is recorded
with its error and the run goes on."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio_asyncio
from rich.console import Console

from . import durable_bench as d
from . import scale, steploop, sustained
from .profile import py_spy, rank
from .server import Server, machine
from .subproc import run_json


@dataclass
class Plan:
    """How big each measurement is. ``quick()`` for development, the defaults for the record."""

    jobs: int = 100_000
    machines: int = 20_000
    pickup_samples: int = 200
    load_seconds: float = 8.0
    load_fraction: float = 0.5  # the under-load figure the targets read (durable.pickup.under_load)
    load_fractions: tuple[float, ...] = (0.5,)  # offered loads (of the drain rate) run, durable and pgqueuer each
    picker_small: int = 1_000
    picker_large: int = 1_000_000
    picker_busy: int = 10_000  # executing rows of the picker's executing-set probe (its backlog: as many keyed rows)
    picker_values: int = 200  # instances of the named-values probe, each carrying a 1 MiB value (200 MiB)
    picks: int = 200
    pick_demand: int = 50
    ceiling_jobs: int = 100_000
    ceiling_runs: tuple[tuple[int, int, bool], ...] = ((50, 1, False), (200, 1, False), (200, 2, False), (200, 1, True))
    pglimit_seconds: float = 8.0
    procrastinate_jobs: int = 10_000
    dbos_instances: int = 2_000
    peers: tuple[str, ...] = ("pgqueuer", "procrastinate", "oban", "dbos")
    profile: bool = True
    profile_jobs: int = 50_000
    steploop: int = 50_000
    duel_rounds: int = 3  # durable and the fastest one-step peer drained back to back, alternately
    scale_jobs: int = 100_000  # the scale-out curve (opt-in: --only scale)
    scale_workers: tuple[int, ...] = (1, 2)
    sustained_jobs: int = 1_000_000  # the sustained run (opt-in: --only sustained)
    sustained_segment: int = 100_000
    tuning: d.Tuning = field(default_factory=d.Tuning)
    quick: bool = False
    only: frozenset[str] | None = None  # stage groups to run (STAGES); None = all
    profile_out: Path | None = None  # keep py-spy's collapsed stacks here

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls(
            jobs=10_000,
            machines=4_000,
            pickup_samples=100,
            load_seconds=4.0,
            picker_large=100_000,
            picks=100,
            ceiling_jobs=20_000,
            pglimit_seconds=3.0,
            procrastinate_jobs=2_000,
            dbos_instances=300,
            profile_jobs=10_000,
            duel_rounds=1,
            scale_jobs=10_000,
            sustained_jobs=50_000,
            sustained_segment=10_000,
            quick=True,
        )


STAGES = (
    "pg_limit",
    "one_step",
    "five_step",
    "pickup",
    "picker",
    "ceiling",
    "steploop",
    "peers",
    "duel",
    "profile",
    "scale",
    "sustained",
)
OPT_IN = frozenset({"scale", "sustained"})  # long: run only when --only names them


def under_load_key(fraction: float, main: float) -> str:
    """Where an under-load stage's figures go: ``under_load`` for the fraction the targets read, else
    ``under_load_<percent>`` (``durable.pickup.<key>``; pgqueuer's beside it as ``under_load_pgqueuer...``)."""
    return "under_load" if abs(fraction - main) < 1e-9 else f"under_load_{round(fraction * 100)}"


def stage_group(path: str) -> str:
    parts = path.split(".")
    return parts[1] if parts[0] == "durable" else parts[0]


# Peer settings: each engine's documented throughput knobs, chosen by a small sweep on this machine
# (see PERFORMANCE.md).
PEER_SETTINGS: dict[str, dict[str, Any]] = {
    "pgqueuer": {"dequeuers": 1, "batch": 500},
    "procrastinate": {"concurrency": 10},
    "oban": {"concurrency": 100},
    "dbos": {"concurrency": 50, "poll": 0.05},
}


class Runner:
    def __init__(self, server: Server, plan: Plan, console: Console) -> None:
        self.server = server
        self.plan = plan
        self.console = console
        self.postmaster: int | None = None
        self.results: dict[str, Any] = {
            "plan": {k: v for k, v in asdict(plan).items() if k != "tuning"},
            "tuning": asdict(plan.tuning),
        }

    async def stage(self, path: str, label: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run one measurement under a spinner; store its result (or its error) at ``path``."""
        group = stage_group(path)
        if (group not in self.plan.only) if self.plan.only is not None else group in OPT_IN:
            return None
        start = time.perf_counter()
        lsn = await self.aio(self.server.wal_lsn)
        with self.console.status(f"[bold]{label}[/bold]"):
            try:
                value = await fn()
                if isinstance(value, dict):
                    value["wal_bytes"] = await self.aio(self.server.wal_since, lsn)
            except Exception as exc:  # a broken stage is reported, the run goes on
                value = {
                    "error": str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc),
                    "detail": str(exc),
                }
        took = time.perf_counter() - start
        mark = "[red]failed[/red]" if isinstance(value, dict) and "error" in value else "[green]done[/green]"
        self.console.print(f"{mark} {label} [dim]({took:.1f} s)[/dim]")
        node = self.results
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
        return value

    async def aio(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return await trio_asyncio.aio_as_trio(fn)(*args)

    async def run(self) -> dict[str, Any]:
        p, srv = self.plan, self.server
        self.results["started_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.results["machine"] = machine()
        self.results["postgres"] = await self.aio(srv.describe)
        self.postmaster = await self.aio(srv.postmaster)
        durable_dsn = await self.aio(srv.recreate_database, "bench_durable")
        limit_dsn = await self.aio(srv.recreate_database, "bench_pglimit")

        await self.stage(
            "pg_limit",
            f"PostgreSQL limit: single-row UPDATE commits/s ({p.pglimit_seconds:.0f} s per client count)",
            lambda: run_json(
                "durable.bench.pglimit",
                {"dsn": limit_dsn, "seconds": p.pglimit_seconds, "clients": [1, 16]},
                limit=p.pglimit_seconds * 4 + 60,
            ),
        )
        one = await self.stage(
            "durable.one_step",
            f"durable one-step: insert {p.jobs:,}, drain with one worker",
            lambda: d.drain(durable_dsn, "onestep", p.jobs, p.tuning, "b_onestep", postmaster=self.postmaster),
        )
        await self.stage(
            "durable.five_step",
            f"durable five-step: {p.machines:,} instances",
            lambda: d.drain(durable_dsn, "fivestep", p.machines, p.tuning, "b_fivestep", postmaster=self.postmaster),
        )
        await self.stage(
            "durable.pickup.in_process",
            "pickup latency, idle runtime in this process",
            lambda: d.pickup_in_process(durable_dsn, p.pickup_samples),
        )
        await self.stage(
            "durable.pickup.cross_process",
            "pickup latency, idle worker, producer in another process",
            lambda: d.pickup_cross_process(durable_dsn, p.pickup_samples),
        )
        drain_rate = (one or {}).get("per_s") or 2000
        for fraction in sorted(set(p.load_fractions)):
            load_rate = fraction * drain_rate
            key = under_load_key(fraction, p.load_fraction)
            await self.stage(
                f"durable.pickup.{key}",
                f"pickup latency under load ({fraction:.0%} of the drain: {load_rate:,.0f} rows/s for "
                f"{p.load_seconds:.0f} s)",
                lambda r=load_rate: d.pickup_under_load(  # type: ignore[misc]
                    durable_dsn, r, p.load_seconds, p.tuning, postmaster=self.postmaster
                ),
            )
            if "pgqueuer" in p.peers:  # the same offered load, for a side-by-side latency (issue 20, item 2)
                await self.stage(
                    f"durable.pickup.{key.replace('under_load', 'under_load_pgqueuer')}",
                    f"pgqueuer pickup latency under the same load ({load_rate:,.0f} rows/s for {p.load_seconds:.0f} s)",
                    lambda r=load_rate: self.peer_latency(r, p.load_seconds),  # type: ignore[misc]
                )
        # the plan's load's batches (rows per 10 ms tick) a tenth as often: what a batch of that size costs
        # when the box is not busy with the other ticks' work (its floor), beside the same batches every 10 ms
        spaced = p.load_fraction * drain_rate * 0.1
        await self.stage(
            "durable.pickup.under_load_spaced",
            f"pickup latency, the {p.load_fraction:.0%} load's batches every 100 ms ({spaced:,.0f} rows/s for "
            f"{p.load_seconds:.0f} s)",
            lambda: d.pickup_under_load(
                durable_dsn, spaced, p.load_seconds, p.tuning, postmaster=self.postmaster, tick=0.1
            ),
        )
        if "pgqueuer" in p.peers:
            await self.stage(
                "durable.pickup.under_load_pgqueuer_spaced",
                f"pgqueuer pickup latency, the same batches every 100 ms ({spaced:,.0f} rows/s)",
                lambda: self.peer_latency(spaced, p.load_seconds, tick=0.1),
            )
        for label, backlog in (("small", p.picker_small), ("large", p.picker_large)):
            await self.stage(
                f"durable.picker.{label}",
                f"picker cost at {backlog:,} runnable rows",
                lambda b=backlog: d.picker(durable_dsn, b, p.picks, p.pick_demand),  # type: ignore[misc]
            )
        await self.stage(
            "durable.picker.executing",
            f"picker cost with {p.picker_busy:,} executing rows vs none "
            f"({p.picker_busy:,} runnable rows, a partition key each)",
            lambda: d.picker_executing(durable_dsn, p.picker_busy, p.picks, p.pick_demand, p.picker_busy),
        )
        await self.stage(
            "durable.picker.values",
            f"picker cost, {p.picker_values:,} instances each carrying a 1 MiB named value vs none",
            lambda: d.picker_values(durable_dsn, p.picker_values, p.picks, p.pick_demand),
        )
        for batch, loops, async_pick in p.ceiling_runs:
            tag = "a" if async_pick else ""
            await self.stage(
                f"durable.ceiling.b{batch}x{loops}{tag}",
                f"SQL ceiling: pick + complete, batch {batch}, "
                f"{loops} loop(s){', picks with synchronous_commit off' if async_pick else ''}",
                lambda b=batch, k=loops, a=async_pick: d.ceiling(  # type: ignore[misc]
                    durable_dsn, b, p.ceiling_jobs, k, a
                ),
            )
        await self.stage(
            "steploop",
            f"engine Python per step, no database ({p.steploop:,} steps)",
            lambda: steploop.measure(p.steploop),
        )
        for peer in p.peers:
            await self.stage(f"peers.{peer}", f"peer {peer}", lambda name=peer: self.peer(name))  # type: ignore[misc]
        if p.duel_rounds and "pgqueuer" in p.peers:
            await self.stage(
                "duel",
                f"one-step duel: durable and pgqueuer back to back, {p.duel_rounds} rounds",
                lambda: self.duel(durable_dsn),
            )
        if p.profile:
            await self.stage(
                "profile",
                f"profile: py-spy on a durable one-step drain of {p.profile_jobs:,}",
                lambda: self.profile(durable_dsn),
            )
        await self.stage(
            "scale",
            f"scale-out: {', '.join(map(str, p.scale_workers))} worker processes draining "
            f"{p.scale_jobs:,} one-step jobs",
            lambda: scale.scale(durable_dsn, p.scale_jobs, p.scale_workers, p.tuning, self.postmaster),
        )
        await self.stage(
            "sustained",
            f"sustained: {p.sustained_jobs:,} one-step jobs in one schema, {p.sustained_segment:,} at a time",
            lambda: sustained.continuous(durable_dsn, p.sustained_jobs, p.sustained_segment, p.tuning, self.postmaster),
        )
        self.results["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.results["machine"]["loadavg_at_end"] = list(os.getloadavg())
        return self.results

    async def peer(self, name: str) -> dict[str, Any]:
        p = self.plan
        dsn = await self.aio(self.server.recreate_database, f"bench_{name}")
        size: dict[str, Any]
        if name == "dbos":
            size = {"instances": p.dbos_instances}
        elif name == "procrastinate":
            size = {"jobs": min(p.jobs, p.procrastinate_jobs)}
        else:
            size = {"jobs": p.jobs}
        try:
            result: dict[str, Any] = await run_json(
                f"durable.bench.peers.{name}_peer",
                {"dsn": dsn, "postmaster": self.postmaster, **size, **PEER_SETTINGS[name]},
                limit=1800,
            )
        finally:
            await self.aio(self.server.drop_database, f"bench_{name}")
        return result

    async def peer_latency(self, per_s: float, seconds: float, tick: float = 0.01) -> dict[str, Any]:
        """pgqueuer's pickup latency at ``per_s`` jobs/s (bench/peers/pgqueuer_latency.py)."""
        dsn = await self.aio(self.server.recreate_database, "bench_pgqueuer_latency")
        try:
            result: dict[str, Any] = await run_json(
                "bench.peers.pgqueuer_latency",
                {
                    "dsn": dsn,
                    "per_s": per_s,
                    "seconds": seconds,
                    "batch": PEER_SETTINGS["pgqueuer"]["batch"],
                    "postmaster": self.postmaster,
                    "tick": tick,
                },
                limit=seconds * 10 + 120,
            )
        finally:
            await self.aio(self.server.drop_database, "bench_pgqueuer_latency")
        return result

    async def duel(self, dsn: str) -> dict[str, Any]:
        """The one-step drain of durable and of pgqueuer back to back, several times, alternating who goes
        first: on a shared machine the load drifts between stages minutes apart, not within seconds."""
        rounds: list[dict[str, Any]] = []
        for i in range(self.plan.duel_rounds):
            order = ("durable", "pgqueuer") if i % 2 == 0 else ("pgqueuer", "durable")
            per_s: dict[str, float] = {}
            for engine in order:
                if engine == "durable":
                    r = await d.drain(
                        dsn, "onestep", self.plan.jobs, self.plan.tuning, "b_duel", postmaster=self.postmaster
                    )
                else:
                    r = await self.peer("pgqueuer")
                per_s[engine] = r["per_s"]
            rounds.append(
                {
                    **per_s,
                    "ratio": per_s["durable"] / per_s["pgqueuer"],
                    "first": order[0],
                    "loadavg": os.getloadavg()[0],
                }
            )
        ratios = sorted(float(x["ratio"]) for x in rounds)
        return {"rounds": rounds, "median_ratio": ratios[len(ratios) // 2], "jobs": self.plan.jobs}

    async def profile(self, dsn: str) -> dict[str, Any]:
        if py_spy() is None:
            raise RuntimeError("py-spy is not installed (pip install 'durable[bench]')")
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "drain.txt"
            drained = await d.drain(
                dsn, "onestep", self.plan.profile_jobs, self.plan.tuning, "b_profile", profile_to=out
            )
            if not out.exists():
                raise RuntimeError("py-spy wrote no samples (ptrace not permitted?)")
            ranked = rank(out.read_text())
            if self.plan.profile_out is not None:
                shutil.copyfile(out, self.plan.profile_out)
                ranked["collapsed_stacks"] = str(self.plan.profile_out)
        ranked["per_s_while_sampled"] = drained["per_s"]
        return ranked
