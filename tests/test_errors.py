"""One error tree: every exception class defined in durable/ is a DurableError with a docstring, listed in
docs/errors.md; there is one Fenced class and every fencing is caught by it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import durable
from durable.errors import DurableError, Fenced

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "durable"
# exceptions of a framework's own kind: click prints OneLineError as the CLI's one `error:` line
NOT_DURABLE = {"durable.cli.OneLineError"}


def engine_modules() -> list[str]:
    names = ["durable"]
    for info in pkgutil.walk_packages([str(ENGINE)], prefix="durable."):
        module = importlib.import_module(info.name)
        if Path(inspect.getfile(module)).resolve().is_relative_to(ENGINE):
            names.append(info.name)
    return names


def exception_classes() -> dict[str, type[BaseException]]:
    found = {}
    for name in engine_modules():
        for obj in vars(importlib.import_module(name)).values():
            if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == name:
                found[f"{name}.{obj.__qualname__}"] = obj
    return found


def test_every_exception_is_a_documented_durable_error() -> None:
    page = (ROOT / "docs" / "errors.md").read_text()
    classes = exception_classes()
    assert "durable.errors.Fenced" in classes and "durable.streams.errors.StreamError" in classes
    for qualified, cls in classes.items():
        if qualified in NOT_DURABLE:
            continue
        assert issubclass(cls, DurableError), qualified
        assert cls.__doc__ and cls.__doc__.strip(), f"{qualified} has no docstring"
        assert cls.__name__ in page, f"{qualified} is not in docs/errors.md"


def test_there_is_one_fenced_class_and_it_catches_every_fencing() -> None:
    from durable.contrib.streams_client import FencedResponse
    from durable.streams.errors import FencedAppend

    named = [q for q, c in exception_classes().items() if c.__name__ == "Fenced"]
    assert named == ["durable.errors.Fenced"]
    assert durable.Fenced is Fenced and durable.streams.Fenced is Fenced
    claim = Fenced(7, 3, "complete")
    append = FencedAppend("stale producer epoch", 4)
    response = FencedResponse(403, "stale", None)
    for exc in (claim, append, response):
        assert isinstance(exc, Fenced) and isinstance(exc, DurableError)
    assert (claim.instance_id, claim.lease_token, claim.call, claim.current_epoch) == (7, 3, "complete", None)
    assert (append.status, append.current_epoch, append.headers) == (403, 4, {"Producer-Epoch": "4"})
    assert append.instance_id is None and str(append) == "stale producer epoch"
    assert response.current_epoch == 0 and str(response) == "403: stale"
