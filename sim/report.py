"""The final report of a run (rich), and the failure file ``sim-<seed>.json``."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .core import INVARIANTS
from .harness import Result


def render(console: Console, result: Result) -> None:
    cfg = result.config
    table = Table(title=f"durable sim — seed {cfg.seed} ({cfg.workload}, {cfg.mode})", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("instances", ", ".join(f"{k} {v}" for k, v in result.statuses.items()) or "none")
    table.add_row("steps run", str(result.steps))
    table.add_row("re-executions", str(result.reexecutions))
    table.add_row("faults injected", ", ".join(f"{k} {v}" for k, v in result.faults.items()) or "none")
    table.add_row("fenced commits", str(result.fenced))
    table.add_row("database calls", str(result.calls))
    table.add_row("virtual time", f"{result.virtual_seconds:.1f} s")
    table.add_row("real time", f"{result.real_seconds:.2f} s")
    if cfg.mode == "dst":
        table.add_row("operation log", f"{result.operations} lines")
    else:
        table.add_row("operation log", f"{result.operations} lines (chaos: the interleaving is not reproducible)")
    failed = {v.invariant for v in result.violations}
    for name, text in INVARIANTS.items():
        mark = "[red]FAIL[/red]" if name in failed else "[green]pass[/green]"
        table.add_row(f"  {name}", f"{mark}  {text}")
    console.print(table)
    console.print(f"seed {cfg.seed}")
    if cfg.mode == "dst":
        console.print(f"log sha256 {result.log_hash}")
    console.print(f"reproduce: {cfg.command()}", soft_wrap=True)
    for v in result.violations[:20]:
        console.print(f"[red]violated[/red] {v.invariant}: {v.detail}")


def write_failure(result: Result, folder: Path, extra: dict[str, object] | None = None) -> Path:
    path = folder / f"sim-{result.config.seed}.json"
    data = result.to_json()
    data.update(extra or {})
    path.write_text(json.dumps(data, indent=1, default=str))
    return path
