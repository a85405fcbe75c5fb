"""The HTTP API: routes, the JSON error middleware (the one place errors become
statuses), authentication, and the JSON shapes of every resource."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import pydantic
from aiohttp import web

from adapters.webhook import resolve_forbidden
from gateway import credentials, keys, logs, usertokens
from gateway.auth import Principal
from gateway.errors import (
    BadRequest,
    DatabaseUnavailable,
    DispatcherStalled,
    EndpointURLForbidden,
    Forbidden,
    GatewayError,
    InvalidJSON,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationError,
)
from gateway.jsonbody import check_depth, parse_object
from gateway.metrics import METRICS
from gateway.routing import Auth, Handler, Param, Route
from gateway.schemas import (
    APNsCredentials,
    AppCreate,
    AppCreated,
    AppPage,
    AttemptList,
    Delivery,
    DeliveryPage,
    Device,
    DevicePage,
    DeviceRegister,
    DeviceTopics,
    Endpoint,
    EndpointCreate,
    EndpointCreated,
    EndpointPage,
    EndpointPatch,
    EventAccepted,
    EventCreate,
    EventPage,
    EventWithDeliveries,
    FCMCredentials,
    Health,
    MaskedCredentials,
    PushCredentials,
    Ready,
    RotatedSecret,
    SandboxPushes,
    Secret,
    UserToken,
    UserTokenCreate,
)
from gateway.store import EventDraft, Page

log = logging.getLogger("gateway.api")

M = TypeVar("M", bound=pydantic.BaseModel)

DEFAULT_PAGE = 50
MAX_PAGE = 250
MAX_IDEMPOTENCY_KEY = 255


# --- errors: the one place a failure becomes an HTTP answer --------------------------

def error_response(error: GatewayError) -> web.Response:
    return web.json_response(error.to_json(), status=error.status)


_HTTP_CODES = {
    400: BadRequest, 404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge,
}


def _storable_text(value: str) -> bool:
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_url_text(request: web.Request) -> None:
    """Path and query values reach SQL as text: refuse what PostgreSQL cannot hold."""
    for where, items in (("path", request.match_info.items()),
                         ("query", request.query.items())):
        for name, value in items:
            if not (_storable_text(name) and _storable_text(value)):
                raise ValidationError(
                    f"The {where} parameter {name!r} holds a NUL or invalid character.",
                    details=[{"path": name, "message": "invalid character"}])


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        check_url_text(request)
        return await handler(request)
    except GatewayError as exc:
        if isinstance(exc, DatabaseUnavailable):
            log.warning("%s %s: database unavailable", request.method,
                        logs.route_of(request))
        return error_response(exc)
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


# --- request helpers -----------------------------------------------------------------

PRINCIPAL = web.RequestKey("principal", Principal)


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


async def authenticate(request: web.Request) -> Principal:
    found = await request.app[keys.AUTH].authenticate(request.headers.get("Authorization"))
    request[PRINCIPAL] = found
    logs.annotate(request, app=found.app_id)
    return found


def _scoped(kinds: tuple[str, ...], refusal: str) -> Callable[[Handler], Handler]:
    """Authenticate, then let only these kinds of credential through (403 otherwise)."""
    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapped(request: web.Request) -> web.StreamResponse:
            if (await authenticate(request)).kind not in kinds:
                raise Forbidden(refusal)
            return await handler(request)
        return wrapped
    return decorate


#: Only an app key; it acts inside its own app.
app_scope = _scoped(("app",), "This route takes an app API key, not the operator key.")
#: Only the operator key.
admin_scope = _scoped(("admin",), "This route takes the operator key (GATEWAY_ADMIN_KEY).")
#: An app key, or a user token acting on its own user's devices only.
device_scope = _scoped(("app", "user"), "This route takes an app API key or a user token.")


def own_app_scope(handler: Handler) -> Handler:
    """The operator key, or the key of the app named in the path."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        who = await authenticate(request)
        target = request.match_info["app_id"]
        if who.kind == "user" or (who.kind == "app" and who.app_id != target):
            raise Forbidden("Only the operator key or this app's own key may do this.")
        if who.kind == "admin":
            await request.app[keys.STORE].get_app(target)  # 404 for an unknown app
        return await handler(request)
    return functools.update_wrapper(wrapped, handler)


def app_id(request: web.Request) -> str:
    found = principal(request).app_id
    assert found is not None
    return found


async def read_body(request: web.Request) -> tuple[bytes, dict[str, Any], dict[str, str]]:
    """The body as bytes, parsed object and raw member texts, after every check."""
    limit = request.app[keys.SETTINGS].max_payload_bytes
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
    obj, raw = parse_object(text)
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


def page_json(page: Page, render: Callable[[asyncpg.Record], dict[str, Any]]) -> dict[str, Any]:
    return {"data": [render(r) for r in page.rows], "next_cursor": page.next_cursor}


def iso(value: datetime | None) -> str | None:
    if value is None or value.year >= 9999:  # 'infinity' parks a delivery
        return None
    return value.isoformat().replace("+00:00", "Z")


# --- resource shapes -----------------------------------------------------------------

def app_json(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "created_at": iso(row["created_at"])}


def endpoint_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"], "url": row["url"], "description": row["description"],
        "event_types": row["event_types"], "status": row["status"],
        "disabled_reason": row["disabled_reason"], "disabled_at": iso(row["disabled_at"]),
        "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"]),
    }


def event_json(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": row["id"], "type": row["type"], "created_at": iso(row["created_at"]),
            "payload": json.loads(row["payload"])}


def delivery_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"], "event_id": row["event_id"], "endpoint_id": row["endpoint_id"],
        "kind": row["kind"], "status": row["status"], "attempt_count": row["attempt_count"],
        "device_id": row["device_id"],
        # While a dispatcher holds it, next_attempt_at is its lease, not a schedule.
        "in_flight": row["lease_id"] is not None and row["status"] == "pending",
        "next_attempt_at": iso(row["next_attempt_at"])
        if row["status"] == "pending" and row["lease_id"] is None else None,
        "last_attempt_at": iso(row["last_attempt_at"]), "last_error": row["last_error"],
        "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"]),
    }


def attempt_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"], "attempted_at": iso(row["attempted_at"]),
        "duration_ms": row["duration_ms"], "outcome": row["outcome"],
        "status_code": row["status_code"], "response_snippet": row["response_snippet"],
        "error": row["error"],
    }


# --- health --------------------------------------------------------------------------

async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 only when ingest would succeed and, where one runs here, the dispatcher moves."""
    checks: dict[str, str] = {}
    try:
        await request.app[keys.DB].ping()
        checks["database"] = "ok"
    except DatabaseUnavailable:
        checks["database"] = "unavailable"
    dispatcher = request.app.get(keys.DISPATCHER)
    if dispatcher is not None:
        checks["dispatcher"] = "ok" if dispatcher.healthy() else "stalled"
    if all(v == "ok" for v in checks.values()):
        return web.json_response({"status": "ready", "checks": checks})
    details = [{"check": k, "status": v} for k, v in checks.items()]
    if checks["database"] != "ok":
        raise DatabaseUnavailable("Not ready: the database is unreachable.", details=details)
    raise DispatcherStalled("Not ready: the dispatcher has stalled.", details=details)


# --- apps ----------------------------------------------------------------------------

@admin_scope
async def create_app(request: web.Request) -> web.Response:
    _, data, _ = await read_body(request)
    body = validate(AppCreate, data)
    row, key = await request.app[keys.STORE].create_app(body.name)
    return web.json_response({**app_json(row), "api_key": key}, status=201)


@admin_scope
async def list_apps(request: web.Request) -> web.Response:
    cursor, limit = page_args(request)
    page = await request.app[keys.STORE].list_apps(cursor, limit)
    return web.json_response(page_json(page, app_json))


# --- events --------------------------------------------------------------------------

@app_scope
async def create_event(request: web.Request) -> web.Response:
    _, data, raw = await read_body(request)
    body = validate(EventCreate, data)
    check_depth(body.payload, "payload")
    key = request.headers.get("Idempotency-Key")
    body_hash = None
    if key is not None:
        if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable():
            raise ValidationError(
                f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters.",
                details=[{"path": "Idempotency-Key", "message": "invalid header"}],
            )
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        body_hash = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).digest()
    push = None
    if body.notification is not None:
        push = json.dumps({"user_ids": body.user_ids or [], "topics": body.topics or [],
                           "notification": body.notification.model_dump(exclude_none=True)})
    draft = EventDraft(app_id(request), body.type, raw["payload"], key, body_hash, push)
    accepted = await request.app[keys.INGEST].submit(draft)
    logs.annotate(request, event=accepted.id)
    metrics = request.app.get(METRICS)
    if metrics is not None and accepted.created:
        metrics.event_ingested(body.type)
    return web.json_response(
        {"id": accepted.id, "type": accepted.type, "created_at": iso(accepted.created_at)},
        status=202 if accepted.created else 200,
    )


@app_scope
async def list_events(request: web.Request) -> web.Response:
    cursor, limit = page_args(request)
    event_type = request.query.get("type") or None
    page = await request.app[keys.STORE].list_events(app_id(request), event_type, cursor, limit)
    return web.json_response(page_json(page, event_json))


@app_scope
async def get_event(request: web.Request) -> web.Response:
    event, deliveries = await request.app[keys.STORE].get_event(
        app_id(request), request.match_info["event_id"]
    )
    return web.json_response({**event_json(event),
                              "deliveries": [delivery_json(d) for d in deliveries]})


# --- endpoints -----------------------------------------------------------------------

async def check_endpoint_url(request: web.Request, url: str, path: str = "url") -> None:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in {"http", "https"} or not parts.hostname or port == -1:
        raise ValidationError(
            "The endpoint URL must be an absolute http:// or https:// URL.",
            details=[{"path": path, "message": "must be an http(s) URL with a host"}],
        )
    if request.app[keys.SETTINGS].allow_private_endpoints:
        return
    forbidden = await resolve_forbidden(parts.hostname)
    if forbidden:
        raise EndpointURLForbidden(
            f"{parts.hostname} resolves to a loopback, private, link-local or metadata "
            "address; set GATEWAY_ALLOW_PRIVATE_ENDPOINTS=true to allow it.",
            details=[{"path": path, "addresses": list(forbidden)}],
        )


@app_scope
async def create_endpoint(request: web.Request) -> web.Response:
    _, data, _ = await read_body(request)
    body = validate(EndpointCreate, data)
    await check_endpoint_url(request, body.url)
    row = await request.app[keys.STORE].create_endpoint(
        app_id(request), body.url, body.description, body.event_types
    )
    return web.json_response({**endpoint_json(row), "secret": row["secret"]}, status=201)


@app_scope
async def list_endpoints(request: web.Request) -> web.Response:
    cursor, limit = page_args(request)
    page = await request.app[keys.STORE].list_endpoints(app_id(request), cursor, limit)
    return web.json_response(page_json(page, endpoint_json))


@app_scope
async def get_endpoint(request: web.Request) -> web.Response:
    row = await request.app[keys.STORE].get_endpoint(app_id(request),
                                                     request.match_info["endpoint_id"])
    return web.json_response(endpoint_json(row))


@app_scope
async def patch_endpoint(request: web.Request) -> web.Response:
    _, data, _ = await read_body(request)
    body = validate(EndpointPatch, data)
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    for name in ("url", "description", "status"):
        if name in changes and changes[name] is None:
            raise ValidationError(f"'{name}' cannot be null.",
                                  details=[{"path": name, "message": "must not be null"}])
    if "url" in changes:
        await check_endpoint_url(request, changes["url"])
    row = await request.app[keys.STORE].update_endpoint(
        app_id(request), request.match_info["endpoint_id"], changes
    )
    return web.json_response(endpoint_json(row))


@app_scope
async def delete_endpoint(request: web.Request) -> web.Response:
    await request.app[keys.STORE].delete_endpoint(app_id(request),
                                                  request.match_info["endpoint_id"])
    return web.Response(status=204)


@app_scope
async def get_endpoint_secret(request: web.Request) -> web.Response:
    row = await request.app[keys.STORE].get_endpoint(app_id(request),
                                                     request.match_info["endpoint_id"])
    return web.json_response({"secret": row["secret"]})


@app_scope
async def rotate_endpoint_secret(request: web.Request) -> web.Response:
    row = await request.app[keys.STORE].rotate_secret(app_id(request),
                                                      request.match_info["endpoint_id"])
    return web.json_response({"secret": row["secret"],
                              "previous_secret_expires_at": iso(row["previous_secret_expires_at"])})


# --- deliveries ----------------------------------------------------------------------

DELIVERY_STATUSES = ("pending", "succeeded", "failed")


@app_scope
async def list_deliveries(request: web.Request) -> web.Response:
    cursor, limit = page_args(request)
    status = request.query.get("status") or None
    if status is not None and status not in DELIVERY_STATUSES:
        raise ValidationError(
            f"'status' must be one of {', '.join(DELIVERY_STATUSES)}.",
            details=[{"path": "status", "message": "unknown status"}],
        )
    page = await request.app[keys.STORE].list_deliveries(
        app_id(request), status=status, endpoint_id=request.query.get("endpoint_id") or None,
        event_id=request.query.get("event_id") or None, cursor=cursor, limit=limit,
    )
    return web.json_response(page_json(page, delivery_json))


@app_scope
async def get_delivery(request: web.Request) -> web.Response:
    row = await request.app[keys.STORE].get_delivery(app_id(request),
                                                     request.match_info["delivery_id"])
    return web.json_response(delivery_json(row))


@app_scope
async def list_attempts(request: web.Request) -> web.Response:
    rows = await request.app[keys.STORE].list_attempts(app_id(request),
                                                       request.match_info["delivery_id"])
    return web.json_response({"data": [attempt_json(r) for r in rows]})


@app_scope
async def retry_delivery(request: web.Request) -> web.Response:
    row = await request.app[keys.STORE].retry_delivery(app_id(request),
                                                       request.match_info["delivery_id"])
    return web.json_response(delivery_json(row), status=202)


# --- devices and user tokens ---------------------------------------------------------

def device_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"], "platform": row["platform"], "token": row["token"],
        "user_id": row["user_id"], "topics": row["topics"], "locale": row["locale"],
        "app_version": row["app_version"], "status": row["status"],
        "pruned_reason": row["pruned_reason"], "pruned_at": iso(row["pruned_at"]),
        "registered_at": iso(row["registered_at"]), "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }


def acting_user(request: web.Request) -> str | None:
    """The user a user token is bound to; None for an app key (any user)."""
    who = principal(request)
    return who.user_id if who.kind == "user" else None


@app_scope
async def create_user_token(request: web.Request) -> web.Response:
    _, data, _ = await read_body(request)
    body = validate(UserTokenCreate, data)
    secret = await request.app[keys.AUTH].user_token_secret(app_id(request))
    token, expires_at = usertokens.mint(app_id(request), body.user_id, body.ttl_seconds, secret)
    return web.json_response(
        {"token": token, "user_id": body.user_id,
         "expires_at": iso(datetime.fromtimestamp(expires_at, UTC))}, status=201)


@device_scope
async def register_device(request: web.Request) -> web.Response:
    _, data, _ = await read_body(request)
    body = validate(DeviceRegister, data)
    bound = acting_user(request)
    if bound is not None and body.user_id not in (None, bound):
        raise Forbidden("A user token registers devices for its own user only.")
    user_id = bound or body.user_id
    if user_id is None:
        raise ValidationError("'user_id' is required with an app key.",
                              details=[{"path": "user_id", "message": "field required"}])
    row = await request.app[keys.STORE].upsert_device(
        app_id(request), platform=body.platform, token=body.token, user_id=user_id,
        topics=list(dict.fromkeys(body.topics)), locale=body.locale,
        app_version=body.app_version,
    )
    return web.json_response(device_json(row), status=201 if row["inserted"] else 200)


DEVICE_STATUSES = ("active", "pruned")


@device_scope
async def list_devices(request: web.Request) -> web.Response:
    cursor, limit = page_args(request)
    q = request.query
    bound = acting_user(request)
    user_id = q.get("user_id") or None
    if bound is not None:
        if user_id not in (None, bound):
            raise Forbidden("A user token lists its own user's devices only.")
        user_id = bound
    platform, status = q.get("platform") or None, q.get("status") or None
    if platform not in (None, "ios", "android"):
        raise ValidationError("'platform' must be ios or android.",
                              details=[{"path": "platform", "message": "unknown platform"}])
    if status not in (None, *DEVICE_STATUSES):
        raise ValidationError("'status' must be active or pruned.",
                              details=[{"path": "status", "message": "unknown status"}])
    page = await request.app[keys.STORE].list_devices(
        app_id(request), user_id=user_id, topic=q.get("topic") or None, platform=platform,
        status=status, cursor=cursor, limit=limit,
    )
    return web.json_response(page_json(page, device_json))


@device_scope
async def get_device(request: web.Request) -> web.Response:
    row = await request.app[keys.STORE].get_device(
        app_id(request), request.match_info["token"], acting_user(request))
    return web.json_response(device_json(row))


@device_scope
async def delete_device(request: web.Request) -> web.Response:
    await request.app[keys.STORE].delete_device(
        app_id(request), request.match_info["token"], acting_user(request))
    return web.Response(status=204)


@device_scope
async def put_device_topics(request: web.Request) -> web.Response:
    _, data, _ = await read_body(request)
    body = validate(DeviceTopics, data)
    row = await request.app[keys.STORE].set_device_topics(
        app_id(request), request.match_info["token"], acting_user(request),
        list(dict.fromkeys(body.topics)))
    return web.json_response(device_json(row))


# --- push credentials ----------------------------------------------------------------

@own_app_scope
async def put_fcm_credentials(request: web.Request) -> web.Response:
    _, data, _ = await read_body(request)
    body = validate(FCMCredentials, data)
    config = credentials.check_fcm(body.service_account)
    row = await request.app[keys.STORE].put_credentials(
        request.match_info["app_id"], "fcm", json.dumps(config))
    return web.json_response(credentials.masked(row["provider"], json.loads(row["config"])))


@own_app_scope
async def put_apns_credentials(request: web.Request) -> web.Response:
    _, data, _ = await read_body(request)
    body = validate(APNsCredentials, data)
    config = credentials.check_apns(body.model_dump())
    row = await request.app[keys.STORE].put_credentials(
        request.match_info["app_id"], "apns", json.dumps(config))
    return web.json_response(credentials.masked(row["provider"], json.loads(row["config"])))


@own_app_scope
async def get_push_credentials(request: web.Request) -> web.Response:
    rows = await request.app[keys.STORE].list_credentials(request.match_info["app_id"])
    return web.json_response({row["provider"]: {**credentials.masked(
        row["provider"], json.loads(row["config"])), "updated_at": iso(row["updated_at"])}
        for row in rows})


# --- sandbox -------------------------------------------------------------------------

@app_scope
async def sandbox_pushes(request: web.Request) -> web.Response:
    """What the sandbox's fake FCM and APNs received for this app's devices."""
    sandbox = request.app.get(keys.SANDBOX)
    if sandbox is None:
        raise NotFound("The sandbox is off; start the gateway with 'gateway serve --sandbox'.")
    pushes = sandbox.received()
    tokens = await request.app[keys.STORE].device_tokens(
        app_id(request), list({p.token for p in pushes}))
    return web.json_response({"data": [
        {"provider": p.provider, "token": p.token, "payload": p.payload,
         "headers": {k: v for k, v in p.headers.items() if k != "authorization"},
         "received_at": iso(datetime.fromtimestamp(p.received_at, UTC))}
        for p in pushes if p.token in tokens][-500:]})


PAGE = (Param("limit", "Page size, 1-250 (default 50).", {"type": "integer", "minimum": 1,
                                                            "maximum": MAX_PAGE}),
        Param("cursor", "next_cursor of the previous page."))
IDEMPOTENCY = Param("Idempotency-Key", "Same key and body within 24 h: 200 with the first "
                    "event; another body: 409.", where="header")
APP_OR_USER: tuple[Auth, ...] = ("app", "user")
OWN_APP: tuple[Auth, ...] = ("admin", "app")

HEALTH_ROUTES = [
    Route("GET", "/healthz", healthz, "The process is up", "health", auth=("none",),
          ok=(200, Health)),
    Route("GET", "/readyz", readyz, "Ingest would succeed and the dispatcher moves", "health",
          auth=("none",), ok=(200, Ready), errors=(503,)),
]

ROUTES = [
    Route("POST", "/v1/apps", create_app, "Create an app and its API key", "apps",
          auth=("admin",), body=AppCreate, ok=(201, AppCreated)),
    Route("GET", "/v1/apps", list_apps, "List apps", "apps", auth=("admin",), ok=(200, AppPage),
          query=PAGE),
    Route("POST", "/v1/events", create_event, "Emit an event", "events", body=EventCreate,
          ok=(202, EventAccepted), also=((200, EventAccepted, "Idempotent replay"),),
          headers=(IDEMPOTENCY,), errors=(409,)),
    Route("GET", "/v1/events", list_events, "List events", "events", ok=(200, EventPage),
          query=(Param("type", "Only this event type."), *PAGE)),
    Route("GET", "/v1/events/{event_id}", get_event, "An event with its deliveries", "events",
          ok=(200, EventWithDeliveries)),
    Route("POST", "/v1/endpoints", create_endpoint, "Subscribe a webhook endpoint",
          "endpoints", body=EndpointCreate, ok=(201, EndpointCreated)),
    Route("GET", "/v1/endpoints", list_endpoints, "List endpoints", "endpoints",
          ok=(200, EndpointPage), query=PAGE),
    Route("GET", "/v1/endpoints/{endpoint_id}", get_endpoint, "An endpoint", "endpoints",
          ok=(200, Endpoint)),
    Route("PATCH", "/v1/endpoints/{endpoint_id}", patch_endpoint,
          "Change an endpoint; disable or enable it", "endpoints", body=EndpointPatch,
          ok=(200, Endpoint)),
    Route("DELETE", "/v1/endpoints/{endpoint_id}", delete_endpoint, "Delete an endpoint",
          "endpoints", ok=(204, None)),
    Route("GET", "/v1/endpoints/{endpoint_id}/secret", get_endpoint_secret,
          "An endpoint's signing secret", "endpoints", ok=(200, Secret)),
    Route("POST", "/v1/endpoints/{endpoint_id}/secret/rotate", rotate_endpoint_secret,
          "Rotate the signing secret (the old one signs too for 24 h)", "endpoints",
          ok=(200, RotatedSecret)),
    Route("GET", "/v1/deliveries", list_deliveries, "List deliveries", "deliveries",
          ok=(200, DeliveryPage), query=(
              Param("status", "pending, succeeded or failed.",
                    {"type": "string", "enum": list(DELIVERY_STATUSES)}),
              Param("endpoint_id", "Only this endpoint's."),
              Param("event_id", "Only this event's."), *PAGE)),
    Route("GET", "/v1/deliveries/{delivery_id}", get_delivery, "A delivery", "deliveries",
          ok=(200, Delivery)),
    Route("GET", "/v1/deliveries/{delivery_id}/attempts", list_attempts,
          "Every attempt of a delivery", "deliveries", ok=(200, AttemptList)),
    Route("POST", "/v1/deliveries/{delivery_id}/retry", retry_delivery,
          "Requeue a failed delivery now", "deliveries", ok=(202, Delivery), errors=(409,)),
    Route("POST", "/v1/user-tokens", create_user_token,
          "Mint a short-lived user token for a mobile app", "devices", body=UserTokenCreate,
          ok=(201, UserToken)),
    Route("POST", "/v1/devices", register_device, "Register (upsert) a device", "devices",
          auth=APP_OR_USER, body=DeviceRegister, ok=(201, Device),
          also=((200, Device, "Updated"),)),
    Route("GET", "/v1/devices", list_devices, "List devices", "devices", auth=APP_OR_USER,
          ok=(200, DevicePage), query=(
              Param("user_id", "Only this user's."), Param("topic", "Only this topic's."),
              Param("platform", "ios or android.",
                    {"type": "string", "enum": ["ios", "android"]}),
              Param("status", "active or pruned.",
                    {"type": "string", "enum": list(DEVICE_STATUSES)}), *PAGE)),
    Route("GET", "/v1/devices/{token}", get_device, "A device", "devices", auth=APP_OR_USER,
          ok=(200, Device)),
    Route("DELETE", "/v1/devices/{token}", delete_device, "Delete a device", "devices",
          auth=APP_OR_USER, ok=(204, None)),
    Route("PUT", "/v1/devices/{token}/topics", put_device_topics, "Replace a device's topics",
          "devices", auth=APP_OR_USER, body=DeviceTopics, ok=(200, Device)),
    Route("PUT", "/v1/apps/{app_id}/push/fcm", put_fcm_credentials,
          "Set the app's FCM service account", "push", auth=OWN_APP, body=FCMCredentials,
          ok=(200, MaskedCredentials)),
    Route("PUT", "/v1/apps/{app_id}/push/apns", put_apns_credentials,
          "Set the app's APNs token key", "push", auth=OWN_APP, body=APNsCredentials,
          ok=(200, MaskedCredentials)),
    Route("GET", "/v1/apps/{app_id}/push", get_push_credentials,
          "The app's push credentials, masked", "push", auth=OWN_APP,
          ok=(200, PushCredentials)),
    Route("GET", "/v1/sandbox/pushes", sandbox_pushes,
          "What the sandbox's fake providers received", "push", ok=(200, SandboxPushes)),
]
