"""The code stays ruff- and mypy-clean (durable/ is mypy --strict clean) and keeps its import contracts
(import-linter, configured in pyproject.toml: the layers of durable/, no import circles, the trio-free core,
the one database boundary). All three tools are in the test extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_is_clean() -> None:
    out = run("ruff", "check", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_is_kept() -> None:
    """The tree is formatted by ``ruff format`` (issue 16): a file that is not fails here."""
    out = run("ruff", "format", "--check", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_is_clean() -> None:
    out = run("mypy", "durable", "otel", "console", "sim", "bench")
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_strict_is_clean_on_the_engine() -> None:
    """durable/ (the installed engine package: client, runtime, core values, durable/_pg.py, serve, streams)
    passes ``mypy --strict``; the root folders installed as durable.console/sim/otel/bench are checked above."""
    out = run("mypy", "--strict", "durable")
    assert out.returncode == 0, out.stdout + out.stderr


def test_import_contracts_are_kept() -> None:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Contracts: 5 kept, 0 broken." in out.stdout, out.stdout
