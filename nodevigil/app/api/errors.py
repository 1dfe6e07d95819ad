"""The API's one error shape, ``{"error": message, ...}``, and the exception routes raise."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    """A JSON error body ``{"error": message, ...}``."""
    return web.json_response({"error": message, **extra}, status=status)


class ApiError(Exception):
    """Raised by a route: answered as ``{"error": message}`` with ``status``.

    400: the request does not match the API's document (a wrong type, a missing field, a bad
    format); 404: what it names does not exist; 409: it conflicts with the current state;
    422: it is well formed but cannot be applied (an end before its start, an unknown service).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
