"""Dashboard sessions and CSRF tokens.

Signing in takes the operator key (every app) or an app key (that app only); user tokens
are refused. The session is a cookie holding signed claims (:mod:`gateway.claims`)
``{kind, app_id, exp}``, keyed from ``GATEWAY_ADMIN_KEY``, so every gateway process
sharing that key accepts it and changing the key signs everyone out. Every form that
changes something carries a CSRF token derived from the session cookie (an HMAC of it),
on top of ``SameSite=Strict``.
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


def session_key(admin_key: str) -> bytes:
    """What sessions are signed with: derived from the operator key, never the key itself."""
    return hmac.new(admin_key.encode(), b"gateway dashboard session v1", hashlib.sha256).digest()


def issue_session(key: bytes, kind: Literal["admin", "app"], app_id: str | None,
                  now: float) -> str:
    return claims.sign(key, {"kind": kind, "app_id": app_id, "exp": int(now) + SESSION_TTL_S})


def read_session(key: bytes, token: str | None, now: float) -> Session | None:
    """The session a cookie holds, or None if it is missing, forged or expired."""
    if not token:
        return None
    found = claims.verify(key, token)
    if found is None:
        return None
    kind, app_id, exp = found.get("kind"), found.get("app_id"), found.get("exp")
    if not isinstance(exp, int) or exp <= now:
        return None
    if kind == "admin":
        return Session("admin", None, exp, token)
    if kind == "app" and isinstance(app_id, str):
        return Session("app", app_id, exp, token)
    return None


def csrf_token(key: bytes, session: Session) -> str:
    return claims.mac(key, "csrf " + session.token)


def signing_key(request: web.Request) -> bytes | None:
    admin_key = request.app[appkeys.SETTINGS].admin_key
    return session_key(admin_key) if admin_key else None


def current_session(request: web.Request) -> Session | None:
    key = signing_key(request)
    if key is None:
        return None
    return read_session(key, request.cookies.get(SESSION_COOKIE), time.time())
