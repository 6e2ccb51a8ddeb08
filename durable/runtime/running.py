"""Which worker ids run in this process: a registry row of this host and process under another id belongs
to a runtime that is gone (killed, crashed, or of an earlier process with this pid).

An entry records the trio run and the thread its runtime runs in. A trio run that ended without unwinding
(abandoned: an exception raised out of ``trio.run`` from a signal handler, as a test timeout does) leaves its
entries behind; they must not keep a later runtime of the same id from freeing that dead one's claims. trio
runs one run at a time in a thread, so an entry of another run in the calling thread, or of a thread that
has exited, is stale.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import trio

__all__ = ["Entry", "enter", "leave", "runs_here"]


@dataclass(frozen=True, slots=True, eq=False)
class Entry:
    """One runtime of ``worker_id`` running in ``run`` (its trio token) on ``thread``."""

    worker_id: str
    run: trio.lowlevel.TrioToken
    thread: threading.Thread


_entries: dict[str, list[Entry]] = {}
_lock = threading.Lock()


def enter(worker_id: str) -> Entry:
    """Record that a runtime of ``worker_id`` runs in the current trio run; :func:`leave` it when it ends."""
    entry = Entry(worker_id, trio.lowlevel.current_trio_token(), threading.current_thread())
    with _lock:
        _entries.setdefault(worker_id, []).append(entry)
    return entry


def leave(entry: Entry) -> None:
    """The runtime of ``entry`` has ended."""
    with _lock:
        live = [e for e in _entries.get(entry.worker_id, ()) if e is not entry]
        if live:
            _entries[entry.worker_id] = live
        else:
            _entries.pop(entry.worker_id, None)


def runs_here(worker_id: str) -> bool:
    """Whether a runtime of ``worker_id`` may be running in this process (called inside a trio run). Stale
    entries (see the module's docstring) are dropped."""
    run, thread = trio.lowlevel.current_trio_token(), threading.current_thread()
    with _lock:
        live = [
            e for e in _entries.get(worker_id, ()) if e.run is run or (e.thread is not thread and e.thread.is_alive())
        ]
        if live:
            _entries[worker_id] = live
        else:
            _entries.pop(worker_id, None)
    return bool(live)
