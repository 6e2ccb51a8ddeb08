"""The mutation catalogue (``durable sim --mutants``): apply each planted bug of sim/bugs.py, run its
workload on seeds until the bug's invariant fires, shrink that seed's fault plan, and score the simulator:
a mutant that passes every seed is a hole in the simulator's proof.

    results = run_catalogue(dsn=None, seeds=range(1, 41))
    score = sum(r.caught for r in results)

The quick form (CI) runs each mutant on its known first failing seed only (``Bug.first``), without
shrinking.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .bugs import BUGS, Bug, Stale, planted
from .harness import simulate
from .plan import Fault
from .shrink import shrink

DEFAULT_SEEDS = 40  # every mutant must be caught within this many seeds (issue 15)


@dataclass(slots=True)
class MutantResult:
    name: str
    bug: Bug
    caught: bool = False
    stale: str | None = None  # why the mutant no longer applies (the engine's text moved)
    tried: list[int] = field(default_factory=list)
    failed: dict[int, list[str]] = field(default_factory=dict)  # seed -> violated invariants
    first: int | None = None  # the first seed whose run violated the bug's invariant
    plan: list[Fault] | None = None  # that run's fault plan
    minimal: list[Fault] | None = None  # shrunk (None: not shrunk)
    detail: str = ""  # the first violation of that invariant
    seconds: float = 0.0

    @property
    def fired(self) -> list[str]:
        return self.failed.get(self.first, []) if self.first is not None else []

    def to_json(self) -> dict[str, Any]:
        return {
            "mutant": self.name,
            "workload": self.bug.workload,
            "invariant": self.bug.invariant,
            "caught": self.caught,
            "stale": self.stale,
            "seeds_tried": self.tried,
            "failed": {str(k): v for k, v in self.failed.items()},
            "first_failing_seed": self.first,
            "fired": self.fired,
            "detail": self.detail,
            "plan": None if self.plan is None else [f.to_json() for f in self.plan],
            "minimal_plan": None if self.minimal is None else [f.to_json() for f in self.minimal],
            "seconds": round(self.seconds, 1),
        }


Event = Callable[[str], None]


def run_mutant(
    name: str, seeds: Iterable[int], *, dsn: str | None = None, shrinking: bool = True, on_event: Event | None = None
) -> MutantResult:
    """Run mutant ``name`` on ``seeds`` in order until its invariant fires; shrink that run's plan."""
    bug = BUGS[name]
    out = MutantResult(name, bug)
    started = time.perf_counter()
    say = on_event or (lambda _: None)
    try:
        with planted(name):
            for seed in seeds:
                out.tried.append(seed)
                say(f"{name}: seed {seed}")
                result = simulate(bug.config(seed), dsn=dsn, prepare=bug.prepare)
                violated = sorted({v.invariant for v in result.violations})
                if violated:
                    out.failed[seed] = violated
                if bug.invariant in violated:
                    out.caught, out.first, out.plan = True, seed, result.plan
                    out.detail = next(v.detail for v in result.violations if v.invariant == bug.invariant)
                    break
            if out.caught and shrinking:
                say(f"{name}: shrinking the plan of seed {out.first} ({len(out.plan or [])} faults)")
                assert out.first is not None and out.plan is not None
                out.minimal = shrink(bug.config(out.first), out.plan, {bug.invariant}, dsn=dsn, prepare=bug.prepare)
    except Stale as exc:
        out.stale = str(exc)
    out.seconds = time.perf_counter() - started
    return out


def run_catalogue(
    names: Sequence[str] | None = None,
    *,
    seeds: Sequence[int] | None = None,
    quick: bool = False,
    dsn: str | None = None,
    shrinking: bool = True,
    on_event: Event | None = None,
    on_result: Callable[[MutantResult], None] | None = None,
) -> list[MutantResult]:
    """Every mutant (or ``names``): quick runs each on its known first failing seed and does not shrink."""
    results = []
    for name in names or sorted(BUGS):
        bug = BUGS[name]
        tried = [bug.first] if quick else list(seeds or range(1, DEFAULT_SEEDS + 1))
        r = run_mutant(name, tried, dsn=dsn, shrinking=shrinking and not quick, on_event=on_event)
        results.append(r)
        if on_result is not None:
            on_result(r)
    return results


def describe_plan(plan: list[Fault] | None) -> str:
    if plan is None:
        return "-"
    return "; ".join(f.describe() for f in plan) or "no faults"


def score(results: Sequence[MutantResult]) -> str:
    return f"mutation score: {sum(r.caught for r in results)}/{len(results)}"
