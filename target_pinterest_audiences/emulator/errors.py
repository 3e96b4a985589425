"""Pinterest's error answers: ApiError, raised deep in a handler and turned into one reply."""

from __future__ import annotations

import re
from typing import Any

_FIELD_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,39}")

MSG_AUTH_FAILED = "Authentication failed."
MSG_NOT_PERMITTED = "You are not permitted to access that resource."
MSG_UNDER_REVIEW = (
    "We are reviewing your account. You can't create or edit ads and audiences until the review "
    "is complete."
)
MSG_DISAPPROVED = "Your ad account has been disapproved. You can't access ads and audiences."
MSG_TOO_LARGE = "Request entity too large"
MSG_RATE_LIMIT = "You have exceeded your rate limit. Try again later."


class ApiError(Exception):
    """An error answer; raised deep inside a handler so one place turns it into a response."""

    def __init__(
        self, status: int, code: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


def _bad(message: str) -> ApiError:
    """400 code 1, Pinterest's 'invalid parameters' answer."""
    return ApiError(400, 1, message)


def _auth_failed() -> ApiError:
    return ApiError(401, 2, MSG_AUTH_FAILED)


def _safe_name(name: str) -> str:
    """A client-sent field name fit to echo: never echo something that may be a record value."""
    return name if _FIELD_NAME_RE.fullmatch(name) else "(field name not shown)"
