"""APNs provider API over HTTP/2 and TLS, with token (ES256 JWT) authentication.

``apns2`` cannot be imported on Python 3.10+ (its ``hyper`` dependency imports
``collections.Iterable``) and pins PyJWT<2 and h2 2.x, and httpx/httpcore re-send
streams a server had already processed after a GOAWAY (duplicate pushes) and can stall
when the server lowers its stream limit, so this adapter speaks the provider API itself
over :mod:`adapters.http2`: a few long-lived multiplexed connections per app, never one
per push, and one provider token per key reused for 40 minutes (Apple refuses tokens
older than an hour and throttles refreshes under 20 minutes). A push is re-sent by the
pool only when the protocol says the server never processed it; when an answer is lost
otherwise, the delivery is retried later (at least once).
"""

from __future__ import annotations

import hashlib
import json
import ssl
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

from adapters.base import DeliveryJob, Outcome, Verdict, parse_retry_after, snippet
from adapters.http2 import (
    ConnectError,
    ConnectionLost,
    HTTP2Pool,
    RequestTimeout,
    Response,
    StreamReset,
)
from adapters.payloads import apns_headers, encode_apns_payload

PRODUCTION_URL = "https://api.push.apple.com"
SANDBOX_URL = "https://api.sandbox.push.apple.com"
#: Reuse a provider token this long: inside Apple's 20-60 minute window.
TOKEN_REUSE_S = 40 * 60

#: Header values different on every push: kept out of the HPACK table (it would only
#: churn).
_UNIQUE_HEADERS = (":path", "apns-id", "apns-expiration")
#: Reasons after which the device token is dead: prune it.
_PRUNE = {"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered"}
#: Reasons that mean Apple refused the app's key, certificate or topic.
_CREDENTIALS = {"InvalidProviderToken", "BadCertificate", "BadCertificateEnvironment",
                "Forbidden", "UnrelatedKeyIdInToken", "BadEnvironmentKeyIdInToken",
                "TopicDisallowed"}
#: Reasons worth another attempt later.
_RETRY = {"TooManyRequests", "InternalServerError", "ServiceUnavailable", "Shutdown",
          "IdleTimeout"}


def fingerprint(creds: Mapping[str, Any]) -> str:
    """Identifies the key material: a credential replaced under the same ids differs."""
    material = "\n".join(str(creds.get(k, "")) for k in ("team_id", "key_id", "key_p8"))
    return hashlib.sha256(material.encode()).hexdigest()


class _ProviderToken:
    """One ES256 provider token per app and key fingerprint, reused, refreshed only when
    due or when Apple says it expired. Two apps uploading the same team and key ids with
    different keys never share (or spoil) each other's tokens, and a replaced key is used
    from the next send."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._keys: dict[str, EllipticCurvePrivateKey] = {}

    def get(self, app_id: str, creds: Mapping[str, Any], *, force: bool = False) -> str:
        printed = fingerprint(creds)
        scope = (app_id, printed)
        now = time.time()
        cached = self._tokens.get(scope)
        if cached is not None and not force and now - cached[1] < TOKEN_REUSE_S:
            return cached[0]
        if force and cached is not None and now - cached[1] < 1:
            return cached[0]  # another request already refreshed it just now
        key = self._keys.get(printed)
        if key is None:
            loaded = serialization.load_pem_private_key(str(creds["key_p8"]).encode(), None)
            if not isinstance(loaded, EllipticCurvePrivateKey):
                raise ValueError("the APNs key is not an EC key")
            key = self._keys[printed] = loaded
        token = jwt.encode({"iss": creds["team_id"], "iat": int(now)}, key,
                           algorithm="ES256", headers={"kid": creds["key_id"]})
        self._tokens[scope] = (token, now)
        return token


class APNsAdapter:
    """Sends APNs pushes over a small pool of long-lived HTTP/2 connections per app."""

    kind = "apns"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 15.0,
        max_connections: int = 4,
    ) -> None:
        self._base_url = base_url.rstrip("/") if base_url else None
        self._tokens = _ProviderToken()
        self._ssl = ssl_context or ssl.create_default_context()
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        #: One pool per app and origin: APNs takes one team's provider tokens per
        #: connection, and an app's connections stay its own.
        self._pools: dict[tuple[str, str], HTTP2Pool] = {}

    def _pool(self, app_id: str, creds: Mapping[str, Any]) -> HTTP2Pool:
        origin = self._base_url or (
            SANDBOX_URL if creds.get("environment") == "sandbox" else PRODUCTION_URL)
        pool = self._pools.get((app_id, origin))
        if pool is None:
            pool = self._pools[(app_id, origin)] = HTTP2Pool(
                origin, self._ssl, max_connections=self._max_connections,
                connect_timeout_s=self._timeout_s, unique_headers=_UNIQUE_HEADERS)
        return pool

    async def send(self, job: DeliveryJob) -> Outcome:
        assert job.device is not None and job.notification is not None
        creds = job.credentials
        if creds is None:
            return Outcome(Verdict.FAILED, error="no APNs credentials for this app")
        body = encode_apns_payload(job.notification)
        fixed = [*apns_headers(job.notification, creds["topic"], time.time()).items(),
                 ("apns-id", str(uuid.uuid5(uuid.NAMESPACE_URL, job.delivery_id)))]
        path = f"/3/device/{job.device.token}"
        pool = self._pool(job.app_id, creds)
        started = time.monotonic()
        refreshed = False
        while True:
            try:
                token = self._tokens.get(job.app_id, creds, force=refreshed)
            except ValueError as exc:
                return Outcome(Verdict.FAILED, error=f"APNs key: {exc}",
                               duration_ms=_ms(started))
            headers = [*fixed, ("authorization", "bearer " + token)]
            try:
                resp = await pool.request("POST", path, headers, body,
                                          timeout_s=self._timeout_s)
            except RequestTimeout:
                return Outcome(Verdict.RETRY, error="APNs timed out", duration_ms=_ms(started))
            except ConnectError as exc:
                return Outcome(Verdict.RETRY, error=f"APNs connection failed: {exc}",
                               duration_ms=_ms(started))
            except (ConnectionLost, StreamReset) as exc:
                # Possibly delivered: the protocol cannot tell, so at least once.
                return Outcome(Verdict.RETRY, error=f"APNs answer lost: {exc}",
                               duration_ms=_ms(started))
            outcome = self._judge(resp, started)
            if outcome.error == "ExpiredProviderToken" and not refreshed:
                refreshed = True  # Apple says the token aged out: make a new one, once
                continue
            return outcome

    def _judge(self, resp: Response, started: float) -> Outcome:
        status = resp.status
        duration = _ms(started)
        if status == 200:
            return Outcome(Verdict.DELIVERED, status_code=200, duration_ms=duration,
                           response_snippet=resp.headers.get("apns-id"))
        reason, since = "", None
        try:
            answer = json.loads(resp.body)
            reason = str(answer.get("reason", ""))
            if "timestamp" in answer:
                since = datetime.fromtimestamp(int(answer["timestamp"]) / 1000, UTC)
        except (ValueError, AttributeError, TypeError):
            reason = f"HTTP {status}"
        shown = snippet(resp.body, 300)
        if reason in _PRUNE:
            return Outcome(Verdict.GONE, status_code=status, duration_ms=duration,
                           error=reason, gone_reason=f"apns:{reason}", gone_since=since,
                           response_snippet=shown)
        if reason in _RETRY or status in (429, 500, 502, 503, 504):
            return Outcome(Verdict.RETRY, status_code=status, duration_ms=duration,
                           error=reason or f"HTTP {status}", response_snippet=shown,
                           retry_after_s=parse_retry_after(resp.headers.get("retry-after")))
        return Outcome(Verdict.FAILED, status_code=status, duration_ms=duration,
                       error=reason or f"HTTP {status}", response_snippet=shown,
                       credentials_rejected=reason if reason in _CREDENTIALS else None)

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
