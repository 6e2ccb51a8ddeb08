"""``durable sim --mutants``: the mutation catalogue's report, its score and exit status, a mutant that no
longer applies failing loudly, and the Python swaps a mutant may carry (applied for the block only)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from durable.sim import bugs
from durable.sim.bugs import BUGS, PySwap, Stale, planted
from durable.sim.mutants import DEFAULT_SEEDS, run_mutant

import durable.runtime.flusher as flusher
from durable.cli import main


def sim(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["sim", *args])
    return result.exit_code, result.output


def test_a_caught_mutant_is_reported_with_its_seed_invariant_and_score(pg_dsn: str, tmp_path: Path) -> None:
    out_file = tmp_path / "mutants.json"
    code, out = sim("--mutants", "--quick", "--mutant", "double_decrement", "--json", str(out_file), "--dsn", pg_dsn)
    assert code == 0, out
    bug = BUGS["double_decrement"]
    assert f"caught double_decrement (checkout): seed {bug.first}" in out
    assert "child_decrements_once" in out
    assert out.rstrip().splitlines()[-1] == "mutation score: 1/1"
    [data] = json.loads(out_file.read_text())
    assert data["caught"] and data["first_failing_seed"] == bug.first and data["stale"] is None


def test_the_long_form_shrinks_the_failing_plan(pg_dsn: str) -> None:
    r = run_mutant("same_batch_fencing", [BUGS["same_batch_fencing"].first], dsn=pg_dsn)
    assert r.caught and r.minimal is not None
    assert [f.kind for f in r.minimal] == ["lease_loss"]


def test_a_missed_mutant_fails_the_command(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mutant whose seed does not catch it (here: a plan without the fault it needs) is MISSED: exit 1."""
    bug = BUGS["no_fencing"]
    monkeypatch.setitem(BUGS, "no_fencing", dataclasses.replace(bug, faults=("step_error",)))
    code, out = sim("--mutants", "--quick", "--mutant", "no_fencing", "--dsn", pg_dsn)
    assert code == 1, out
    assert "MISSED no_fencing" in out
    assert out.rstrip().splitlines()[-1] == "mutation score: 0/1"


def test_a_mutant_that_no_longer_applies_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    bug = BUGS["double_decrement"]
    gone = dataclasses.replace(bug, swaps=(("complete", r"text the engine never had", "x"),))
    monkeypatch.setitem(BUGS, "double_decrement", gone)
    code, out = sim("--mutants", "--quick", "--mutant", "double_decrement")
    assert code == 1, out
    assert "STALE" in out and "pattern found 0 times" in out
    assert out.rstrip().splitlines()[-1] == "mutation score: 0/1"
    twice = dataclasses.replace(bug, patches=(PySwap("durable.runtime.flusher:_one_per_instance", r"p", "p"),))
    monkeypatch.setitem(BUGS, "double_decrement", twice)
    with pytest.raises(Stale, match="found [0-9]+ times"), planted("double_decrement"):
        pass


def test_a_python_swap_holds_for_the_block_only() -> None:
    original = flusher._one_per_instance
    with planted("same_batch_fencing"):
        assert flusher._one_per_instance is not original
        p = dataclasses.make_dataclass("P", ["claim"])
        c = dataclasses.make_dataclass("C", ["id"])
        batch, rest = flusher._one_per_instance([p(c(1)), p(c(1))], 10)
        assert len(batch) == 2 and not rest  # the guard is gone: two outcomes of one instance in one batch
    assert flusher._one_per_instance is original
    batch, rest = original([p(c(1)), p(c(1))], 10)
    assert len(batch) == 1 and len(rest) == 1


def test_every_mutant_names_a_first_seed_within_the_default_seeds() -> None:
    for bug in BUGS.values():
        assert 1 <= bug.first <= DEFAULT_SEEDS, bug.name
        assert bug.breaks, f"{bug.name}: say what it breaks (docs/sim.md's table)"
        with planted(bug.name):  # every mutant applies to today's engine
            pass
    assert bugs.BUGS is BUGS


def test_quick_needs_mutants() -> None:
    code, out = sim("--quick")
    assert code == 2 and "--quick and --mutant go with --mutants" in out
