"""Packaging: the root folders console/, sim/, otel/ and bench/ install under the ``durable`` namespace
(``durable.console``...), never as top-level packages that would collide with other distributions."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = ("console", "sim", "otel", "bench")


def setuptools_config() -> dict[str, object]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        config: dict[str, object] = tomllib.load(f)["tool"]["setuptools"]
    return config


def test_every_package_folder_is_listed_under_the_durable_namespace() -> None:
    config = setuptools_config()
    package_dir: dict[str, str] = config["package-dir"]  # type: ignore[assignment]
    assert package_dir == {"durable": "durable", **{f"durable.{name}": name for name in SUBPACKAGES}}
    folders = {}
    for top, folder in package_dir.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder).parts
            folders[".".join((top, *rel))] = init.parent
    # a subpackage inside a mapped folder (durable/sim would be one) must not shadow a mapping
    assert not any((ROOT / "durable" / name).exists() for name in SUBPACKAGES)
    assert sorted(config["packages"]) == sorted(folders)  # type: ignore[call-overload]


def test_installed_names_are_namespaced(tmp_path: Path) -> None:
    """Outside the repository (no folder on sys.path can stand in), the installed distribution provides
    ``durable.sim``, ``durable.console``, ``durable.otel``, ``durable.bench`` and no top-level ``sim``..."""
    probe = (
        "import importlib.util, json\n"
        "import durable.sim, durable.console, durable.otel, durable.bench\n"
        f"print(json.dumps({{n: importlib.util.find_spec(n) is not None for n in {list(SUBPACKAGES)!r}}}))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == dict.fromkeys(SUBPACKAGES, False)


def test_every_package_says_what_it_owns() -> None:
    """A newcomer reading top-down meets a docstring at each package folder (docs/architecture.md)."""
    config = setuptools_config()
    package_dir: dict[str, str] = config["package-dir"]  # type: ignore[assignment]
    missing = []
    for folder in package_dir.values():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            doc = ast.get_docstring(ast.parse(init.read_text("utf-8")))
            if not doc or len(doc) < 40:
                missing.append(str(init.relative_to(ROOT)))
    assert missing == []
