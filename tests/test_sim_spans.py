"""`durable sim --spans`: span ids are drawn from the seed, so a run's traces are reproducible and part of
the operation log's hash. (In a subprocess: the SDK's tracer provider is global to a process.)"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def test_span_ids_come_from_the_seed(pg_dsn: str) -> None:
    program = textwrap.dedent(f"""
        import json
        from durable.sim.core import SimConfig
        from durable.sim.harness import simulate
        from durable.sim.plan import parse_kinds
        ALL = tuple(parse_kinds("all"))
        runs = [simulate(SimConfig(seed=s, faults=ALL, instances=6, spans=True), dsn={pg_dsn!r})
                for s in (11, 11, 12)]
        print(json.dumps([{{"ok": r.ok, "hash": r.log_hash,
                            "spans": [l for l in r.log if l.startswith("span ")]}} for r in runs]))
    """)
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first, again, other = json.loads(out.stdout.splitlines()[-1])
    assert first["ok"] and again["ok"] and other["ok"]
    assert any(line.startswith("span step ") for line in first["spans"]), first["spans"][:5]
    assert first["spans"] == again["spans"] and first["hash"] == again["hash"]
    traces = {line.split(" trace=")[1] for line in first["spans"]}
    assert traces.isdisjoint({line.split(" trace=")[1] for line in other["spans"]})
