"""Webhook delivery: a signed HTTP POST per Standard Webhooks v1.

The body is ``{"id", "type", "timestamp", "data"}`` with ``data`` spliced in as the raw
JSON text the backend sent, so the receiver gets its payload byte for byte and the
bytes signed are exactly the bytes sent.
"""

from __future__ import annotations

import base64
import functools
import hmac
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from adapters.addresses import ForbiddenAddress, GuardedResolver, address_forbidden
from adapters.base import DeliveryJob, Outcome, Verdict, parse_retry_after
from adapters.http1 import ConnectError, HTTP1Pool, ProtocolError

USER_AGENT = "event-gateway/0.1 (+standard-webhooks)"
SNIPPET_BYTES = 1024
#: Answers that ask the sender to slow down; their Retry-After is honoured.
_SLOW_DOWN = {429, 502, 503, 504}


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` with a ``whsec_`` secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.digest(_key(secret), signed, "sha256")
    return "v1," + base64.b64encode(digest).decode("ascii")


@functools.lru_cache(maxsize=1024)
def _key(secret: str) -> bytes:
    """A ``whsec_`` secret's key bytes, decoded once per secret, not once per delivery."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def iso_timestamp(moment: datetime) -> str:
    """``moment`` in UTC to the millisecond, ``Z``-suffixed; made once for the deliveries
    of one event and the events of one ingest batch (they share their created_at)."""
    return _iso_utc(moment if moment.tzinfo is UTC else moment.astimezone(UTC))


@functools.lru_cache(maxsize=64)
def _iso_utc(moment: datetime) -> str:
    # Keyed by a UTC time: two local times one hour apart across a DST fold are equal
    # as keys (they differ only in fold), their UTC times are not.
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: A str as a JSON string, as ``json.dumps`` writes it (the C encoder where there is one).
_quoted = json.encoder.encode_basestring_ascii


def webhook_body(event_id: str, event_type: str, created_at: datetime, payload: str) -> bytes:
    """``{"id", "type", "timestamp", "data"}`` as ``json.dumps`` spells the first three,
    with the payload's own text as ``data``."""
    return (f'{{"id": {_quoted(event_id)}, "type": {_quoted(event_type)}, '
            f'"timestamp": {_quoted(iso_timestamp(created_at))}, "data": {payload}}}'
            ).encode("utf-8", "surrogatepass")


class WebhookAdapter:
    """Sends webhooks over one pool of keep-alive connections shared by every delivery
    (:mod:`adapters.http1`)."""

    kind = "webhook"

    def __init__(
        self,
        *,
        timeout_s: float,
        allow_private: bool,
        max_connections: int = 256,
        user_agent: str = USER_AGENT,
    ) -> None:
        self._timeout_s = timeout_s
        self._allow_private = allow_private
        self._max_connections = max_connections
        self._user_agent = user_agent
        self._http: HTTP1Pool | None = None

    def _client(self) -> HTTP1Pool:
        if self._http is None:
            resolver: AbstractResolver = (
                DefaultResolver() if self._allow_private else GuardedResolver()
            )
            # Every app's webhooks share these connections; nothing is kept between
            # requests but the connection (no cookies: each request stands alone, as
            # Standard Webhooks has it).
            self._http = HTTP1Pool(
                max_connections=self._max_connections, resolver=resolver, dns_ttl_s=10.0,
                # Checked on every address it connects to, however the URL spells it.
                forbidden=None if self._allow_private else address_forbidden)
        return self._http

    def headers(self, job: DeliveryJob, body: bytes, timestamp: int) -> dict[str, str]:
        assert job.endpoint is not None
        signatures = " ".join(sign(s, job.event.id, timestamp, body) for s in job.endpoint.secrets)
        headers = {
            # The endpoint's own first: none can name the gateway's
            # (gateway/endpoint_headers.py).
            **dict(job.endpoint.headers),
            "content-type": "application/json",
            "user-agent": self._user_agent,
            "webhook-id": job.event.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signatures,
        }
        if job.traceparent is not None:
            headers["traceparent"] = job.traceparent
            if job.event.tracestate is not None:
                headers["tracestate"] = job.event.tracestate
        return headers

    async def send(self, job: DeliveryJob) -> Outcome:
        assert job.endpoint is not None, "webhook deliveries always have an endpoint"
        event = job.event
        body = webhook_body(event.id, event.type, event.created_at, event.payload)
        started = time.monotonic()

        def elapsed_ms() -> int:
            return int((time.monotonic() - started) * 1000)

        headers = self.headers(job, body, int(time.time()))
        try:
            answer = await self._client().post(job.endpoint.url, headers, body,
                                               timeout_s=self._timeout_s, keep=SNIPPET_BYTES)
        except ForbiddenAddress as exc:
            return Outcome(Verdict.FAILED, error=f"endpoint_url_forbidden: {exc}",
                           duration_ms=elapsed_ms())
        except ConnectError as exc:
            return Outcome(Verdict.RETRY, error=f"connection failed: {exc}",
                           duration_ms=elapsed_ms())
        except TimeoutError:
            return Outcome(Verdict.RETRY, error=f"timed out after {self._timeout_s:g} s",
                           duration_ms=elapsed_ms())
        except (ProtocolError, OSError, ValueError) as exc:
            return Outcome(Verdict.RETRY, error=f"{type(exc).__name__}: {exc}"[:500],
                           duration_ms=elapsed_ms())
        return self._judge(answer.status, answer.headers,
                           answer.body.decode("utf-8", "replace"), elapsed_ms())

    def _judge(self, status: int, headers: Mapping[str, str], snippet: str,
               duration_ms: int) -> Outcome:
        if 200 <= status < 300:
            return Outcome(Verdict.DELIVERED, status_code=status, response_snippet=snippet,
                           duration_ms=duration_ms)
        if status == 410:
            return Outcome(Verdict.GONE, status_code=status, response_snippet=snippet,
                           duration_ms=duration_ms, error="endpoint answered 410 Gone",
                           gone_reason="endpoint answered 410 Gone")
        retry_after = None
        if status in _SLOW_DOWN:
            retry_after = parse_retry_after(headers.get("retry-after"))
        error = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
        return Outcome(Verdict.RETRY, status_code=status, response_snippet=snippet,
                       duration_ms=duration_ms, error=error, retry_after_s=retry_after)

    async def forget_app(self, app_id: str) -> None:
        return None  # nothing is kept per app: connections are per host, shared

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
