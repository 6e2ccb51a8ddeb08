"""The OpenAPI 3.1 document of ``durable serve``'s engine endpoints (``GET /openapi.json``): the explicit
pipeline (durable/serve/claims.py), signals and an instance's history (durable/serve/instances.py).
Written by hand, next to the handlers it describes; tests/test_serve_claims.py validates it with
``openapi-spec-validator`` and checks that every route of the app is in it. The Durable Streams protocol
(every other path) has its own specification and is not repeated here."""

from __future__ import annotations

from typing import Any

from .claims import ACTIONS, FIELDS

JSON = "application/json"
ANY: dict[str, Any] = {}  # any JSON value
TOKEN = {
    "type": "integer",
    "minimum": 1,
    "maximum": 2**63 - 1,
    "description": "the claim's lease_token (from POST /queues/{queue}/claims)",
}
SECONDS = {"type": "number", "minimum": 0, "description": "seconds"}
SIGNAL_IDS = {
    "type": "array",
    "items": {"type": "integer"},
    "maxItems": 1000,
    "description": "ids of inbox signals this outcome consumes (default: none; others stay)",
}

PROPERTIES: dict[str, dict[str, Any]] = {
    "step": {"type": "string", "minLength": 1, "description": "the step to run next"},
    "state": {**ANY, "description": "the new state (absent or null: the stored state is kept)"},
    "delay": SECONDS,
    "consume": SIGNAL_IDS,
    "result": {**ANY, "description": "the instance's result"},
    "error": {"type": "string", "description": "recorded as last_error"},
    "reason": {"type": "string", "description": "why it failed (last_error)"},
    "lease": {"type": "number", "exclusiveMinimum": 0, "description": "seconds the lease holds from now"},
}
SUMMARIES = {
    "transition": "Commit the next step (and state) and end the claim: the instance is runnable at that step.",
    "complete": "End the instance done with a result.",
    "retry": "Run the same step again after a delay (attempt + 1).",
    "fail": "End the instance failed.",
    "release": "Give the claim back unrun (attempt unchanged).",
    "extend": "Heartbeat: extend the claim's lease.",
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}


ERRORS = {
    "400": _error("bad input (the message names the problem)"),
    "401": {"description": "a write without a valid bearer token (servers started with --token)"},
    "413": _error("a body or value above its size limit"),
    "503": _error("the database cannot be reached"),
}


def _action(name: str) -> dict[str, Any]:
    props = {"lease_token": TOKEN, **{f: PROPERTIES[f] for f in FIELDS[name]}}
    required = ["lease_token", *(f for f, req in FIELDS[name].items() if req)]
    ok = {"$ref": "#/components/schemas/Extended"} if name == "extend" else {"$ref": "#/components/schemas/Status"}
    return {
        "post": {
            "operationId": name,
            "summary": SUMMARIES[name],
            "tags": ["claims"],
            "parameters": [{"$ref": "#/components/parameters/InstanceId"}],
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {
                        "schema": {
                            "type": "object",
                            "properties": props,
                            "required": required,
                            "additionalProperties": False,
                        }
                    }
                },
            },
            "responses": {
                "200": {"description": "committed", "content": {JSON: {"schema": ok}}},
                "404": _error("no such instance"),
                "409": _error(
                    "fenced: the claim is no longer held (nothing changed), or the database refused the "
                    "outcome (an occupied unique key)"
                ),
                **ERRORS,
            },
        }
    }


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh dict each call)."""
    paths: dict[str, Any] = {
        "/queues/{queue}/claims": {
            "post": {
                "operationId": "claim",
                "summary": "Claim up to `limit` runnable instances of the queue for `lease` seconds.",
                "tags": ["claims"],
                "parameters": [{"name": "queue", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": {
                    "required": False,
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
                                    "lease": {"type": "number", "exclusiveMinimum": 0, "default": 60},
                                    "machine": {"type": "string", "description": "only instances of this machine"},
                                    "step": {"type": "string", "description": "only instances at this step"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "the claims (none when nothing is runnable)",
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["claims"],
                                    "properties": {
                                        "claims": {"type": "array", "items": {"$ref": "#/components/schemas/Claim"}}
                                    },
                                }
                            }
                        },
                    },
                    **ERRORS,
                },
            }
        },
        "/instances": {
            "post": {
                "operationId": "insert",
                "summary": "Insert an instance; with a unique_key (a business id) at most one holds it.",
                "tags": ["instances"],
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["machine", "step"],
                                "additionalProperties": False,
                                "properties": {
                                    "machine": {"type": "string", "minLength": 1},
                                    "step": {"type": "string", "minLength": 1, "description": "the first step"},
                                    "state": ANY,
                                    "queue": {"type": "string", "default": "default"},
                                    "unique_key": {"type": "string", "description": "a business id, e.g. order-1"},
                                    "unique_scope": {"type": "array", "items": {"type": "string"}},
                                    "priority": {"type": "integer"},
                                    "partition_key": {"type": "string"},
                                    "schedule_in": SECONDS,
                                    "version": {"type": "integer", "minimum": 1},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": {
                        "description": "inserted",
                        "content": {JSON: {"schema": {"$ref": "#/components/schemas/Inserted"}}},
                    },
                    "200": {
                        "description": "the unique_key is held by an instance: its id, nothing inserted",
                        "content": {JSON: {"schema": {"$ref": "#/components/schemas/Inserted"}}},
                    },
                    "409": _error("the unique key kept changing hands"),
                    **ERRORS,
                },
            }
        },
        **{f"/instances/{{id}}/{name}": _action(name) for name in ACTIONS},
        "/instances/{id}/signals/{name}": {
            "post": {
                "operationId": "signal",
                "summary": "Deliver a durable signal (the body is its JSON payload; Idempotency-Key: its dedup key).",
                "tags": ["instances"],
                "parameters": [
                    {"$ref": "#/components/parameters/InstanceId"},
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"}},
                ],
                "requestBody": {"required": False, "content": {JSON: {"schema": ANY}}},
                "responses": {
                    "201": {"description": "stored", "content": {JSON: {"schema": {"type": "object"}}}},
                    "200": {
                        "description": "a duplicate of an earlier dedup key",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    },
                    "404": _error("no such instance"),
                    "409": _error("the instance has ended"),
                    **ERRORS,
                },
            }
        },
        "/instances/{id}/history": {
            "get": {
                "operationId": "history",
                "summary": "The instance's history as a read-only JSON stream (Durable Streams reads: offset, live).",
                "tags": ["instances"],
                "parameters": [
                    {"$ref": "#/components/parameters/InstanceId"},
                    {"name": "offset", "in": "query", "required": False, "schema": {"type": "string"}},
                    {
                        "name": "live",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["long-poll", "sse"]},
                    },
                ],
                "responses": {
                    "200": {"description": "history rows", "content": {JSON: {"schema": {"type": "array"}}}},
                    "204": {"description": "a long-poll that saw nothing new"},
                    "404": {"description": "no such instance"},
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "durable serve: the engine's endpoints",
            "version": "1",
            "description": "The explicit pipeline (claim, then transition / complete / retry / fail / "
            "release / extend, each fenced by the claim's lease token), inserts, signals "
            "and history. Writes need `Authorization: Bearer <token>` when the server "
            "has tokens. Durable Streams paths follow their own protocol.",
        },
        "paths": paths,
        "components": {
            "parameters": {
                "InstanceId": {
                    "name": "id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 1},
                }
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {"type": "string"},
                        "fenced": {"type": "boolean", "description": "true: the claim is no longer held"},
                    },
                },
                "Status": {
                    "type": "object",
                    "required": ["id", "status"],
                    "properties": {
                        "id": {"type": "integer"},
                        "status": {
                            "type": "string",
                            "enum": ["runnable", "awaiting_signal", "awaiting_children", "done", "failed", "cancelled"],
                        },
                    },
                },
                "Extended": {
                    "type": "object",
                    "required": ["id", "lease_token", "cancel_requested"],
                    "properties": {
                        "id": {"type": "integer"},
                        "lease_token": {"type": "integer"},
                        "cancel_requested": {"type": "boolean"},
                    },
                },
                "Inserted": {
                    "type": "object",
                    "required": ["id", "created"],
                    "properties": {"id": {"type": "integer"}, "created": {"type": "boolean"}},
                },
                "Signal": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "name": {"type": "string"},
                        "payload": ANY,
                        "dedup_key": {"type": ["string", "null"]},
                    },
                },
                "Claim": {
                    "type": "object",
                    "required": ["id", "machine", "step", "state", "attempt", "inbox", "lease_token"],
                    "properties": {
                        "id": {"type": "integer"},
                        "machine": {"type": "string"},
                        "version": {"type": "integer"},
                        "step": {"type": "string"},
                        "state": ANY,
                        "attempt": {"type": "integer"},
                        "queue": {"type": "string"},
                        "priority": {"type": "integer"},
                        "partition_key": {"type": ["string", "null"]},
                        "parent_id": {"type": ["integer", "null"]},
                        "awaits": {"type": ["string", "null"]},
                        "timed_out": {"type": "boolean"},
                        "cancel_requested": {"type": "boolean"},
                        "lease_token": {"type": "integer"},
                        "inbox": {"type": "array", "items": {"$ref": "#/components/schemas/Signal"}},
                        "children": {"type": "array", "items": {"type": "object"}},
                    },
                },
            },
        },
        "security": [{}, {"bearer": []}],
    }
