"""Shrinking a failing fault plan by delta debugging (Zeller's ddmin): rerun the same seed with subsets
of the plan and keep the smallest that still violates the same invariant."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .core import SimConfig
from .harness import Result, simulate
from .plan import Fault

Probe = Callable[[list[Fault]], bool]


def ddmin(items: Sequence[Fault], fails: Probe) -> list[Fault]:
    """A 1-minimal subsequence of ``items`` for which ``fails`` holds (``fails(items)`` is assumed)."""
    current = list(items)
    if fails([]):
        return []
    n = 2
    while len(current) >= 2:
        size = -(-len(current) // n)
        chunks = [current[i : i + size] for i in range(0, len(current), size)]
        for chunk in chunks:
            if fails(chunk):
                current, n = chunk, 2
                break
        else:
            for i in range(len(chunks)):
                rest = [f for j, c in enumerate(chunks) if j != i for f in c]
                if fails(rest):
                    current, n = rest, max(n - 1, 2)
                    break
            else:
                if n >= len(current):
                    break
                n = min(len(current), n * 2)
    return current


def shrink(
    config: SimConfig,
    plan: list[Fault],
    invariants: set[str],
    *,
    dsn: str | None = None,
    prepare: Any = None,
    on_try: Callable[[list[Fault], Result], None] | None = None,
) -> list[Fault]:
    """The smallest sub-plan (ddmin) whose run still violates one of ``invariants``."""
    cache: dict[tuple[Fault, ...], bool] = {}

    def fails(candidate: list[Fault]) -> bool:
        key = tuple(candidate)
        if key not in cache:
            result = simulate(config, candidate, dsn=dsn, prepare=prepare)
            cache[key] = bool({v.invariant for v in result.violations} & invariants)
            if on_try is not None:
                on_try(candidate, result)
        return cache[key]

    return ddmin(plan, fails)
