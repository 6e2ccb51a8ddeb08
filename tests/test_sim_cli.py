"""``durable sim`` end to end: the report, usage errors, a failing run's file and its shrinking."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from durable.cli import main


def sim(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["sim", *args])
    return result.exit_code, result.output


def test_report_of_a_clean_run(pg_dsn: str) -> None:
    code, out = sim("--seed", "3", "--instances", "4", "--dsn", pg_dsn)
    assert code == 0, out
    for needle in (
        "instances",
        "steps run",
        "re-executions",
        "faults injected",
        "fenced commits",
        "virtual time",
        "real time",
        "terminal_after_heal",
        "money_conserved",
        "log sha256",
        "reproduce: durable sim --seed 3 --workload mixed --instances 4 --workers 3 --faults all",
    ):
        assert needle in out, needle
    assert "FAIL" not in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--faults", "crash,bogus"], "unknown fault kind 'bogus'"),
        (["--processes"], "--processes needs --mode chaos"),
        (["--workload", "nope"], "Invalid value for '--workload'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    code, out = sim(*args)
    assert code == 2
    assert message in out
    assert "Traceback" not in out


def test_failing_run_writes_its_file_and_shrinks(pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out = sim(
        "--plant",
        "unscoped_consume",
        "--workload",
        "checkout",
        "--seed",
        "6",
        "--faults",
        "crash,step_error",
        "--dsn",
        pg_dsn,
    )
    assert code == 1, out
    data = json.loads((tmp_path / "sim-6.json").read_text())
    assert "signals_accounted" in data["violated"]  # (a vanished signal may also leave its checkout waiting)
    assert data["plan"] and data["operation_log"] and data["last_events"]
    assert data["command"].startswith("durable sim --seed 6 --workload checkout")

    code, out = sim("--shrink", str(tmp_path / "sim-6.json"), "--dsn", pg_dsn)
    assert code == 0, out
    assert "minimal fault plan for seed 6" in out
    shrunk = json.loads((tmp_path / "sim-6-min.json").read_text())
    assert shrunk["plan"] == []  # the bug needs no fault: any note signal vanishes


def test_several_seeds_and_json(pg_dsn: str, tmp_path: Path) -> None:
    out_file = tmp_path / "runs.json"
    code, out = sim("--seed", "10", "--seeds", "2", "--instances", "3", "--json", str(out_file), "--dsn", pg_dsn)
    assert code == 0, out
    runs = json.loads(out_file.read_text())
    assert [r["seed"] for r in runs] == [10, 11]
    assert all(r["ok"] for r in runs)
    assert runs[0]["log_hash"] != runs[1]["log_hash"]
    assert "10..11: 2 passed, 0 failed" in out


def test_chaos_mode_runs_in_real_time(pg_dsn: str) -> None:
    code, out = sim("--mode", "chaos", "--seed", "2", "--instances", "3", "--duration", "40", "--dsn", pg_dsn)
    assert code == 0, out
    assert "the interleaving is not reproducible" in out
    assert "log sha256" not in out


def test_worker_processes_are_killed_and_the_run_still_converges(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--processes: real OS workers, SIGKILL / SIGSTOP / backend kills from the seed's plan. Every instance
    ends terminal, every check holds, and no worker process dies on its own (it did, twice, before the
    engine handled dropped connections: see test_sim_engine_bugs.py). The workers' log folder is removed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the run makes its workers' folder
    code, out = sim(
        "--mode",
        "chaos",
        "--processes",
        "--seed",
        "4",
        "--instances",
        "4",
        "--workers",
        "2",
        "--duration",
        "40",
        "--faults",
        "crash,zombie,conn",
        "--dsn",
        pg_dsn,
    )
    assert code == 0, out
    assert "--processes" in out and "not reproducible" in out
    assert "FAIL" not in out
    assert not list(tmp_path.glob("durable-sim-*")), "the workers' folder was left behind"
