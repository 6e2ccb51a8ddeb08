"""Measurements that run in a process of their own: start ``python -m <module> '<json>'``, optionally
act once it prints ``ready``, and take the JSON object on its last stdout line."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent


class ProcessFailed(Exception):
    """The process exited non-zero, timed out or printed no JSON; the message says why."""


def tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


async def run_json(
    module: str,
    options: dict[str, Any],
    *,
    limit: float,
    on_ready: Callable[[int], Awaitable[None]] | None = None,
    python: str | None = None,
) -> dict[str, Any]:
    """Run ``module`` in a fresh interpreter; ``on_ready(pid)`` runs when it prints ``ready``."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    argv = [python or sys.executable, "-m", module, json.dumps(options)]
    with tempfile.TemporaryFile() as err:
        proc = await trio.lowlevel.open_process(argv, stdout=-1, stderr=err.fileno(), cwd=str(ROOT), env=env)
        assert proc.stdout is not None
        lines: list[str] = []
        buf = b""
        try:
            with trio.move_on_after(limit) as scope:
                while True:
                    chunk = await proc.stdout.receive_some(65536)
                    if not chunk:
                        break
                    buf += chunk
                    while b"\n" in buf:
                        raw, buf = buf.split(b"\n", 1)
                        line = raw.decode(errors="replace")
                        lines.append(line)
                        if line == "ready" and on_ready is not None:
                            await on_ready(proc.pid)
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if scope.cancelled_caught:
        raise ProcessFailed(f"{module} timed out after {limit:.0f} s; stderr: {tail(stderr)}")
    if proc.returncode != 0:
        raise ProcessFailed(f"{module} exited {proc.returncode}: {tail(stderr)}")
    for line in reversed(lines):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    raise ProcessFailed(f"{module} printed no result; stderr: {tail(stderr)}")
