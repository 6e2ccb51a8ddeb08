"""Planted engine bugs: each swaps one named statement for a subtly broken variant (sim/bugs.py); the
simulator must report the matching invariant on one of a few fixed seeds, shrink the fault plan to at
most two faults, and the clean engine must pass that same minimal plan."""

from __future__ import annotations

import pytest

from sim.bugs import BUGS, planted
from sim.core import SimConfig
from sim.harness import simulate
from sim.shrink import shrink

# bug -> seeds tried in order; the first whose run violates the bug's invariant is shrunk
PLANTED = {
    "no_fencing": (3, 4, 5, 6),  # needs a zombie whose instance another worker re-claims meanwhile
    "unscoped_consume": (2, 3, 4),
    "no_prearrival_guard": (3, 5, 6),  # a signal must land while the step that parks runs
    "double_decrement": (1, 2, 3),
    # also drops the unique index instances_partition_active, which would otherwise still stop the
    # second claim of a key (as a unique violation the picker retries)
    "partition_ignored": (2, 3, 4),
    "rejoin_retried_child": (2, 3, 5),  # the operator retries a failed child after its parent joined
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_bug_is_reported_and_shrunk(pg_dsn: str, name: str) -> None:
    bug = BUGS[name]
    faults = bug.faults or ("crash", "step_error")
    with planted(name):
        for seed in PLANTED[name]:
            cfg = SimConfig(seed=seed, workload=bug.workload, faults=faults, instances=8, chaos_seconds=50)
            result = simulate(cfg, dsn=pg_dsn, prepare=bug.prepare)
            if bug.invariant in {v.invariant for v in result.violations}:
                break
        else:
            pytest.fail(f"planted bug {name} passed every seed: the simulator missed it")
        # ddmin keeps only plans whose rerun still violates the invariant
        minimal = shrink(cfg, result.plan, {bug.invariant}, dsn=pg_dsn, prepare=bug.prepare)
    assert len(minimal) <= 2, minimal
    assert len(minimal) < len(result.plan) or len(result.plan) <= 1
    if name == "no_fencing":
        assert [f.kind for f in minimal] == ["zombie"], "fencing only matters to a zombie"
    clean = simulate(cfg, minimal, dsn=pg_dsn)
    assert clean.ok, clean.violations


def test_every_planted_bug_is_tested() -> None:
    assert set(PLANTED) == set(BUGS)
