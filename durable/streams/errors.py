"""Errors of the stream store; each carries the HTTP status the protocol gives it.

    StreamError                  base (status, message, extra response headers)
    ├── BadRequest     400       malformed headers, body or offset
    ├── Fenced         403       a stale producer epoch (a zombie writer)
    ├── StreamNotFound 404       no such stream (or it expired)
    ├── Conflict       409       config, content type, sequence, closed stream, soft-deleted path
    ├── RequestTimeout 408       the request body did not arrive in time (a trickling client)
    ├── StreamGone     410       the stream was deleted while forks still read it
    └── TooLarge       413       the append exceeds the server's limit

    SubscriptionError            the reserved subscription API (protocol 6-7): status + error code,
                                 answered as ``{"error": {"code": ..., "message": ...}}``
"""

from __future__ import annotations


class StreamError(Exception):
    status = 500

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(StreamError):
    status = 400


class Fenced(StreamError):
    """A stale producer epoch: the writer was superseded (``current_epoch`` is the server's)."""

    status = 403

    def __init__(self, message: str, current_epoch: int) -> None:
        super().__init__(message, {"Producer-Epoch": str(current_epoch)})
        self.current_epoch = current_epoch


class StreamNotFound(StreamError):
    status = 404


class Conflict(StreamError):
    status = 409


class RequestTimeout(StreamError):
    status = 408


class StreamGone(StreamError):
    status = 410


class TooLarge(StreamError):
    status = 413


class SubscriptionError(Exception):
    """An error of the subscription API: HTTP ``status``, protocol ``code`` (e.g. ``FENCED``), a message
    naming the problem and extra fields of the error object (e.g. ``current_holder``)."""

    def __init__(self, status: int, code: str, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, object]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


def invalid(message: str) -> SubscriptionError:
    """400 INVALID_REQUEST."""
    return SubscriptionError(400, "INVALID_REQUEST", message)


def fenced(message: str) -> SubscriptionError:
    """409 FENCED: a stale generation or wake id (protocol 7.3)."""
    return SubscriptionError(409, "FENCED", message)
