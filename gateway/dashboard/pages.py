"""The operator dashboard's pages: server-rendered (aiohttp-jinja2) over the same store
as the API, at ``/dashboard``. Each page is declared in :data:`ROUTES`, which puts it
behind the session check (and, for a form, the CSRF check) once, where it is declared."""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import aiohttp_jinja2
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import appkeys, logs
from gateway.api.http import check_url_text
from gateway.api.routing import Route, authenticate
from gateway.dashboard.format import Phone, notification
from gateway.dashboard.sessions import (
    COOKIE_PATH,
    SESSION_COOKIE,
    SESSION_TTL_S,
    Session,
    csrf_token,
    current_session,
    issue_session,
    served_over_https,
    signing_key,
)
from gateway.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    GatewayError,
    NotFound,
    Unauthorized,
    ValidationError,
)
from gateway.jsonbody import storable
from gateway.store.postgres import DeliveryFilter
from gateway.store.records import Attempt, DeliveryView
from gateway_client.models import DeliveryStatus, DeviceStatus, EndpointStatus, Platform, iso

log = logging.getLogger("gateway.dashboard")

LOGIN = "/dashboard/login"
PAGE_SIZE = 50
#: Deliveries shown on an event's page (a push to a topic can have thousands).
EVENT_DELIVERIES_SHOWN = 200
#: Sandbox pushes drawn, newest first.
SANDBOX_SHOWN = 200
STATIC_DIR = Path(__file__).with_name("static")
WINDOWS = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1),
           "24h": timedelta(hours=24), "7d": timedelta(days=7)}
DELIVERY_STATUSES = tuple(s.value for s in DeliveryStatus)
NOTICES = {
    "retried": "Delivery requeued: it is attempted again now.",
    "retried_all": "{count} failed deliveries requeued.",
    "test_sent": "Test event sent to the endpoint.",
    "enabled": "Endpoint enabled: its waiting deliveries resume.",
    "disabled": "Endpoint disabled: its pending deliveries wait until it is enabled again.",
    "signed_out": "Signed out.",
}
#: Pages are the operator's own: nothing is cached, framed, or loaded from elsewhere.
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
}

SESSION = web.RequestKey("dashboard_session", Session)


@dataclass(frozen=True)
class ViewedApp:
    id: str
    name: str


VIEWED = web.RequestKey("dashboard_app", ViewedApp)


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, **HEADERS})


def signed_in(handler: Handler) -> Handler:
    """Signed in, allowed to see the app in the path, and on a POST the CSRF token
    checked. A GatewayError becomes an HTML page with its status."""
    async def page(request: web.Request) -> web.StreamResponse:
        session = await current_session(request)
        if session is None:
            return redirect(LOGIN)
        request[SESSION] = session
        try:
            check_url_text(request)
            if request.method == "POST":
                form = await request.post()
                key = signing_key(request)
                assert key is not None
                sent = form.get("csrf")
                if not isinstance(sent, str) or not hmac.compare_digest(
                        sent.encode(), csrf_token(key, session).encode()):
                    raise Forbidden("This form is stale or did not come from this dashboard; "
                                    "reload the page and try again.")
            if "app_id" in request.match_info:
                app_id = request.match_info["app_id"]
                if session.kind == "app" and session.app_id != app_id:
                    # Like the API: another app's ids do not exist for this key.
                    raise NotFound(f"No app with id {app_id!r}.")
                viewed = await request.app[appkeys.STORE].get_app(app_id)
                request[VIEWED] = ViewedApp(viewed.id, viewed.name)
            return await handler(request)
        except GatewayError as exc:
            return await render(request, "error.html", {"error": exc}, status=exc.status,
                                health=False)
        except web.RequestPayloadError:
            unread = BadRequest("The form could not be read; send it again.")
            return await render(request, "error.html", {"error": unread},
                                status=unread.status, health=False)
        except Exception:
            log.exception("unhandled error in %s %s", request.method, logs.route_of(request))
            error = GatewayError("The dashboard hit an unexpected error; nothing was changed.")
            return await render(request, "error.html", {"error": error},
                                status=error.status, health=False)
    return page


# --- rendering -----------------------------------------------------------------------

@dataclass(frozen=True)
class Health:
    pending: int
    oldest_pending_age_s: float | None
    attempts_last_minute: int
    dispatcher: str


async def health_of(request: web.Request, app_id: str | None) -> Health:
    found = await request.app[appkeys.STORE].dashboard_health(app_id)
    oldest = found.oldest_pending_at
    worker = request.app.get(appkeys.DISPATCHER)
    return Health(
        pending=found.pending,
        oldest_pending_age_s=None if oldest is None
        else max(0.0, (found.now - oldest).total_seconds()),
        attempts_last_minute=found.attempts_last_minute,
        dispatcher="not in this process" if worker is None
        else "alive" if worker.healthy() else "stalled",
    )


def notice(request: web.Request) -> str | None:
    code = request.query.get("notice", "")
    text = NOTICES.get(code)
    if text is None:
        return None
    count = request.query.get("count", "0")
    return text.format(count=int(count) if count.isdecimal() else 0)


async def render(request: web.Request, template: str, context: Mapping[str, Any], *,
                 status: int = 200, nav: str | None = None,
                 health: bool = True) -> web.Response:
    session = request.get(SESSION)
    viewed = request.get(VIEWED)
    key = signing_key(request)
    strip = None
    if session is not None and health:
        strip = await health_of(request, viewed.id if viewed else None)
    response = aiohttp_jinja2.render_template(template, request, {
        "session": session,
        "csrf": csrf_token(key, session) if session is not None and key else "",
        "viewed": viewed,
        "base": f"/dashboard/apps/{viewed.id}" if viewed else "/dashboard",
        "nav": nav,
        "notice": notice(request),
        "health": strip,
        **context,
    }, status=status)
    response.headers.update(HEADERS)
    return response


# --- filters from the query string ---------------------------------------------------

def _text(query: Mapping[str, str], name: str) -> str | None:
    return query.get(name, "").strip() or None


def _instant(query: Mapping[str, str], name: str) -> datetime | None:
    """A ``datetime-local`` field's value, read as UTC."""
    raw = _text(query, name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if not 1 < value.year < 9999:
            raise OverflowError
    except ValueError:
        raise ValidationError(f"'{name}' must be a date and time like 2025-01-31T14:30.",
                              details=[{"path": name, "message": "not a date and time"}]) \
            from None
    except OverflowError:
        raise ValidationError(f"'{name}' must be a date between the years 2 and 9998.",
                              details=[{"path": name, "message": "out of range"}]) from None
    return value


def _choice(query: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = _text(query, name)
    if value is not None and value not in allowed:
        raise ValidationError(f"'{name}' must be one of {', '.join(allowed)}.",
                              details=[{"path": name, "message": "unknown value"}])
    return value


def _status(query: Mapping[str, str]) -> DeliveryStatus | None:
    chosen = _choice(query, "status", DELIVERY_STATUSES)
    return DeliveryStatus(chosen) if chosen else None


def time_range(query: Mapping[str, str]) -> tuple[datetime | None, datetime | None]:
    window = _choice(query, "window", tuple(WINDOWS))
    since = _instant(query, "since")
    if since is None and window is not None:
        since = datetime.now(UTC) - WINDOWS[window]
    return since, _instant(query, "until")


def delivery_filter(query: Mapping[str, str]) -> DeliveryFilter:
    since, until = time_range(query)
    return DeliveryFilter(_status(query), _text(query, "endpoint_id"), _text(query, "type"),
                          since, until)


def older_link(request: web.Request, cursor: str | None) -> str | None:
    if cursor is None:
        return None
    kept = {k: v for k, v in request.query.items() if k not in ("before", "notice", "count")}
    return f"{request.path}?{urlencode({**kept, 'before': cursor})}"


async def _form(request: web.Request) -> Mapping[str, str]:
    form = await request.post()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    for name, value in fields.items():
        if not (storable(name) and storable(value)):
            raise ValidationError(f"The field {name!r} holds a NUL or invalid character.",
                                  details=[{"path": name, "message": "invalid character"}])
    return fields


# --- sign-in -------------------------------------------------------------------------

async def login_form(request: web.Request) -> web.StreamResponse:
    if await current_session(request) is not None:
        return redirect("/dashboard")
    return await render(request, "login.html", {"error": None})


async def login(request: web.Request) -> web.StreamResponse:
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        # Another site's form signing the browser in as someone else (login CSRF).
        return await render(request, "login.html", {
            "error": "Sign in from the gateway's own page."}, status=403)
    form = await request.post()
    raw = form.get("key")
    presented = raw.strip() if isinstance(raw, str) else ""
    key = signing_key(request)
    error: str | None = None
    status = 401
    if key is None:
        error, status = "The dashboard is off: the gateway has no GATEWAY_ADMIN_KEY.", 503
    elif not presented:
        error = "Enter the operator key or an app's API key."
    else:
        try:
            who = await authenticate(request, f"Bearer {presented}")
        except Unauthorized:
            error = "That key is neither the operator key nor an app's API key."
        else:
            if who.kind == "user":
                error, status = "User tokens cannot sign in; use an app key.", 403
            else:
                kind: Literal["admin", "app"] = "admin" if who.kind == "admin" else "app"
                ttl_s = SESSION_TTL_S
                if who.key_expires_at is not None:  # a rotated-out key, in its grace
                    left_s = (who.key_expires_at - datetime.now(UTC)).total_seconds()
                    ttl_s = max(1, min(ttl_s, int(left_s)))
                session_id = await request.app[appkeys.STORE].create_session(
                    kind, who.app_id, ttl_s)
                token = issue_session(key, kind, who.app_id, time.time(), session_id)
                response = redirect("/dashboard/apps" if kind == "admin"
                                    else f"/dashboard/apps/{who.app_id}/events")
                response.set_cookie(SESSION_COOKIE, token, max_age=ttl_s,
                                    path=COOKIE_PATH, httponly=True, samesite="Strict",
                                    secure=served_over_https(request))
                return response
    return await render(request, "login.html", {"error": error}, status=status)


async def logout(request: web.Request) -> web.StreamResponse:
    session_id = request[SESSION].id
    if session_id is not None:
        await request.app[appkeys.STORE].end_session(session_id)
    response = redirect(f"{LOGIN}?notice=signed_out")
    response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    return response


async def home(request: web.Request) -> web.StreamResponse:
    session = request[SESSION]
    if session.kind == "app":
        return redirect(f"/dashboard/apps/{session.app_id}/events")
    return redirect("/dashboard/apps")


# --- apps ----------------------------------------------------------------------------

async def apps(request: web.Request) -> web.StreamResponse:
    session = request[SESSION]
    if session.kind == "app":
        return redirect(f"/dashboard/apps/{session.app_id}/events")
    found = await request.app[appkeys.STORE].list_apps(_text(request.query, "before"),
                                                       PAGE_SIZE)
    return await render(request, "apps.html", {
        "apps": found.items, "older": older_link(request, found.next_cursor)}, nav="apps")


# --- events --------------------------------------------------------------------------

async def events(request: web.Request) -> web.StreamResponse:
    viewed, q = request[VIEWED], request.query
    search = _text(q, "q")
    store = request.app[appkeys.STORE]
    if search is not None and search.startswith("dlv_"):
        try:
            delivery = await store.get_delivery(viewed.id, search)
        except NotFound:
            pass
        else:
            return redirect(f"/dashboard/apps/{viewed.id}/events/{delivery.event_id}"
                            f"#{delivery.id}")
    since, until = time_range(q)
    found = await store.dashboard_events(
        viewed.id, event_type=_text(q, "type"), status=_status(q), since=since, until=until,
        id_prefix=search, cursor=_text(q, "before"), limit=PAGE_SIZE)
    return await render(request, "events.html", {
        "events": found.items, "older": older_link(request, found.next_cursor),
        "q": {k: q.get(k, "") for k in ("type", "status", "window", "since", "until", "q")},
        "windows": list(WINDOWS), "statuses": DELIVERY_STATUSES,
    }, nav="events")


@dataclass
class DeliveryWithAttempts:
    row: DeliveryView
    attempts: list[Attempt] = field(default_factory=list)


async def event(request: web.Request) -> web.StreamResponse:
    viewed = request[VIEWED]
    store = request.app[appkeys.STORE]
    found = await store.get_event(viewed.id, request.match_info["event_id"])
    shown = await store.dashboard_event_deliveries(viewed.id, found.id,
                                                   EVENT_DELIVERIES_SHOWN + 1)
    views = {d.id: DeliveryWithAttempts(d) for d in shown[:EVENT_DELIVERIES_SHOWN]}
    for attempt in await store.attempts_of(list(views)):
        views[attempt.delivery_id].attempts.append(attempt)
    moving = any(v.row.status is DeliveryStatus.PENDING for v in views.values())
    return await render(request, "event.html", {
        "event": found, "deliveries": list(views.values()),
        "more": len(shown) > EVENT_DELIVERIES_SHOWN, "shown": EVENT_DELIVERIES_SHOWN,
        # While something is still pending, the page refreshes itself to show it land.
        "refresh_s": 2 if moving else 0,
    }, nav="events")


# --- endpoints -----------------------------------------------------------------------

async def endpoints(request: web.Request) -> web.StreamResponse:
    store = request.app[appkeys.STORE]
    found = await store.list_endpoints(request[VIEWED].id, _text(request.query, "before"),
                                       PAGE_SIZE)
    return await render(request, "endpoints.html", {
        "endpoints": found.items, "older": older_link(request, found.next_cursor),
        "operational": await store.operational.find(request[VIEWED].id)},
        nav="endpoints")


async def endpoint_status(request: web.Request) -> web.StreamResponse:
    viewed = request[VIEWED]
    status = _choice(await _form(request), "status", tuple(s.value for s in EndpointStatus))
    if status is None:
        raise ValidationError("'status' must be active or disabled.",
                              details=[{"path": "status", "message": "field required"}])
    changes: dict[str, Any] = {"status": status}
    await request.app[appkeys.STORE].update_endpoint(viewed.id,
                                                     request.match_info["endpoint_id"], changes)
    return redirect(f"/dashboard/apps/{viewed.id}/endpoints?notice="
                    + ("enabled" if status == EndpointStatus.ACTIVE else "disabled"))


async def rotate_secret(request: web.Request) -> web.StreamResponse:
    store = request.app[appkeys.STORE]
    endpoint_id = request.match_info["endpoint_id"]
    rotated = await store.rotate_secret(request[VIEWED].id, endpoint_id)
    endpoint = await store.get_endpoint(request[VIEWED].id, endpoint_id)
    # The one page that shows a secret: the new one, once, never cached (HEADERS).
    return await render(request, "secret.html", {"endpoint": endpoint, "rotated": rotated},
                        nav="endpoints")


async def send_test_event(request: web.Request) -> web.StreamResponse:
    viewed = request[VIEWED]
    endpoint_id = request.match_info["endpoint_id"]
    payload = json.dumps({
        "message": "Test event sent from the gateway dashboard.",
        "endpoint_id": endpoint_id,
        "sent_at": iso(datetime.now(UTC)),
    })
    sent = await request.app[appkeys.STORE].send_test_event(viewed.id, endpoint_id, payload)
    if sent is None:
        raise Conflict("This endpoint is disabled; enable it before sending a test event.")
    return redirect(f"/dashboard/apps/{viewed.id}/events/{sent.id}?notice=test_sent")


# --- event types ---------------------------------------------------------------------

async def event_types(request: web.Request) -> web.StreamResponse:
    viewed = request[VIEWED]
    found = await request.app[appkeys.STORE].list_event_types(
        viewed.id, _text(request.query, "after"), PAGE_SIZE)
    more = None
    if found.next_cursor is not None:
        more = f"{request.path}?{urlencode({'after': found.next_cursor})}"
    return await render(request, "event_types.html", {
        "event_types": [(t, None if t.schema is None else json.dumps(t.schema))
                        for t in found.items],
        "more": more}, nav="event-types")


# --- deliveries ----------------------------------------------------------------------

async def deliveries(request: web.Request) -> web.StreamResponse:
    viewed, q = request[VIEWED], request.query
    store = request.app[appkeys.STORE]
    chosen = delivery_filter(q)
    found = await store.dashboard_deliveries(viewed.id, chosen, cursor=_text(q, "before"),
                                             limit=PAGE_SIZE)
    endpoint_list = (await store.list_endpoints(viewed.id, None, 250)).items
    return await render(request, "deliveries.html", {
        "deliveries": found.items, "older": older_link(request, found.next_cursor),
        "endpoints": endpoint_list,
        "q": {k: q.get(k, "") for k in ("status", "endpoint_id", "type", "window", "since",
                                        "until")},
        "windows": list(WINDOWS), "statuses": DELIVERY_STATUSES,
    }, nav="failed" if chosen.status is DeliveryStatus.FAILED else "deliveries")


async def retry_one(request: web.Request) -> web.StreamResponse:
    viewed = request[VIEWED]
    requeued = await request.app[appkeys.STORE].retry_delivery(
        viewed.id, request.match_info["delivery_id"])
    return redirect(f"/dashboard/apps/{viewed.id}/events/{requeued.event_id}?notice=retried"
                    f"#{requeued.id}")


async def retry_all(request: web.Request) -> web.StreamResponse:
    viewed = request[VIEWED]
    form = await _form(request)
    count = await request.app[appkeys.STORE].retry_failed(viewed.id, delivery_filter(form))
    kept = {k: form[k] for k in ("endpoint_id", "type", "window", "since", "until")
            if form.get(k)}
    query = {"status": DeliveryStatus.FAILED.value, **kept, "notice": "retried_all",
             "count": count}
    return redirect(f"/dashboard/apps/{viewed.id}/deliveries?{urlencode(query)}")


# --- devices -------------------------------------------------------------------------

async def devices(request: web.Request) -> web.StreamResponse:
    q = request.query
    found = await request.app[appkeys.STORE].list_devices(
        request[VIEWED].id, search=_text(q, "q"),
        status=_choice(q, "status", tuple(s.value for s in DeviceStatus)),
        platform=_choice(q, "platform", tuple(p.value for p in Platform)),
        cursor=_text(q, "before"), limit=PAGE_SIZE)
    return await render(request, "devices.html", {
        "devices": found.items, "older": older_link(request, found.next_cursor),
        "q": {k: q.get(k, "") for k in ("q", "status", "platform")},
    }, nav="devices")


# --- sandbox inbox -------------------------------------------------------------------

async def sandbox(request: web.Request) -> web.StreamResponse:
    fakes = request.app.get(appkeys.SANDBOX)
    phones: list[Phone] = []
    if fakes is not None:
        by_token: dict[tuple[str, str], Phone] = {}
        for push in reversed(fakes.received(request[VIEWED].id)):
            phone = by_token.setdefault((push.provider, push.token),
                                        Phone(push.provider, push.token))
            if len(phone.notifications) < SANDBOX_SHOWN:
                phone.notifications.append(
                    notification(push.provider, push.payload, push.received_at))
        phones = list(by_token.values())
    return await render(request, "sandbox.html", {"on": fakes is not None, "phones": phones},
                        nav="sandbox")


# --- static files --------------------------------------------------------------------

async def static_file(request: web.Request) -> web.StreamResponse:
    path = STATIC_DIR / request.match_info["name"]
    if not path.is_file():
        raise NotFound(f"No static file {request.match_info['name']!r}.")
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=300",
                                           "X-Content-Type-Options": "nosniff"})


def _page(method: str, path: str, handler: Handler, summary: str) -> Route:
    """A dashboard page: behind the session (and CSRF) check, left out of the API
    description."""
    return Route(method, path, signed_in(handler), summary, "dashboard", auth=("dashboard",),
                 internal=True, media_type="text/html")


APP = "/dashboard/apps/{app_id}"

ROUTES = [
    Route("GET", r"/static/{name:[A-Za-z0-9_-]+\.(?:css|js|svg|png)}", static_file,
          "The dashboard's stylesheet and script", "dashboard", auth=("none",),
          internal=True, media_type="text/css"),
    Route("GET", LOGIN, login_form, "Sign-in form", "dashboard", auth=("none",),
          internal=True, media_type="text/html"),
    Route("POST", LOGIN, login, "Sign in with the operator key or an app key", "dashboard",
          auth=("none",), internal=True, media_type="text/html"),
    _page("POST", "/dashboard/logout", logout, "Sign out"),
    _page("GET", "/dashboard", home, "The dashboard"),
    _page("GET", "/dashboard/apps", apps, "Pick an app (operator)"),
    _page("GET", f"{APP}/events", events, "Events"),
    _page("GET", f"{APP}/events/{{event_id}}", event, "An event, its deliveries and attempts"),
    _page("GET", f"{APP}/endpoints", endpoints, "Endpoints"),
    _page("POST", f"{APP}/endpoints/{{endpoint_id}}/status", endpoint_status,
          "Enable or disable an endpoint"),
    _page("POST", f"{APP}/endpoints/{{endpoint_id}}/rotate", rotate_secret,
          "Rotate an endpoint's secret (shown once)"),
    _page("POST", f"{APP}/endpoints/{{endpoint_id}}/test", send_test_event,
          "Send a gateway.test event to one endpoint"),
    _page("GET", f"{APP}/event-types", event_types, "The event type catalog"),
    _page("GET", f"{APP}/deliveries", deliveries, "Deliveries, failed ones first"),
    _page("POST", f"{APP}/deliveries/retry", retry_all, "Retry every failed delivery "
          "matching a filter"),
    _page("POST", f"{APP}/deliveries/{{delivery_id}}/retry", retry_one, "Retry a delivery"),
    _page("GET", f"{APP}/devices", devices, "Devices"),
    _page("GET", f"{APP}/sandbox", sandbox, "The sandbox's push inbox"),
]
