"""The official Durable Streams conformance suite (npm ``@durable-streams/server-conformance-tests``)
against ``durable serve`` started as a real subprocess on a fresh schema.

Known failures are listed in docs/streams.md under "Known conformance failures" (``- `<test name>`:
reason``); any other failure fails this test. The published CLI (0.3.x) runs vitest with a filter that
vitest 4 does not match, so a vitest config beside the run points vitest at the packaged runner.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_streams_util import serving

DOCS = Path(__file__).resolve().parent.parent / "docs" / "streams.md"
PACKAGE = "@durable-streams/server-conformance-tests"
VITEST_CONFIG = """\
import { dirname } from "node:path"
const runner = process.argv.find((a) => a.endsWith("test-runner.js"))
export default {
  test: runner ? { dir: dirname(runner), include: ["test-runner.js"], exclude: [] } : {},
}
"""
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def known_failures() -> set[str]:
    text = DOCS.read_text("utf-8")
    section = text.split("## Known conformance failures", 1)[-1].split("\n## ", 1)[0]
    return set(re.findall(r"^- `([^`]+)`:", section, re.MULTILINE))


def test_official_conformance_suite(pg_dsn: str, tmp_path: Path) -> None:
    if shutil.which("npx") is None:
        pytest.fail("npx (Node.js) is required for the conformance suite")
    (tmp_path / "vitest.config.mjs").write_text(VITEST_CONFIG)
    with serving(pg_dsn, "--long-poll-timeout", "1.5") as server:
        run = subprocess.run(
            ["npx", "-y", PACKAGE, "--run", server.url], cwd=tmp_path, capture_output=True, text=True,
            timeout=600,
        )
    out = ANSI.sub("", run.stdout + run.stderr)
    summary = re.search(r"Tests\s+(?:(\d+) failed \| )?(\d+) passed(?: \| (\d+) skipped)? \((\d+)\)", out)
    assert summary, f"no vitest summary in the output:\n{out[-3000:]}"
    failed, passed = int(summary.group(1) or 0), int(summary.group(2))
    failing = set(re.findall(r"^\s*\u00d7\s+(.+?)(?:\s+\d+ms)?\s*$", out, re.MULTILINE))
    print(f"\nconformance: {passed} passed, {failed} failed, total {summary.group(4)}")
    unexplained = failing - known_failures()
    assert not unexplained, f"{len(unexplained)} unexplained failures: {sorted(unexplained)}\n{out[-5000:]}"
    assert passed >= 300, out[-3000:]
    assert len(failing) == failed
