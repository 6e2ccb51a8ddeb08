"""Planted bugs (mutants): subtly broken variants of the engine's named statements, and of its Python code
where a fix lives there. A simulator that passes one of these is the defect. Each swap asserts that the
text it replaces is there exactly once, so an engine change that moves it fails loudly instead of silently
testing nothing.

    with planted("no_fencing") as bug:
        result = simulate(bug.config(seed), prepare=bug.prepare)

A SQL swap replaces a regex in one named statement (``Q.replaced``, put back when the block ends); a Python
swap (:class:`PySwap`) replaces a regex in the source of one function or method and compiles it back in
place, for the duration of the block. ``durable sim --mutants`` runs the whole catalogue (sim/mutants.py);
docs/sim.md has the table.
"""

from __future__ import annotations
import __future__

import ast
import importlib
import inspect
import re
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from durable._pg import Pool
from durable.sql import Q

from .core import SimConfig

Swap = tuple[str, str, str]  # statement, old text (regex), new text
Prepare = Callable[[Pool], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PySwap:
    """A one-line revert in Python: ``target`` is ``module:Qualified.name`` of a function or method that its
    callers look up at call time (a module global or a class attribute)."""

    target: str
    pattern: str
    replacement: str


@dataclass(frozen=True, slots=True)
class Bug:
    name: str
    invariant: str  # the invariant the simulator must report
    swaps: tuple[Swap, ...]
    workload: str
    faults: tuple[str, ...]
    breaks: str = ""  # what the mutant breaks, for the catalogue's table
    first: int = 1  # the first seed of 1..40 that catches it (the quick form runs only this one)
    patches: tuple[PySwap, ...] = ()
    drop_partition_index: bool = False
    instances: int = 8
    chaos_seconds: float = 50.0

    def config(self, seed: int) -> SimConfig:
        """The run of this mutant's workload on ``seed``."""
        return SimConfig(
            seed=seed,
            workload=self.workload,
            faults=self.faults or ("crash", "step_error"),
            instances=self.instances,
            chaos_seconds=self.chaos_seconds,
        )

    async def prepare(self, pool: Pool) -> None:
        if self.drop_partition_index:
            await pool.execute(Q.sim_drop_partition_index)


BUGS: dict[str, Bug] = {
    b.name: b
    for b in (
        Bug(
            "no_fencing",
            "no_fenced_outcome_visible",
            (
                ("complete", r"join o on g\.id = o\.id and g\.lease_token = o\.token", "join o on g.id = o.id"),
                ("complete_simple", r"where g\.id = o\.id and g\.lease_token = o\.token", "where g.id = o.id"),
                ("heartbeat", r"on g\.id = h\.id and g\.lease_token = h\.token", "on g.id = h.id"),
            ),
            "mixed",
            ("zombie",),
            "complete and heartbeat match rows by id only, not by lease token: a zombie's late outcome commits",
            first=1,
        ),
        Bug(
            "unscoped_consume",
            "signals_accounted",
            (
                (
                    "complete",
                    r"using decided d, unnest\(\$30::bigint\[\], \$31::bigint\[\]\) as e\(ord, sid\)\s+"
                    r"where d\.kind not in \('await', 'retry'\) and e\.ord = d\.ord and s\.id = e\.sid and "
                    r"s\.target_id = d\.id",
                    # every shown signal goes, whatever its name ($30/$31 stay referenced: same arity)
                    "using decided d, shown w\n  where d.kind not in ('await', 'retry') and w.ord = d.ord and "
                    "s.id = w.sid and s.target_id = d.id\n    and cardinality($30::bigint[]) >= 0 "
                    "and cardinality($31::bigint[]) >= 0",
                ),
            ),
            "checkout",
            (),
            "complete deletes every signal shown to the step, whatever its name",
            first=1,
        ),
        Bug(
            "no_prearrival_guard",
            "terminal_after_heal",
            (
                (
                    "complete",
                    r"case when h\.signal_seq <> o\.seq\s+or exists \(select 1 from signals s\s+"
                    r"where s\.target_id = o\.id and [^\n]*\n\s+"  # the awaited name(s)
                    r"and not exists \(select 1 from shown w where w\.ord = o\.ord and w\.sid = s\.id\)\)\s+"
                    r"then 'runnable' else 'awaiting_signal' end",
                    "'awaiting_signal'",
                ),
            ),
            "checkout",
            (),
            "an await parks without the signal_seq / inbox check: a signal that arrived "
            "during the step is never seen (lost wake-up)",
            first=4,
        ),
        Bug(
            "park_seq_unchecked",
            "terminal_after_heal",
            (("complete", r"case when h\.signal_seq <> o\.seq\s+or exists", "case when exists"),),
            "checkout",
            ("signal_lock",),
            "an await parks on the inbox check alone, without signal_seq: a delivery "
            "that commits while the park waits on its row lock is missed (the "
            "park's snapshot predates it): a real lost wake-up",
            first=4,
        ),
        Bug(
            "double_decrement",
            "child_decrements_once",
            (
                (
                    "complete",
                    r"from upd\s+where status in \('done', 'failed', 'cancelled'\) and parent_id is not null",
                    "from (select * from upd union all select * from upd) upd\n"
                    "  where status in ('done', 'failed', 'cancelled') and parent_id is not null",
                ),
            ),
            "checkout",
            (),
            "complete decrements the parent twice per ending child",
            first=1,
        ),
        Bug(
            "rejoin_retried_child",
            "child_decrements_once",
            (("complete", r"and parent_id is not null and not joined_before", "and parent_id is not null"),),
            "ops",
            (),
            "a child retried after its parent joined decrements the parent again (e99ae7c)",
            first=1,
        ),
        Bug(
            "partition_ignored",
            "partition_serial",
            (
                (
                    "pick",
                    r"and \(g\.partition_key is null\s+or not exists \(select 1 from instances e\s+"
                    r"where e\.partition_key [^;]*?offset 0\)\)",
                    "and true",
                ),
                ("pick", r"where k\.nth = 1", "where true"),
            ),
            "bank",
            (),
            "pick ignores partition keys (and the unique index instances_partition_active is "
            "dropped, which would still refuse the second claim of a key)",
            first=2,
            drop_partition_index=True,
        ),
        Bug(
            "cancel_child_unjoined",
            "cancel_accounted",
            (
                # the join of the idle children it cancels (one parent's, or a cascade's per parent)
                (
                    "cancel_instance",
                    r"where p\.id = i\.parent_id and not i\.joined_before"
                    r"|and t\.parent_id is not null and not t\.joined",
                    "\\g<0> and false",
                ),
            ),
            "ops",
            (),
            "cancelling an idle child never decrements its parent: the parent awaits its children forever",
            first=1,
        ),
        Bug(
            "release_unfenced",
            "release_fencing",
            (("release", r"on g\.id = r\.id and g\.lease_token = r\.token", "on g.id = r.id"),),
            "mixed",
            ("lease_loss",),
            "release (drain, uncommitted outcomes) matches rows by id only: a worker "
            "whose lease was lost puts another's live claim back to runnable",
            first=1,
        ),
        Bug(
            "same_batch_fencing",
            "no_fenced_outcome_visible",
            (
                (
                    "complete",
                    r"where o\.ord not in \(select l\.ord from live l\)",
                    "where o.id not in (select l.id from live l)",
                ),
                ("complete", r"from o left join upd u on u\.ord = o\.ord", "from o left join upd u on u.id = o.id"),
                (
                    "complete_simple",
                    r"where f\.ord not in \(select u\.ord from upd u\)",
                    "where f.id not in (select u.id from upd u)",
                ),
                (
                    "complete_simple",
                    r"from o left join upd u on u\.ord = o\.ord",
                    "from o left join upd u on u.id = o.id",
                ),
            ),
            "mixed",
            ("lease_loss",),
            "complete fences by instance id, not by claim, and the flusher batches two "
            "outcomes of one instance: a stale outcome beside the live one commits "
            "(issue 14 item 0)",
            first=4,
            patches=(
                PySwap("durable.runtime.flusher:_one_per_instance", r"if len\(ids\) == len\(batch\):", "if True:"),
            ),
        ),
        Bug(
            "attempts_unbounded",
            "bounded_attempts",
            (),
            "hostile",
            (),
            "the executor no longer stops a claim at max_attempts: a step that crashes its worker every time "
            "runs forever (issue 14 item 1)",
            first=1,
            patches=(
                PySwap("durable.runtime.executor:execute", r"if claim\.attempt >= machine\.max_attempts:", "if False:"),
            ),
        ),
        Bug(
            "refusal_retried",
            "state_matches_model",
            (),
            "hostile",
            (),
            "an outcome the database refuses is given back and re-run as is, never shown to handle() (issue 14 item 1)",
            first=1,
            patches=(
                PySwap(
                    "durable.runtime.scheduler:Scheduler.refused",
                    r"refusal = rejection\(error, encoded\)",
                    "refusal = None",
                ),
            ),
        ),
        Bug(
            "delay_unbounded",
            "terminal_after_heal",
            (),
            "hostile",
            (),
            "Retry(delay=1e12) is accepted: the instance is parked 31,700 years away (issue 14 item 2)",
            first=1,
            patches=(
                PySwap(
                    "durable.outcomes:seconds",
                    r"if type\(value\) is float and 0\.0 <= value <= MAX_DELAY:",
                    "if type(value) is float and 0.0 <= value:",
                ),
                PySwap("durable.limits:check_delay", r"if secs > MAX_DELAY:", "if False:"),
            ),
        ),
        Bug(
            "unique_pick_trips",
            "queue_progress",
            (
                (
                    "pick",
                    r"and \(g\.unique_key is null or g\.unique_guard is not null or not 'executing' = any "
                    r"\(g\.unique_scope\)\s+or not exists \(select 1 from instances u where u\.unique_guard = "
                    r"g\.unique_key offset 0\)\)",
                    "and true",
                ),
            ),
            "hostile",
            (),
            "pick no longer skips a row whose unique key (scope: executing) is occupied: every pick "
            "trips instances_unique and the whole queue stalls while the key is held (issue 14 item 3)",
            first=1,
        ),
        Bug(
            "lost_step_runs_on",
            "steps_exclusive",
            (),
            "hostile",
            ("lease_loss",),
            "a claim found lost does not cancel its step: it runs on beside the worker that took the instance "
            "over (issue 14 item 4)",
            first=1,
            patches=(PySwap("durable.runtime.runtime:Runtime.lose", r"claim\.scope\.cancel\(\)", "pass"),),
        ),
        Bug(
            "dead_claims_wait",
            "restart_frees_claims",
            (),
            "mixed",
            ("crash",),
            "a restarted worker leaves its dead predecessor's claims to the reaper: they wait out the whole "
            "lease (issue 14 item 5)",
            first=1,
            patches=(
                PySwap(
                    "durable.runtime.runtime:Runtime._free_dead_workers",
                    r"dead = \[\(r\[\"id\"\], why\) for r in rows if \(why := _gone\(r\[\"id\"\], r\[\"pid\"\], "
                    r"host\)\) is not None\]",
                    "dead: list[tuple[str, str]] = []",
                ),
            ),
        ),
        Bug(
            "explicit_unfenced",
            "no_fenced_outcome_visible",
            (),
            "ops",
            (),
            "an explicit claim's late call (durable.Claim.complete after its lease passed and the row was claimed "
            "again) does not raise Fenced: its caller believes a write the database refused (issue 18)",
            first=1,
            patches=(PySwap("durable.claims:Claim._outcome", r"if committed\.fenced:", "if False:"),),
        ),
        Bug(
            "values_unfenced",
            "values_fenced",
            (("value_put", r"and g\.lease_token = \$2::bigint", "and $2::bigint is not null"),),
            "values",
            (),
            "a named value's put (ctx.values.put) matches its instance by id and status only, not "
            "by the step's lease token: a zombie's put overwrites a value while another claim holds "
            "the instance (issue 18)",
            first=1,
        ),
        Bug(
            "claim_filter_ignored",
            "state_matches_model",
            (("pick", r"and \(\$6::text is null or g\.machine = \$6::text\)", "and ($6::text is null or true)"),),
            "ops",
            (),
            "the pick ignores db.claim's machine filter: run_once hands its handler another machine's rows (issue 18)",
            first=1,
        ),
        Bug(
            "timer_ignored",
            "timers_kept",
            (
                (
                    "complete",
                    r"when d\.kind in \('retry', 'next'\) and d\.delay > 0",
                    "when d.kind = 'retry' and d.delay > 0",
                ),
                ("complete_simple", r"when o\.delay > 0", "when o.kind = 'retry' and o.delay > 0"),
            ),
            "checkout",
            (),
            "a delayed next is runnable at once: the durable timer does not hold the step (issue 17 item 2)",
            first=1,
        ),
        Bug(
            "timeout_fires_early",
            "state_matches_model",
            (
                (
                    "fire_timeouts",
                    r"and timeout_at <= coalesce\(\$1::timestamptz, now\(\)\)",
                    "and timeout_at is not null",
                ),
            ),
            "checkout",
            (),
            "the timer sweep fires every await that has a timeout, due or not: a paid checkout "
            "expires (issue 17 item 3)",
            first=1,
        ),
        Bug(
            "timeout_history_attempt",
            "history_consistent",
            (("fire_timeouts", r"f\.old_step, f\.old_attempt, 'runnable'", "f.old_step, f.attempt, 'runnable'"),),
            "checkout",
            (),
            "a timed-out await's history row pairs the awaiting step with the timeout step's "
            "attempt 0: the attempt reads as going backwards (found by the checkout workload's "
            "await timeouts)",
            first=5,
        ),
        Bug(
            "cancel_no_cascade",
            "state_matches_model",
            (
                (
                    "cancel_instance",
                    r"from tree t join instances c on c\.parent_id = t\.id\s+"
                    r"where t\.status not in \('done', 'failed'\)",
                    "from tree t join instances c on c.parent_id = t.id\n  where false",
                ),
            ),
            "checkout",
            (),
            "db.cancel ends only the instance named: its shipments run on after the checkout is "
            "cancelled (issue 17 item 5)",
            first=2,
        ),
        Bug(
            "register_unguarded",
            "workers_survive",
            (),
            "mixed",
            ("conn_register",),
            "a connection killed while a runtime registers at start ends the runtime with DatabaseUnavailable "
            "instead of being waited out (a simulator worker process died of it)",
            first=1,
            patches=(PySwap("durable.runtime.runtime:Runtime._register", r"if not unavailable\(exc\):", "if True:"),),
        ),
    )
}


def broken(text: str, pattern: str, replacement: str, where: str) -> str:
    """``text`` with the one match of ``pattern`` replaced (literally; ``\\g<0>`` stands for the match)."""
    new, n = re.subn(pattern, lambda m: replacement.replace("\\g<0>", m.group(0)), text)
    if n != 1:
        raise AssertionError(f"planted bug: {where}: pattern found {n} times (the engine changed?)")
    return new


class Stale(AssertionError):
    """A mutant that no longer applies: its text is gone from the engine or found more than once."""


@contextmanager
def _sql(name: str, swaps: tuple[Swap, ...]) -> Iterator[None]:
    """Each swap's statement runs broken inside the block (``Q.replaced``: put back when it ends)."""
    with ExitStack() as stack:
        for statement, pattern, replacement in swaps:
            text = broken(Q.get(statement).text, pattern, replacement, f"{name}/{statement}")
            stack.enter_context(Q.replaced(statement, text))
        yield


@contextmanager
def _python(name: str, swap: PySwap) -> Iterator[None]:
    """Compile the target's source with the swap applied and put it in the target's place."""
    module_name, _, qualname = swap.target.partition(":")
    module = importlib.import_module(module_name)
    *path, attr = qualname.split(".")
    owner: Any = module
    for part in path:
        owner = getattr(owner, part)
    original = owner.__dict__[attr]
    fn = original.__func__ if isinstance(original, staticmethod | classmethod) else original
    source = textwrap.dedent(inspect.getsource(fn))
    tree = ast.parse(broken(source, swap.pattern, swap.replacement, f"{name}/{swap.target}"))
    ast.increment_lineno(tree, fn.__code__.co_firstlineno - 1)  # tracebacks point at the real file's lines
    code = compile(
        tree,
        inspect.getsourcefile(fn) or swap.target,
        "exec",
        flags=__future__.annotations.compiler_flag,
        dont_inherit=True,
    )
    namespace: dict[str, Any] = {}
    exec(code, module.__dict__, namespace)  # the engine's own source, one regex changed
    replaced = namespace[attr]
    if isinstance(original, staticmethod | classmethod):
        replaced = type(original)(replaced)
    # a module-level function may have been imported by name elsewhere (`from .outcomes import seconds`):
    # every loaded module's reference to it is swapped too
    holders = (
        [owner]
        if path
        else [m for m in list(sys.modules.values()) if m is not None and getattr(m, attr, None) is original]
    )
    for holder in holders:
        setattr(holder, attr, replaced)
    try:
        yield
    finally:
        for holder in holders:
            setattr(holder, attr, original)


@contextmanager
def planted(name: str) -> Iterator[Bug]:
    """Apply bug ``name`` (its SQL and Python swaps) for the duration of the block; :class:`Stale` when a
    swap's text is not found exactly once."""
    bug = BUGS[name]
    with ExitStack() as stack:
        try:
            stack.enter_context(_sql(name, bug.swaps))
            for swap in bug.patches:
                stack.enter_context(_python(name, swap))
        except AssertionError as exc:
            raise Stale(str(exc)) from None
        yield bug
