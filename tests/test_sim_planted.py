"""Planted engine bugs (the mutation catalogue's short form, run by CI): each mutant of sim/bugs.py swaps
a named statement (or one line of the runtime's Python) for a subtly broken variant; the simulator must
report the mutant's invariant on its known first failing seed, shrink the fault plan to at most three
faults, and the clean engine must pass that same minimal plan. ``durable sim --mutants`` runs the long form
(seeds 1..40 per mutant; tests/test_sim_mutants.py tests the command)."""

from __future__ import annotations

import pytest
from durable.sim.bugs import BUGS, planted
from durable.sim.harness import simulate
from durable.sim.shrink import shrink


@pytest.mark.parametrize("name", sorted(BUGS))
def test_planted_bug_is_reported_and_shrunk(pg_dsn: str, name: str) -> None:
    bug = BUGS[name]
    with planted(name):
        # its known first failing seed, or one of the next two (any change to the harness or the engine's
        # statements shifts the schedules a little)
        for seed in range(bug.first, bug.first + 3):
            cfg = bug.config(seed)
            result = simulate(cfg, dsn=pg_dsn, prepare=bug.prepare)
            violated = {v.invariant for v in result.violations}
            if bug.invariant in violated:
                break
        else:
            pytest.fail(
                f"planted bug {name} passed seeds {bug.first}..{bug.first + 2}: the simulator missed it; "
                f"`durable sim --mutants --mutant {name}` finds its first failing seed now"
            )
        # ddmin keeps only plans whose rerun still violates the invariant
        minimal = shrink(cfg, result.plan, {bug.invariant}, dsn=pg_dsn, prepare=bug.prepare)
    assert len(minimal) <= 3, minimal
    assert len(minimal) < len(result.plan) or len(result.plan) <= 3
    if name == "no_fencing":
        assert [f.kind for f in minimal] == ["zombie"], "fencing only matters to a zombie"
    if name in ("same_batch_fencing", "release_unfenced", "lost_step_runs_on"):
        assert minimal and {f.kind for f in minimal} == {"lease_loss"}, "only a lost lease makes a stale claim"
    if name == "park_seq_unchecked":
        assert [f.kind for f in minimal] == ["signal_lock"], "only a delivery holding its lock hides the signal"
    if name == "dead_claims_wait":
        assert [f.kind for f in minimal] == ["crash"], "only a crashed worker leaves claims behind"
    clean = simulate(cfg, minimal, dsn=pg_dsn)
    assert clean.ok, clean.violations
