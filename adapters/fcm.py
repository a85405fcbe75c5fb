"""FCM HTTP v1: messages built with pyfcm, OAuth2 access tokens from the service
account through google-auth, sent over the gateway's own pooled async client.

pyfcm is synchronous (``requests``, ``time.sleep`` on Retry-After) and its async path
opens a session per message, so it is used only for what it is good at: building the
v1 message (``parse_payload``). google-auth's token refresh is synchronous too: it runs
in a thread, once per service account, and the token is reused until shortly before
it expires.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC
from pathlib import Path
from typing import Any

import aiohttp
import certifi
import google.auth.transport.requests
import requests
from google.oauth2 import service_account
from pyfcm import FCMNotification

from adapters.base import DeliveryJob, Outcome, Verdict, parse_retry_after
from adapters.payloads import fcm_android_config

FCM_URL = "https://fcm.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
#: Refresh an access token this long before it expires.
REFRESH_MARGIN_S = 300
_RETRY_CODES = {"UNAVAILABLE", "INTERNAL"}
QUOTA_MIN_DELAY_S = 60.0


def merged_ca_bundle(ca_file: str) -> str:
    """certifi's roots followed by ``ca_file``, in a file requests can use; named by its
    content, so every process shares one file per bundle."""
    text = Path(certifi.where()).read_text() + "\n" + Path(ca_file).read_text()
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    merged = Path(tempfile.gettempdir()) / f"gateway-ca-{digest}.pem"
    if not merged.exists():
        partial = merged.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text)
        partial.replace(merged)
    return str(merged)


class _AccessTokens:
    """OAuth2 access tokens per service account, refreshed off the event loop."""

    def __init__(self, token_url: str | None, session: requests.Session) -> None:
        self._token_url = token_url
        self._session = session
        self._creds: dict[str, service_account.Credentials] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def credentials(self, info: Mapping[str, Any]) -> service_account.Credentials:
        email = str(info["client_email"])
        creds = self._creds.get(email)
        if creds is None:
            data = dict(info)
            if self._token_url:
                data["token_uri"] = self._token_url
            creds = service_account.Credentials.from_service_account_info(data, scopes=[SCOPE])
            self._creds[email] = creds
        return creds

    async def get(self, info: Mapping[str, Any], *, stale: str | None = None) -> str:
        creds = self.credentials(info)
        lock = self._locks.setdefault(creds.service_account_email, asyncio.Lock())
        async with lock:
            fresh = (creds.token is not None and creds.token != stale and creds.expiry is not None
                     # google-auth keeps expiry as a naive UTC datetime
                     and creds.expiry.replace(tzinfo=UTC).timestamp() - time.time()
                     > REFRESH_MARGIN_S)
            if not fresh:
                request = google.auth.transport.requests.Request(self._session)
                await asyncio.to_thread(creds.refresh, request)
            return str(creds.token)


class FCMAdapter:
    """Sends FCM v1 messages with bounded concurrency over one pooled client."""

    kind = "fcm"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        token_url: str | None = None,
        ca_file: str | None = None,
        timeout_s: float = 15.0,
        max_connections: int = 64,
        default_credentials: Mapping[str, Any] | None = None,
    ) -> None:
        self._base_url = (base_url or FCM_URL).rstrip("/")
        self._default = default_credentials
        session = requests.Session()
        if ca_file:
            # requests takes one CA path, and REQUESTS_CA_BUNDLE would override verify=:
            # trust the usual roots plus the configured CA through a merged bundle.
            session.trust_env = False
            session.verify = merged_ca_bundle(ca_file)
        self._tokens = _AccessTokens(token_url, session)
        self._builders: dict[str, FCMNotification] = {}
        self._ssl = ssl.create_default_context()
        if ca_file:
            self._ssl.load_verify_locations(ca_file)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # aiohttp's keep-alive pool, not httpx: httpcore's pool rescans every connection
        # for every queued request and cost ~3 ms of CPU per push (bench/README.md, Push).
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ssl=self._ssl),
                timeout=self._timeout, trust_env=False,
            )
        return self._session

    def message(self, job: DeliveryJob, info: Mapping[str, Any]) -> bytes:
        """The v1 request body, built by pyfcm's payload builder."""
        assert job.device is not None and job.notification is not None
        n = job.notification
        builder = self._builders.get(info["client_email"])
        if builder is None:
            builder = FCMNotification(credentials=self._tokens.credentials(info),
                                      project_id=info["project_id"])
            self._builders[info["client_email"]] = builder
        overrides = n.get("fcm") or {}
        data = {**(n.get("data") or {}), **(overrides.get("data") or {})}
        body: bytes = builder.parse_payload(
            fcm_token=job.device.token,
            notification_title=n.get("title"),
            notification_body=n.get("body"),
            notification_image=n.get("image"),
            data_payload=data or None,
            android_config=fcm_android_config(n),
            apns_config=overrides.get("apns"),
            webpush_config=overrides.get("webpush"),
            fcm_options=overrides.get("fcm_options"),
        )
        if not (n.get("title") or n.get("body")) and not data:
            # pyfcm leaves an empty "notification" on a data-less background push
            message = json.loads(body)
            message["message"].pop("notification", None)
            body = json.dumps(message).encode()
        return body

    async def send(self, job: DeliveryJob) -> Outcome:
        info = job.credentials or self._default
        if info is None:
            return Outcome(Verdict.FAILED, error="no FCM credentials for this app")
        started = time.monotonic()
        body = self.message(job, info)
        url = f"{self._base_url}/v1/projects/{info['project_id']}/messages:send"
        stale: str | None = None
        while True:
            try:
                token = await self._tokens.get(info, stale=stale)
            except Exception as exc:  # google-auth raises its own RefreshError family
                return Outcome(Verdict.RETRY, error=f"FCM access token: {exc}"[:500],
                               duration_ms=_ms(started))
            try:
                async with self._client().post(url, data=body, headers={
                    "authorization": f"Bearer {token}", "content-type": "application/json",
                }) as resp:
                    content = await resp.read()
                    status, headers = resp.status, resp.headers
            except TimeoutError:
                return Outcome(Verdict.RETRY, error="FCM timed out", duration_ms=_ms(started))
            except (aiohttp.ClientError, OSError) as exc:
                return Outcome(Verdict.RETRY, error=f"FCM connection failed: {exc!r}"[:500],
                               duration_ms=_ms(started))
            outcome = judge(status, headers, content, _ms(started))
            if outcome.error == "UNAUTHENTICATED" and stale is None:
                stale = token  # the access token expired early: refresh once and retry
                continue
            return outcome

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _error_code(status: int, content: bytes) -> tuple[str, str, list[dict[str, Any]]]:
    """(FCM errorCode or canonical status, message, field violations) from any answer."""
    try:
        error = json.loads(content)["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}", content[:200].decode("utf-8", "replace"), []
    code = ""
    violations: list[dict[str, Any]] = []
    for detail in error.get("details") or []:
        kind = str(detail.get("@type", ""))
        if kind.endswith("google.firebase.fcm.v1.FcmError"):
            code = str(detail.get("errorCode", ""))
        elif kind.endswith("google.rpc.BadRequest"):
            violations += detail.get("fieldViolations") or []
    return code or str(error.get("status", f"HTTP {status}")), str(error.get("message", "")), \
        violations


def judge(status: int, headers: Mapping[str, str], content: bytes, duration_ms: int) -> Outcome:
    """FCM's answer as an outcome: read errorCode wherever it sits in ``details``."""
    if status == 200:
        try:
            name = str(json.loads(content).get("name", ""))
        except ValueError:
            name = ""
        return Outcome(Verdict.DELIVERED, status_code=200, duration_ms=duration_ms,
                       response_snippet=name)
    code, message, violations = _error_code(status, content)
    snippet = content[:512].decode("utf-8", "replace")
    common: dict[str, Any] = {"status_code": status, "duration_ms": duration_ms,
                              "response_snippet": snippet}
    if code in ("UNREGISTERED", "SENDER_ID_MISMATCH"):
        return Outcome(Verdict.GONE, error=code, gone_reason=f"fcm:{code}", **common)
    if code == "INVALID_ARGUMENT":
        if any(v.get("field") == "message.token" for v in violations):
            return Outcome(Verdict.GONE, error=code, gone_reason="fcm:INVALID_ARGUMENT token",
                           **common)
        return Outcome(Verdict.FAILED, error=f"{code}: {message}"[:500], **common)
    if code in ("QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED") or status == 429:
        delay = parse_retry_after(headers.get("retry-after")) or 0.0
        return Outcome(Verdict.RETRY, error=code, retry_after_s=max(delay, QUOTA_MIN_DELAY_S),
                       **common)
    if code == "THIRD_PARTY_AUTH_ERROR":
        return Outcome(Verdict.FAILED, error=code, **common)
    if code == "UNAUTHENTICATED" or (status == 401 and not code.startswith("THIRD")):
        return Outcome(Verdict.RETRY, error="UNAUTHENTICATED", **common)
    if code in _RETRY_CODES or status >= 500:
        return Outcome(Verdict.RETRY, error=code,
                       retry_after_s=parse_retry_after(headers.get("retry-after")), **common)
    return Outcome(Verdict.FAILED, error=f"{code}: {message}"[:500], **common)


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
