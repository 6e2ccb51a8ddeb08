"""Which sets of statuses a ``unique_scope`` may name (checked where an insert or a child spec enters).

A unique key is occupied while its row is in one of the statuses of its scope. The engine moves a row
into some statuses by itself, with no step outcome that could be refused: runnable (a lost lease or a
drain from executing, a signal from awaiting_signal, the last child from awaiting_children), failed (the
engine's last resort, from executing) and cancelled (a cancel, from any live status). A scope that names
one of them must name every status that move starts from: the row then already holds its key, and the
move can never find the key taken. The pick (into executing) waits while the key is occupied; a step's
outcome into an occupied scope goes to ``handle()`` as :class:`~durable.errors.UniqueKeyOccupied`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from .outcomes import NON_TERMINAL, STATUSES

SCOPE_NEEDS: Final[dict[str, tuple[str, ...]]] = {
    "runnable": ("executing", "awaiting_signal", "awaiting_children"),
    "failed": ("executing",),
    "cancelled": NON_TERMINAL,
}


def check_unique_scope(key: object, scope: object, where: str) -> None:
    """TypeError / ValueError for a ``unique_scope`` that is not a list of statuses the engine can keep."""
    if scope is None:
        return
    if key is None:
        raise ValueError(f"{where}: unique_scope without a unique_key (it would be ignored)")
    if isinstance(scope, str | bytes) or not isinstance(scope, Iterable):
        raise TypeError(f"{where}: unique_scope must be a list of status names, not {type(scope).__name__} {scope!r}")
    names = list(scope)
    bad = [s for s in names if not isinstance(s, str) or s not in STATUSES]
    if bad:
        raise ValueError(f"{where}: unknown status {bad[0]!r} in unique_scope (statuses: {', '.join(STATUSES)})")
    if not names:
        raise ValueError(f"{where}: unique_scope is empty: the key would never be occupied")
    for status, needs in SCOPE_NEEDS.items():
        missing = [n for n in needs if status in names and n not in names]
        if missing:
            raise ValueError(
                f"{where}: unique_scope names {status!r} but not {', '.join(missing)}: the engine "
                f"moves a row into {status} from {', '.join(needs)} by itself, so the scope must "
                "hold those too"
            )
