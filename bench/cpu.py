"""CPU seconds, for a cost model that the machine's noise does not move much: this process's own
(``getrusage``) and a local PostgreSQL server's, all backends included (from /proc: the postmaster's
own time, its reaped children's, and its live children's). Plain functions, no durable import (the
peer processes use them too)."""

from __future__ import annotations

import os
import resource
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """This process's user + system CPU seconds so far."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat from the 3rd (state) on; None when unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def server_cpu(postmaster: int | None) -> float | None:
    """CPU seconds used so far by the PostgreSQL server whose postmaster is ``postmaster`` (None when
    it is not a local process we can read)."""
    if postmaster is None:
        return None
    own = proc_stat(postmaster)
    if own is None:
        return None
    # fields (0-based after the name): 1 ppid, 11 utime, 12 stime, 13 cutime, 14 cstime
    ticks = sum(int(own[i]) for i in (11, 12, 13, 14))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = proc_stat(int(entry.name))
            if st is not None and int(st[1]) == postmaster:
                ticks += int(st[11]) + int(st[12])
    return ticks / _TICK


def postmaster_pid(data_directory: str | None) -> int | None:
    """The postmaster's pid from ``postmaster.pid`` in a data directory we can read, else None."""
    if not data_directory:
        return None
    try:
        pid = int((Path(data_directory) / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None
