"""Every error the gateway raises on purpose descends from :class:`GatewayError`.

Each error carries a stable machine ``code`` and the HTTP ``status`` it maps to;
the HTTP layer turns any of them into ``{"error": {"code", "message", "details"}}``
in one place (``gateway.api.error_middleware``). Driver errors (asyncpg, sockets)
are translated into these at the store boundary.
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Root of the gateway's own errors."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: list[dict[str, Any]] = details or []
        #: Sent as Retry-After: when trying again may succeed.
        self.retry_after_s = retry_after_s

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class InvalidJSON(GatewayError):
    status, code = 400, "invalid_json"


class BadRequest(GatewayError):
    status, code = 400, "bad_request"


class Unauthorized(GatewayError):
    status, code = 401, "unauthorized"


class Forbidden(GatewayError):
    status, code = 403, "forbidden"


class NotFound(GatewayError):
    status, code = 404, "not_found"


class MethodNotAllowed(GatewayError):
    status, code = 405, "method_not_allowed"


class Conflict(GatewayError):
    status, code = 409, "conflict"


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"


class DeliveryNotRetryable(Conflict):
    code = "delivery_not_retryable"


class EventTypeExists(Conflict):
    code = "event_type_exists"


class PayloadTooLarge(GatewayError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(GatewayError):
    status, code = 415, "unsupported_media_type"


class ValidationError(GatewayError):
    status, code = 422, "validation_error"


class EndpointURLForbidden(GatewayError):
    status, code = 422, "endpoint_url_forbidden"


class LimitExceeded(GatewayError):
    """An app's quota (endpoints, devices per user, topics per device, event types) is
    used up."""

    status, code = 422, "limit_exceeded"


class RateLimited(GatewayError):
    """Too many requests (an app's ingest rate, or failed keys from one address)."""

    status, code = 429, "rate_limited"


class DatabaseUnavailable(GatewayError):
    status, code = 503, "database_unavailable"


class DispatcherStalled(GatewayError):
    status, code = 503, "dispatcher_stalled"


class ConfigError(GatewayError):
    """A setting is missing or malformed; raised before anything starts."""

    code = "config_error"
