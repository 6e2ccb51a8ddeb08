"""The names `import durable` exports are pinned: adding or removing one is a decision, made here."""

from __future__ import annotations

import durable

EXPORTED = [
    "MAX_DELAY", "MAX_KEY_BYTES", "MAX_VALUE_BYTES", "UNCHANGED", "Await", "Cancel", "Child", "ChildInfo", "Claim",
    "Clock", "Context", "Database", "DatabaseClock", "DatabaseUnavailable", "DefinitionError", "Done", "DurableError",
    "Event", "Fenced", "Insert", "Instance", "InstanceCancelled", "InstanceFailed", "InstanceFilter",
    "InvalidArgument", "Machine", "Next", "NoSuchInstance", "NotDeliverable", "OutcomeError", "OutcomeRejected",
    "Registry", "Retry", "Runtime", "Schedule", "SchemaError", "Signal", "Spawn", "State", "StateError", "Stop",
    "TreeTooLarge", "UniqueKeyTaken", "UnknownMachine", "UnknownStep", "ValueExists", "ValueRef", "ValueTooLarge",
    "VirtualClock", "connect", "job", "migrate", "migrated_version", "step",
]


def test_all_is_pinned() -> None:
    assert sorted(durable.__all__) == sorted(EXPORTED)
    assert len(set(durable.__all__)) == len(durable.__all__)


def test_every_exported_name_resolves_and_is_documented() -> None:
    for name in durable.__all__:
        value = getattr(durable, name)
        if callable(value) and not name.isupper():
            assert (value.__doc__ or "").strip(), f"durable.{name} has no docstring"
