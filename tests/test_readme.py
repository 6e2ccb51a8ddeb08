"""The README is executable: every ``sh`` and ``python`` block of README.md, then the shell lines of every
``examples/*.py`` docstring, run in order, verbatim, on a fresh database with a fresh HOME (the blocks see
only ``DURABLE_DSN``; the schema is the default one, as for a new user). A README that drifts from the code
fails here.

A block that cannot run here says so in an HTML comment right above it:

- ``<!-- readme-test: skip REASON -->``: not run (the reason is printed with the test's output);
- ``<!-- readme-test: run COMMAND (REASON) -->``: ``COMMAND`` runs instead (a reduced form: the README's
  install line is what CI itself does; an interactive console prints its screen once with ``--json``).

A ``print(...)`` in a Python block followed by ``# TEXT`` promises that TEXT appears in its output.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*$")
MARKER = re.compile(r"^\s*<!--\s*readme-test:\s*(?P<verb>skip|run)\s+(?P<rest>.*?)\s*-->\s*$")
RUN_REASON = re.compile(r"^(?P<command>.*?)\s*\((?P<reason>[^()]*)\)$")
PROMISE = re.compile(r"^\s*print\(.*\)\s*#\s*(?P<text>.+?)\s*$")


@dataclass
class Block:
    where: str  # file:line
    lang: str  # "sh" or "python"
    code: str
    skip: str | None = None  # the reason it is not run
    instead: str | None = None  # the command run in its place
    reason: str | None = None  # why the command runs instead

    def __str__(self) -> str:
        return f"{self.where} ({self.lang})"


def readme_blocks(path: Path) -> list[Block]:
    """The fenced ``sh``/``bash``/``python`` blocks of a Markdown file, with the marker above each."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        lang, start = m.group("lang"), i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        i = end + 1
        if lang not in ("sh", "bash", "python"):
            continue
        code = textwrap.dedent("\n".join(lines[start + 1 : end])) + "\n"
        block = Block(f"{path.name}:{start + 1}", "python" if lang == "python" else "sh", code)
        above = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(above)
        if marker is not None:
            if marker.group("verb") == "skip":
                block.skip = marker.group("rest")
            else:
                run = RUN_REASON.match(marker.group("rest"))
                assert run is not None, f"{block}: 'run COMMAND (REASON)' expected, got {above!r}"
                block.instead, block.reason = run.group("command"), run.group("reason")
        blocks.append(block)
    return blocks


def docstring_blocks(path: Path) -> list[Block]:
    """The shell lines of a module docstring: runs of lines indented by four spaces."""
    doc = ast.get_docstring(ast.parse(path.read_text()), clean=True) or ""
    blocks: list[Block] = []
    current: list[str] = []
    for line in [*doc.splitlines(), ""]:
        if line.startswith("    "):
            current.append(line[4:])
        elif current:
            blocks.append(Block(f"{path.relative_to(ROOT)} docstring", "sh", "\n".join(current) + "\n"))
            current = []
    return blocks


def all_blocks() -> list[Block]:
    blocks = readme_blocks(ROOT / "README.md")
    for example in sorted((ROOT / "examples").glob("*.py")):
        blocks += docstring_blocks(example)
    return blocks


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _admin(dsn: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def admin(dsn: str, statement: str) -> None:
    from .helpers import native_asyncio  # a plain asyncio loop (trio-asyncio's policy is global)

    native_asyncio()
    asyncio.run(_admin(dsn, statement))


@contextmanager
def fresh_database(pg_dsn: str) -> Iterator[str]:
    """A new, empty database on the test server: the default schema ``durable`` in it is a new user's."""
    name = f"t_readme_{uuid.uuid4().hex[:10]}"
    admin(pg_dsn, f"create database {name}")
    try:
        yield with_database(pg_dsn, name)
    finally:
        admin(pg_dsn, f"drop database if exists {name} with (force)")


def new_user_env(dsn: str, home: Path) -> dict[str, str]:
    """A fresh HOME, this virtual environment first on PATH, the database in DURABLE_DSN and nothing else
    of durable's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DURABLE_", "OTEL_", "XDG_"))}
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        DURABLE_DSN=dsn,
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        COLUMNS="120",
        VIRTUAL_ENV=str(BIN.parent),
    )
    return env


SHELL_PRELUDE = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true; wait' EXIT\n"


def run_block(block: Block, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if block.instead is not None:
        argv, stdin = ["bash", "-c", SHELL_PRELUDE + block.instead], None
    elif block.lang == "sh":
        argv, stdin = ["bash", "-c", SHELL_PRELUDE + block.code], None
    else:
        argv, stdin = [sys.executable, "-"], block.code
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, (
        f"{block} exited {proc.returncode}\n--- code\n{block.instead or block.code}\n--- stdout\n"
        f"{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    )
    assert "Traceback" not in proc.stderr, f"{block}\n{proc.stderr[-4000:]}"
    return proc


def test_the_blocks_are_found_and_every_exception_names_its_reason() -> None:
    blocks = all_blocks()
    langs = {b.lang for b in blocks}
    assert langs == {"sh", "python"}, langs
    assert any(b.where.startswith("examples/") for b in blocks)
    for b in blocks:
        if b.skip is not None:
            assert len(b.skip.split()) >= 3, f"{b}: a skip names its reason"
        if b.instead is not None:
            assert b.reason and len(b.reason.split()) >= 3, f"{b}: a replaced block names its reason"


def test_readme_runs_verbatim(pg_dsn: str, tmp_path: Path) -> None:
    skipped: list[str] = []
    with fresh_database(pg_dsn) as dsn:
        env = new_user_env(dsn, tmp_path / "home")
        for block in all_blocks():
            if block.skip is not None:
                skipped.append(f"{block}: {block.skip}")
                continue
            proc = run_block(block, env)
            if block.lang == "python" and block.instead is None:
                for line in block.code.splitlines():
                    promise = PROMISE.match(line)
                    if promise is not None:
                        assert promise.group("text") in proc.stdout, (str(block), promise.group("text"), proc.stdout)
    print("not run:", *skipped, sep="\n  ")


def test_after_the_demo_the_console_and_ls_show_its_data_with_no_flag(pg_dsn: str, tmp_path: Path) -> None:
    """Issue 19, item 1: the demo, the console and ls read the same (default) schema."""
    with fresh_database(pg_dsn) as dsn:
        env = new_user_env(dsn, tmp_path / "home")

        def durable(*args: str) -> subprocess.CompletedProcess[str]:
            proc = subprocess.run(
                ["durable", *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
            )
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
            return proc

        demo = durable("demo", "-n", "12")
        assert "Next: durable console " in demo.stdout and "--schema" not in demo.stdout.split("Next:")[1]
        queues = {q["queue"]: q for q in json.loads(durable("console", "--json").stdout)["queues"]}
        assert set(queues) == {"checkout", "shipping"}
        assert queues["checkout"]["done"] + queues["checkout"]["failed"] == 12
        listed = json.loads(durable("ls", "--machine", "Checkout", "--json").stdout)["items"]
        assert len(listed) == 12 and {r["status"] for r in listed} <= {"done", "failed"}
        story = json.loads(durable("show", str(listed[0]["id"]), "--json").stdout)
        assert story["history"][0]["event"] == "inserted" and story["history"][-1]["event"] in ("done", "stop")


@pytest.mark.parametrize("lang", ["python", "sh"])
def test_a_drifted_block_fails(pg_dsn: str, tmp_path: Path, lang: str) -> None:
    """The runner itself: a block that fails (a renamed option, an API that moved) fails the test."""
    code = "durable ls --no-such-option\n" if lang == "sh" else "import durable\ndurable.no_such_api()\n"
    with fresh_database(pg_dsn) as dsn, pytest.raises(AssertionError, match="exited"):
        run_block(Block("drifted", lang, code), new_user_env(dsn, tmp_path / "home"))
