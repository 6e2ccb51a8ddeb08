"""The engine-wide invariants, checked on the committed state at the end of a run (the lease checks
that need the moment of each call run live in the gate)."""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from typing import Any

from durable.outcomes import TERMINAL

from .core import Run, StepRecord, Violation
from .workloads import Final, decode

OUTCOMES = ("next", "retry", "await", "spawn", "done", "stop", "cancel")
STEP_CHANGES = ("inserted", "next", "spawn", "joined", "retried")


def terminal(final: Final) -> list[Violation]:
    stuck = [
        f"{i['machine']}#{i['id']} {i['status']} at {i['step']}" for i in final.instances if i["status"] not in TERMINAL
    ]
    if not stuck:
        return []
    return [Violation("terminal_after_heal", f"{len(stuck)} not terminal: {', '.join(stuck[:8])}")]


def partition_serial(run: Run, final: Final) -> list[Violation]:
    """Committed executions of one partition key never overlap in (virtual) time."""
    committed = {(h["instance_id"], h["lease_token"]) for h in final.history if h["event"] in OUTCOMES}
    by_key: dict[str, list[StepRecord]] = defaultdict(list)
    for rec in run.steps:
        if rec.partition_key is not None and rec.end is not None and (rec.instance, rec.token) in committed:
            by_key[rec.partition_key].append(rec)
    out: list[Violation] = []
    for key, recs in sorted(by_key.items()):
        recs.sort(key=lambda r: (r.start, r.end))
        for a, b in itertools.pairwise(recs):
            assert a.end is not None
            if b.start < a.end:
                out.append(
                    Violation(
                        "partition_serial",
                        f"{key}: #{a.instance}.{a.step} [{a.start:.2f}, {a.end:.2f}] overlaps "
                        f"#{b.instance}.{b.step} [{b.start:.2f}, {b.end:.2f}]",
                    )
                )
    return out


def children(final: Final) -> list[Violation]:
    """Each terminal child decremented its parent once: per parent, the `joined` decrements add up to
    the number of its terminal children, and a parent that went on has no pending children left."""
    out: list[Violation] = []
    decrements: dict[int, int] = defaultdict(int)
    for h in final.history:
        if h["event"] == "joined":
            decrements[h["instance_id"]] += int(decode(h["detail"]).get("children", 0))
    kids: dict[int, list[dict[str, object]]] = defaultdict(list)
    for i in final.instances:
        if i["parent_id"] is not None:
            kids[i["parent_id"]].append(i)
    rows = final.by_id()
    for parent, group in sorted(kids.items()):
        ended = sum(1 for k in group if k["status"] in TERMINAL)
        if decrements[parent] != ended:
            out.append(
                Violation(
                    "child_decrements_once",
                    f"parent {parent}: {decrements[parent]} decrements for {ended} terminal children",
                )
            )
        if rows[parent]["status"] in TERMINAL and ended < len(group):
            out.append(
                Violation(
                    "child_decrements_once",
                    f"parent {parent} ended {rows[parent]['status']} with {len(group) - ended} children still running",
                )
            )
    return out


def cancels(final: Final) -> list[Violation]:
    """A cancel the engine recorded ends its instance cancelled (an idle one at once, an executing one
    when its step's outcome commits), unless an operator retried it after; a cancelled child is counted in
    its parent's join (its `joined` flag, and the parent's decrements add up to its ended children); no
    parent still awaits children that have all ended."""
    out: list[Violation] = []
    rows = final.by_id()
    pending: set[int] = set()
    for h in final.history:
        if h["event"] == "cancelled":
            pending.add(h["instance_id"])
        elif h["event"] == "retried":
            pending.discard(h["instance_id"])
    for iid in sorted(pending):
        if rows[iid]["status"] != "cancelled":
            out.append(Violation("cancel_accounted", f"instance {iid} was cancelled and ended {rows[iid]['status']}"))
    decrements: dict[int, int] = defaultdict(int)
    for h in final.history:
        if h["event"] == "joined":
            decrements[h["instance_id"]] += int(decode(h["detail"]).get("children", 0))
    kids: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for i in final.instances:
        if i["parent_id"] is not None:
            kids[i["parent_id"]].append(i)
    for parent, group in sorted(kids.items()):
        ended = [k for k in group if k["status"] in TERMINAL]
        cancelled = [k["id"] for k in group if k["status"] == "cancelled"]
        uncounted = [k for k in cancelled if not rows[k]["joined"]]
        if uncounted:
            out.append(Violation("cancel_accounted", f"cancelled children {uncounted} of {parent} never joined it"))
        if cancelled and decrements[parent] != len(ended):
            out.append(
                Violation(
                    "cancel_accounted",
                    f"parent {parent}: {decrements[parent]} decrements for {len(ended)} ended children "
                    f"(cancelled: {cancelled})",
                )
            )
        if rows[parent]["status"] == "awaiting_children" and len(ended) == len(group):
            statuses = ", ".join(f"{k['id']} {k['status']}" for k in group)
            out.append(Violation("cancel_accounted", f"parent {parent} awaits children that all ended ({statuses})"))
    return out


def attempts(run: Run, final: Final) -> list[Violation]:
    """Bounded attempts: no step runs at an attempt of max_attempts or more (the executor stops such a claim
    without running the step, whatever made the earlier attempts end: exceptions, crashes, lost leases).
    The attempt counter itself may pass max_attempts + 1 only while the stop outcome of such a claim loses
    its lease again (each recorded as reaped, released or lease_lost), never by running the step."""
    out: list[Violation] = []
    rows = final.by_id()
    for rec in run.steps:
        limit = run.max_attempts.get(rec.machine)
        if limit is not None and rec.attempt >= limit:
            out.append(
                Violation(
                    "bounded_attempts",
                    f"instance {rec.instance} ({rec.machine}.{rec.step}) ran attempt {rec.attempt} on "
                    f"{rec.worker}; max_attempts is {limit}",
                )
            )
            break
    recoveries: dict[int, int] = defaultdict(int)
    highest: dict[int, int] = {i["id"]: i["attempt"] for i in final.instances}
    for h in final.history:
        iid, attempt = h["instance_id"], h["attempt"]
        if attempt is None:
            continue
        highest[iid] = max(highest.get(iid, attempt), attempt)
        limit = run.max_attempts.get(h["machine"])
        if limit is not None and attempt >= limit - 1 and h["event"] in ("reaped", "released", "lease_lost"):
            recoveries[iid] += 1
    for iid, attempt in sorted(highest.items()):
        limit = run.max_attempts.get(rows[iid]["machine"]) if iid in rows else None
        if limit is not None and attempt > limit + 1 + recoveries[iid]:
            out.append(
                Violation(
                    "bounded_attempts",
                    f"instance {iid} reached attempt {attempt} (max_attempts {limit}) with "
                    f"{recoveries[iid]} lost claims past the bound to explain it",
                )
            )
    return out + loops(run, final)


def loops(run: Run, final: Final) -> list[Violation]:
    """No outcome loop: every run of a step is explained by a history row of its instance (the outcome it
    committed, or the give-back of its claim: released, reaped, lost, fenced). A refused outcome re-run as is
    (the NUL loop of issue 14: attempt 529 in 40 s) runs the step again and again with nothing recorded; a
    bound of twice the instance's history rows plus two catches it."""
    runs: Counter[int] = Counter(r.instance for r in run.steps)
    rows: Counter[int] = Counter(h["instance_id"] for h in final.history)
    for iid, n in sorted(runs.items()):
        if n > 2 + 2 * rows[iid]:
            return [
                Violation(
                    "bounded_attempts",
                    f"instance {iid}: {n} step runs for {rows[iid]} history rows (a loop that commits nothing)",
                )
            ]
    return []


def exclusive(run: Run) -> list[Violation]:
    """No two executions of one instance overlap in (virtual) time, committed or not: a worker whose lease is
    lost cancels the step before the lease expires in the database, so before another worker can pick it.
    dst only (chaos and worker processes time steps on clocks that need not agree)."""
    if run.config.mode != "dst":
        return []
    by_instance: dict[int, list[StepRecord]] = defaultdict(list)
    for rec in run.steps:
        by_instance[rec.instance].append(rec)
    out: list[Violation] = []
    for iid, recs in sorted(by_instance.items()):
        recs.sort(key=lambda r: (r.start, r.token))
        for a, b in itertools.pairwise(recs):
            end = a.end if a.end is not None else math.inf
            if b.start < end:
                out.append(
                    Violation(
                        "steps_exclusive",
                        f"instance {iid}: {a.step} t{a.token} on {a.worker} [{a.start:.2f}, {end:.2f}] "
                        f"overlaps {b.step} t{b.token} on {b.worker} from {b.start:.2f}",
                    )
                )
                break
    return out


def history(run: Run, final: Final, early: list[dict[str, Any]]) -> list[Violation]:
    """Append-only (rows read at the end of chaos are unchanged), one outcome per lease token, no
    outcome under a token that was reaped before it, attempts monotone within a step."""
    out: list[Violation] = []
    now = {h["id"]: h for h in final.history}
    for h in early:
        if now.get(h["id"]) != h:
            out.append(Violation("history_consistent", f"history row {h['id']} changed or vanished"))
            break
    seen: dict[tuple[int, int], int] = {}
    reaped: set[tuple[int, int]] = set()
    last: dict[int, tuple[str | None, int]] = {}
    for h in final.history:
        iid: int = h["instance_id"]
        token: int | None = h["lease_token"]
        if h["event"] == "reaped" and token is not None:
            reaped.add((iid, token))
        if h["event"] in OUTCOMES and token is not None:
            if (iid, token) in seen:
                out.append(Violation("history_consistent", f"instance {iid}: two outcomes under lease token {token}"))
            seen[(iid, token)] = h["id"]
            if (iid, token) in reaped:
                out.append(
                    Violation(
                        "no_fenced_outcome_visible",
                        f"instance {iid}: outcome {h['event']} committed under token {token} "
                        "after that lease was reaped",
                    )
                )
        # fenced and lease_lost rows speak of a stale claim (its attempt then), not of the row now
        if h["event"] in ("fenced", "lease_lost", "signal", "cancelled") or h["attempt"] is None:
            continue
        prev = last.get(iid)
        if prev is not None and prev[0] == h["step"] and h["attempt"] < prev[1]:
            out.append(
                Violation(
                    "history_consistent",
                    f"instance {iid}: attempt went from {prev[1]} to {h['attempt']} at {h['step']}",
                )
            )
        last[iid] = (None, 0) if h["event"] in STEP_CHANGES else (h["step"], h["attempt"])
    return out


def signals(run: Run, final: Final) -> list[Violation]:
    """Signals the driver sent that were stored must be in the history (delivery is recorded)."""
    recorded = {decode(h["detail"])["signal_id"] for h in final.history if h["event"] == "signal"}
    missing = [sid for _, _, sid in run.sent if sid is not None and sid not in recorded]
    if missing:
        return [Violation("signals_accounted", f"signals {missing[:5]} stored without a history row")]
    return []


def check_all(run: Run, final: Final, early: list[dict[str, Any]]) -> list[Violation]:
    return [
        *terminal(final),
        *partition_serial(run, final),
        *children(final),
        *history(run, final, early),
        *signals(run, final),
        *cancels(final),
        *attempts(run, final),
        *exclusive(run),
    ]
