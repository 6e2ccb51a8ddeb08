"""The simulator itself: reproducible runs, and a clean engine passing every workload under every fault
(planted bugs: test_sim_planted.py, a file of its own so the two run in parallel under xdist).

These tests start their own ``trio.run`` (dst mode on a MockClock), so they are plain sync tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest
from durable.sim.core import SimConfig
from durable.sim.harness import plan_for, simulate
from durable.sim.plan import FAULT_KINDS, parse_kinds

ALL = tuple(parse_kinds("all"))


def test_same_seed_gives_the_same_log_and_other_seeds_differ(pg_dsn: str) -> None:
    cfg = SimConfig(seed=7, faults=ALL, instances=8)
    first = simulate(cfg, dsn=pg_dsn)
    again = simulate(cfg, dsn=pg_dsn)
    other = simulate(SimConfig(seed=8, faults=ALL, instances=8), dsn=pg_dsn)
    assert first.ok and again.ok and other.ok, (first.violations, again.violations, other.violations)
    assert first.faults, "seed 7 should inject faults, or the comparison proves little"
    assert first.log == again.log
    assert first.log_hash == again.log_hash
    assert other.log_hash != first.log_hash
    assert plan_for(cfg) != plan_for(SimConfig(seed=8, faults=ALL, instances=8))


def test_operator_workload_with_run_ahead_is_reproducible_too(pg_dsn: str) -> None:
    cfg = SimConfig(seed=2, workload="ops", faults=ALL, instances=8, chain=2)
    first, again = simulate(cfg, dsn=pg_dsn), simulate(cfg, dsn=pg_dsn)
    assert first.ok, first.violations
    assert first.log_hash == again.log_hash


def test_a_seed_gives_the_same_log_on_a_loaded_machine(pg_dsn: str) -> None:
    """The log depends on the seed, not on the machine's load: the same run again while busy processes
    compete for every core (the connection-kill and hold faults watch backends in real time; they wait on
    conditions, never on an amount of wall time). Ops seed 2 fires every connection kill and the holds."""
    cfg = SimConfig(seed=2, workload="ops", faults=ALL)
    quiet = simulate(cfg, dsn=pg_dsn)
    assert quiet.ok, quiet.violations
    assert {"conn_pick", "conn_complete", "conn_heartbeat"} <= set(quiet.faults), quiet.faults
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 2))]
    try:
        loaded = simulate(cfg, dsn=pg_dsn)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    assert loaded.log_hash == quiet.log_hash, loaded.violations


SEEDS = 50


@pytest.mark.timeout(1200)  # ~1 s a seed on a quiet box; a fresh clone at load 22 went past the default 300 s
def test_clean_engine_passes_many_seeds_with_every_fault(pg_dsn: str) -> None:
    """50 seeds, all fault kinds on: 40 of the mixed workload (checkout, bank and retry actors together;
    every other one with run-ahead, Runtime chain=2) and 10 of the operator workload (retry, cancel)."""
    failures = []
    fired: Counter[str] = Counter()
    fenced = statuses_done = 0
    for seed in range(1, SEEDS + 1):
        workload = "ops" if seed > 40 else "mixed"
        cfg = SimConfig(seed=seed, workload=workload, faults=ALL, instances=6, chaos_seconds=40, chain=2 * (seed % 2))
        result = simulate(cfg, dsn=pg_dsn)
        if not result.ok:
            failures.append((seed, result.violations[:3]))
        fired.update(result.faults)
        fenced += result.fenced
        statuses_done += result.statuses.get("done", 0)
    assert not failures, failures
    assert set(fired) == set(ALL), f"fault kinds never injected: {set(ALL) - set(fired)}"
    assert fenced > 0, "no zombie or commit-unknown outcome was ever fenced"
    assert statuses_done > SEEDS * 5


def test_hostile_workload_is_bounded_under_every_fault(pg_dsn: str) -> None:
    """Crashing steps, refused and overdue outcomes, a held unique key and a step longer than the lease, with
    every fault kind: each instance ends as its model says, within max_attempts, the queue never stalls."""
    for seed in (1, 2, 3):
        result = simulate(
            SimConfig(seed=seed, workload="hostile", faults=ALL, instances=6, chaos_seconds=40), dsn=pg_dsn
        )
        assert result.ok, (seed, result.violations)
        assert result.statuses.get("failed", 0) >= 1  # the crasher, stopped at max_attempts


def test_generated_scripts_end_as_their_model_says(pg_dsn: str) -> None:
    """--workload fuzz: scripts drawn from the seed (every outcome kind, poison values, random insert
    options, driver cancels) under every fault kind."""
    statuses: Counter[str] = Counter()
    for seed in (1, 2, 4):
        result = simulate(SimConfig(seed=seed, workload="fuzz", faults=ALL, instances=8, chaos_seconds=40), dsn=pg_dsn)
        assert result.ok, (seed, result.violations)
        statuses.update(result.statuses)
    assert {"done", "failed", "cancelled"} <= set(statuses), statuses


def test_a_held_cancel_excuses_the_executing_children_it_locked(pg_dsn: str) -> None:
    """Checkout seed 117 (found by the 1,000-seed run): a cancel_lock hold kept a cancel's tree locked, two
    shipments executing under a crashed worker among it (flagged cancel_requested, not ended); the worker's
    restart skipped them in release_dead_workers, as it must, but the harness knew only the cancel's ended
    ids as locked and reported restart_frees_claims. The cancel now returns every id it locked."""
    result = simulate(SimConfig(seed=117, workload="checkout", faults=ALL), dsn=pg_dsn)
    assert result.ok, result.violations
    assert any("FAULT cancel_lock" in line for line in result.log)
    assert any("release_dead_workers" in line for line in result.log)


def test_a_timer_cancelled_before_it_was_set_is_no_broken_timer(pg_dsn: str) -> None:
    """Checkout seed 300 (found by the 1,000-seed run): a held cancel flagged a checkout while its pay step
    ran; the pay's delayed next then committed as `cancelled` (history event next, no wake time), which
    timers_kept read as a timer that lost its wake time. It checks only a next into runnable now."""
    result = simulate(SimConfig(seed=300, workload="checkout", faults=ALL), dsn=pg_dsn)
    assert result.ok, result.violations
    assert any("FAULT cancel_lock" in line for line in result.log)


def test_the_explicit_zombie_is_claimed_again_only_after_its_lease(pg_dsn: str) -> None:
    """Ops seed 51 (found by the 1,000-seed run): a held cancel delayed the driver's zombie claim by 8 s,
    and the live claim, planned three leases after the zombie's planned time, came 3.5 s into its 4 s
    lease: nothing to reap, so the zombie's late complete committed. The live claim now waits three
    leases from the zombie's actual claim."""
    result = simulate(SimConfig(seed=51, workload="ops", faults=ALL), dsn=pg_dsn)
    assert result.ok, result.violations
    assert any("FAULT cancel_lock" in line for line in result.log)


def test_a_registration_killed_at_start_is_waited_out(pg_dsn: str) -> None:
    """The opt-in conn_register fault (not in ``all``: it would change every recorded seed's plan) kills a
    starting runtime's registration while it waits on a lock: the runtime waits it out and the run passes."""
    assert "conn_register" in FAULT_KINDS and "conn_register" not in ALL
    for seed in (1, 2):
        cfg = SimConfig(seed=seed, workload="mixed", faults=("conn_register", "crash"), instances=6, chaos_seconds=40)
        result = simulate(cfg, dsn=pg_dsn)
        assert result.ok, result.violations[:3]
        assert result.faults["conn_register"] == 1, result.faults
        assert "--faults conn_register,crash" in cfg.command()
