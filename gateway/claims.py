"""Signed claims: a small JSON object and an HMAC-SHA256 over it, as
``<base64url claims>.<base64url mac>``. User tokens (``ut_`` + this) and dashboard
sessions are both made and checked here, so there is one way to sign and one way to
verify (in constant time)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mac(key: bytes, data: str) -> str:
    """The base64url HMAC-SHA256 of ``data``."""
    return _b64(hmac.new(key, data.encode(), hashlib.sha256).digest())


def sign(key: bytes, claims: dict[str, Any]) -> str:
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{body}.{mac(key, body)}"


def unverified(token: str) -> dict[str, Any] | None:
    """The claims a token carries, without checking them (to find the key that will)."""
    body = token.partition(".")[0]
    try:
        claims = json.loads(_unb64(body))
    except (ValueError, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def verify(key: bytes, token: str) -> dict[str, Any] | None:
    """The claims, when ``token`` was signed with ``key``; None when it was not."""
    body, _, sig = token.partition(".")
    if not sig or not hmac.compare_digest(sig.encode("ascii", "replace"),
                                          mac(key, body).encode()):
        return None
    return unverified(token)
