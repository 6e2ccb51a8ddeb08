"""Planted bugs: subtly broken variants of the engine's named statements. A simulator that passes one
of these is the defect. Each swap asserts that the text it replaces is still there, so an engine change
that moves it fails loudly instead of silently testing nothing.

    with planted("no_fencing") as bug:
        result = simulate(config, prepare=bug.prepare)
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from durable._pg import Pool
from durable.sql import Q, Query

Swap = tuple[str, str, str]  # statement, old text (regex), new text


@dataclass(frozen=True, slots=True)
class Bug:
    name: str
    invariant: str          # the invariant the simulator must report
    swaps: tuple[Swap, ...]
    workload: str
    faults: tuple[str, ...]
    drop_partition_index: bool = False

    async def prepare(self, pool: Pool) -> None:
        if self.drop_partition_index:
            await pool.execute(Q.sim_drop_partition_index)


BUGS: dict[str, Bug] = {
    b.name: b
    for b in (
        Bug("no_fencing", "no_fenced_outcome_visible", (
            ("complete", r"join o on g\.id = o\.id and g\.lease_token = o\.token", "join o on g.id = o.id"),
            ("complete_simple", r"where g\.id = o\.id and g\.lease_token = o\.token", "where g.id = o.id"),
            ("heartbeat", r"on g\.id = h\.id and g\.lease_token = h\.token", "on g.id = h.id"),
        ), "mixed", ("zombie",)),
        Bug("unscoped_consume", "signals_accounted", (
            ("complete",
             r"using decided d, unnest\(\$30::bigint\[\], \$31::bigint\[\]\) as e\(ord, sid\)\s+"
             r"where d\.kind not in \('await', 'retry'\) and e\.ord = d\.ord and s\.id = e\.sid and "
             r"s\.target_id = d\.id",
             # every shown signal goes, whatever its name ($30/$31 stay referenced: same arity)
             "using decided d, shown w\n  where d.kind not in ('await', 'retry') and w.ord = d.ord and "
             "s.id = w.sid and s.target_id = d.id\n    and cardinality($30::bigint[]) >= 0 "
             "and cardinality($31::bigint[]) >= 0"),
        ), "checkout", ()),
        Bug("no_prearrival_guard", "terminal_after_heal", (
            ("complete",
             r"case when h\.signal_seq <> o\.seq\s+or exists \(select 1 from signals s\s+"
             r"where s\.target_id = o\.id and s\.name = o\.awaits\s+"
             r"and not exists \(select 1 from shown w where w\.ord = o\.ord and w\.sid = s\.id\)\)\s+"
             r"then 'runnable' else 'awaiting_signal' end",
             "'awaiting_signal'"),
        ), "checkout", ()),
        Bug("double_decrement", "child_decrements_once", (
            ("complete", r"from upd\s+where status in \('done', 'failed', 'cancelled'\) and parent_id is not null",
             "from (select * from upd union all select * from upd) upd\n"
             "  where status in ('done', 'failed', 'cancelled') and parent_id is not null"),
        ), "checkout", ()),
        Bug("rejoin_retried_child", "child_decrements_once", (
            ("complete", r"and parent_id is not null and not joined_before", "and parent_id is not null"),
        ), "ops", ()),
        Bug("partition_ignored", "partition_serial", (
            ("pick", r"and \(g\.partition_key is null\s+or not exists \(select 1 from instances e\s+"
                     r"where e\.partition_key = g\.partition_key and e\.status = 'executing'\)\)", "and true"),
            ("pick", r"where k\.nth = 1", "where true"),
        ), "bank", (), drop_partition_index=True),
    )
}


def broken(text: str, pattern: str, replacement: str, where: str) -> str:
    new, n = re.subn(pattern, lambda _: replacement, text)
    if n != 1:
        raise AssertionError(f"planted bug: {where}: pattern found {n} times (the engine changed?)")
    return new


@contextmanager
def planted(name: str) -> Iterator[Bug]:
    """Swap the statements of bug ``name`` for the duration of the block."""
    bug = BUGS[name]
    originals: dict[str, Query] = {}
    try:
        for statement, pattern, replacement in bug.swaps:
            current = getattr(Q, statement)
            originals.setdefault(statement, current)
            Q.replace(statement, broken(current.text, pattern, replacement, f"{name}/{statement}"))
        yield bug
    finally:
        for original in originals.values():
            Q.restore(original)


Prepare = Callable[[Pool], Awaitable[None]]
