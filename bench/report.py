"""The run's figures as a rich table, the issue's targets judged against them, and JSON."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

ONE_STEP_PEERS = ("pgqueuer", "procrastinate", "oban")


def _get(results: dict[str, Any], path: str) -> Any:
    node: Any = results
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) else None


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}{unit}" if abs(x) >= 100 else f"{x:,.2f}{unit}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _failure(node: Any) -> str | None:
    return node.get("error") if isinstance(node, dict) and "error" in node else None


def cost_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Per job (or per step): WAL bytes of insert + drain (server-wide), and CPU microseconds of the
    engine's process and of PostgreSQL (all backends) during the drain."""
    rows = []
    for label, path in (
        ("durable one-step, per job", "durable.one_step"),
        ("durable 5-step, per step", "durable.five_step"),
        ("pgqueuer, per job", "peers.pgqueuer"),
        ("procrastinate, per job", "peers.procrastinate"),
        ("oban, per job", "peers.oban"),
        ("dbos, per step", "peers.dbos"),
    ):
        node = _get(r, path)
        if not isinstance(node, dict) or "error" in node:
            continue
        units = node.get("steps") or node.get("jobs") or node.get("instances")
        if not units:
            continue
        wal = node.get("wal_bytes")
        cpu = node.get("cpu_s")
        if cpu is None and node.get("cpu_us_per_step") is not None:
            cpu = node["cpu_us_per_step"] * units / 1e6
        pg = node.get("pg_cpu_s")
        if pg is None and node.get("pg_cpu_us_per_step") is not None:
            pg = node["pg_cpu_us_per_step"] * units / 1e6
        rows.append(
            (
                label,
                _fmt(wal / units if wal else None),
                _fmt(cpu / units * 1e6 if cpu else None),
                _fmt(pg / units * 1e6 if pg else None),
            )
        )
    return rows


def figures(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows: measurement, engine/setting, figure, comparison with durable."""
    rows: list[tuple[str, str, str, str]] = []
    one = _num(_get(r, "durable.one_step.per_s"))
    five = _num(_get(r, "durable.five_step.per_s"))
    if _get(r, "durable.one_step") is not None:
        rows.append(
            (
                "one-step jobs/s",
                "durable",
                _fmt(one) if one else "failed",
                f"{_get(r, 'durable.one_step.instances') or _get(r, 'durable.one_step.error')} jobs",
            )
        )
    for peer in ONE_STEP_PEERS:
        node = _get(r, f"peers.{peer}")
        err = _failure(node)
        if node is None:
            continue
        if err:
            rows.append(("one-step jobs/s", peer, "not run", err[:100]))
        else:
            x = _num(node.get("per_s"))
            ratio = _ratio(one, x)
            rows.append(
                (
                    "one-step jobs/s",
                    f"{peer} {node.get('version', '')}",
                    _fmt(x),
                    f"durable = {ratio:.2f}x ({node.get('jobs')} jobs)" if ratio else "—",
                )
            )
    if _get(r, "durable.five_step") is not None:
        rows.append(
            (
                "5-step steps/s",
                "durable",
                _fmt(five) if five else "failed",
                f"{_get(r, 'durable.five_step.instances') or _get(r, 'durable.five_step.error')} inst.",
            )
        )
    node = _get(r, "peers.dbos")
    if node is not None:
        err = _failure(node)
        if err:
            rows.append(("5-step steps/s", "dbos", "not run", err[:100]))
        else:
            x = _num(node.get("per_s"))
            ratio = _ratio(five, x)
            rows.append(
                (
                    "5-step steps/s",
                    f"dbos {node.get('version', '')}",
                    _fmt(x),
                    f"durable = {ratio:.2f}x ({node.get('instances')} inst.)" if ratio else "—",
                )
            )
    for key, label in (
        ("in_process", "idle, same process"),
        ("cross_process", "idle, producer process"),
        ("under_load", "under load"),
    ):
        node = _get(r, f"durable.pickup.{key}")
        err = _failure(node)
        if node is None:
            continue
        if err:
            rows.append(("pickup p50 / p99 ms", label, "failed", err[:100]))
        else:
            extra = f"{node.get('n')} samples"
            if isinstance(node.get("insert"), dict):
                extra += f"; the insert itself p50 {_fmt(node['insert'].get('p50_ms'))} ms"
            if key == "under_load":
                extra += f" at {node.get('offered_per_s')}/s"
            rows.append(
                ("pickup p50 / p99 ms", label, f"{_fmt(node.get('p50_ms'))} / {_fmt(node.get('p99_ms'))}", extra)
            )
    node = _get(r, "durable.pickup.under_load_pgqueuer")
    if node is not None:
        err = _failure(node)
        mine = _get(r, "durable.pickup.under_load") or {}
        rows.append(
            (
                "pickup p50 / p99 ms",
                f"pgqueuer {node.get('version', '')}, same load",
                "failed" if err else f"{_fmt(node.get('p50_ms'))} / {_fmt(node.get('p99_ms'))}",
                (err or "")[:100]
                or f"{node.get('n')} samples at {node.get('offered_per_s')}/s; durable "
                f"{_fmt(mine.get('p50_ms'))} / {_fmt(mine.get('p99_ms'))}",
            )
        )
    small = _num(_get(r, "durable.picker.small.mean_ms"))
    large = _num(_get(r, "durable.picker.large.mean_ms"))
    for key, ms in (("small", small), ("large", large)):
        backlog = _get(r, f"durable.picker.{key}.backlog")
        if backlog is not None:
            rows.append(
                (
                    "pick ms (mean)",
                    f"{backlog:,} runnable, {_get(r, f'durable.picker.{key}.demand')}/pick",
                    _fmt(ms),
                    (f"{_ratio(ms, small):.2f}x the small backlog; " if key == "large" and small and ms else "")
                    + "p50 "
                    + _fmt(_get(r, f"durable.picker.{key}.p50_ms"))
                    + " ms, "
                    f"{_fmt(_get(r, f'durable.picker.{key}.async_commit_p50_ms'))} ms with "
                    "synchronous_commit off",
                )
            )
    busy = _get(r, "durable.picker.executing")
    if isinstance(busy, dict) and "ratio" in busy:
        rows.append(
            (
                "pick ms with executing rows",
                f"{busy['executing']:,} executing vs none, {busy['demand']}/pick",
                f"{_fmt(busy['busy_mean_ms'])} vs {_fmt(busy['none_mean_ms'])}",
                f"{busy['ratio']:.2f}x; forced generic plan {_fmt(busy['generic_busy_mean_ms'])} vs "
                f"{_fmt(busy['generic_none_mean_ms'])} ms ({busy['generic_ratio']:.2f}x)",
            )
        )
    named = _get(r, "durable.picker.values")
    if isinstance(named, dict) and "ratio" in named:
        rows.append(
            (
                "pick ms with named values",
                f"{named['backlog']:,} instances with a "
                f"{named['value_bytes'] // 1048576} MiB value vs none, {named['demand']}/pick",
                f"{_fmt(named['values_mean_ms'])} vs {_fmt(named['none_mean_ms'])}",
                f"{named['ratio']:.2f}x (p50 {named['ratio_p50']:.2f}x): a claim does not read values (pick + "
                f"reading them: {_fmt(named['hydrated_mean_ms'])} ms)",
            )
        )
    for point in _get(r, "scale.points") or []:
        rows.append(
            (
                "scale-out jobs/s",
                f"{point['workers']} worker process(es), one server",
                _fmt(point["per_s"]),
                f"PG {_fmt(point['pg_cpu_us_per_job'])} µs/job, workers {_fmt(point['worker_cpu_us_per_job'])} "
                f"µs/job, {_fmt(point['cores_used'])} cores busy, load {_fmt(point['loadavg'])}",
            )
        )
    for paper in _get(r, "scale.on_paper") or []:
        rows.append(
            (
                "scale-out jobs/s (on paper)",
                f"{paper['workers']} workers, each on its own machine",
                _fmt(paper["each_on_its_own_machine_per_s"]),
                f"primary bound {_fmt(paper['primary_bound_per_s'])}, needs "
                f"{_fmt(paper['primary_cores_needed'])} primary cores at the workers' rate",
            )
        )
    segments = _get(r, "sustained.segments") or []
    for seg in segments[:1] + segments[-1:] if len(segments) > 1 else segments:
        inst = seg.get("tables", {}).get("instances", {})
        rows.append(
            (
                "sustained jobs/s",
                f"segment {seg['segment']} of {len(segments)} ({_get(r, 'sustained.segment'):,} jobs each, one schema)",
                _fmt(seg["per_s"]),
                f"PG {_fmt(seg['pg_cpu_us_per_job'])} µs/job; instances: {inst.get('dead')} dead, "
                f"{_fmt((inst.get('heap_bytes') or 0) / 2**20)} MiB heap, "
                f"{_fmt((inst.get('index_bytes') or 0) / 2**20)} MiB indexes; load {_fmt(seg['loadavg'])}",
            )
        )
    loop = _get(r, "steploop")
    if isinstance(loop, dict) and "run_claim_us" in loop:
        rows.append(
            (
                "engine Python µs/step, no DB",
                "Claim.from_row + run_claim (+ task per step)",
                f"{loop['from_row_us'] + loop['run_claim_us']:.1f} "
                f"({loop['from_row_us'] + loop['run_claim_task_per_step_us']:.1f})",
                f"{loop['steps']} steps, CPU time",
            )
        )
    lim = _get(r, "pg_limit.commits_per_s") or {}
    for clients in ("1", "16"):
        x = _num(lim.get(clients))
        if x is not None:
            rows.append(
                (
                    "PG UPDATE commits/s",
                    f"{clients} client{'s' if clients != '1' else ''}",
                    _fmt(x),
                    f"durable one-step = {_ratio(one, x):.2f}x, 5-step = {_ratio(five, x):.2f}x"
                    if one and five
                    else "",
                )
            )
    idle = _get(r, "pg_limit.idle_commit")
    if isinstance(idle, dict) and idle.get("p50_ms") is not None:
        rows.append(
            (
                "PG single commit ms",
                "1 client, back to back / after a 10-50 ms gap (p50)",
                f"{_fmt(_get(r, 'pg_limit.commit_ms'))} / {_fmt(idle['p50_ms'])}",
                f"after a gap p99 {_fmt(idle.get('p99_ms'))} ms",
            )
        )
    for node in (_get(r, "durable.ceiling") or {}).values():
        x = _num(node.get("per_s")) if isinstance(node, dict) else None
        if x is not None:
            variant = ", async pick commit" if node.get("async_pick") else ""
            rows.append(
                (
                    "SQL ceiling jobs/s",
                    f"pick+complete, batch {node['batch']}, {node['loops']} loop(s){variant}",
                    _fmt(x),
                    f"durable one-step = {_ratio(one, x):.0%} of it" if one else "",
                )
            )
    return rows


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets: met or not, and by how much."""
    out: list[dict[str, Any]] = []
    one = _num(_get(r, "durable.one_step.per_s"))
    five = _num(_get(r, "durable.five_step.per_s"))
    peers = {p: _num(_get(r, f"peers.{p}.per_s")) for p in ONE_STEP_PEERS}
    ran = {p: x for p, x in peers.items() if x}
    if one and ran:
        best = max(ran, key=lambda p: ran[p])
        ratio = one / ran[best]
        out.append(
            {
                "target": "one-step jobs/s >= 2x the fastest peer",
                "met": ratio >= 2,
                "measured": f"{ratio:.2f}x {best} ({one:,.0f} vs {ran[best]:,.0f})",
                "gap": None if ratio >= 2 else f"needs {2 * ran[best]:,.0f} jobs/s, {2 * ran[best] / one:.2f}x today's",
            }
        )
    duel = _get(r, "duel.median_ratio")
    if isinstance(duel, int | float):
        rounds = _get(r, "duel.rounds") or []
        spread = ", ".join(f"{x['ratio']:.2f}" for x in rounds)
        out.append(
            {
                "target": "one-step >= 2x pgqueuer, back to back (median of rounds)",
                "met": duel >= 2,
                "measured": f"{duel:.2f}x (rounds: {spread})",
                "gap": None if duel >= 2 else f"{2 / duel:.2f}x short",
            }
        )
    kept = _get(r, "sustained.last_over_first")
    if isinstance(kept, int | float):
        out.append(
            {
                "target": "sustained: the last segment's drain within 15 % of the first's",
                "met": kept >= 0.85,
                "measured": f"{kept:.2f}x the first",
                "gap": None if kept >= 0.85 else f"{0.85 - kept:.2f} short",
            }
        )
    dbos = _num(_get(r, "peers.dbos.per_s"))
    if five and dbos:
        ratio = five / dbos
        out.append(
            {
                "target": "5-step steps/s >= 2x DBOS",
                "met": ratio >= 2,
                "measured": f"{ratio:.1f}x ({five:,.0f} vs {dbos:,.0f})",
                "gap": None,
            }
        )
    single = _num(_get(r, "pg_limit.commits_per_s.1"))
    if five and single:
        ratio = five / single
        out.append(
            {
                "target": "5-step steps/s >= single-client commit limit",
                "met": ratio >= 1,
                "measured": f"{ratio:.2f}x ({five:,.0f} vs {single:,.0f})",
                "gap": None if ratio >= 1 else f"{single - five:,.0f} steps/s short",
            }
        )
    small = _num(_get(r, "durable.picker.small.mean_ms"))
    large = _num(_get(r, "durable.picker.large.mean_ms"))
    if small and large:
        ratio = large / small
        backlog = _get(r, "durable.picker.large.backlog")
        out.append(
            {
                "target": f"pick at {backlog:,} rows within 2x of 1k",
                "met": ratio <= 2,
                "measured": f"{ratio:.2f}x ({large:.2f} vs {small:.2f} ms)",
                "gap": None if ratio <= 2 else f"{ratio / 2:.2f}x over",
            }
        )
    busy = _get(r, "durable.picker.executing")
    if isinstance(busy, dict) and busy.get("ratio") is not None:
        worst = max(busy["ratio"], busy.get("generic_ratio") or 0)
        out.append(
            {
                "target": f"pick with {busy['executing']:,} executing rows within 1.5x of none",
                "met": worst <= 1.5,
                "measured": f"{busy['ratio']:.2f}x (forced generic plan {busy['generic_ratio']:.2f}x)",
                "gap": None if worst <= 1.5 else f"{worst / 1.5:.2f}x over",
            }
        )
    for key, label in (("in_process", "in-process"), ("cross_process", "cross-process")):
        p50 = _num(_get(r, f"durable.pickup.{key}.p50_ms"))
        if p50 is not None:
            out.append(
                {
                    "target": f"pickup p50 < 5 ms {label}",
                    "met": p50 < 5,
                    "measured": f"{p50:.2f} ms",
                    "gap": None if p50 < 5 else f"{p50 - 5:.1f} ms over",
                }
            )
    out += latency_targets(r)
    return out


def latency_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 20's latency targets, as ratios to the same run's single-client commit (``pg_limit``)."""
    out: list[dict[str, Any]] = []
    commit = _num(_get(r, "pg_limit.commit_ms"))

    def bound(target: str, value: float | None, limit: float, unit: str = "x", of: str = "") -> None:
        if value is None:
            return
        out.append(
            {
                "target": target,
                "met": value <= limit,
                "measured": f"{value:.2f}{unit}{of}",
                "gap": None if value <= limit else f"{value / limit:.2f}x over",
            }
        )

    if commit:
        ins = _num(_get(r, "durable.pickup.in_process.insert.p50_ms"))
        bound(
            "insert p50 <= 2.5x one single-client commit",
            ins / commit if ins else None,
            2.5,
            of=f" ({ins} ms vs {commit} ms)",
        )
        for key, label, limit in (("in_process", "in process", 3.0), ("cross_process", "across processes", 5.0)):
            p50 = _num(_get(r, f"durable.pickup.{key}.p50_ms"))
            bound(
                f"pickup p50 {label} <= {limit:g}x one commit", p50 / commit if p50 else None, limit, of=f" ({p50} ms)"
            )
    for key, label in (("in_process", "in process"), ("cross_process", "across processes")):
        p50, p99 = _num(_get(r, f"durable.pickup.{key}.p50_ms")), _num(_get(r, f"durable.pickup.{key}.p99_ms"))
        bound(f"pickup p99 <= 4x p50, {label}", p99 / p50 if p50 and p99 else None, 4.0)
    p50, p99 = _num(_get(r, "durable.pickup.under_load.p50_ms")), _num(_get(r, "durable.pickup.under_load.p99_ms"))
    bound("under load (50% of the drain rate): p50 <= 5 ms", p50, 5.0, " ms")
    bound("under load (50% of the drain rate): p99 <= 25 ms", p99, 25.0, " ms")
    return out


def _under_load_fraction(key: str) -> float:
    """The offered load of a ``durable.pickup`` under-load key, as a fraction (``under_load``: the plan's;
    ``under_load_spaced``, the plan's batches ten times less often: sorted last)."""
    tail = key.rsplit("_", 1)[-1]
    return int(tail) / 100 if tail.isdigit() else 9.0


def sweep_rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    """Pickup under load, durable and pgqueuer per offered load (issue 20, item 2): p50 / p99 ms, the
    box's CPU busy share and the cores of each process while the producer ran."""
    pickup = _get(r, "durable.pickup") or {}
    main = _get(r, "plan.load_fraction") or 0.5
    keys = [k for k in pickup if k.startswith("under_load") and "pgqueuer" not in k]
    rows: list[tuple[str, ...]] = []
    for key in sorted(keys, key=lambda k: _under_load_fraction(k) if k != "under_load" else main):
        mine = pickup.get(key) or {}
        peer = pickup.get(key.replace("under_load", "under_load_pgqueuer")) or {}
        fraction = main if key == "under_load" else _under_load_fraction(key)
        label = f"{fraction:.0%}" if fraction < 9 else f"{main:.0%}'s batches / 100 ms"
        cpu, pcpu = mine.get("cpu") or {}, peer.get("cpu") or {}

        def pct(x: Any) -> str:
            return "—" if x is None else f"{x:.0%}"

        ours = [_num(cpu.get(k)) for k in ("postgres_cores", "worker_cores", "producer_cores")]
        busy, nproc = _num(cpu.get("box_busy")), _num(cpu.get("nproc"))
        known = [x for x in ours if x is not None]
        others = busy * nproc - sum(known) if busy is not None and nproc and len(known) == 3 else None

        rows.append(
            (
                label,
                f"{mine.get('offered_per_s', '—')} ({mine.get('achieved_per_s', '—')})",
                f"{_fmt(mine.get('p50_ms'))} / {_fmt(mine.get('p99_ms'))}" if "error" not in mine else "failed",
                f"{_fmt(peer.get('p50_ms'))} / {_fmt(peer.get('p99_ms'))}" if peer and "error" not in peer else "—",
                f"{pct(cpu.get('box_busy'))} / {pct(pcpu.get('box_busy'))}",
                " + ".join(_fmt(x) for x in ours) + f" (others {_fmt(others)})",
                f"{_fmt(pcpu.get('postgres_cores'))} + {_fmt(pcpu.get('process_cores'))}",
                " / ".join(_fmt(_num(v)) for v in (cpu.get("run_queue_wait") or {}).values()) or "—",
            )
        )
    return rows


def phase_rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    """durable's under-load latency in phases (p50 / p99 ms per row) and its batch sizes, per offered load."""
    pickup = _get(r, "durable.pickup") or {}
    rows: list[tuple[str, ...]] = []
    for key, node in pickup.items():
        ph = node.get("phases") if isinstance(node, dict) and key.startswith("under_load") else None
        if not ph:
            continue
        cells = [key]
        for name in ("insert", "to_pick", "pick", "to_step", "total"):
            x = ph["phases_ms"][name]
            cells.append(f"{_fmt(x['p50'])} / {_fmt(x['p99'])}")
        cells.append(f"{ph['pick_sizes']['p50']} / {ph['flush_sizes']['p50']}")
        rows.append(tuple(cells))
    return rows


def render(r: dict[str, Any], console: Console) -> None:
    m, pg = r.get("machine", {}), r.get("postgres", {})
    load = m.get("loadavg_at_start") or [None]
    table = Table(
        title=f"durable bench ({'quick' if _get(r, 'plan.quick') else 'full'}) — "
        f"{m.get('nproc')} cores, {m.get('memory_gib')} GiB, "
        f"{str(pg.get('version', '')).split(' on ')[0]}, load average at start "
        f"{_fmt(load[0])}"
    )
    for col in ("measurement", "engine / setting", "figure", "compared"):
        table.add_column(col)
    for row in figures(r):
        table.add_row(*row)
    console.print(table)
    goals = Table(title="targets (issues 7 and 20)")
    for col in ("target", "met", "measured", "gap"):
        goals.add_column(col)
    for t in r.get("targets", []):
        goals.add_row(t["target"], "[green]yes[/green]" if t["met"] else "[red]no[/red]", t["measured"], t["gap"] or "")
    console.print(goals)
    sweep = sweep_rows(r)
    if sweep:
        console.print(
            _table(
                "pickup under load: durable vs pgqueuer per offered load (issue 20, item 2)",
                (
                    "of drain",
                    "rows/s offered (achieved)",
                    "durable p50 / p99 ms",
                    "pgqueuer p50 / p99 ms",
                    "box CPU busy (durable / pgqueuer)",
                    "durable cores: PG + worker + producer (the box's other processes)",
                    "pgqueuer cores: PG + its process",
                    "durable run-queue wait s/s: PG / worker / producer",
                ),
                sweep,
            )
        )
    ph = phase_rows(r)
    if ph:
        console.print(
            _table(
                "durable under load, per row p50 / p99 ms: stamp -> insert commit -> pick sent -> pick back -> step",
                ("stage", "insert", "commit -> pick sent", "pick", "pick -> step", "total", "pick / flush size p50"),
                ph,
            )
        )
    costs = cost_rows(r)
    if costs:
        console.print(
            _table(
                "cost per job / step",
                ("workload", "WAL bytes (insert + drain)", "engine CPU µs (drain)", "PostgreSQL CPU µs (drain)"),
                costs,
            )
        )
    prof = r.get("profile")
    if isinstance(prof, dict) and "self" in prof:
        top = Table(title=f"py-spy: durable worker, self time ({prof['samples']} samples)")
        top.add_column("share")
        top.add_column("function")
        for item in prof["self"][:12]:
            top.add_row(f"{item['share']:.1%}", item["function"])
        console.print(top)


def _table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    """A rich table of ``rows`` under ``columns``."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for cells in rows:
        table.add_row(*cells)
    return table
