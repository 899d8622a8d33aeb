"""The one error type of the server: every failure answers ``{"error": "<message>"}``.

Raised anywhere in request handling with the HTTP status it deserves; the app's exception
handlers turn it (and Starlette's own HTTP errors) into that body, so no client ever sees
FastAPI's default 422 ``{"detail": ...}`` shape.
"""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)
