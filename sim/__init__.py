"""``durable sim``: deterministic simulation of the engine under injected faults (docs/sim.md).

    from durable.sim import SimConfig, simulate
    result = simulate(SimConfig(seed=42, workload="bank", faults=("crash", "zombie")))
    assert result.ok, result.violations

Modules: ``plan`` (fault kinds and seeded plans), ``gate`` (the serializing database gate and its fault
hooks), ``harness`` (phases, workers, final checks), ``invariants``, ``workloads/``, ``shrink``,
``bugs`` (planted engine bugs), ``processes``/``worker`` (chaos with OS processes), ``cli``.
"""

from __future__ import annotations

from .core import INVARIANTS, SimConfig, Violation, sim_step
from .harness import Result, plan_for, simulate, simulate_async
from .plan import FAULT_KINDS, Fault

__all__ = [
    "FAULT_KINDS",
    "INVARIANTS",
    "Fault",
    "Result",
    "SimConfig",
    "Violation",
    "plan_for",
    "sim_step",
    "simulate",
    "simulate_async",
]
