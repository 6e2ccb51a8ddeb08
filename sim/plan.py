"""Fault plans: what goes wrong, when, drawn from the seed; replayable and shrinkable.

A fault is keyed on things that repeat exactly under the same seed: the n-th call of a statement made by
a worker slot (crashes, connection kills, zombie pauses, reaper delays) or the n-th execution of an
instance's step (exceptions, slow steps). Instance ids repeat too: every run starts from a fresh schema.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

# kind -> what it does (the --faults vocabulary)
FAULT_KINDS: dict[str, str] = {
    "crash": "worker crash before its outcome commits (Runtime.kill before the complete statement)",
    "commit_unknown": "worker crash after its outcome committed, before the acknowledgement",
    "zombie": "worker pause longer than the lease: its calls stall, heartbeats stop, its outcome is late",
    "conn_pick": "connection terminated (pg_terminate_backend) while the pick statement runs",
    "conn_heartbeat": "connection terminated while the heartbeat statement runs",
    "conn_complete": "connection terminated while the outcome (complete) statement runs",
    "step_error": "a step raises (handled by the machine's handle: retry with backoff)",
    "slow_step": "a step takes longer than usual (beyond the heartbeat period)",
    "reaper_delay": "a reaper call stalls before running",
    "drain": "graceful worker restart: Runtime.stop with a short drain (buffered claims released, cut-off "
    "steps released with attempt + 1), then a new incarnation",
    "signal_lock": "a signal delivery's transaction stays open after its statement (the target row locked) while "
    "other workers' statements run; it commits when one of them waits on that lock (a real "
    "interleaving: that statement keeps the snapshot it took before), or after a few seconds",
    "pick_lock": "a pick's transaction stays open after it claimed its rows (locked, executing, not yet "
    "committed) while other statements run; it commits when one of them waits on those rows "
    "(a signal, a cancel, a reap), or after a few seconds; the worker hears of its claims then",
    "cancel_lock": "a cancel's transaction stays open after its walk (the tree's rows locked) while the workers' "
    "outcomes, heartbeats and picks run; it commits when one of them waits on it, or after a few "
    "seconds",
    "lease_loss": "a worker's heartbeats and its outcome commits stall while its picks, steps and reaper go "
    "on: its finished steps' claims are reaped and picked again while their stale outcomes are "
    "still queued",
    "conn_register": "connection terminated while a starting runtime registers (its first incarnation's "
    "register_worker); opt-in: not part of `all` or `conn`, so the plans of recorded seeds stay as they were",
}
# kinds a run gets only when named (FAULT_KINDS' order is the plan's draw order: new kinds go last)
OPT_IN = frozenset({"conn_register"})
ALIASES = {
    "conn": ["conn_pick", "conn_heartbeat", "conn_complete"],
    "all": [k for k in FAULT_KINDS if k not in OPT_IN],
}

# the statement a slot-keyed fault waits for
STATEMENT = {
    "crash": "complete",
    "commit_unknown": "complete",
    "zombie": "complete",
    "conn_pick": "pick",
    "conn_heartbeat": "heartbeat",
    "conn_complete": "complete",
    "conn_register": "register_worker",
    "reaper_delay": "reap",
    "drain": "pick",
    "lease_loss": "complete",
    "signal_lock": "deliver_signal",
    "pick_lock": "pick",
    "cancel_lock": "cancel_instance",
}
# faults that hold a statement's transaction open (real interleavings in dst)
HOLDS = frozenset({"signal_lock", "pick_lock", "cancel_lock"})


def parse_kinds(text: str) -> list[str]:
    """`crash,conn` -> the fault kinds; ValueError names an unknown one."""
    kinds: list[str] = []
    for word in (w.strip() for w in text.split(",")):
        if not word or word == "none":
            continue
        expanded = ALIASES.get(word, [word])
        for kind in expanded:
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {word!r} (kinds: {', '.join([*FAULT_KINDS, *ALIASES])})")
            if kind not in kinds:
                kinds.append(kind)
    return kinds


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    slot: int | None = None  # worker slot (slot-keyed kinds; None: the n-th call of any participant)
    nth: int = 1  # the n-th matching call / execution
    instance: int | None = None  # instance id (step-keyed kinds)
    seconds: float = 0.0  # pause, delay or extra step time

    def describe(self) -> str:
        if self.instance is not None:
            extra = f" +{self.seconds:g}s" if self.seconds else ""
            return f"{self.kind}: instance {self.instance}, execution #{self.nth}{extra}"
        extra = f" for {self.seconds:g}s" if self.seconds else ""
        who = "any participant" if self.slot is None else f"worker w{self.slot}"
        return f"{self.kind}: {who}, {STATEMENT[self.kind]} call #{self.nth}{extra}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        return cls(**data)


def draw_plan(rng: random.Random, kinds: list[str], *, workers: int, instances: int, lease: float) -> list[Fault]:
    """A fault plan for one run: a few faults of each enabled kind."""
    plan: list[Fault] = []
    for kind in kinds:
        for _ in range(rng.randint(1, 2)):
            slot = rng.randint(1, workers)
            if kind in ("step_error", "slow_step"):
                plan.append(
                    Fault(
                        kind,
                        instance=rng.randint(1, instances),
                        nth=rng.randint(1, 3),
                        seconds=round(rng.uniform(lease / 2, lease * 1.5), 1) if kind == "slow_step" else 0.0,
                    )
                )
            elif kind in ("zombie", "lease_loss"):
                plan.append(
                    Fault(kind, slot=slot, nth=rng.randint(1, 3), seconds=round(rng.uniform(lease * 2, lease * 4), 1))
                )
            elif kind == "reaper_delay":
                plan.append(
                    Fault(kind, slot=slot, nth=rng.randint(1, 6), seconds=round(rng.uniform(lease / 2, lease * 2), 1))
                )
            elif kind == "drain":
                plan.append(Fault(kind, slot=slot, nth=rng.randint(2, 12), seconds=round(rng.uniform(0.5, 5), 1)))
            elif kind == "signal_lock":  # keyed on the run's n-th delivery, whoever sends it (the driver too)
                plan.append(Fault(kind, nth=rng.randint(1, instances // 2), seconds=round(rng.uniform(5, 15), 1)))
            elif kind == "pick_lock":  # the run's n-th pick, whoever makes it (most picks of an idle queue: empty)
                plan.append(Fault(kind, nth=rng.randint(1, 4 * instances), seconds=round(rng.uniform(2, 10), 1)))
            elif kind == "cancel_lock":  # the run's n-th cancel (the driver's, in the workloads that cancel)
                plan.append(Fault(kind, nth=rng.randint(1, 3), seconds=round(rng.uniform(2, 10), 1)))
            elif kind == "conn_heartbeat":
                plan.append(Fault(kind, slot=slot, nth=rng.randint(1, 4)))
            elif kind == "conn_register":  # a slot registers once per incarnation: its first start
                plan.append(Fault(kind, slot=slot, nth=1))
            else:
                plan.append(Fault(kind, slot=slot, nth=rng.randint(1, 6)))
    return plan
