"""``durable sim``: run seeded simulations with fault injection, report, reproduce and shrink."""

from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import asyncpg
import click
from rich.console import Console

from durable.cli import EXIT_UNREACHABLE, STDOUT, dsn_option, json_file_option, write_json
from durable.cli_progress import Ticker
from durable.errors import DatabaseUnavailable, DurableError

from .bugs import BUGS, Stale
from .plan import FAULT_KINDS, Fault, parse_kinds
from .workloads import WORKLOADS

_BUG_NAMES = sorted(BUGS)


def _kinds(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    try:
        return tuple(parse_kinds(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(name="sim")
@click.option("--seed", type=click.IntRange(min=0), default=1, show_default=True, help="Seed of the (first) run.")
@click.option(
    "--seeds", type=click.IntRange(min=1), default=1, show_default=True, help="Number of runs: seeds SEED .. SEED+N-1."
)
@click.option("--workload", type=click.Choice(WORKLOADS), default="mixed", show_default=True)
@click.option(
    "--instances",
    type=click.IntRange(min=1),
    default=12,
    show_default=True,
    help="Top-level instances per run (children come on top).",
)
@click.option("--workers", type=click.IntRange(min=1, max=16), default=3, show_default=True)
@click.option(
    "--duration",
    type=click.FloatRange(min=1),
    default=80.0,
    show_default=True,
    help="Virtual seconds of the chaos phase (inserts, signals, faults); chaos mode runs it 20x faster.",
)
@click.option(
    "--faults",
    "faults",
    default="all",
    show_default=True,
    callback=_kinds,
    help="Comma-separated fault kinds, 'conn', 'all' or 'none': " + ", ".join(FAULT_KINDS),
)
@click.option(
    "--mode",
    type=click.Choice(["dst", "chaos"]),
    default="dst",
    show_default=True,
    help="dst: virtual time, one call at a time, reproducible; chaos: real time and concurrency.",
)
@click.option("--spans", is_flag=True, help="dst: record OpenTelemetry spans, ids drawn from the seed, in the log.")
@click.option(
    "--chain",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Runtime run-ahead: steps a claim may run in a row after `next` outcomes.",
)
@click.option("--processes", is_flag=True, help="chaos mode: workers are OS processes killed with SIGKILL.")
@json_file_option("The per-seed results")
@click.option(
    "--shrink",
    "shrink_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Reduce the fault plan of a failing run (sim-<seed>.json) to a minimal one.",
)
@click.option(
    "--plant",
    type=click.Choice(_BUG_NAMES),
    hidden=True,
    help="Run against a planted engine bug (to test the simulator itself).",
)
@click.option(
    "--mutants",
    is_flag=True,
    help="The mutation catalogue: run each planted bug (sim/bugs.py) on its workload, seeds SEED.. "
    "(40 unless --seeds), until its invariant fires; shrink that plan; print the mutation score.",
)
@click.option("--quick", is_flag=True, help="--mutants: each mutant on its known first failing seed, no shrinking.")
@click.option(
    "--mutant",
    "mutant_names",
    multiple=True,
    type=click.Choice(_BUG_NAMES),
    help="--mutants: only this mutant (repeatable).",
)
@dsn_option
@click.pass_context
def command(
    ctx: click.Context,
    seed: int,
    seeds: int,
    workload: str,
    instances: int,
    workers: int,
    duration: float,
    faults: tuple[str, ...],
    mode: str,
    chain: int,
    spans: bool,
    processes: bool,
    json_path: str | None,
    shrink_path: Path | None,
    plant: str | None,
    mutants: bool,
    quick: bool,
    mutant_names: tuple[str, ...],
    dsn: str | None,
) -> None:
    """Deterministic simulation of many instances on several workers under injected faults."""
    from .core import SimConfig

    if processes and mode != "chaos":
        raise click.UsageError("--processes needs --mode chaos (real OS processes cannot run on virtual time)")
    if processes and workload == "hostile":
        raise click.UsageError("--workload hostile needs in-process workers (its Crasher kills its own Runtime)")
    if (quick or mutant_names) and not mutants:
        raise click.UsageError("--quick and --mutant go with --mutants")
    console = Console(stderr=json_path == STDOUT)  # --json alone: stdout is the JSON's
    try:
        if shrink_path is not None:
            sys.exit(_shrink(console, shrink_path, dsn))
        if mutants:
            from .mutants import DEFAULT_SEEDS

            explicit = ctx.get_parameter_source("seeds") is not click.core.ParameterSource.DEFAULT
            count = seeds if explicit else DEFAULT_SEEDS
            sys.exit(_mutants(console, list(mutant_names), list(range(seed, seed + count)), quick, dsn, json_path))
        configs = [
            SimConfig(
                seed=s,
                workload=workload,
                instances=instances,
                workers=workers,
                faults=faults,
                mode=mode,
                processes=processes,
                chain=chain,
                chaos_seconds=duration,
                spans=spans,
            )
            for s in range(seed, seed + seeds)
        ]
        sys.exit(_run(console, configs, dsn, json_path, plant))
    except DurableError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE if isinstance(exc, DatabaseUnavailable) else 1)
    except Stale as exc:
        click.echo(f"error: planted bug {plant}: the mutant no longer applies: {exc}", err=True)
        sys.exit(1)


def _run(console: Console, configs: list[Any], dsn: str | None, json_path: str | None, plant: str | None) -> int:
    from .bugs import planted
    from .harness import simulate
    from .report import render, write_failure

    results = []
    started = time.perf_counter()
    with planted(plant) if plant else nullcontext() as bug:
        prepare = bug.prepare if bug is not None else None
        # a bar with counts and ETA on a terminal; a plain line every 10 s when piped (durable.cli_progress)
        with Ticker("sim", len(configs), "seeds", console=console, announce=True) as progress:
            for cfg in configs:
                progress.update(label=f"seed {cfg.seed}")
                try:
                    result = simulate(cfg, dsn=dsn, prepare=prepare)
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                    # the database went away under the harness itself (server stopped, connection cut)
                    raise DatabaseUnavailable(f"seed {cfg.seed}: the simulator lost its database: {exc}") from exc
                results.append(result)
                if not result.ok:
                    extra: dict[str, object] = {"plant": plant} if plant else {}
                    path = write_failure(result, Path.cwd(), extra)
                    progress.print(
                        f"[red]seed {cfg.seed}: violated "
                        f"{', '.join(sorted({v.invariant for v in result.violations}))}[/red] -> {path}"
                    )
                failed = sum(not r.ok for r in results)
                progress.update(advance=1, note=f"{len(results) - failed} passed, {failed} failed")
    if len(results) == 1:
        render(console, results[0])
    else:
        _summary(console, results, time.perf_counter() - started)
    if configs[0].mode == "chaos":
        console.print(
            "chaos mode: real time and real concurrency — the interleaving is not reproducible; "
            "the seed reproduces the workload and the fault plan only.",
            soft_wrap=True,
        )
    if json_path is not None:
        write_json(
            json_path,
            json.dumps(
                [
                    {
                        "seed": r.config.seed,
                        "ok": r.ok,
                        "log_hash": r.log_hash,
                        "violated": sorted({v.invariant for v in r.violations}),
                        "statuses": r.statuses,
                        "steps": r.steps,
                        "reexecutions": r.reexecutions,
                        "faults": r.faults,
                        "fenced": r.fenced,
                        "virtual_seconds": r.virtual_seconds,
                        "real_seconds": r.real_seconds,
                        "command": r.config.command(),
                    }
                    for r in results
                ],
                indent=1,
            ),
        )
    return 0 if all(r.ok for r in results) else 1


def _mutants(
    console: Console, names: list[str], seeds: list[int], quick: bool, dsn: str | None, json_path: str | None
) -> int:
    from .mutants import MutantResult, describe_plan, run_catalogue, score

    def on_result(r: MutantResult) -> None:
        if r.stale is not None:
            console.print(f"[red]STALE[/red]  {r.name}: the mutant no longer applies: {r.stale}", soft_wrap=True)
        elif r.caught:
            shrunk = (
                ""
                if r.minimal is None
                else f"; shrunk {len(r.plan or [])} -> {len(r.minimal)} faults: {describe_plan(r.minimal)}"
            )
            console.print(
                f"[green]caught[/green] {r.name} ({r.bug.workload}): seed {r.first} "
                f"(after {len(r.tried)} seeds) violated {', '.join(r.fired)}{shrunk} "
                f"[{r.seconds:.0f}s]",
                soft_wrap=True,
            )
        else:
            console.print(
                f"[red]MISSED[/red] {r.name} ({r.bug.workload}): seeds {r.tried[0]}..{r.tried[-1]} never "
                f"violated {r.bug.invariant}"
                + (f" (other failures: {r.failed})" if r.failed else "")
                + f" [{r.seconds:.0f}s]",
                soft_wrap=True,
            )

    with console.status("mutants") as status:
        results = run_catalogue(
            names or None,
            seeds=seeds,
            quick=quick,
            dsn=dsn,
            on_event=lambda text: status.update(text),
            on_result=on_result,
        )
    if json_path is not None:
        write_json(json_path, json.dumps([r.to_json() for r in results], indent=1))
    console.print(score(results))
    return 0 if all(r.caught for r in results) else 1


def _summary(console: Console, results: list[Any], elapsed: float) -> None:
    from rich.table import Table

    from .core import INVARIANTS

    failed = [r for r in results if not r.ok]
    faults: dict[str, int] = {}
    statuses: dict[str, int] = {}
    for r in results:
        for k, v in r.faults.items():
            faults[k] = faults.get(k, 0) + v
        for k, v in r.statuses.items():
            statuses[k] = statuses.get(k, 0) + v
    table = Table(title=f"durable sim — {len(results)} seeds", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    first, last = results[0].config.seed, results[-1].config.seed
    table.add_row("seeds", f"{first}..{last}: {len(results) - len(failed)} passed, {len(failed)} failed")
    table.add_row("instances", ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    table.add_row("steps run", str(sum(r.steps for r in results)))
    table.add_row("re-executions", str(sum(r.reexecutions for r in results)))
    table.add_row("faults injected", ", ".join(f"{k} {v}" for k, v in sorted(faults.items())) or "none")
    table.add_row("fenced commits", str(sum(r.fenced for r in results)))
    table.add_row("virtual time", f"{sum(r.virtual_seconds for r in results):.0f} s")
    table.add_row("real time", f"{elapsed:.1f} s")
    for name, text in INVARIANTS.items():
        bad = [r.config.seed for r in results if not r.invariants[name]]
        mark = f"[red]FAIL[/red] seeds {bad[:10]}" if bad else "[green]pass[/green]"
        table.add_row(f"  {name}", f"{mark}  {text}")
    table.add_row(
        "reproduce", results[0].config.command().replace(f"--seed {first}", f"--seed {first} --seeds {len(results)}")
    )
    console.print(table)
    for r in failed[:10]:
        console.print(f"[red]seed {r.config.seed}[/red]: {r.config.command()}")


def _shrink(console: Console, path: Path, dsn: str | None) -> int:
    from .bugs import BUGS, planted
    from .core import SimConfig
    from .shrink import shrink

    try:
        data = json.loads(path.read_text())
        cfg = data["config"]
        config = SimConfig(
            seed=int(data["seed"]),
            workload=cfg["workload"],
            instances=int(cfg["instances"]),
            workers=int(cfg["workers"]),
            faults=tuple(cfg["faults"]),
            mode=cfg["mode"],
            lease=float(cfg["lease"]),
            chaos_seconds=float(cfg["chaos_seconds"]),
            heal_bound=float(cfg["heal_bound"]),
            chain=int(cfg.get("chain", 0)),
        )
        plan = [Fault.from_json(f) for f in data["plan"]]
        target = set(data["violated"])
        plant = data.get("plant")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise click.UsageError(f"{path} is not a sim failure file: {exc}") from None
    if config.mode != "dst":
        raise click.UsageError("only dst runs can be shrunk (chaos interleavings are not reproducible)")
    if plant is not None and plant not in BUGS:
        raise click.UsageError(f"{path}: unknown planted bug {plant!r}")
    if not target:
        raise click.UsageError(f"{path} records no violated invariant")
    tries = 0

    def on_try(candidate: list[Fault], result: Any) -> None:
        nonlocal tries
        tries += 1
        hit = sorted({v.invariant for v in result.violations} & target)
        verdict = f"fails ({', '.join(hit)})" if hit else "passes"
        console.print(f"try {tries}: {len(candidate)} faults -> {verdict}")

    with planted(plant) if plant else nullcontext() as bug:
        minimal = shrink(config, plan, target, dsn=dsn, prepare=bug.prepare if bug else None, on_try=on_try)
    console.print(
        f"minimal fault plan for seed {config.seed} ({len(plan)} -> {len(minimal)} faults, "
        f"violates {', '.join(sorted(target))}):"
    )
    for f in minimal:
        console.print(f"  {f.describe()}")
    if not minimal:
        console.print("  (no faults needed: the seed's workload alone violates it)")
    out = path.with_name(path.stem + "-min.json")
    out.write_text(json.dumps({**data, "plan": [f.to_json() for f in minimal]}, indent=1, default=str))
    console.print(f"written to {out}")
    return 0
