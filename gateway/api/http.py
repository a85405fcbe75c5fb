"""HTTP plumbing every route shares: the error middleware (the one place a failure
becomes a status), reading and validating JSON bodies, paging, and rendering answers
through their models."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, TypeVar

import pydantic
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import appkeys, logs
from gateway.api.routing import Param, principal
from gateway.errors import (
    BadRequest,
    DatabaseUnavailable,
    GatewayError,
    InvalidJSON,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationError,
)
from gateway.jsonbody import parse_object, storable
from gateway.store.records import App, Page

log = logging.getLogger("gateway.api")

M = TypeVar("M", bound=pydantic.BaseModel)

DEFAULT_PAGE = 50
MAX_PAGE = 250
#: The query parameters of every listing.
PAGE = (Param("limit", "Page size, 1-250 (default 50).", {"type": "integer", "minimum": 1,
                                                            "maximum": MAX_PAGE}),
        Param("cursor", "next_cursor of the previous page."))


# --- errors: the one place a failure becomes an HTTP answer --------------------------

def error_response(error: GatewayError) -> web.Response:
    response = web.json_response(error.to_json(), status=error.status)
    if error.retry_after_s is not None:
        response.headers["Retry-After"] = str(error.retry_after_s)
    return response


#: Pages that answer errors as HTML themselves (gateway/dashboard/pages.py signed_in).
DASHBOARD_PREFIX = "/dashboard"

_HTTP_CODES = {
    400: BadRequest, 404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge,
}


def check_url_text(request: web.Request) -> None:
    """Path and query values reach SQL as text: refuse what PostgreSQL cannot hold."""
    for where, items in (("path", request.match_info.items()),
                         ("query", request.query.items())):
        for name, value in items:
            if not (storable(name) and storable(value)):
                raise ValidationError(
                    f"The {where} parameter {name!r} holds a NUL or invalid character.",
                    details=[{"path": name, "message": "invalid character"}])


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if not request.path.startswith(DASHBOARD_PREFIX):  # its pages check, and say, it
            check_url_text(request)
        return await handler(request)
    except GatewayError as exc:
        if isinstance(exc, DatabaseUnavailable):
            log.warning("%s %s: database unavailable", request.method,
                        logs.route_of(request))
        return error_response(exc)
    except web.RequestPayloadError:
        return error_response(BadRequest(
            "The request body could not be read: it was cut short or does not match its "
            "Content-Encoding."))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        cls = _HTTP_CODES.get(exc.status, BadRequest)
        message = {
            404: f"No route {request.method} {request.path}.",
            405: f"{request.method} is not allowed on {request.path}.",
            413: "The request body is larger than GATEWAY_MAX_PAYLOAD_BYTES.",
        }.get(exc.status, exc.reason)
        response = error_response(cls(message))
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("unhandled error in %s %s", request.method, logs.route_of(request))
        return error_response(
            GatewayError("The gateway hit an unexpected error; nothing was written.")
        )


# --- reading requests ------------------------------------------------------------------

def app_id(request: web.Request) -> str:
    """The app the caller's key (or user token) acts in."""
    found = principal(request).app_id
    assert found is not None
    return found


def acting_app(request: web.Request) -> App:
    """The app the caller acts in, with its limits."""
    found = principal(request).app
    assert found is not None
    return found


def acting_user(request: web.Request) -> str | None:
    """The user a user token is bound to; None for an app key (any user)."""
    who = principal(request)
    return who.user_id if who.kind == "user" else None


async def read_body(request: web.Request, limits: Mapping[str, int] | None = None,
                    ) -> tuple[bytes, dict[str, Any], dict[str, str]]:
    """The body as bytes, parsed object and raw member texts, after every check
    (``limits``: the longest JSON text each named member may have)."""
    limit = request.app[appkeys.SETTINGS].max_payload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    if request.content_type != "application/json":
        raise UnsupportedMediaType("Send the body as JSON with 'Content-Type: application/json'.")
    charset = request.charset
    if charset is not None and charset.lower() not in {"utf-8", "utf8"}:
        raise UnsupportedMediaType("JSON bodies must be UTF-8.")
    body = await request.read()
    if len(body) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJSON(f"The body is not valid UTF-8: {exc.reason} at byte {exc.start}.") \
            from None
    obj, raw = parse_object(text, limits)
    return body, obj, raw


def validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        details = [
            {"path": ".".join(str(p) for p in err["loc"]), "message": err["msg"],
             "type": err["type"]}
            for err in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        first = details[0]
        raise ValidationError(
            f"Invalid field '{first['path']}': {first['message']}." if first["path"]
            else f"Invalid body: {first['message']}.",
            details=details,
        ) from None


async def read(request: web.Request, model: type[M]) -> M:
    """The body, checked and validated with ``model``."""
    _, data, _ = await read_body(request)
    return validate(model, data)


async def read_optional(request: web.Request, model: type[M]) -> M:
    """Like :func:`read`, for a body that may be left out: then every field's default."""
    if not request.body_exists:
        return validate(model, {})
    return await read(request, model)


def page_args(request: web.Request) -> tuple[str | None, int]:
    raw_limit = request.query.get("limit")
    limit = DEFAULT_PAGE
    if raw_limit is not None:
        if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= MAX_PAGE:
            raise ValidationError(
                f"'limit' must be a whole number from 1 to {MAX_PAGE}.",
                details=[{"path": "limit", "message": "out of range"}],
            )
        limit = int(raw_limit)
    cursor = request.query.get("cursor") or None
    return cursor, limit


def choice(request: web.Request, name: str, allowed: tuple[str, ...], message: str,
           problem: str) -> str | None:
    """A query parameter that must be one of ``allowed`` (or absent)."""
    value = request.query.get(name) or None
    if value is not None and value not in allowed:
        raise ValidationError(message, details=[{"path": name, "message": problem}])
    return value


# --- answers ---------------------------------------------------------------------------

def answer(model: type[M], value: Any, status: int = 200, *,
           exclude_unset: bool = False) -> web.Response:
    """``value`` (a record, a dict or a model) rendered through its answer model."""
    shaped = model.model_validate(value)
    return web.json_response(shaped.model_dump(mode="json", by_alias=True,
                                                exclude_unset=exclude_unset), status=status)


def page_answer(model: type[M], page: Page[Any]) -> web.Response:
    """A page of records as ``{"data": [...], "next_cursor"}`` through a page model."""
    return answer(model, {"data": page.items, "next_cursor": page.next_cursor})
