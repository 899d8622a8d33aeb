"""The one error type of the server: every failure answers ``{"error": "<message>"}``.

Raised anywhere in request handling with the HTTP status it deserves; the app's exception
handlers turn it (and Starlette's own HTTP errors) into that body, so no client ever sees
FastAPI's default 422 ``{"detail": ...}`` shape. gRPC maps the same status to its codes.
"""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        """Seconds, sent as Retry-After (503 for overload and timeouts)."""


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)
