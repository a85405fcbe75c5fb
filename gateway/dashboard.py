"""The operator dashboard: server-rendered pages (aiohttp-jinja2) over the same store as
the API, at ``/dashboard``.

Signing in takes the operator key (every app) or an app key (that app only); user tokens
are refused. The session is a cookie holding ``{kind, app_id, exp}`` and an HMAC over it,
keyed from ``GATEWAY_ADMIN_KEY``, so every gateway process sharing that key accepts it and
changing the key signs everyone out. Every form that changes something carries a CSRF
token derived from the session cookie (an HMAC of it), on top of ``SameSite=Strict``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import aiohttp_jinja2
import asyncpg
import jinja2
from aiohttp import web

from gateway import keys
from gateway.errors import (
    Conflict,
    Forbidden,
    GatewayError,
    NotFound,
    Unauthorized,
    ValidationError,
)
from gateway.routing import Handler, Route

SESSION_COOKIE = "gw_dashboard"
SESSION_TTL_S = 12 * 3600
COOKIE_PATH = "/dashboard"
LOGIN = "/dashboard/login"
PAGE_SIZE = 50
#: Deliveries shown on an event's page (a push to a topic can have thousands).
EVENT_DELIVERIES_SHOWN = 200
#: Sandbox pushes drawn, newest first.
SANDBOX_SHOWN = 200
STATIC_DIR = Path(__file__).with_name("static")
WINDOWS = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1),
           "24h": timedelta(hours=24), "7d": timedelta(days=7)}
DELIVERY_STATUSES = ("pending", "succeeded", "failed")
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


# --- sessions and CSRF ---------------------------------------------------------------

@dataclass(frozen=True)
class Session:
    kind: Literal["admin", "app"]
    app_id: str | None
    expires_at: int
    #: The signed cookie value; the CSRF token is derived from it.
    token: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, data: str) -> str:
    return _b64(hmac.new(key, data.encode(), hashlib.sha256).digest())


def session_key(admin_key: str) -> bytes:
    """What sessions are signed with: derived from the operator key, never the key itself."""
    return hmac.new(admin_key.encode(), b"gateway dashboard session v1", hashlib.sha256).digest()


def issue_session(key: bytes, kind: Literal["admin", "app"], app_id: str | None,
                  now: float) -> str:
    claims = {"kind": kind, "app_id": app_id, "exp": int(now) + SESSION_TTL_S}
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{body}.{_mac(key, body)}"


def read_session(key: bytes, token: str | None, now: float) -> Session | None:
    """The session a cookie holds, or None if it is missing, forged or expired."""
    if not token:
        return None
    body, _, sig = token.partition(".")
    if not sig or not hmac.compare_digest(sig.encode(), _mac(key, body).encode()):
        return None
    try:
        claims = json.loads(_unb64(body))
    except ValueError:
        return None
    if not isinstance(claims, dict):
        return None
    kind, app_id, exp = claims.get("kind"), claims.get("app_id"), claims.get("exp")
    if not isinstance(exp, int) or exp <= now:
        return None
    if kind == "admin":
        return Session("admin", None, exp, token)
    if kind == "app" and isinstance(app_id, str):
        return Session("app", app_id, exp, token)
    return None


def csrf_token(key: bytes, session: Session) -> str:
    return _mac(key, "csrf " + session.token)


SESSION = web.RequestKey("dashboard_session", Session)


@dataclass(frozen=True)
class ViewedApp:
    id: str
    name: str


VIEWED = web.RequestKey("dashboard_app", ViewedApp)


def _key(request: web.Request) -> bytes | None:
    admin_key = request.app[keys.SETTINGS].admin_key
    return session_key(admin_key) if admin_key else None


def current_session(request: web.Request) -> Session | None:
    key = _key(request)
    if key is None:
        return None
    return read_session(key, request.cookies.get(SESSION_COOKIE), time.time())


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, **HEADERS})


def page(handler: Handler) -> Handler:
    """Signed in, allowed to see the app in the path, and on a POST the CSRF token
    checked. A GatewayError becomes an HTML page with its status."""
    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        session = current_session(request)
        if session is None:
            return redirect(LOGIN)
        request[SESSION] = session
        try:
            if request.method == "POST":
                form = await request.post()
                key = _key(request)
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
                row = await request.app[keys.STORE].get_app(app_id)
                request[VIEWED] = ViewedApp(row["id"], row["name"])
            return await handler(request)
        except GatewayError as exc:
            return await render(request, "error.html", {"error": exc}, status=exc.status,
                                health=False)
    return wrapped


# --- rendering -----------------------------------------------------------------------

@dataclass(frozen=True)
class Health:
    pending: int
    oldest_pending_age_s: float | None
    attempts_last_minute: int
    dispatcher: str


async def health_of(request: web.Request, app_id: str | None) -> Health:
    row = await request.app[keys.STORE].dashboard_health(app_id)
    oldest = row["oldest_pending_at"]
    worker = request.app.get(keys.DISPATCHER)
    return Health(
        pending=row["pending"],
        oldest_pending_age_s=None if oldest is None
        else max(0.0, (row["now"] - oldest).total_seconds()),
        attempts_last_minute=row["attempts_last_minute"],
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
    key = _key(request)
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


def when(value: datetime | None) -> str:
    if value is None:
        return "—"
    if value.year >= 9999:
        return "never"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def ago(value: datetime | None) -> str:
    if value is None or value.year >= 9999:
        return ""
    delta = (datetime.now(UTC) - value).total_seconds()
    return f"{duration(delta)} ago" if delta >= 0 else f"in {duration(-delta)}"


def pretty(text: str | None) -> str:
    if text is None:
        return ""
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def middle(text: str | None, keep: int = 10) -> str:
    if not text or len(text) <= 2 * keep + 1:
        return text or ""
    return f"{text[:keep]}…{text[-keep:]}"


def next_attempt(row: asyncpg.Record) -> str:
    """When a delivery is next tried, in words (as the API's delivery_json decides)."""
    if row["status"] != "pending":
        return "—"
    if row["lease_id"] is not None:
        return "in flight now"
    due = row["next_attempt_at"]
    if due is None:
        return "—"
    if due.year >= 9999:
        return "parked until the endpoint is enabled"
    return f"{when(due)} ({ago(due)})"


def target(row: asyncpg.Record) -> str:
    if row["kind"] == "webhook":
        return str(row["endpoint_url"] or row["endpoint_id"] or "endpoint deleted")
    platform = row["device_platform"]
    if platform is None:
        return f"{row['kind']} device deleted"
    return f"{row['kind']} · {middle(row['device_token'])}"


def setup(app: web.Application) -> None:
    """Templates for the dashboard; call once from ``create_app``."""
    env = aiohttp_jinja2.setup(
        app, loader=jinja2.PackageLoader("gateway", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        default_helpers=False,
    )
    env.filters.update(when=when, ago=ago, duration=duration, pretty=pretty, middle=middle)
    env.globals.update(next_attempt=next_attempt, target=target)


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
    except ValueError:
        raise ValidationError(f"'{name}' must be a date and time like 2025-01-31T14:30.",
                              details=[{"path": name, "message": "not a date and time"}]) \
            from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _choice(query: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = _text(query, name)
    if value is not None and value not in allowed:
        raise ValidationError(f"'{name}' must be one of {', '.join(allowed)}.",
                              details=[{"path": name, "message": "unknown value"}])
    return value


@dataclass(frozen=True)
class TimeRange:
    since: datetime | None
    until: datetime | None


def time_range(query: Mapping[str, str]) -> TimeRange:
    window = _choice(query, "window", tuple(WINDOWS))
    since = _instant(query, "since")
    if since is None and window is not None:
        since = datetime.now(UTC) - WINDOWS[window]
    return TimeRange(since, _instant(query, "until"))


def older_link(request: web.Request, cursor: str | None) -> str | None:
    if cursor is None:
        return None
    kept = {k: v for k, v in request.query.items() if k not in ("before", "notice", "count")}
    return f"{request.path}?{urlencode({**kept, 'before': cursor})}"


# --- sign-in -------------------------------------------------------------------------

async def login_form(request: web.Request) -> web.StreamResponse:
    if current_session(request) is not None:
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
    key = _key(request)
    error: str | None = None
    status = 401
    if key is None:
        error, status = "The dashboard is off: the gateway has no GATEWAY_ADMIN_KEY.", 503
    elif not presented:
        error = "Enter the operator key or an app's API key."
    else:
        try:
            who = await request.app[keys.AUTH].authenticate(f"Bearer {presented}")
        except Unauthorized:
            error = "That key is neither the operator key nor an app's API key."
        else:
            if who.kind == "user":
                error, status = "User tokens cannot sign in; use an app key.", 403
            else:
                assert key is not None
                kind: Literal["admin", "app"] = "admin" if who.kind == "admin" else "app"
                token = issue_session(key, kind, who.app_id, time.time())
                response = redirect("/dashboard/apps" if kind == "admin"
                                    else f"/dashboard/apps/{who.app_id}/events")
                response.set_cookie(SESSION_COOKIE, token, max_age=SESSION_TTL_S,
                                    path=COOKIE_PATH, httponly=True, samesite="Strict",
                                    secure=request.secure)
                return response
    return await render(request, "login.html", {"error": error}, status=status)


@page
async def logout(request: web.Request) -> web.StreamResponse:
    response = redirect(f"{LOGIN}?notice=signed_out")
    response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    return response


@page
async def home(request: web.Request) -> web.StreamResponse:
    session = request[SESSION]
    if session.kind == "app":
        return redirect(f"/dashboard/apps/{session.app_id}/events")
    return redirect("/dashboard/apps")


# --- apps ----------------------------------------------------------------------------

@page
async def apps(request: web.Request) -> web.StreamResponse:
    session = request[SESSION]
    if session.kind == "app":
        return redirect(f"/dashboard/apps/{session.app_id}/events")
    cursor = _text(request.query, "before")
    found = await request.app[keys.STORE].list_apps(cursor, PAGE_SIZE)
    return await render(request, "apps.html", {
        "apps": found.rows, "older": older_link(request, found.next_cursor)}, nav="apps")


# --- events --------------------------------------------------------------------------

@page
async def events(request: web.Request) -> web.StreamResponse:
    viewed, q = request[VIEWED], request.query
    search = _text(q, "q")
    store = request.app[keys.STORE]
    if search is not None and search.startswith("dlv_"):
        try:
            delivery = await store.get_delivery(viewed.id, search)
        except NotFound:
            pass
        else:
            return redirect(f"/dashboard/apps/{viewed.id}/events/{delivery['event_id']}"
                            f"#{delivery['id']}")
    span = time_range(q)
    found = await store.dashboard_events(
        viewed.id, event_type=_text(q, "type"),
        status=_choice(q, "status", DELIVERY_STATUSES), since=span.since, until=span.until,
        id_prefix=search, cursor=_text(q, "before"), limit=PAGE_SIZE)
    return await render(request, "events.html", {
        "events": found.rows, "older": older_link(request, found.next_cursor),
        "q": {k: q.get(k, "") for k in ("type", "status", "window", "since", "until", "q")},
        "windows": list(WINDOWS), "statuses": DELIVERY_STATUSES,
    }, nav="events")


@dataclass
class DeliveryView:
    row: asyncpg.Record
    attempts: list[asyncpg.Record] = field(default_factory=list)


@page
async def event(request: web.Request) -> web.StreamResponse:
    viewed = request[VIEWED]
    store = request.app[keys.STORE]
    row = await store.dashboard_event(viewed.id, request.match_info["event_id"])
    rows = await store.dashboard_event_deliveries(viewed.id, row["id"],
                                                  EVENT_DELIVERIES_SHOWN + 1)
    views = {r["id"]: DeliveryView(r) for r in rows[:EVENT_DELIVERIES_SHOWN]}
    for attempt in await store.dashboard_attempts(list(views)):
        views[attempt["delivery_id"]].attempts.append(attempt)
    moving = any(v.row["status"] == "pending" for v in views.values())
    return await render(request, "event.html", {
        "event": row, "deliveries": list(views.values()),
        "more": len(rows) > EVENT_DELIVERIES_SHOWN, "shown": EVENT_DELIVERIES_SHOWN,
        # While something is still pending, the page refreshes itself to show it land.
        "refresh_s": 2 if moving else 0,
    }, nav="events")


# --- endpoints -----------------------------------------------------------------------

@page
async def endpoints(request: web.Request) -> web.StreamResponse:
    found = await request.app[keys.STORE].list_endpoints(
        request[VIEWED].id, _text(request.query, "before"), PAGE_SIZE)
    return await render(request, "endpoints.html", {
        "endpoints": found.rows, "older": older_link(request, found.next_cursor)},
        nav="endpoints")


async def _form(request: web.Request) -> Mapping[str, str]:
    form = await request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}


@page
async def endpoint_status(request: web.Request) -> web.StreamResponse:
    viewed = request[VIEWED]
    status = _choice(await _form(request), "status", ("active", "disabled"))
    if status is None:
        raise ValidationError("'status' must be active or disabled.",
                              details=[{"path": "status", "message": "field required"}])
    changes: dict[str, Any] = {"status": status}
    if status == "disabled":
        changes["disabled_reason"] = "disabled from the dashboard"
    await request.app[keys.STORE].update_endpoint(viewed.id, request.match_info["endpoint_id"],
                                                  changes)
    return redirect(f"/dashboard/apps/{viewed.id}/endpoints?notice="
                    + ("enabled" if status == "active" else "disabled"))


@page
async def rotate_secret(request: web.Request) -> web.StreamResponse:
    row = await request.app[keys.STORE].rotate_secret(request[VIEWED].id,
                                                      request.match_info["endpoint_id"])
    # The one page that shows a secret: the new one, once, never cached (HEADERS).
    return await render(request, "secret.html", {"endpoint": row}, nav="endpoints")


@page
async def send_test_event(request: web.Request) -> web.StreamResponse:
    viewed = request[VIEWED]
    endpoint_id = request.match_info["endpoint_id"]
    payload = json.dumps({
        "message": "Test event sent from the gateway dashboard.",
        "endpoint_id": endpoint_id,
        "sent_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    })
    row = await request.app[keys.STORE].send_test_event(viewed.id, endpoint_id, payload)
    if row is None:
        raise Conflict("This endpoint is disabled; enable it before sending a test event.")
    return redirect(f"/dashboard/apps/{viewed.id}/events/{row['id']}?notice=test_sent")


# --- deliveries ----------------------------------------------------------------------

@dataclass(frozen=True)
class DeliveryFilter:
    status: str | None
    endpoint_id: str | None
    event_type: str | None
    span: TimeRange


def delivery_filter(query: Mapping[str, str]) -> DeliveryFilter:
    return DeliveryFilter(_choice(query, "status", DELIVERY_STATUSES),
                          _text(query, "endpoint_id"), _text(query, "type"),
                          time_range(query))


@page
async def deliveries(request: web.Request) -> web.StreamResponse:
    viewed, q = request[VIEWED], request.query
    store = request.app[keys.STORE]
    chosen = delivery_filter(q)
    found = await store.dashboard_deliveries(
        viewed.id, status=chosen.status, endpoint_id=chosen.endpoint_id,
        event_type=chosen.event_type, since=chosen.span.since, until=chosen.span.until,
        cursor=_text(q, "before"), limit=PAGE_SIZE)
    endpoint_rows = (await store.list_endpoints(viewed.id, None, 250)).rows
    return await render(request, "deliveries.html", {
        "deliveries": found.rows, "older": older_link(request, found.next_cursor),
        "endpoints": endpoint_rows,
        "q": {k: q.get(k, "") for k in ("status", "endpoint_id", "type", "window", "since",
                                        "until")},
        "windows": list(WINDOWS), "statuses": DELIVERY_STATUSES,
    }, nav="failed" if chosen.status == "failed" else "deliveries")


@page
async def retry_one(request: web.Request) -> web.StreamResponse:
    viewed = request[VIEWED]
    row = await request.app[keys.STORE].retry_delivery(viewed.id,
                                                       request.match_info["delivery_id"])
    return redirect(f"/dashboard/apps/{viewed.id}/events/{row['event_id']}?notice=retried"
                    f"#{row['id']}")


@page
async def retry_all(request: web.Request) -> web.StreamResponse:
    viewed = request[VIEWED]
    form = await _form(request)
    chosen = delivery_filter(form)
    count = await request.app[keys.STORE].retry_failed(
        viewed.id, endpoint_id=chosen.endpoint_id, event_type=chosen.event_type,
        since=chosen.span.since, until=chosen.span.until)
    kept = {k: form[k] for k in ("endpoint_id", "type", "window", "since", "until")
            if form.get(k)}
    return redirect(f"/dashboard/apps/{viewed.id}/deliveries?"
                    + urlencode({"status": "failed", **kept, "notice": "retried_all",
                                 "count": count}))


# --- devices -------------------------------------------------------------------------

@page
async def devices(request: web.Request) -> web.StreamResponse:
    q = request.query
    found = await request.app[keys.STORE].dashboard_devices(
        request[VIEWED].id, search=_text(q, "q"),
        status=_choice(q, "status", ("active", "pruned")),
        platform=_choice(q, "platform", ("ios", "android")),
        cursor=_text(q, "before"), limit=PAGE_SIZE)
    return await render(request, "devices.html", {
        "devices": found.rows, "older": older_link(request, found.next_cursor),
        "q": {k: q.get(k, "") for k in ("q", "status", "platform")},
    }, nav="devices")


# --- sandbox inbox -------------------------------------------------------------------

@dataclass(frozen=True)
class Notification:
    title: str
    subtitle: str
    body: str
    image: str
    received_at: datetime
    background: bool
    details: list[tuple[str, str]]


@dataclass
class Phone:
    provider: str
    token: str
    notifications: list[Notification] = field(default_factory=list)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def notification(provider: str, payload: Mapping[str, Any], received_at: float) -> Notification:
    """What a phone would show for a push, read from what the fake provider received."""
    at = datetime.fromtimestamp(received_at, UTC)
    details: list[tuple[str, str]] = []
    if provider == "apns":
        aps = _obj(payload.get("aps"))
        alert = aps.get("alert")
        title = subtitle = body = ""
        if isinstance(alert, str):
            body = alert
        else:
            alert = _obj(alert)
            title, subtitle, body = (_str(alert.get("title")), _str(alert.get("subtitle")),
                                     _str(alert.get("body")))
        details += [(name, json.dumps(aps[name]))
                    for name in ("badge", "sound", "category", "thread-id") if name in aps]
        details += [(k, json.dumps(v)) for k, v in payload.items() if k != "aps"]
        return Notification(title, subtitle, body, "", at,
                            background=not (title or body) and bool(aps.get("content-available")),
                            details=details)
    shown, android = _obj(payload.get("notification")), _obj(payload.get("android"))
    overrides = _obj(android.get("notification"))
    title = _str(overrides.get("title")) or _str(shown.get("title"))
    body = _str(overrides.get("body")) or _str(shown.get("body"))
    details += [(k, _str(v)) for k, v in _obj(payload.get("data")).items()]
    details += [(name, json.dumps(android[name]))
                for name in ("priority", "collapse_key", "ttl") if name in android]
    return Notification(title, "", body, _str(shown.get("image")), at,
                        background=not (title or body), details=details)


@page
async def sandbox(request: web.Request) -> web.StreamResponse:
    fakes = request.app.get(keys.SANDBOX)
    phones: list[Phone] = []
    if fakes is not None:
        pushes = fakes.received()
        mine = await request.app[keys.STORE].device_tokens(
            request[VIEWED].id, list({p.token for p in pushes}))
        by_token: dict[tuple[str, str], Phone] = {}
        for push in reversed(pushes):
            if push.token not in mine:
                continue
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


def _route(method: str, path: str, handler: Handler, summary: str) -> Route:
    return Route(method, path, handler, summary, "dashboard", auth=("dashboard",),
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
    _route("POST", "/dashboard/logout", logout, "Sign out"),
    _route("GET", "/dashboard", home, "The dashboard"),
    _route("GET", "/dashboard/apps", apps, "Pick an app (operator)"),
    _route("GET", f"{APP}/events", events, "Events"),
    _route("GET", f"{APP}/events/{{event_id}}", event, "An event, its deliveries and attempts"),
    _route("GET", f"{APP}/endpoints", endpoints, "Endpoints"),
    _route("POST", f"{APP}/endpoints/{{endpoint_id}}/status", endpoint_status,
           "Enable or disable an endpoint"),
    _route("POST", f"{APP}/endpoints/{{endpoint_id}}/rotate", rotate_secret,
           "Rotate an endpoint's secret (shown once)"),
    _route("POST", f"{APP}/endpoints/{{endpoint_id}}/test", send_test_event,
           "Send a gateway.test event to one endpoint"),
    _route("GET", f"{APP}/deliveries", deliveries, "Deliveries, failed ones first"),
    _route("POST", f"{APP}/deliveries/retry", retry_all, "Retry every failed delivery "
           "matching a filter"),
    _route("POST", f"{APP}/deliveries/{{delivery_id}}/retry", retry_one, "Retry a delivery"),
    _route("GET", f"{APP}/devices", devices, "Devices"),
    _route("GET", f"{APP}/sandbox", sandbox, "The sandbox's push inbox"),
]
