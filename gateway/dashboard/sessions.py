"""Dashboard sessions and CSRF tokens.

Signing in takes the operator key (every app) or an app key (that app only); user tokens
are refused. The session is a row in PostgreSQL (``dashboard_sessions``) and a cookie
holding signed claims (:mod:`gateway.claims`) ``{sid, kind, app_id, exp}``, keyed from
``GATEWAY_ADMIN_KEY``: every gateway process sharing that key and database accepts it,
changing the key signs everyone out, and signing out deletes the row, so a copied cookie
stops working at once. The cookie is ``HttpOnly``, ``SameSite=Strict``, and ``Secure``
when the dashboard is served over HTTPS. Every form that changes something carries a
CSRF token derived from the session cookie (an HMAC of it).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from gateway import appkeys, claims

SESSION_COOKIE = "gw_dashboard"
SESSION_TTL_S = 12 * 3600
COOKIE_PATH = "/dashboard"


@dataclass(frozen=True)
class Session:
    kind: Literal["admin", "app"]
    app_id: str | None
    expires_at: int
    #: The signed cookie value; the CSRF token is derived from it.
    token: str
    #: The session's row (None in a cookie signed before sessions had rows: refused).
    id: str | None = None


def session_key(admin_key: str) -> bytes:
    """What sessions are signed with: derived from the operator key, never the key itself."""
    return hmac.new(admin_key.encode(), b"gateway dashboard session v1", hashlib.sha256).digest()


def issue_session(key: bytes, kind: Literal["admin", "app"], app_id: str | None,
                  now: float, session_id: str | None = None) -> str:
    return claims.sign(key, {"sid": session_id, "kind": kind, "app_id": app_id,
                             "exp": int(now) + SESSION_TTL_S})


def read_session(key: bytes, token: str | None, now: float) -> Session | None:
    """The session a cookie holds, or None if it is missing, forged or expired."""
    if not token:
        return None
    found = claims.verify(key, token)
    if found is None:
        return None
    kind, app_id, exp = found.get("kind"), found.get("app_id"), found.get("exp")
    sid = found.get("sid") if isinstance(found.get("sid"), str) else None
    if not isinstance(exp, int) or exp <= now:
        return None
    if kind == "admin":
        return Session("admin", None, exp, token, sid)
    if kind == "app" and isinstance(app_id, str):
        return Session("app", app_id, exp, token, sid)
    return None


def csrf_token(key: bytes, session: Session) -> str:
    return claims.mac(key, "csrf " + session.token)


def signing_key(request: web.Request) -> bytes | None:
    admin_key = request.app[appkeys.SETTINGS].admin_key
    return session_key(admin_key) if admin_key else None


async def current_session(request: web.Request) -> Session | None:
    """The request's session: a valid cookie whose row still exists."""
    key = signing_key(request)
    if key is None:
        return None
    session = read_session(key, request.cookies.get(SESSION_COOKIE), time.time())
    if session is None or session.id is None:
        return None
    if not await request.app[appkeys.STORE].session_alive(session.id):
        return None
    return session


def served_over_https(request: web.Request) -> bool:
    """HTTPS here, or at the TLS proxy in front (which says so in X-Forwarded-Proto)."""
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
