"""Short-lived user tokens: what a mobile app holds instead of the backend's app key.

``ut_<claims>.<mac>``: base64url JSON claims ``{"a": app id, "u": user id, "e": expiry}``
and an HMAC-SHA256 of them under the app's own secret (``apps.user_token_secret``). They
are checked without a database row per token, and expire by themselves.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from gateway.errors import Unauthorized

PREFIX = "ut_"


@dataclass(frozen=True)
class UserClaims:
    app_id: str
    user_id: str
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint(app_id: str, user_id: str, ttl_seconds: int, secret: bytes,
         now: float | None = None) -> tuple[str, int]:
    expires_at = int(now if now is not None else time.time()) + ttl_seconds
    claims = _b64(json.dumps({"a": app_id, "u": user_id, "e": expires_at},
                             separators=(",", ":")).encode())
    mac = _b64(hmac.new(secret, claims.encode(), hashlib.sha256).digest())
    return f"{PREFIX}{claims}.{mac}", expires_at


def unverified_app_id(token: str) -> str:
    """The app a token claims to belong to, to fetch the secret that checks it."""
    return _claims(token).app_id


def verify(token: str, secret: bytes, now: float | None = None) -> UserClaims:
    body, _, mac = token.removeprefix(PREFIX).partition(".")
    expected = _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected, mac):
        raise Unauthorized("Invalid user token.")
    claims = _claims(token)
    if claims.expires_at <= (now if now is not None else time.time()):
        raise Unauthorized("The user token has expired; ask the backend for a new one.")
    return claims


def _claims(token: str) -> UserClaims:
    if not token.startswith(PREFIX) or "." not in token:
        raise Unauthorized("Invalid user token.")
    body = token.removeprefix(PREFIX).partition(".")[0]
    try:
        raw = json.loads(_unb64(body))
        return UserClaims(str(raw["a"]), str(raw["u"]), int(raw["e"]))
    except (ValueError, KeyError, TypeError):
        raise Unauthorized("Invalid user token.") from None
