"""The explicit pipeline over HTTP, for workers that are not Python (durable/claims.py does the work):

    POST /queues/{queue}/claims          {"limit", "lease", "machine", "step"}       -> {"claims": [...]}
    POST /instances                      {"machine", "step", "state", "queue", "unique_key", ...}
                                                               -> 201 {"id", "created": true}
                                                                  200 {"id", "created": false} (key taken)
    POST /instances/{id}/transition      {"lease_token", "step", "state", "delay", "consume"}
    POST /instances/{id}/complete        {"lease_token", "result", "consume"}
    POST /instances/{id}/retry           {"lease_token", "delay", "error"}
    POST /instances/{id}/fail            {"lease_token", "reason"}
    POST /instances/{id}/release         {"lease_token"}
    POST /instances/{id}/extend          {"lease_token", "lease"}
                                                               -> 200 {"id", "status"} (extend: "lease_token",
                                                                  "cancel_requested")
    GET  /openapi.json                   the OpenAPI 3.1 document of the engine's endpoints

Every call is fenced by its ``lease_token``: a call whose claim is no longer held answers ``409`` with
``{"error": ..., "fenced": true}`` and changes nothing. Bad input answers ``400`` (``413`` past a size
limit, ``404`` for an unknown instance) as ``{"error": message}``; bodies are JSON objects whose unknown
fields are refused (a typo is not silently ignored). Writes need the server's bearer token like every
other write (durable/serve/auth.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..claims import Claim, Pipeline
from ..client import Database
from ..errors import (
    DefinitionError,
    DurableError,
    Fenced,
    InvalidArgument,
    NoSuchInstance,
    OutcomeError,
    OutcomeRejected,
    StateError,
    UniqueKeyTaken,
    ValueTooLarge,
)
from ..streams.errors import BadRequest, StreamError, TooLarge
from ..streams.text import load_json
from .guard import problem
from .instances import instance_id
from .streams import Settings

ACTIONS = ("transition", "complete", "retry", "fail", "release", "extend")
# each action's fields (besides lease_token) and whether they are required
FIELDS: dict[str, dict[str, bool]] = {
    "transition": {"step": True, "state": False, "delay": False, "consume": False},
    "complete": {"result": False, "consume": False},
    "retry": {"delay": False, "error": False},
    "fail": {"reason": True},
    "release": {},
    "extend": {"lease": False},
}
CLAIM_FIELDS = ("limit", "lease", "machine", "step")
INSERT_FIELDS = (
    "machine",
    "step",
    "state",
    "queue",
    "unique_key",
    "unique_scope",
    "priority",
    "partition_key",
    "schedule_in",
    "version",
)


class Problem(DurableError):
    """A request the claims API refuses, answered as ``{"error": message, **extra}`` with HTTP ``status``."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def fields(body: Any, allowed: tuple[str, ...] | list[str], what: str) -> dict[str, Any]:
    """The body as a JSON object with only ``allowed`` fields (400 otherwise)."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise Problem(400, f"{what}: the body must be a JSON object, not {type(body).__name__}")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise Problem(
            400, f"{what}: unknown field(s) {', '.join(map(repr, unknown))} (known: {', '.join(allowed) or 'none'})"
        )
    return body


def typed(body: dict[str, Any], name: str, kinds: tuple[type, ...], what: str, default: Any = None) -> Any:
    """Field ``name`` of the body, of one of ``kinds`` (a bool is not a number), or ``default`` if absent/null."""
    value = body.get(name)
    if value is None:
        return default
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise Problem(400, f"{what}: {name} must be {names}, not {type(value).__name__} {value!r}"[:400])
    return value


class ClaimEndpoints:
    """The handlers of the routes above, on one Database's explicit pipeline."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.pipeline: Pipeline = db.claims

    async def _json(self, request: Request) -> Any:
        """The body as JSON (None when empty), at most ``max_append_bytes``; 400 for what is not JSON or
        cannot be stored (NUL, a lone surrogate, nesting too deep, NaN)."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= self.settings.max_append_bytes:
                chunks.append(chunk)
        if size > self.settings.max_append_bytes:
            raise TooLarge(f"request body above {self.settings.max_append_bytes} bytes")
        body = b"".join(chunks)
        try:
            return load_json(body) if body.strip() else None
        except ValueError as exc:
            raise BadRequest(str(exc)) from None

    async def _answer(self, request: Request, work: Callable[[], Awaitable[Response]]) -> Response:
        path = request.url.path
        try:
            return await work()
        except Problem as exc:
            return JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status)
        except StreamError as exc:
            return problem(path, exc.status, exc.message, exc.headers)
        except Fenced as exc:
            return JSONResponse({"error": str(exc), "fenced": True}, status_code=409)
        except NoSuchInstance as exc:
            return problem(path, 404, str(exc))
        except ValueTooLarge as exc:
            return problem(path, 413, str(exc))
        except OutcomeRejected as exc:  # the database refused it for what it holds (an occupied unique key)
            return problem(path, 409, str(exc))
        except (DefinitionError, StateError, InvalidArgument, OutcomeError, TypeError, ValueError) as exc:
            return problem(path, 400, str(exc))

    # -- POST /queues/{queue}/claims ----------------------------------------------------------------
    async def claim(self, request: Request) -> Response:
        """POST /queues/{queue}/claims: claim due instances of the queue for the caller."""

        async def work() -> Response:
            body = fields(await self._json(request), CLAIM_FIELDS, "claim")
            queue = request.path_params["queue"]
            claims = await self.pipeline.claim(
                queue,
                typed(body, "limit", (int,), "claim", 10),
                typed(body, "lease", (int, float), "claim", 60.0),
                typed(body, "machine", (str,), "claim"),
                typed(body, "step", (str,), "claim"),
            )
            return JSONResponse({"claims": [c.to_json() for c in claims]})

        return await self._answer(request, work)

    # -- POST /instances/{id}/<action> --------------------------------------------------------------
    def action(self, name: str) -> Callable[[Request], Awaitable[Response]]:
        """The endpoint of POST /instances/{id}/``name``: a claim's call, fenced by its lease token."""
        allowed = ["lease_token", *FIELDS[name]]

        async def endpoint(request: Request) -> Response:
            async def work() -> Response:
                iid = instance_id(request)
                body = fields(await self._json(request), allowed, name)
                token = typed(body, "lease_token", (int,), name)
                if token is None:
                    raise Problem(400, f"{name}: lease_token is required (the claim's, from POST /queues/.../claims)")
                for field, required in FIELDS[name].items():
                    if required and body.get(field) is None:
                        raise Problem(400, f"{name}: {field} is required")
                consume = typed(body, "consume", (list,), name)
                claim = await self.pipeline.adopt(iid, token, consume)
                return await self._run(name, claim, body, consume)

            return await self._answer(request, work)

        endpoint.__name__ = name
        return endpoint

    async def _run(self, name: str, claim: Claim, body: dict[str, Any], consume: list[Any] | None) -> Response:
        if name == "transition":
            status = await claim.transition(
                typed(body, "step", (str,), name),
                body.get("state"),
                delay=typed(body, "delay", (int, float), name),
                consume=consume,
            )
        elif name == "complete":
            status = await claim.complete(body.get("result"), consume=consume)
        elif name == "retry":
            status = await claim.retry(
                typed(body, "delay", (int, float), name, 0.0), typed(body, "error", (str,), name)
            )
        elif name == "fail":
            status = await claim.fail(typed(body, "reason", (str,), name))
        elif name == "release":
            await claim.release()
            status = "runnable"
        else:
            await claim.extend(typed(body, "lease", (int, float), name))
            return JSONResponse(
                {"id": claim.id, "lease_token": claim.lease_token, "cancel_requested": claim.cancel_requested}
            )
        return JSONResponse({"id": claim.id, "status": status})

    # -- POST /instances ----------------------------------------------------------------------------
    async def insert(self, request: Request) -> Response:
        """POST /instances: insert one instance (a unique key as business id)."""

        async def work() -> Response:
            body = fields(await self._json(request), INSERT_FIELDS, "insert")
            machine = typed(body, "machine", (str,), "insert")
            step = typed(body, "step", (str,), "insert")
            if machine is None or step is None:
                raise Problem(400, "insert: machine and step are required (the server knows no machine classes)")
            key = typed(body, "unique_key", (str,), "insert")
            scope = typed(body, "unique_scope", (list,), "insert")
            try:
                iid = await self.db.insert(
                    machine,
                    body.get("state"),
                    step=step,
                    queue=typed(body, "queue", (str,), "insert"),
                    priority=typed(body, "priority", (int,), "insert"),
                    partition_key=typed(body, "partition_key", (str,), "insert"),
                    unique_key=key,
                    unique_scope=scope,
                    schedule_in=typed(body, "schedule_in", (int, float), "insert"),
                    version=typed(body, "version", (int,), "insert"),
                    on_conflict="raise" if key else "none",
                )
            except UniqueKeyTaken as exc:  # the business id is taken: its holder, nothing inserted
                if exc.holder_id is None:
                    raise Problem(409, str(exc)) from None
                return JSONResponse({"id": exc.holder_id, "created": False}, status_code=200)
            return JSONResponse({"id": iid, "created": True}, status_code=201)

        return await self._answer(request, work)
