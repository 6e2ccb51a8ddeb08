"""``durable bench`` / ``python -m durable.bench``: every measurement in one run against one server."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console

from durable.cli import STDOUT, inherit_global, json_file_option, write_json

from .durable_bench import Tuning
from .run import OPT_IN, STAGES, Plan


@click.command(name="bench")
@click.option("--quick", is_flag=True, help="Small sizes (10k jobs, 100k picker backlog): for development.")
@click.option(
    "--dsn",
    envvar="DURABLE_BENCH_DSN",
    default=None,
    callback=inherit_global,
    help="PostgreSQL server to use (a maintenance database DSN; the run creates bench_* "
    "databases on it). Default: an embedded server in --data-dir.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of the embedded server (default: the user cache dir, bench-pgdata).",
)
@json_file_option("Every figure")
@click.option("--jobs", type=click.IntRange(min=100), default=None, help="One-step jobs (default 100k).")
@click.option("--machines", type=click.IntRange(min=10), default=None, help="Five-step instances (default 20k).")
@click.option(
    "--peers",
    default="pgqueuer,procrastinate,oban,dbos",
    show_default=True,
    help="Comma-separated peers to run ('' for none).",
)
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="durable: steps at once.")
@click.option("--no-profile", is_flag=True, help="Skip the py-spy profile of a durable drain.")
@click.option(
    "--profile-out",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep the profile's collapsed stacks (py-spy raw format) in this file.",
)
@click.option(
    "--only",
    default=None,
    help=f"Comma-separated stage groups to run, of: {', '.join(STAGES)} (default: all but "
    f"{' and '.join(sorted(OPT_IN))}, which are long).",
)
@click.option(
    "--duel-rounds",
    type=click.IntRange(min=1, max=20),
    default=None,
    help="Rounds of the durable/pgqueuer duel (default 3).",
)
@click.option(
    "--load-fractions",
    default=None,
    help="Comma-separated offered loads of the pickup-under-load stage, as fractions of the one-step drain "
    "rate (default 0.5), each run for durable and (with the pgqueuer peer) pgqueuer: e.g. 0.1,0.25,0.5.",
)
def command(
    quick: bool,
    dsn: str | None,
    data_dir: Path | None,
    json_path: str | None,
    jobs: int | None,
    machines: int | None,
    peers: str,
    concurrency: int | None,
    no_profile: bool,
    profile_out: Path | None,
    only: str | None,
    duel_rounds: int | None,
    load_fractions: str | None,
) -> None:
    """Benchmark durable against pgqueuer, procrastinate, oban and DBOS, and against PostgreSQL's
    own commit limit, in one run against one server; prints a table and optionally writes JSON."""
    known = ("pgqueuer", "procrastinate", "oban", "dbos")
    chosen = tuple(p.strip() for p in peers.split(",") if p.strip())
    unknown = [p for p in chosen if p not in known]
    if unknown:
        raise click.UsageError(f"unknown peer(s) {', '.join(unknown)}: choose from {', '.join(known)}")
    if json_path not in (None, STDOUT) and not Path(json_path).parent.exists():
        raise click.UsageError(f"--json: folder {Path(json_path).parent} does not exist")
    plan = Plan.quick_plan() if quick else Plan()
    if only is not None:
        groups = frozenset(g.strip() for g in only.split(",") if g.strip())
        if not groups or not groups <= set(STAGES):
            raise click.UsageError(f"--only: choose among {', '.join(STAGES)}")
        plan.only = groups
    plan.profile_out = profile_out
    plan.peers = chosen
    plan.profile = not no_profile
    if load_fractions is not None:
        try:
            fractions = tuple(float(f) for f in load_fractions.split(",") if f.strip())
        except ValueError:
            raise click.UsageError(f"--load-fractions: numbers between 0 and 2, not {load_fractions!r}") from None
        if not fractions or not all(0 < f <= 2 for f in fractions):
            raise click.UsageError(f"--load-fractions: numbers between 0 and 2, not {load_fractions!r}")
        plan.load_fractions = fractions
    if jobs is not None:
        plan.jobs = jobs
    if duel_rounds is not None:
        plan.duel_rounds = duel_rounds
    if machines is not None:
        plan.machines = machines
    if concurrency is not None:
        plan.tuning = Tuning(concurrency=concurrency, prefetch=concurrency)
    console = Console(stderr=True)
    from durable.cli import run

    from .main import main

    results = run(lambda: main(plan, dsn, data_dir, console))
    from .report import render

    render(results, Console(stderr=json_path == STDOUT))  # --json alone: stdout is the JSON's
    if json_path is not None:
        write_json(json_path, json.dumps(results, indent=2, default=str))
        if json_path != STDOUT:
            console.print(f"wrote {json_path}")
    sys.exit(0)
