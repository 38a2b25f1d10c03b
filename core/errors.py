"""One error type for the whole product, so that every surface (HTTP, CLI) shows the same shape:
``{"error": {"code": "...", "message": "..."}}``.
"""

from __future__ import annotations

from typing import Any


class HazardError(Exception):
    """A failure the caller can act on. ``status`` is the HTTP status the API answers with."""

    status: int = 400
    code: str = "bad_request"

    def __init__(
        self, message: str, *, code: str | None = None, status: int | None = None, details: Any = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return {"error": body}


class NotFound(HazardError):
    status, code = 404, "not_found"


class Conflict(HazardError):
    status, code = 409, "conflict"


class Invalid(HazardError):
    status, code = 422, "invalid"


class Unauthorized(HazardError):
    status, code = 401, "unauthorized"


class Forbidden(HazardError):
    status, code = 403, "forbidden"


class TooLarge(HazardError):
    status, code = 413, "too_large"


class UnsupportedMedia(HazardError):
    status, code = 415, "unsupported_media_type"
