"""The names `import durable` exports are pinned: adding or removing one is a decision, made here."""

from __future__ import annotations

import durable

EXPORTED = [
    "MAX_DELAY",
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "UNCHANGED",
    "Await",
    "Cancel",
    "Child",
    "ChildInfo",
    "Claim",
    "Clock",
    "Context",
    "Database",
    "DatabaseClock",
    "DatabaseUnavailable",
    "DefinitionError",
    "Done",
    "DurableError",
    "Event",
    "Fenced",
    "Insert",
    "Instance",
    "InstanceCancelled",
    "InstanceFailed",
    "InstanceFilter",
    "InvalidArgument",
    "Machine",
    "Next",
    "NoSuchInstance",
    "NotDeliverable",
    "OutcomeError",
    "OutcomeRejected",
    "Registry",
    "Retry",
    "Runtime",
    "Schedule",
    "SchemaError",
    "Signal",
    "Spawn",
    "State",
    "StateError",
    "Stop",
    "TreeTooLarge",
    "UniqueKeyTaken",
    "UnknownMachine",
    "UnknownStep",
    "ValueExists",
    "ValueRef",
    "ValueTooLarge",
    "VirtualClock",
    "connect",
    "job",
    "migrate",
    "migrated_version",
    "step",
]


def test_all_is_pinned() -> None:
    assert sorted(durable.__all__) == sorted(EXPORTED)
    assert len(set(durable.__all__)) == len(durable.__all__)


def test_every_exported_name_resolves_and_is_documented() -> None:
    for name in durable.__all__:
        value = getattr(durable, name)
        if callable(value) and not name.isupper():
            assert (value.__doc__ or "").strip(), f"durable.{name} has no docstring"


# every module of durable/ is documented, but for the generated statement names (each statement's text and
# its header comment are in durable/sql/*.sql; StatementNames has one docstring for them all)
UNDOCUMENTED = ("sql/statements.py",)


def test_every_public_definition_in_durable_has_a_docstring() -> None:
    """Every module of durable/, and every public class, function and method in it (at module level or in a
    class: not starting with ``_``; a property's setter shares its getter's), has a docstring."""
    import ast
    from pathlib import Path

    root = Path(durable.__file__).parent
    paths = sorted(root.rglob("*.py"))
    assert len(paths) > 50  # the walk found durable/
    missing = []
    for path in paths:
        if path.relative_to(root).as_posix() in UNDOCUMENTED:
            continue
        tree = ast.parse(path.read_text("utf-8"))

        def walk(nodes: list[ast.stmt], prefix: str, where: Path = path) -> None:
            for node in nodes:
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    setter = any(isinstance(d, ast.Attribute) and d.attr == "setter" for d in node.decorator_list)
                    if node.name.startswith("_") or setter:
                        continue
                    if not ast.get_docstring(node):
                        missing.append(f"{where.relative_to(root.parent)}:{node.lineno} {prefix}{node.name}")
                    if isinstance(node, ast.ClassDef):
                        walk(node.body, f"{prefix}{node.name}.")

        if not ast.get_docstring(tree):
            missing.append(f"{path.relative_to(root.parent)}: module")
        walk(tree.body, "")
    assert not missing, "no docstring: " + ", ".join(missing)
