"""FCM HTTP v1: messages built with pyfcm, OAuth2 access tokens from the JWT-bearer grant,
sent over the gateway's own pooled async client.

pyfcm is synchronous (``requests``, ``time.sleep`` on Retry-After) and its async path
opens a session per message, so it is used only for what it is good at: building the
v1 message (``parse_payload``).

Access tokens come from the grant Google documents for service accounts (an RS256
assertion signed with the account's key, exchanged at the token URL), done here over the
same async client rather than through google-auth, because the exchange is a request the
gateway makes on a tenant's behalf and must be held to the gateway's rules:

* it goes only to the operator's token URL (``GATEWAY_FCM_TOKEN_URL``, by default
  Google's), never to the ``token_uri`` a tenant uploads (that would let any app make the
  gateway fetch internal URLs), and never follows a redirect;
* its error, like any provider answer, reaches the attempts log only as a short,
  sanitized snippet;
* tokens are cached per app and per fingerprint of the key material, so two apps naming
  the same service account never share or spoil each other's tokens, and a replaced
  credential is used from the next send; the RSA signing (and key parsing) runs off the
  event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from google.oauth2.credentials import Credentials
from pyfcm import FCMNotification

from adapters.base import (
    DeliveryJob,
    Outcome,
    PerObject,
    Verdict,
    parse_retry_after,
    snippet,
)
from adapters.http1 import MAX_DRAINED, HTTP1Pool, ProtocolError
from adapters.payloads import fcm_android_config

FCM_URL = "https://fcm.googleapis.com"
#: Google's token endpoint: the assertion's audience, and the default token URL.
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: Refresh an access token this long before it expires.
REFRESH_MARGIN_S = 300
_RETRY_CODES = {"UNAVAILABLE", "INTERNAL"}
QUOTA_MIN_DELAY_S = 60.0
#: pyfcm's builder needs credentials and a project id to exist (older google-auth credentials
#: carry no project id); it uses neither to build a message.
_UNUSED = Credentials(token=None)
#: The stand-in device token a notification's message is built around once (message).
_TOKEN_MARK = "gateway-device-token-stand-in-4c1f9e"


class AccessTokenError(Exception):
    """The token exchange failed; the message is safe for the attempts log.

    ``rejected``: the token URL refused the service account itself (a 400, 401 or 403,
    as ``invalid_grant`` for a deleted or wrong key), not a passing failure.
    """

    def __init__(self, message: str, *, rejected: bool = False) -> None:
        super().__init__(message)
        self.rejected = rejected


def fingerprint(account: Mapping[str, Any]) -> str:
    """Identifies the key material: a credential replaced under the same names differs."""
    material = "\n".join(str(account.get(k, "")) for k in
                         ("client_email", "private_key_id", "private_key"))
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass
class _Token:
    value: str
    expires_at: float


class AccessTokens:
    """OAuth2 access tokens per (app, key fingerprint), from the operator's token URL."""

    def __init__(self, token_url: str, client: aiohttp.ClientSession, timeout_s: float) -> None:
        self._token_url = token_url
        self._client = client
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._keys: dict[str, RSAPrivateKey] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        #: Worked out once per credentials a batch of jobs shares.
        self._fingerprint = PerObject(fingerprint)

    async def get(self, app_id: str, account: Mapping[str, Any], *,
                  stale: str | None = None) -> str:
        """A token fresh for at least :data:`REFRESH_MARGIN_S`; ``stale`` is one FCM just
        refused, to be replaced even if it looks fresh."""
        scope = (app_id, self._fingerprint(account))
        cached = self._tokens.get(scope)
        if cached is not None and cached.value != stale \
                and cached.expires_at - time.time() >= REFRESH_MARGIN_S:
            return cached.value  # the common case: no lock to take
        async with self._locks.setdefault(scope, asyncio.Lock()):
            cached = self._tokens.get(scope)
            if cached is None or cached.value == stale \
                    or cached.expires_at - time.time() < REFRESH_MARGIN_S:
                cached = await self._exchange(scope[1], account)
                self._tokens[scope] = cached
            return cached.value

    def forget_app(self, app_id: str) -> None:
        """Drop the app's tokens, and the keys no other app's token was made with."""
        self._fingerprint.clear()
        for scope in [s for s in self._tokens if s[0] == app_id]:
            del self._tokens[scope]
        for scope in [s for s in self._locks if s[0] == app_id]:
            del self._locks[scope]
        kept = {printed for _, printed in self._tokens}
        for printed in [k for k in self._keys if k not in kept]:
            del self._keys[printed]

    async def _assertion(self, key_id: str, account: Mapping[str, Any]) -> str:
        key = self._keys.get(key_id)
        if key is None:
            loaded = await asyncio.to_thread(serialization.load_pem_private_key,
                                             str(account["private_key"]).encode(), None)
            if not isinstance(loaded, RSAPrivateKey):
                raise AccessTokenError("the service account's key is not an RSA key")
            key = self._keys[key_id] = loaded
        now = int(time.time())
        claims = {"iss": account["client_email"], "scope": SCOPE, "aud": GOOGLE_TOKEN_URL,
                  "iat": now, "exp": now + 3600}
        headers = {"kid": str(account.get("private_key_id") or "")}
        return await asyncio.to_thread(jwt.encode, claims, key, algorithm="RS256",
                                       headers=headers)

    async def _exchange(self, key_id: str, account: Mapping[str, Any]) -> _Token:
        assertion = await self._assertion(key_id, account)
        try:
            async with self._client.post(
                self._token_url, data={"grant_type": GRANT_TYPE, "assertion": assertion},
                allow_redirects=False, timeout=self._timeout,
            ) as resp:
                content = await resp.content.read(4096)
                status = resp.status
        except TimeoutError:
            raise AccessTokenError("the token URL timed out") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise AccessTokenError(f"the token URL is unreachable ({type(exc).__name__})") \
                from None
        try:
            answer = json.loads(content)
        except ValueError:
            answer = None
        if status == 200 and isinstance(answer, dict) \
                and isinstance(answer.get("access_token"), str):
            expires_in = answer.get("expires_in")
            lifetime = float(expires_in) if isinstance(expires_in, int | float) else 3600.0
            return _Token(answer["access_token"], time.time() + lifetime)
        if isinstance(answer, dict) and isinstance(answer.get("error"), str):
            detail = f"{answer['error']}: {answer.get('error_description', '')}"
        else:
            detail = snippet(content, 60)
        raise AccessTokenError(f"HTTP {status} {snippet(detail, 120)}".rstrip(": "),
                               rejected=status in (400, 401, 403))


class FCMAdapter:
    """Sends FCM v1 messages with bounded concurrency over one pooled client."""

    kind = "fcm"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        token_url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 15.0,
        max_connections: int = 64,
    ) -> None:
        self._base_url = (base_url or FCM_URL).rstrip("/")
        self._token_url = token_url or GOOGLE_TOKEN_URL
        self._ssl = ssl_context or ssl.create_default_context()
        self._timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_connections = max_connections
        self._builder = FCMNotification(credentials=_UNUSED, project_id="unused")
        #: Each notification's message, built once around a stand-in token (_around).
        self._around = PerObject(self._split)
        self._session: aiohttp.ClientSession | None = None
        self._http: HTTP1Pool | None = None
        self._tokens: AccessTokens | None = None

    def _client(self) -> aiohttp.ClientSession:
        # For the token exchanges. (Not httpx: httpcore's pool rescans every connection
        # for every queued request and cost ~3 ms of CPU per push: bench/README.md, Push.)
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ssl=self._ssl),
                timeout=self._timeout, trust_env=False,
                # Shared by every app's pushes and token requests: no state between them.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    def _pushes(self) -> HTTP1Pool:
        # The sends go over the gateway's own keep-alive HTTP/1.1 client, as webhooks do
        # (adapters/http1.py: a quarter of aiohttp's CPU a request); token exchanges,
        # a few an hour, over aiohttp's.
        if self._http is None:
            self._http = HTTP1Pool(max_connections=self._max_connections,
                                   ssl_context=self._ssl)
        return self._http

    def _access_tokens(self) -> AccessTokens:
        if self._tokens is None:
            self._tokens = AccessTokens(self._token_url, self._client(), self._timeout_s)
        return self._tokens

    def message(self, job: DeliveryJob, info: Mapping[str, Any]) -> bytes:
        """The v1 request body, built by pyfcm's payload builder: once per notification
        (the jobs of a fan-out share one), with each device's token put in its place, the
        same bytes as building it for that token."""
        assert job.device is not None and job.notification is not None
        around = self._around(job.notification)
        if around is None:
            return self._build(job.notification, job.device.token)
        # pyfcm writes strings as json.dumps(..., ensure_ascii=False) does.
        token = json.dumps(job.device.token, ensure_ascii=False)[1:-1].encode()
        return around[0] + token + around[1]

    def _split(self, n: Mapping[str, Any]) -> tuple[bytes, bytes] | None:
        """The notification's message in two around its token, or None when the stand-in
        token is not found exactly once (the notification's own text holds it)."""
        body = self._build(n, _TOKEN_MARK)
        head, mark, tail = body.partition(_TOKEN_MARK.encode())
        return (head, tail) if mark and _TOKEN_MARK.encode() not in tail else None

    def _build(self, n: Mapping[str, Any], device_token: str) -> bytes:
        overrides = n.get("fcm") or {}
        data = {**(n.get("data") or {}), **(overrides.get("data") or {})}
        body: bytes = self._builder.parse_payload(
            fcm_token=device_token,
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
            # pyfcm leaves an empty "notification" on a data-less background push;
            # written again as pyfcm writes (so a token reads the same in every message)
            message = json.loads(body)
            message["message"].pop("notification", None)
            body = self._builder.json_dumps(message)
        return body

    async def send(self, job: DeliveryJob) -> Outcome:
        info = job.credentials
        if info is None:
            return Outcome(Verdict.FAILED, error="no FCM credentials for this app")
        started = time.monotonic()
        body = self.message(job, info)
        url = f"{self._base_url}/v1/projects/{info['project_id']}/messages:send"
        outcome, token = await self._push(job, info, url, body, started, None)
        if outcome.error != "UNAUTHENTICATED":
            return outcome
        # The access token expired early: refresh it once and send again, within what is
        # left of two delivery timeouts (a token fetch and a push, the most an attempt may
        # take: the dispatcher's lease is sized for that), so an attempt never outlasts
        # its lease. Each step alone is bounded by the timeout already.
        left = started + 2 * self._timeout_s - time.monotonic()
        if left <= 0:
            return outcome
        try:
            async with asyncio.timeout(left):
                outcome, _ = await self._push(job, info, url, body, started, token)
        except TimeoutError:
            return Outcome(Verdict.RETRY, error="FCM timed out", duration_ms=_ms(started))
        return outcome

    async def _push(self, job: DeliveryJob, info: Mapping[str, Any], url: str, body: bytes,
                    started: float, stale: str | None) -> tuple[Outcome, str | None]:
        """One send with an access token (a new one when ``stale`` was refused): the
        outcome, and the token it used."""
        try:
            token = await self._access_tokens().get(job.app_id, info, stale=stale)
        except AccessTokenError as exc:
            return Outcome(Verdict.RETRY, error=f"FCM access token: {exc}",
                           duration_ms=_ms(started),
                           credentials_rejected=str(exc) if exc.rejected else None), None
        try:
            answer = await self._pushes().post(url, {
                "authorization": f"Bearer {token}", "content-type": "application/json",
            }, body, timeout_s=self._timeout_s, keep=MAX_DRAINED)
        except TimeoutError:
            return Outcome(Verdict.RETRY, error="FCM timed out",
                           duration_ms=_ms(started)), token
        except (ProtocolError, OSError) as exc:
            return Outcome(Verdict.RETRY, error=f"FCM connection failed: {exc!r}"[:500],
                           duration_ms=_ms(started)), token
        return judge(answer.status, answer.headers, answer.body, _ms(started)), token

    async def forget_app(self, app_id: str) -> None:
        if self._tokens is not None:
            self._tokens.forget_app(app_id)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._session is not None:
            await self._session.close()
            self._session = None


def _error_code(status: int, content: bytes) -> tuple[str, str, list[dict[str, Any]]]:
    """(FCM errorCode or canonical status, message, field violations) from any answer."""
    try:
        error = json.loads(content)["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}", snippet(content, 200), []
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
    common: dict[str, Any] = {"status_code": status, "duration_ms": duration_ms,
                              "response_snippet": snippet(content, 300)}
    if code in ("UNREGISTERED", "SENDER_ID_MISMATCH"):
        return Outcome(Verdict.GONE, error=code, gone_reason=f"fcm:{code}", **common)
    if code == "INVALID_ARGUMENT":
        if any(v.get("field") == "message.token" for v in violations):
            return Outcome(Verdict.GONE, error=code, gone_reason="fcm:INVALID_ARGUMENT token",
                           **common)
        return Outcome(Verdict.FAILED, error=snippet(f"{code}: {message}", 300), **common)
    if code in ("QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED") or status == 429:
        delay = parse_retry_after(headers.get("retry-after")) or 0.0
        return Outcome(Verdict.RETRY, error=code, retry_after_s=max(delay, QUOTA_MIN_DELAY_S),
                       **common)
    if code == "THIRD_PARTY_AUTH_ERROR":
        # The APNs or web push credentials set up in Firebase were refused.
        return Outcome(Verdict.FAILED, error=code, credentials_rejected=code, **common)
    if code == "PERMISSION_DENIED":
        # The service account may not send for this project.
        shown = snippet(f"{code}: {message}", 300)
        return Outcome(Verdict.FAILED, error=shown, credentials_rejected=shown, **common)
    if code == "UNAUTHENTICATED" or (status == 401 and not code.startswith("THIRD")):
        return Outcome(Verdict.RETRY, error="UNAUTHENTICATED", **common)
    if code in _RETRY_CODES or status >= 500:
        return Outcome(Verdict.RETRY, error=code,
                       retry_after_s=parse_retry_after(headers.get("retry-after")), **common)
    return Outcome(Verdict.FAILED, error=snippet(f"{code}: {message}", 300), **common)


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
