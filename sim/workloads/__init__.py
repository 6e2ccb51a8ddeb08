"""The simulator's workloads: actors (machines) plus a driver that inserts and signals them, and the
model each one checks the committed state against."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from durable import Machine

from ..core import Run, SimDatabase, Violation

Action = Callable[[SimDatabase], Awaitable[None]]


@dataclass(slots=True)
class Final:
    """The committed state of a run, read once at the end."""

    instances: list[dict[str, Any]]
    signals: list[dict[str, Any]]
    history: list[dict[str, Any]]
    ledger: list[dict[str, Any]] = field(default_factory=list)

    def by_id(self) -> dict[int, dict[str, Any]]:
        return {i["id"]: i for i in self.instances}


def decode(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


class Workload(Protocol):
    name: str
    machines: list[type[Machine]]

    async def setup(self, db: SimDatabase) -> None: ...

    def schedule(
        self, rng: random.Random, count: int, horizon: float, scale: float = 1.0
    ) -> list[tuple[float, Action]]:
        """Driver actions (virtual time, action), drawn from the run's PRNG."""
        ...

    def check(self, run: Run, final: Final) -> list[Violation]: ...


def workloads(name: str) -> list[Workload]:
    from .bank import Bank
    from .checkout import CheckoutWorkload
    from .ops import Ops
    from .retry import RetryWorkload

    table: dict[str, Callable[[], Workload]] = {"checkout": CheckoutWorkload, "bank": Bank, "retry": RetryWorkload}
    if name == "mixed":
        return [factory() for factory in table.values()]
    if name == "ops":
        return [Ops()]
    if name == "hostile":
        from .hostile import Hostile

        return [Hostile()]
    if name == "fuzz":
        from .fuzz import FuzzWorkload

        return [FuzzWorkload()]
    if name == "streams":
        from .streams import StreamsWorkload

        return [StreamsWorkload()]
    if name == "values":
        from .values import ValuesWorkload

        return [ValuesWorkload()]
    if name not in table:
        raise ValueError(f"unknown workload {name!r} ({', '.join(WORKLOADS)})")
    return [table[name]()]


WORKLOADS = ("checkout", "bank", "retry", "mixed", "ops", "streams", "hostile", "fuzz", "values")
