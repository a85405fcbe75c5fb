"""Short-lived user tokens: what a mobile app holds instead of the backend's app key.

``ut_`` + signed claims (:mod:`gateway.claims`) ``{"a": app id, "u": user id, "e":
expiry}`` under the app's own secret (``apps.user_token_secret``). They are checked
without a database row per token, and expire by themselves.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from gateway import claims
from gateway.errors import Unauthorized

PREFIX = "ut_"
#: The shape of an app id (gateway/ids.py): a forged token names nothing else.
_APP_ID = re.compile(r"app_[0-9a-f]{32}")


@dataclass(frozen=True)
class UserClaims:
    app_id: str
    user_id: str
    expires_at: int


def mint(app_id: str, user_id: str, ttl_seconds: int, secret: bytes,
         now: float | None = None) -> tuple[str, int]:
    expires_at = int(now if now is not None else time.time()) + ttl_seconds
    return PREFIX + claims.sign(secret, {"a": app_id, "u": user_id, "e": expires_at}), \
        expires_at


def unverified_app_id(token: str) -> str:
    """The app a token claims to belong to, to fetch the secret that checks it."""
    return _claims(claims.unverified(token.removeprefix(PREFIX))).app_id


def verify(token: str, secret: bytes, now: float | None = None) -> UserClaims:
    if not token.startswith(PREFIX):
        raise Unauthorized("Invalid user token.")
    found = claims.verify(secret, token.removeprefix(PREFIX))
    if found is None:
        raise Unauthorized("Invalid user token.")
    user = _claims(found)
    if user.expires_at <= (now if now is not None else time.time()):
        raise Unauthorized("The user token has expired; ask the backend for a new one.")
    return user


def _claims(raw: dict[str, Any] | None) -> UserClaims:
    app_id, user_id, expires_at = (raw or {}).get("a"), (raw or {}).get("u"), \
        (raw or {}).get("e")
    if not (isinstance(app_id, str) and _APP_ID.fullmatch(app_id)
            and isinstance(user_id, str) and type(expires_at) is int):
        raise Unauthorized("Invalid user token.")
    return UserClaims(app_id, user_id, expires_at)
