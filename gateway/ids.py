"""Identifiers and secrets.

Ids are ``<prefix>_`` + 12 hex digits of Unix milliseconds + 20 random hex digits: they
sort by creation time, so cursors are plain ids. ``gateway_id()`` in the first migration
makes the same shape inside PostgreSQL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from datetime import UTC, datetime, timedelta


def new_id(prefix: str) -> str:
    """``<prefix>_`` then the millisecond (12 hex digits, so ids sort by time) and 80
    random bits."""
    return new_ids(prefix, 1)[0]


def new_ids(prefix: str, count: int) -> list[str]:
    """``count`` ids of one millisecond, from one read of the random source."""
    stamp = f"{prefix}_{int(time.time() * 1000):012x}"
    random = secrets.token_hex(10 * count)
    return [stamp + random[i:i + 20] for i in range(0, 20 * count, 20)]


def new_api_key() -> str:
    return "gk_" + secrets.token_urlsafe(32)


def hash_key(key: str) -> bytes:
    """API keys are random 256-bit strings, so one SHA-256 is the right hash (no KDF needed)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def keys_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def new_webhook_secret() -> str:
    """Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def time_bound(prefix: str, when: datetime) -> str:
    """Where ids of ``prefix`` made at ``when`` begin, to the millisecond: every such id
    made at ``when`` or later sorts above it, every one made earlier below (no id equals
    it). The ids made in [since, until) are those between the two bounds."""
    ms = (when - _EPOCH) // timedelta(milliseconds=1)
    return f"{prefix}_{ms:012x}"
