"""``durable console`` in a real terminal: tmux runs the installed command against the test database,
the test presses keys and reads the screen back with ``capture-pane``."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import trio

from .test_console_support import drop, fill_frozen

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Terminal:
    """A detached tmux session on a private server socket (so nobody else's tmux is touched)."""

    def __init__(self, command: str, width: int = 120, height: int = 40) -> None:
        self.socket = f"durable-console-{uuid.uuid4().hex[:8]}"
        self.session = "console"
        self.tmux(
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            self.session,
            "-x",
            str(width),
            "-y",
            str(height),
            f"{command}; echo EXITED=$?; sleep 30",
        )
        self.tmux("resize-window", "-t", self.session, "-x", str(width), "-y", str(height))

    def tmux(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            raise RuntimeError(f"tmux {args[0]} failed: {out.stderr.strip()}")
        return out.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.session)

    def styled(self) -> str:
        """The screen with its colours (escape sequences), to see focus move."""
        return self.tmux("capture-pane", "-p", "-e", "-t", self.session)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.session, *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.session, "-l", text)

    def wait(self, condition: Callable[[str], bool], what: str, limit: float = 20) -> str:
        """Poll the screen until ``condition`` holds (``limit`` only guards against a hang)."""
        deadline = time.monotonic() + limit
        while True:
            text = self.screen()
            if condition(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen was:\n{text}")
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def schema(pg_dsn: str) -> Iterator[str]:
    name = f"t_tmux_{uuid.uuid4().hex[:8]}"
    trio.run(fill_frozen, pg_dsn, name)
    yield name
    trio.run(drop, pg_dsn, name)


def row(screen: str, first: str) -> list[str]:
    """The words of the screen's first line whose first word is ``first`` ([] when there is none)."""
    for line in screen.splitlines():
        parts = line.split()
        if parts and parts[0] == first:
            return parts
    return []


def shows(screen: str, rows: dict[str, tuple[int, list[str]]]) -> bool:
    """Whether every named row shows its cells (first word -> (index of the first cell, the cells)). A
    capture may catch a frame half drawn, so tests wait for this rather than assert one capture."""
    return all(row(screen, first)[at : at + len(cells)] == cells for first, (at, cells) in rows.items())


def test_console_in_a_real_terminal(pg_dsn: str, schema: str) -> None:
    durable = os.path.join(os.path.dirname(sys.executable), "durable")
    # COLUMNS/LINES from the test's environment would override the terminal's real size
    command = " ".join(
        shlex.quote(p)
        for p in (
            "env",
            "-u",
            "COLUMNS",
            "-u",
            "LINES",
            durable,
            "console",
            "--dsn",
            pg_dsn,
            "--schema",
            schema,
            "--refresh",
            "0.5",
        )
    )
    term = Terminal(command)
    try:
        queues = {
            # queue  due later exec await-sig await-kids done failed cancel ...
            "mail": (1, ["0", "1", "0", "0", "0", "1", "1", "0"]),
            "orders": (1, ["0", "0", "1", "1", "1", "0", "0", "0"]),
            "worker-b": (1, ["host-2", "202", "mail", "1/2"]),  # in flight / concurrency
        }
        term.wait(
            lambda s: "Workers" in s and shows(s, queues) and f"schema {schema}" in s,
            "the queues screen with its counts",
        )

        term.keys("i")
        term.wait(lambda s: "page 1" in s and "send_mail" in s, "the instances screen")
        # "/" focuses the filter: wait until its border shows it before typing (keys typed ahead of a
        # focus change go to the widget that had focus, as in any terminal UI)
        blurred = term.styled().splitlines()[1]
        term.keys("/")
        deadline = time.monotonic() + 20
        while term.styled().splitlines()[1] == blurred:
            assert time.monotonic() < deadline, "the filter never took focus"
            time.sleep(0.05)
        term.type("status:failed")
        term.wait(
            lambda s: "status:failed" in s.splitlines()[2] and "filter:" not in s.splitlines()[2], "the typed filter"
        )
        term.keys("Enter")
        term.wait(
            # the last error's column may be cut short ("smtp: conn"): its width follows the other columns
            lambda s: (
                "status:failed" in s
                and "smtp: conn" in s
                and "awaiting_signal" not in s
                and shows(s, {"5": (1, ["mail", "send_mail"])})
            ),
            "the filtered instances",
        )

        term.keys("Enter")
        term.wait(
            lambda s: "instance #5" in s and "History ·" in s and "failed" in s and "stop" in s, "the instance screen"
        )

        term.keys("?")
        term.wait(lambda s: "send a signal" in s, "the help")
        term.keys("Escape")
        term.wait(lambda s: "send a signal" not in s and "instance #5" in s, "help closed")
        term.keys("q")
        term.wait(lambda s: "EXITED=0" in s, "a clean exit")
    finally:
        term.close()


def test_bad_schema_name_is_one_line_and_exit_2(pg_dsn: str) -> None:
    durable = os.path.join(os.path.dirname(sys.executable), "durable")
    out = subprocess.run(
        [durable, "console", "--dsn", pg_dsn, "--schema", "1bad name"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "invalid schema name" in out.stderr
