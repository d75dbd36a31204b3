"""The one error hierarchy of Courier, mapped to HTTP statuses and protocol codes at the edge.

    CourierError
     +-- InvalidRequest      400  invalid_request
     +-- Unauthorized        401  unauthorized
     +-- Forbidden           403  forbidden
     +-- NotFound            404  not_found
     +-- Conflict            409  conflict
     +-- PayloadTooLarge     413  payload_too_large
     +-- RateLimited         429  rate_limited   (carries retry_after seconds)
     +-- Unavailable         503  unavailable

Use cases raise these; adapters translate third-party exceptions into them with ``raise ... from``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CourierError(Exception):
    """Base of every error a client may see. ``code`` is the protocol's snake_case error code."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidRequest(CourierError):
    status = 400
    code = "invalid_request"


class Unauthorized(CourierError):
    status = 401
    code = "unauthorized"


class Forbidden(CourierError):
    status = 403
    code = "forbidden"


class NotFound(CourierError):
    status = 404
    code = "not_found"


class Conflict(CourierError):
    status = 409
    code = "conflict"


class PayloadTooLarge(CourierError):
    status = 413
    code = "payload_too_large"


class RateLimited(CourierError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(CourierError):
    status = 503
    code = "unavailable"


_BY_CODE: dict[str, type[CourierError]] = {
    cls.code: cls for cls in (InvalidRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, Unavailable)
}


def from_body(status: int, body: Any) -> CourierError:
    """Rebuild the error another Courier service answered with (service-to-service HTTP)."""
    try:
        code = body["error"]["code"]
        message = body["error"]["message"]
    except (KeyError, TypeError):
        return Unavailable(f"upstream answered {status}")
    if code == RateLimited.code:
        return RateLimited(message, retry_after=1.0)
    return _BY_CODE.get(code, Unavailable)(message)
