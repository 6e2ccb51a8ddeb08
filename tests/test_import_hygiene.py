"""Layering, checked in a fresh interpreter: the engine loads only the OpenTelemetry API, never the SDK,
the web stack or the console; the ``durable.otel`` package loads the SDK only when asked to configure it."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = (
    "opentelemetry.sdk",
    "opentelemetry.exporter",
    "grpc",
    "textual",
    "starlette",
    "hypercorn",
    "durable.otel",
    "durable.console",
    "durable.sim",
    "durable.bench",
)


def loaded_after(code: str) -> set[str]:
    """Top-level-or-dotted module names in sys.modules after running ``code`` in a new interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.splitlines()[-1]))


def heavy(modules: set[str], prefixes: tuple[str, ...] = HEAVY) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


def test_import_durable_loads_only_the_api() -> None:
    modules = loaded_after("import durable, durable.tracing, durable.runtime, durable.cli")
    assert "opentelemetry.trace" in modules and "durable.tracing" in modules  # the probe sees imports
    assert heavy(modules) == []


def test_durable_help_loads_no_subcommand_stack() -> None:
    modules = loaded_after("from durable.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert "click" in modules
    assert heavy(modules) == []


def test_otel_loads_the_sdk_only_when_configuring() -> None:
    modules = loaded_after("import durable.otel, durable.otel.cli")
    assert "durable.otel.cli" in modules
    assert heavy(modules, ("opentelemetry.sdk", "opentelemetry.exporter", "grpc")) == []
    configured = loaded_after(
        "import durable.otel as otel\notel.configure('probe', otlp='grpc', endpoint='127.0.0.1:9')\notel.shutdown()"
    )
    assert "opentelemetry.sdk.trace" in configured
    assert "opentelemetry.exporter.otlp.proto.grpc.trace_exporter" in configured
    assert "opentelemetry.exporter.otlp.proto.http" not in configured  # only the protocol asked for


# what `import durable` may not load: the engine's runtime stack (the console, the CLI's --help and the core
# values need none of it)
ENGINE = ("trio", "trio_asyncio", "asyncpg", "pydantic")


def test_import_durable_is_lazy_and_the_core_values_are_trio_free() -> None:
    for code in (
        "import durable",
        "import durable.sql",
        "import durable.errors, durable.limits, durable.outcomes, durable.filters, durable.records, durable.workers",
        "import durable\ndurable.InstanceFilter, durable.DurableError, durable.Next, durable.MAX_DELAY",
    ):
        modules = loaded_after(code)
        assert "durable" in modules
        assert heavy(modules, ENGINE) == [], code
    # a name is imported on first use
    assert {"trio", "durable.runtime.runtime"} <= loaded_after("import durable\ndurable.Runtime")


def test_every_exported_name_resolves_to_its_definition() -> None:
    import importlib

    import durable

    assert set(durable._EXPORTS) == set(durable.__all__)
    for name, module in durable._EXPORTS.items():
        assert getattr(durable, name) is getattr(importlib.import_module(f"durable.{module}"), name), name
    assert callable(durable.migrate)  # the function, though durable.migrate is also a module's name


def test_the_console_never_loads_trio_asyncio() -> None:
    """The console runs on Textual's plain asyncio loop: trio-asyncio's global event loop policy must not be
    installed in its process (it was, through ``import durable``, and the console reset it by hand)."""
    modules = loaded_after(
        "import durable.console.app, durable.console.cli, durable.console.web, durable.console.data\n"
        "from durable.cli import main\n"
        "try:\n    main(['console', '--json', '--dsn', 'postgresql://u@127.0.0.1:9/x', '--timeout', '1'])\n"
        "except SystemExit:\n    pass"
    )
    assert "durable.console.source" in modules
    assert heavy(modules, ("trio_asyncio", "pydantic")) == []
