"""The streams workload: steps append to Durable Streams under crash, zombie and connection faults;
every stream must equal the model (each token once, in order), and a run is reproducible."""

from __future__ import annotations

from collections import Counter

from sim.core import SimConfig
from sim.harness import simulate
from sim.plan import parse_kinds

ALL = tuple(parse_kinds("all"))


def test_streams_equal_the_model_under_every_fault(pg_dsn: str) -> None:
    fired: Counter[str] = Counter()
    fenced = reexecutions = 0
    for seed in range(1, 9):
        result = simulate(SimConfig(seed=seed, workload="streams", faults=ALL, instances=8), dsn=pg_dsn)
        assert result.ok, (seed, result.violations[:3])
        fired.update(result.faults)
        fenced += result.fenced
        reexecutions += result.reexecutions
    # the runs really appended under crashes and zombies, and some steps ran twice
    assert fired["crash"] and fired["zombie"], fired
    assert fenced > 0 and reexecutions > 0, (fenced, reexecutions)


def test_streams_run_is_reproducible(pg_dsn: str) -> None:
    cfg = SimConfig(seed=3, workload="streams", faults=ALL, instances=6)
    first, again = simulate(cfg, dsn=pg_dsn), simulate(cfg, dsn=pg_dsn)
    assert first.ok and again.ok
    assert first.log == again.log
