"""Errors of the stream store; each carries the HTTP status the protocol gives it. All are
:class:`~durable.DurableError` subclasses (docs/errors.md).

    StreamError                  base (status, message, extra response headers)
    ├── BadRequest     400       malformed headers, body or offset
    ├── FencedAppend   403       a stale producer epoch (a zombie writer), or a step's append after its claim
    │                            lost the lease; also a :class:`durable.Fenced`
    ├── StreamNotFound 404       no such stream (or it expired)
    ├── Conflict       409       config, content type, sequence, closed stream, soft-deleted path
    ├── RequestTimeout 408       the request body did not arrive in time (a trickling client)
    ├── StreamGone     410       the stream was deleted while forks still read it
    └── TooLarge       413       the append exceeds the server's limit

    SubscriptionError            the reserved subscription API (protocol 6-7): status + error code,
                                 answered as ``{"error": {"code": ..., "message": ...}}``
"""

from __future__ import annotations

from ..errors import DurableError, Fenced

__all__ = [
    "BadRequest",
    "Conflict",
    "Fenced",
    "FencedAppend",
    "RequestTimeout",
    "StreamError",
    "StreamGone",
    "StreamNotFound",
    "SubscriptionError",
    "TooLarge",
    "fenced",
    "invalid",
]


class StreamError(DurableError):
    """The stream store refused a request: ``status`` is the HTTP status the protocol gives it, ``message``
    the reason, ``headers`` extra response headers."""

    status = 500

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        DurableError.__init__(self, message)  # not super(): FencedAppend's next base is Fenced
        self.message = message
        self.headers = headers or {}


class BadRequest(StreamError):
    """400: malformed headers, body or offset."""

    status = 400


class FencedAppend(StreamError, Fenced):
    """403: an append with a stale producer epoch (the writer was superseded; ``current_epoch`` is the
    server's), or a step's append after its claim lost the lease (``instance_id``, ``lease_token``).
    Nothing was appended. Catch it as :class:`durable.Fenced`."""

    status = 403

    def __init__(
        self, message: str, current_epoch: int, *, instance_id: int | None = None, lease_token: int | None = None
    ) -> None:
        StreamError.__init__(self, message, {"Producer-Epoch": str(current_epoch)})
        self.current_epoch = current_epoch
        self.instance_id = instance_id
        self.lease_token = lease_token
        self.call = "append"


class StreamNotFound(StreamError):
    """404: no such stream (or it expired)."""

    status = 404


class Conflict(StreamError):
    """409: a config, content type or sequence conflict, a closed stream, a soft-deleted path."""

    status = 409


class RequestTimeout(StreamError):
    """408: the request body did not arrive in time (a trickling client)."""

    status = 408


class StreamGone(StreamError):
    """410: the stream was deleted while forks still read it."""

    status = 410


class TooLarge(StreamError):
    """413: the append exceeds the server's limit."""

    status = 413


class SubscriptionError(DurableError):
    """An error of the subscription API: HTTP ``status``, protocol ``code`` (e.g. ``FENCED``), a message
    naming the problem and extra fields of the error object (e.g. ``current_holder``)."""

    def __init__(self, status: int, code: str, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, object]:
        """The JSON error object the protocol answers with."""
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


def invalid(message: str) -> SubscriptionError:
    """400 INVALID_REQUEST."""
    return SubscriptionError(400, "INVALID_REQUEST", message)


def fenced(message: str) -> SubscriptionError:
    """409 FENCED: a stale generation or wake id (protocol 7.3)."""
    return SubscriptionError(409, "FENCED", message)
