"""APNs provider API over HTTP/2 and TLS, with token (ES256 JWT) or certificate (TLS
client certificate) authentication.

``apns2`` cannot be imported on Python 3.10+ (its ``hyper`` dependency imports
``collections.Iterable``) and pins PyJWT<2 and h2 2.x, and httpx/httpcore re-send
streams a server had already processed after a GOAWAY (duplicate pushes) and can stall
when the server lowers its stream limit, so this adapter speaks the provider API itself
over :mod:`adapters.http2`: a few long-lived multiplexed connections per app, never one
per push, and one provider token per key reused for 40 minutes (Apple refuses tokens
older than an hour and throttles refreshes under 20 minutes). A push is re-sent by the
pool only when the protocol says the server never processed it; when an answer is lost
otherwise, the delivery is retried later (at least once).

Certificate-based credentials (``certificate_pem``: the push certificate and its private
key, as exported from the .p12) are the TLS client certificate of the app's connections,
as aioapns' ``APNsCertConnectionPool`` and apns2's ``NewClient(certificate)`` (gorush) use
them: no ``authorization`` header, the same HTTP/2 provider API. Every app's connections
are its own, one pool per credential: a replaced certificate or key is used from the next
send, on new connections, and the old pool closes once its requests are answered. A
certificate APNs refuses at the TLS handshake (an alert such as ``certificate expired``
or ``unknown ca``) fails the delivery for good, like a 403 ``BadCertificate`` answer:
retrying cannot help until someone uploads another.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

from adapters.base import (
    DeliveryJob,
    Outcome,
    PerObject,
    Verdict,
    parse_retry_after,
    snippet,
)
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
UNIQUE_HEADERS = (":path", "apns-id", "apns-expiration")
#: The error code (its head, as metrics count it) of a certificate refused at the handshake.
_REFUSED = "certificate_refused"
#: Reasons after which the device token is dead: prune it.
_PRUNE = {"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered"}
#: Reasons that mean Apple refused the app's key, certificate or topic.
_CREDENTIALS = {"InvalidProviderToken", "BadCertificate", "BadCertificateEnvironment",
                "Forbidden", "UnrelatedKeyIdInToken", "BadEnvironmentKeyIdInToken",
                "TopicDisallowed"}
#: Reasons worth another attempt later.
_RETRY = {"TooManyRequests", "InternalServerError", "ServiceUnavailable", "Shutdown",
          "IdleTimeout"}

#: Extensions of Apple's push certificates naming the environment they work in (Apple
#: WWDR CPS); a universal "Apple Push Services" certificate carries both.
DEVELOPMENT_CERTIFICATE_OID = "1.2.840.113635.100.6.3.1"
PRODUCTION_CERTIFICATE_OID = "1.2.840.113635.100.6.3.2"
#: Topics a push certificate covers besides the bundle id in its subject UID: "Apple Watch
#: complications or backgrounded VoIP services associated with that app" (Apple).
CERTIFICATE_TOPIC_SUFFIXES = (".voip", ".complication")
#: TLS alerts (as OpenSSL names them) by which a server refuses a client certificate.
CERTIFICATE_ALERTS = frozenset({
    "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_REVOKED", "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "TLSV1_ALERT_UNKNOWN_CA",
    "TLSV1_ALERT_ACCESS_DENIED", "TLSV13_ALERT_CERTIFICATE_REQUIRED",
})
#: After APNs refused a certificate at the handshake, the app's deliveries with it fail at
#: once for this long rather than each opening a connection to be refused again (rapid
#: connect and disconnect is what Apple treats as abuse).
REFUSED_CERTIFICATE_HOLD_S = 60.0


_URL_NAMESPACE = uuid.NAMESPACE_URL.bytes


def apns_id(delivery_id: str) -> str:
    """The push's ``apns-id``: ``str(uuid.uuid5(uuid.NAMESPACE_URL, delivery_id))``, the same
    for every attempt of a delivery (Apple reports a push by it), written out directly:
    half the CPU of going through :class:`uuid.UUID`, once a push."""
    digest = bytearray(hashlib.sha1(_URL_NAMESPACE + delivery_id.encode(),
                                      usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def uses_certificate(creds: Mapping[str, Any]) -> bool:
    """Certificate-based credentials (a TLS client certificate), not token-based."""
    return "certificate_pem" in creds


def fingerprint(creds: Mapping[str, Any]) -> str:
    """Identifies the key material: a credential replaced under the same ids differs."""
    if uses_certificate(creds):
        material = "certificate\n" + str(creds["certificate_pem"])
    else:
        material = "\n".join(str(creds.get(k, "")) for k in ("team_id", "key_id", "key_p8"))
    return hashlib.sha256(material.encode()).hexdigest()


def load_client_certificate(context: ssl.SSLContext, pem: str) -> None:
    """``context.load_cert_chain`` from memory. :mod:`ssl` reads a certificate and key only
    from a file, so it gets one that never reaches a disk (an anonymous memfd, on Linux),
    else a private (0600) temporary file removed as soon as it was read."""
    data = pem.encode()
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("apns-client-certificate", os.MFD_CLOEXEC)
        try:
            _write_all(fd, data)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="apns-", suffix=".pem")  # 0600, created exclusively
    try:
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        context.load_cert_chain(path)
    finally:
        os.unlink(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _alert_text(alert: str) -> str:
    """``TLSV1_ALERT_UNKNOWN_CA`` -> ``unknown ca``."""
    return alert.partition("_ALERT_")[2].replace("_", " ").lower() or alert


class _ProviderToken:
    """One ES256 provider token per app and key fingerprint, reused, refreshed only when
    due or when Apple says it expired. Two apps uploading the same team and key ids with
    different keys never share (or spoil) each other's tokens, and a replaced key is used
    from the next send."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._keys: dict[str, EllipticCurvePrivateKey] = {}

    def get(self, app_id: str, creds: Mapping[str, Any], printed: str, *,
            force: bool = False) -> str:
        """``printed``: the credentials' fingerprint."""
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

    def forget_app(self, app_id: str) -> None:
        """Drop the app's tokens, and the keys no other app's token was made with."""
        for scope in [s for s in self._tokens if s[0] == app_id]:
            del self._tokens[scope]
        kept = {printed for _, printed in self._tokens}
        for printed in [k for k in self._keys if k not in kept]:
            del self._keys[printed]


@dataclass(eq=False)
class _Pool:
    """An app's connections to one origin, for one credential."""

    fingerprint: str
    connections: HTTP2Pool
    #: Requests under way; a retired pool closes when the last one is answered.
    in_flight: int = 0
    retired: bool = False


class APNsAdapter:
    """Sends APNs pushes over a small pool of long-lived HTTP/2 connections per app.

    ``new_ssl_context`` makes a client TLS context that trusts the provider's servers (the
    system's CAs, or the operator's): one serves every token-based pool, and each client
    certificate gets one of its own."""

    kind = "apns"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        new_ssl_context: Callable[[], ssl.SSLContext] = ssl.create_default_context,
        timeout_s: float = 15.0,
        max_connections: int = 4,
    ) -> None:
        self._base_url = base_url.rstrip("/") if base_url else None
        self._tokens = _ProviderToken()
        #: Worked out once per credentials and notification a batch of jobs shares.
        self._fingerprint = PerObject(fingerprint)
        self._payload = PerObject(encode_apns_payload)
        self._new_ssl_context = new_ssl_context
        self._token_ssl: ssl.SSLContext | None = None
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        #: One pool per app, origin and credential: APNs takes one team's provider tokens
        #: (or one client certificate) per connection, and an app's connections stay its
        #: own. Only the newest credential's pool stays open.
        self._pools: dict[tuple[str, str], _Pool] = {}
        #: (app, origin, fingerprint) of certificates APNs refused at the handshake: until
        #: when their deliveries fail at once, and why.
        self._refused: dict[tuple[str, str, str], tuple[float, str]] = {}
        #: Held while an app's pool for an origin is being made.
        self._building: dict[tuple[str, str], asyncio.Lock] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def _origin(self, creds: Mapping[str, Any]) -> str:
        return self._base_url or (
            SANDBOX_URL if creds.get("environment") == "sandbox" else PRODUCTION_URL)

    async def _pool(self, app_id: str, origin: str, creds: Mapping[str, Any], printed: str,
                    ) -> _Pool:
        """The app's pool for this credential; raises ssl.SSLError or OSError when its TLS
        context cannot be made (a certificate that does not load)."""
        key = (app_id, origin)
        current = self._pools.get(key)
        if current is not None and current.fingerprint == printed:
            return current
        # A new TLS context reads the CA bundle (tens of milliseconds) and a certificate's
        # key: done in a thread, once per app and origin however many sends wait for it.
        async with self._building.setdefault(key, asyncio.Lock()):
            current = self._pools.get(key)
            if current is not None and current.fingerprint == printed:
                return current
            if uses_certificate(creds):
                context = await asyncio.to_thread(
                    self._certificate_context, str(creds["certificate_pem"]))
            else:
                if self._token_ssl is None:
                    built = await asyncio.to_thread(self._new_ssl_context)
                    self._token_ssl = self._token_ssl or built
                context = self._token_ssl
            pool = self._pools[key] = _Pool(printed, HTTP2Pool(
                origin, context, max_connections=self._max_connections,
                connect_timeout_s=self._timeout_s, unique_headers=UNIQUE_HEADERS))
        if current is not None:
            self._refused.pop((app_id, origin, current.fingerprint), None)
            self._retire(current)
        return pool

    def _certificate_context(self, pem: str) -> ssl.SSLContext:
        """A context of the certificate's own: a client-certificate context is never
        shared, not even between two apps that uploaded the same certificate."""
        context = self._new_ssl_context()
        load_client_certificate(context, pem)
        return context

    def _retire(self, pool: _Pool) -> None:
        """The credential was replaced: close the old pool once nothing waits on it."""
        pool.retired = True
        if pool.in_flight == 0:
            task = asyncio.get_running_loop().create_task(pool.connections.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def send(self, job: DeliveryJob) -> Outcome:
        assert job.device is not None and job.notification is not None
        creds = job.credentials
        if creds is None:
            return Outcome(Verdict.FAILED, error="no APNs credentials for this app")
        started = time.monotonic()
        origin = self._origin(creds)
        printed = self._fingerprint(creds)
        certificate = uses_certificate(creds)
        refused = self._refused.get((job.app_id, origin, printed))
        if refused is not None:
            if started < refused[0]:
                return Outcome(Verdict.FAILED, error=refused[1])
            del self._refused[(job.app_id, origin, printed)]
        try:
            pool = await self._pool(job.app_id, origin, creds, printed)
        except (ssl.SSLError, OSError) as exc:
            what = "certificate" if certificate else "TLS setup"
            return Outcome(Verdict.FAILED, error=f"APNs {what}: {exc}",
                           duration_ms=_ms(started))
        pool.in_flight += 1
        try:
            outcome = await self._send(job, creds, printed, pool.connections, certificate,
                                       started)
        finally:
            pool.in_flight -= 1
            if pool.retired and pool.in_flight == 0:
                self._retire(pool)
        if outcome.error and outcome.error.startswith(_REFUSED):
            self._refused[(job.app_id, origin, printed)] = (
                time.monotonic() + REFUSED_CERTIFICATE_HOLD_S, outcome.error)
        return outcome

    async def _send(self, job: DeliveryJob, creds: Mapping[str, Any], printed: str,
                    pool: HTTP2Pool, certificate: bool, started: float) -> Outcome:
        assert job.device is not None and job.notification is not None
        body = self._payload(job.notification)
        fixed = [*apns_headers(job.notification, creds["topic"], time.time()).items(),
                 ("apns-id", apns_id(job.delivery_id))]
        path = f"/3/device/{job.device.token}"
        refreshed = False
        while True:
            headers = fixed
            if not certificate:  # a certificate connection is authenticated by its TLS
                try:
                    token = self._tokens.get(job.app_id, creds, printed, force=refreshed)
                except ValueError as exc:
                    return Outcome(Verdict.FAILED, error=f"APNs key: {exc}",
                                   duration_ms=_ms(started))
                headers = [*fixed, ("authorization", "bearer " + token)]
            try:
                resp = await pool.request("POST", path, headers, body,
                                          timeout_s=self._timeout_s)
            except RequestTimeout:
                return Outcome(Verdict.RETRY, error="APNs timed out", duration_ms=_ms(started))
            except ValueError as exc:
                # A header HTTP/2 cannot carry (a control character in a collapse id, say):
                # refused before anything was sent, and no retry would send it.
                return Outcome(Verdict.FAILED, error=f"APNs request not sent: {exc}",
                               duration_ms=_ms(started))
            except ConnectError as exc:
                if certificate and exc.tls_alert in CERTIFICATE_ALERTS:
                    return Outcome(Verdict.FAILED, duration_ms=_ms(started), error=(
                        f"{_REFUSED}: APNs refused the app's client certificate at the TLS "
                        f"handshake ({_alert_text(exc.tls_alert or '')}); upload a valid "
                        "one"))
                return Outcome(Verdict.RETRY, error=f"APNs connection failed: {exc}",
                               duration_ms=_ms(started))
            except (ConnectionLost, StreamReset) as exc:
                # Possibly delivered: the protocol cannot tell, so at least once.
                return Outcome(Verdict.RETRY, error=f"APNs answer lost: {exc}",
                               duration_ms=_ms(started))
            outcome = self._judge(resp, started)
            if outcome.error == "ExpiredProviderToken" and not refreshed and not certificate:
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

    async def forget_app(self, app_id: str) -> None:
        """Close the app's connections and drop its provider tokens."""
        self._tokens.forget_app(app_id)
        self._fingerprint.clear()
        self._payload.clear()
        for origin in [o for a, o in self._pools if a == app_id]:
            await self._pools.pop((app_id, origin)).connections.close()

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.connections.close()
        self._pools.clear()
        if self._closing:
            await asyncio.gather(*self._closing)


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
