"""APNs provider API over HTTP/2 and TLS, with token (ES256 JWT) authentication.

``apns2`` cannot be imported on Python 3.10+ (its ``hyper`` dependency imports
``collections.Iterable``) and pins PyJWT<2 and h2 2.x, so this adapter speaks the
provider API itself over ``httpx`` with HTTP/2: a few long-lived multiplexed
connections, never one per push, and one provider token per key reused for 40 minutes
(Apple refuses tokens older than an hour and throttles refreshes under 20 minutes).
"""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt

from adapters.base import DeliveryJob, Outcome, Verdict, parse_retry_after
from adapters.payloads import apns_headers, encode_apns_payload

PRODUCTION_URL = "https://api.push.apple.com"
SANDBOX_URL = "https://api.sandbox.push.apple.com"
#: Reuse a provider token this long: inside Apple's 20-60 minute window.
TOKEN_REUSE_S = 40 * 60

#: Reasons after which the device token is dead: prune it.
_PRUNE = {"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered"}
#: Reasons worth another attempt later.
_RETRY = {"TooManyRequests", "InternalServerError", "ServiceUnavailable", "Shutdown",
          "IdleTimeout"}


class _ProviderToken:
    """One ES256 provider token per signing key, reused, refreshed only when due or when
    Apple says it expired."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}

    def get(self, creds: Mapping[str, Any], *, force: bool = False) -> str:
        key = (creds["team_id"], creds["key_id"])
        now = time.time()
        cached = self._tokens.get(key)
        if cached is not None and not force and now - cached[1] < TOKEN_REUSE_S:
            return cached[0]
        if force and cached is not None and now - cached[1] < 1:
            return cached[0]  # another request already refreshed it just now
        token = jwt.encode({"iss": creds["team_id"], "iat": int(now)}, creds["key_p8"],
                           algorithm="ES256", headers={"kid": creds["key_id"]})
        self._tokens[key] = (token, now)
        return token


class APNsAdapter:
    """Sends APNs pushes over a small pool of long-lived HTTP/2 connections."""

    kind = "apns"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 15.0,
        max_connections: int = 4,
        default_credentials: Mapping[str, Any] | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/") if base_url else None
        self._default = default_credentials
        self._tokens = _ProviderToken()
        self._client = httpx.AsyncClient(
            http2=True, verify=ssl_context or ssl.create_default_context(),
            timeout=timeout_s, trust_env=False,
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections,
                                keepalive_expiry=None),
        )

    def _url(self, creds: Mapping[str, Any], token: str) -> str:
        base = self._base_url or (
            SANDBOX_URL if creds.get("environment") == "sandbox" else PRODUCTION_URL)
        return f"{base}/3/device/{token}"

    async def send(self, job: DeliveryJob) -> Outcome:
        assert job.device is not None and job.notification is not None
        creds = job.credentials or self._default
        if creds is None:
            return Outcome(Verdict.FAILED, error="no APNs credentials for this app")
        body = encode_apns_payload(job.notification)
        headers = apns_headers(job.notification, creds["topic"], time.time())
        headers["apns-id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, job.delivery_id))
        started = time.monotonic()
        refreshed = False
        while True:
            headers["authorization"] = "bearer " + self._tokens.get(creds, force=refreshed)
            try:
                resp = await self._client.post(self._url(creds, job.device.token),
                                               content=body, headers=headers)
            except httpx.TimeoutException:
                return Outcome(Verdict.RETRY, error="APNs timed out",
                               duration_ms=_ms(started))
            except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
                return Outcome(Verdict.RETRY, error=f"APNs connection failed: {exc!r}"[:500],
                               duration_ms=_ms(started))
            outcome = self._judge(resp, started)
            if outcome.error == "ExpiredProviderToken" and not refreshed:
                refreshed = True  # Apple says the token aged out: make a new one, once
                continue
            return outcome

    def _judge(self, resp: httpx.Response, started: float) -> Outcome:
        status = resp.status_code
        duration = _ms(started)
        if status == 200:
            return Outcome(Verdict.DELIVERED, status_code=200, duration_ms=duration,
                           response_snippet=resp.headers.get("apns-id"))
        reason, since = "", None
        try:
            answer = resp.json()
            reason = str(answer.get("reason", ""))
            if "timestamp" in answer:
                since = datetime.fromtimestamp(int(answer["timestamp"]) / 1000, UTC)
        except (ValueError, AttributeError, TypeError):
            reason = f"HTTP {status}"
        snippet = resp.text[:512]
        if reason in _PRUNE:
            return Outcome(Verdict.GONE, status_code=status, duration_ms=duration,
                           error=reason, gone_reason=f"apns:{reason}", gone_since=since,
                           response_snippet=snippet)
        if reason in _RETRY or status in (429, 500, 502, 503, 504):
            return Outcome(Verdict.RETRY, status_code=status, duration_ms=duration,
                           error=reason or f"HTTP {status}", response_snippet=snippet,
                           retry_after_s=parse_retry_after(resp.headers.get("retry-after")))
        return Outcome(Verdict.FAILED, status_code=status, duration_ms=duration,
                       error=reason or f"HTTP {status}", response_snippet=snippet)

    async def close(self) -> None:
        await self._client.aclose()


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
