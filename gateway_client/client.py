"""A typed async client for the gateway's HTTP API, for backends and the ``gateway`` CLI.

::

    async with GatewayClient("http://127.0.0.1:8080", api_key) as gw:
        accepted = await gw.emit("order.created", {"order_id": 1001})

Answers are the API's own answer models (:mod:`gateway_client.models`), the very models
the server renders them with. Failures raise
:class:`GatewayAPIError` (the gateway answered with an error) or
:class:`GatewayConnectionError` (it could not be reached), both :class:`GatewayClientError`.

Retries, with exponential backoff, cover only what is safe to repeat: ``503`` (the gateway
wrote nothing) always; a refused connection (nothing was sent) always; a connection lost
mid-request only for requests that are idempotent — reads, ``PUT``, ``DELETE``, device
upserts and :meth:`GatewayClient.emit`, which sends one ``Idempotency-Key`` (generated
when none is given) on every try, so a retried event is stored once.
"""

from __future__ import annotations

import asyncio
import enum
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import aiohttp
import pydantic
from pydantic import BaseModel

from adapters.base import parse_retry_after
from gateway_client.models import (
    APNsCertificateShown,
    APNsCredentialsShown,
    AppCreated,
    AppPage,
    Attempt,
    AttemptList,
    Delivery,
    DeliveryPage,
    Device,
    DevicePage,
    Endpoint,
    EndpointCreated,
    EndpointPage,
    EventAccepted,
    EventPage,
    EventType,
    EventTypePage,
    EventWithDeliveries,
    FCMCredentialsShown,
    OperationalWebhook,
    OperationalWebhookSet,
    PushCredentials,
    RotatedAppKey,
    RotatedSecret,
    Secret,
    Task,
    TaskPage,
    TaskStatus,
    UserToken,
    iso,
)
from gateway_client.version import __version__

M = TypeVar("M", bound=BaseModel)

#: The gateway writes nothing when it answers this, so any request may be sent again.
RETRY_STATUSES = frozenset({503})


class GatewayClientError(Exception):
    """Root of the client's errors."""


class GatewayAPIError(GatewayClientError):
    """The gateway answered with an error: ``{"error": {"code", "message", "details"}}``."""

    def __init__(self, status: int, code: str, message: str,
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details: list[dict[str, Any]] = details or []


class GatewayConnectionError(GatewayClientError):
    """The gateway could not be reached, or the connection broke (after any retries)."""


class Unset(enum.Enum):
    UNSET = enum.auto()


#: "Leave this field as it is" in :meth:`GatewayClient.update_endpoint` and
#: :meth:`GatewayClient.update_event_type`.
UNSET = Unset.UNSET


@dataclass(frozen=True)
class DeliveryOutcome:
    """One attempt's outcome, as the live tail streams it."""

    delivery_id: str
    event_id: str
    event_type: str
    endpoint_id: str | None
    kind: str
    app_id: str
    status: str
    outcome: str
    status_code: int | None
    attempt: int
    at: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeliveryOutcome:
        return cls(
            delivery_id=str(data["delivery_id"]), event_id=str(data["event_id"]),
            event_type=str(data["event_type"]), endpoint_id=data.get("endpoint_id"),
            kind=str(data["kind"]), app_id=str(data["app_id"]), status=str(data["status"]),
            outcome=str(data["outcome"]), status_code=data.get("status_code"),
            attempt=int(data["attempt"]), at=str(data["at"]),
        )

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _SSEEvent:
    event: str
    data: str
    id: str | None


class Tail:
    """The live tail: ``async with`` opens the stream (from then on nothing is missed),
    ``async for`` yields each :class:`DeliveryOutcome`; leaving the block closes it."""

    def __init__(self, client: GatewayClient, params: dict[str, str],
                 on_dropped: Callable[[int], None] | None) -> None:
        self._client = client
        self._params = params
        self._on_dropped = on_dropped
        self._response: aiohttp.ClientResponse | None = None
        #: Outcomes the gateway dropped because this client read too slowly.
        self.dropped = 0

    async def __aenter__(self) -> Tail:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._response is None:
            self._response = await self._client._open_stream(self._params)

    async def close(self) -> None:
        if self._response is not None:
            self._response.release()
            self._response.close()
            self._response = None

    async def __aiter__(self) -> AsyncIterator[DeliveryOutcome]:
        await self.open()
        assert self._response is not None
        try:
            async for event in _sse_events(self._response.content):
                if event.event == "delivery":
                    yield DeliveryOutcome.from_json(json.loads(event.data))
                elif event.event == "dropped":
                    count = int(json.loads(event.data).get("dropped", 0))
                    self.dropped += count
                    if self._on_dropped is not None:
                        self._on_dropped(count)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise GatewayConnectionError(f"The live tail broke off: {exc}") from exc
        except TimeoutError as exc:
            raise GatewayConnectionError("The live tail went silent (no heartbeat).") from exc


async def _sse_events(content: aiohttp.StreamReader) -> AsyncIterator[_SSEEvent]:
    """Server-sent events as the specification frames them (comments skipped)."""
    event, event_id = "message", None
    data_lines: list[str] = []
    while True:
        raw = await content.readline()
        if not raw:
            return
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data_lines:
                yield _SSEEvent(event, "\n".join(data_lines), event_id)
            event, data_lines = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data_lines.append(value)
        elif name == "id":
            event_id = value


def _quote(segment: str) -> str:
    return quote(segment, safe="")


def _params(**values: object) -> dict[str, str]:
    return {k: str(v) for k, v in values.items() if v is not None}


class GatewayClient:
    """The gateway's HTTP API, typed. Use it as an async context manager."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 30.0,
                 max_retries: int = 3, backoff_s: float = 0.2, max_backoff_s: float = 5.0,
                 stream_idle_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        #: A tail that hears nothing, not even a heartbeat (every 15 s), this long is dead.
        self.stream_idle_s = stream_idle_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> GatewayClient:
        self._open_session()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={
                "Authorization": f"Bearer {self.api_key}",
                "User-Agent": f"event-gateway-client/{__version__}",
            })
        return self._session

    # --- transport --------------------------------------------------------------------

    def _delay(self, attempt: int, retry_after: str | None = None) -> float:
        waited = parse_retry_after(retry_after)
        if waited is not None:
            return min(waited, self.max_backoff_s)
        base: float = min(self.backoff_s * 2.0 ** attempt, self.max_backoff_s)
        return base * random.uniform(0.5, 1.0)

    async def _send(
        self, method: str, path: str, *, body: Any = None, params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None, idempotent: bool | None = None,
        client_timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        """One request, retried as the module docstring says; the response is unread."""
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "PUT", "DELETE")
        session = self._open_session()
        attempt = 0
        while True:
            try:
                response = await session.request(
                    method, self.base_url + path, json=body, params=params, headers=headers,
                    timeout=client_timeout or aiohttp.ClientTimeout(total=self.timeout_s))
            except aiohttp.ClientConnectionError as exc:
                never_sent = isinstance(exc, aiohttp.ClientConnectorError) \
                    and not isinstance(exc, aiohttp.ClientSSLError)
                if attempt >= self.max_retries or not (never_sent or idempotent):
                    raise GatewayConnectionError(
                        f"{method} {self.base_url}{path}: {exc or type(exc).__name__}") from exc
                delay = self._delay(attempt)
            except TimeoutError as exc:
                raise GatewayConnectionError(
                    f"{method} {self.base_url}{path}: no answer within {self.timeout_s} s"
                ) from exc
            else:
                if response.status < 400:
                    return response
                if response.status not in RETRY_STATUSES or attempt >= self.max_retries:
                    raise await _api_error(response)
                delay = self._delay(attempt, response.headers.get("Retry-After"))
                response.release()
            await asyncio.sleep(delay)
            attempt += 1

    async def _call(self, method: str, path: str, *, body: Any = None,
                    params: Mapping[str, str] | None = None,
                    headers: Mapping[str, str] | None = None,
                    idempotent: bool | None = None) -> Any:
        try:
            response = await self._send(method, path, body=body, params=params,
                                        headers=headers, idempotent=idempotent)
            async with response:
                if response.status == 204:
                    return None
                text = await response.text()
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise GatewayConnectionError(f"{method} {path}: the answer broke off: {exc}") \
                from exc
        except TimeoutError as exc:
            raise GatewayConnectionError(f"{method} {path}: no answer within "
                                         f"{self.timeout_s} s") from exc
        try:
            return json.loads(text)
        except ValueError as exc:
            raise GatewayClientError(f"{method} {path}: the answer is not JSON") from exc

    async def _get(self, model: type[M], path: str, **params: object) -> M:
        return _parse(model, await self._call("GET", path, params=_params(**params)))

    async def _open_stream(self, params: Mapping[str, str]) -> aiohttp.ClientResponse:
        return await self._send(
            "GET", "/v1/deliveries/stream", params=params,
            headers={"Accept": "text/event-stream"},
            client_timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s,
                                          sock_read=self.stream_idle_s))

    # --- apps (operator key) ----------------------------------------------------------

    async def create_app(self, name: str) -> AppCreated:
        """Create an app; the answer holds its API key, shown once. Needs the operator key."""
        return _parse(AppCreated, await self._call("POST", "/v1/apps", body={"name": name}))

    async def list_apps(self, *, limit: int | None = None,
                        cursor: str | None = None) -> AppPage:
        return await self._get(AppPage, "/v1/apps", limit=limit, cursor=cursor)

    async def delete_app(self, app_id: str) -> None:
        """Delete an app: its keys stop working at once, and everything it owns is
        removed in the background. Needs the operator key."""
        await self._call("DELETE", f"/v1/apps/{_quote(app_id)}")

    async def rotate_app_key(self, app_id: str, *, grace_s: int | None = None) -> RotatedAppKey:
        """A new API key for the app (the operator key, or the app's own); the one it
        replaces keeps working for ``grace_s`` seconds (default a day; 0 ends it now)."""
        body = {"grace_s": grace_s} if grace_s is not None else {}
        return _parse(RotatedAppKey, await self._call(
            "POST", f"/v1/apps/{_quote(app_id)}/keys/rotate", body=body))

    # --- events -----------------------------------------------------------------------

    async def emit(
        self, type: str, payload: Mapping[str, Any], *, user_ids: list[str] | None = None,
        topics: list[str] | None = None, notification: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> EventAccepted:
        """Emit an event; it is durable once this returns. Safe to retry: every try carries
        the same ``Idempotency-Key`` (a fresh UUID when none is given)."""
        body: dict[str, Any] = {"type": type, "payload": dict(payload)}
        if user_ids is not None:
            body["user_ids"] = user_ids
        if topics is not None:
            body["topics"] = topics
        if notification is not None:
            body["notification"] = dict(notification)
        key = idempotency_key if idempotency_key is not None else str(uuid.uuid4())
        return _parse(EventAccepted, await self._call(
            "POST", "/v1/events", body=body, headers={"Idempotency-Key": key},
            idempotent=True))

    async def get_event(self, event_id: str) -> EventWithDeliveries:
        return await self._get(EventWithDeliveries, f"/v1/events/{_quote(event_id)}")

    async def list_events(self, *, event_type: str | None = None, limit: int | None = None,
                          cursor: str | None = None) -> EventPage:
        return await self._get(EventPage, "/v1/events", type=event_type, limit=limit,
                               cursor=cursor)

    # --- event types ------------------------------------------------------------------

    async def create_event_type(self, name: str, *, description: str | None = None,
                                schema: Mapping[str, Any] | None = None) -> EventType:
        """Add an event type to the app's catalog; with a JSON Schema (Draft 2020-12),
        :meth:`emit` of that type is refused unless the payload matches it."""
        body: dict[str, Any] = {"name": name}
        if description is not None:
            body["description"] = description
        if schema is not None:
            body["schema"] = dict(schema)
        return _parse(EventType, await self._call("POST", "/v1/event-types", body=body))

    async def list_event_types(self, *, limit: int | None = None,
                               cursor: str | None = None) -> EventTypePage:
        return await self._get(EventTypePage, "/v1/event-types", limit=limit, cursor=cursor)

    async def get_event_type(self, name: str) -> EventType:
        return await self._get(EventType, f"/v1/event-types/{_quote(name)}")

    async def update_event_type(
        self, name: str, *, description: str | Unset = UNSET,
        schema: Mapping[str, Any] | Unset | None = UNSET,
    ) -> EventType:
        """Change only the fields given; ``schema=None`` removes the schema."""
        body: dict[str, Any] = {}
        if not isinstance(description, Unset):
            body["description"] = description
        if not isinstance(schema, Unset):
            body["schema"] = None if schema is None else dict(schema)
        return _parse(EventType, await self._call(
            "PATCH", f"/v1/event-types/{_quote(name)}", body=body, idempotent=True))

    async def delete_event_type(self, name: str) -> None:
        await self._call("DELETE", f"/v1/event-types/{_quote(name)}")

    # --- endpoints --------------------------------------------------------------------

    async def create_endpoint(
        self, url: str, *, event_types: list[str] | None = None,
        description: str | None = None, rate_limit: int | None = None,
        headers: dict[str, str] | None = None, filter: dict[str, Any] | None = None,
    ) -> EndpointCreated:
        """Subscribe a webhook endpoint; the answer holds its signing secret.
        ``rate_limit``: sends per second at most; ``headers``: sent with every delivery;
        ``filter``: dotted payload paths to a value or a list of values, all to match."""
        body: dict[str, Any] = {"url": url}
        optional = {"event_types": event_types, "description": description,
                    "rate_limit": rate_limit, "headers": headers, "filter": filter}
        body.update({k: v for k, v in optional.items() if v is not None})
        return _parse(EndpointCreated, await self._call("POST", "/v1/endpoints", body=body))

    async def list_endpoints(self, *, limit: int | None = None,
                             cursor: str | None = None) -> EndpointPage:
        return await self._get(EndpointPage, "/v1/endpoints", limit=limit, cursor=cursor)

    async def get_endpoint(self, endpoint_id: str) -> Endpoint:
        return await self._get(Endpoint, f"/v1/endpoints/{_quote(endpoint_id)}")

    async def update_endpoint(
        self, endpoint_id: str, *, url: str | Unset = UNSET,
        event_types: list[str] | Unset | None = UNSET,
        description: str | Unset = UNSET,
        status: Literal["active", "disabled"] | Unset = UNSET,
        disabled_reason: Literal["manual"] | Unset | None = UNSET,
        rate_limit: int | Unset | None = UNSET,
        headers: dict[str, str] | Unset | None = UNSET,
        filter: dict[str, Any] | Unset | None = UNSET,
    ) -> Endpoint:
        """Change only the fields given; ``event_types=None`` subscribes to every type,
        ``rate_limit=None`` lifts the limit, ``headers=None`` removes them all (a dict
        replaces the whole set) and ``filter=None`` lets every event through.
        ``status="disabled"`` disables it (``disabled_reason`` is then ``manual``);
        ``status="active"`` enables it afresh: not failing, its circuit closed."""
        fields = {"url": url, "event_types": event_types, "description": description,
                  "status": status, "disabled_reason": disabled_reason,
                  "rate_limit": rate_limit, "headers": headers, "filter": filter}
        body = {k: v for k, v in fields.items() if v is not UNSET}
        return _parse(Endpoint, await self._call(
            "PATCH", f"/v1/endpoints/{_quote(endpoint_id)}", body=body, idempotent=True))

    async def delete_endpoint(self, endpoint_id: str) -> None:
        await self._call("DELETE", f"/v1/endpoints/{_quote(endpoint_id)}")

    async def get_endpoint_secret(self, endpoint_id: str) -> Secret:
        return await self._get(Secret, f"/v1/endpoints/{_quote(endpoint_id)}/secret")

    async def rotate_secret(self, endpoint_id: str) -> RotatedSecret:
        """A new signing secret; the previous one keeps signing too for 24 h."""
        return _parse(RotatedSecret, await self._call(
            "POST", f"/v1/endpoints/{_quote(endpoint_id)}/secret/rotate"))

    # --- deliveries -------------------------------------------------------------------

    async def list_deliveries(
        self, *, status: Literal["pending", "succeeded", "failed"] | None = None,
        endpoint_id: str | None = None, event_id: str | None = None,
        limit: int | None = None, cursor: str | None = None,
    ) -> DeliveryPage:
        return await self._get(DeliveryPage, "/v1/deliveries", status=status,
                               endpoint_id=endpoint_id, event_id=event_id, limit=limit,
                               cursor=cursor)

    async def get_delivery(self, delivery_id: str) -> Delivery:
        return await self._get(Delivery, f"/v1/deliveries/{_quote(delivery_id)}")

    async def attempts(self, delivery_id: str) -> list[Attempt]:
        """Every attempt of a delivery, oldest first."""
        found = await self._get(AttemptList, f"/v1/deliveries/{_quote(delivery_id)}/attempts")
        return found.data

    async def retry_delivery(self, delivery_id: str) -> Delivery:
        """Requeue a failed delivery now (``409 delivery_not_retryable`` otherwise)."""
        return _parse(Delivery, await self._call(
            "POST", f"/v1/deliveries/{_quote(delivery_id)}/retry"))

    def tail(self, *, endpoint_id: str | None = None, event_type: str | None = None,
             on_dropped: Callable[[int], None] | None = None) -> Tail:
        """Delivery outcomes as they happen::

            async with gw.tail(event_type="order.*") as outcomes:
                async for outcome in outcomes:
                    print(outcome.event_type, outcome.outcome, outcome.status_code)
        """
        return Tail(self, _params(endpoint_id=endpoint_id, event_type=event_type),
                    on_dropped)

    # --- user tokens and devices ------------------------------------------------------

    async def create_user_token(self, user_id: str, *,
                                ttl_seconds: int | None = None) -> UserToken:
        """A short-lived token a mobile app uses to register its user's devices."""
        body: dict[str, Any] = {"user_id": user_id}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        return _parse(UserToken, await self._call("POST", "/v1/user-tokens", body=body))

    async def register_device(
        self, platform: Literal["ios", "android"], token: str, *,
        user_id: str | None = None, topics: list[str] | None = None,
        locale: str | None = None, app_version: str | None = None,
    ) -> Device:
        """Register a device, or update it if its token is known (an upsert)."""
        body: dict[str, Any] = {"platform": platform, "token": token}
        for name, value in (("user_id", user_id), ("topics", topics), ("locale", locale),
                            ("app_version", app_version)):
            if value is not None:
                body[name] = value
        return _parse(Device, await self._call("POST", "/v1/devices", body=body,
                                               idempotent=True))

    async def list_devices(
        self, *, user_id: str | None = None, topic: str | None = None,
        platform: Literal["ios", "android"] | None = None,
        status: Literal["active", "pruned"] | None = None,
        limit: int | None = None, cursor: str | None = None,
    ) -> DevicePage:
        return await self._get(DevicePage, "/v1/devices", user_id=user_id, topic=topic,
                               platform=platform, status=status, limit=limit, cursor=cursor)

    async def get_device(self, token: str) -> Device:
        return await self._get(Device, f"/v1/devices/{_quote(token)}")

    async def delete_device(self, token: str) -> None:
        await self._call("DELETE", f"/v1/devices/{_quote(token)}")

    async def set_device_topics(self, token: str, topics: list[str]) -> Device:
        return _parse(Device, await self._call(
            "PUT", f"/v1/devices/{_quote(token)}/topics", body={"topics": topics}))

    # --- push credentials (the operator key, or the app's own key) --------------------

    async def set_fcm_credentials(self, app_id: str,
                                  service_account: Mapping[str, Any]) -> FCMCredentialsShown:
        """Upload the app's Firebase service account JSON; the answer shows it masked."""
        return _parse(FCMCredentialsShown, await self._call(
            "PUT", f"/v1/apps/{_quote(app_id)}/push/fcm",
            body={"service_account": dict(service_account)}))

    async def set_apns_credentials(
        self, app_id: str, *, key_p8: str, key_id: str, team_id: str, topic: str,
        environment: Literal["production", "sandbox"] = "production",
    ) -> APNsCredentialsShown:
        """Upload the app's APNs token-auth key (.p8); the answer shows it masked."""
        return _parse(APNsCredentialsShown, await self._call(
            "PUT", f"/v1/apps/{_quote(app_id)}/push/apns", body={
                "key_p8": key_p8, "key_id": key_id, "team_id": team_id, "topic": topic,
                "environment": environment}))

    async def set_apns_certificate(
        self, app_id: str, *, certificate_pem: str, topic: str | None = None,
        environment: Literal["production", "sandbox"] = "production",
    ) -> APNsCertificateShown:
        """Upload the app's APNs push certificate with its private key, in PEM (``openssl
        pkcs12 -in cert.p12 -out cert.pem -nodes -clcerts``), replacing a token key if it
        had one. ``topic`` defaults to the certificate's bundle id. The answer shows what
        the certificate says (bundle id, expiry, SHA-256), never it or its key."""
        body = {"certificate_pem": certificate_pem, "environment": environment}
        if topic is not None:
            body["topic"] = topic
        return _parse(APNsCertificateShown, await self._call(
            "PUT", f"/v1/apps/{_quote(app_id)}/push/apns", body=body))

    async def push_credentials(self, app_id: str) -> PushCredentials:
        """The app's push credentials, masked."""
        return await self._get(PushCredentials, f"/v1/apps/{_quote(app_id)}/push")

    # --- the operational webhook ------------------------------------------------------

    async def set_operational_webhook(
        self, url: str, *, event_types: list[str] | None = None,
    ) -> OperationalWebhookSet:
        """Where the gateway sends the app's operational events (``endpoint.disabled``,
        ``endpoint.enabled``, ``delivery.exhausted``, ``device.invalidated``,
        ``push.credentials_rejected``; ``event_types=None``: all). The answer holds the
        signing secret, the same one each time it is set again."""
        body: dict[str, Any] = {"url": url}
        if event_types is not None:
            body["event_types"] = event_types
        return _parse(OperationalWebhookSet, await self._call(
            "PUT", "/v1/operational-webhook", body=body))

    async def operational_webhook(self) -> OperationalWebhook:
        """The app's operational webhook (``404 not_found`` when it has none)."""
        return await self._get(OperationalWebhook, "/v1/operational-webhook")

    async def delete_operational_webhook(self) -> None:
        await self._call("DELETE", "/v1/operational-webhook")

    # --- recovering endpoints: background tasks ---------------------------------------

    async def recover_endpoint(self, endpoint_id: str, since: datetime | str, *,
                               until: datetime | str | None = None) -> Task:
        """Requeue the endpoint's failed deliveries whose events were created in
        [since, until) (``until`` defaults to now), in the background: the answer is the
        task, followed with :meth:`get_task` or :meth:`wait_for_task`."""
        return await self._start_task(endpoint_id, "recover", since, until)

    async def replay_endpoint(self, endpoint_id: str, since: datetime | str, *,
                              until: datetime | str | None = None) -> Task:
        """Send the endpoint, in the background, every event created in [since, until)
        that its event types take and that it has no delivery for (it was disabled, or
        did not exist yet). Running it again sends nothing twice."""
        return await self._start_task(endpoint_id, "replay", since, until)

    async def _start_task(self, endpoint_id: str, action: str, since: datetime | str,
                          until: datetime | str | None) -> Task:
        body = {"since": _instant(since)}
        if until is not None:
            body["until"] = _instant(until)
        return _parse(Task, await self._call(
            "POST", f"/v1/endpoints/{_quote(endpoint_id)}/{action}", body=body))

    async def get_task(self, task_id: str) -> Task:
        return await self._get(Task, f"/v1/tasks/{_quote(task_id)}")

    async def list_tasks(self, *, limit: int | None = None,
                         cursor: str | None = None) -> TaskPage:
        """The app's background tasks, newest first."""
        return await self._get(TaskPage, "/v1/tasks", limit=limit, cursor=cursor)

    async def wait_for_task(self, task_id: str, *, poll_interval_s: float = 1.0,
                            timeout_s: float | None = None) -> Task:
        """The task once it is no longer running (done or failed), asking every
        ``poll_interval_s``; ``TimeoutError`` after ``timeout_s`` (None: no limit)."""
        async with asyncio.timeout(timeout_s):
            while True:
                task = await self.get_task(task_id)
                if task.status != TaskStatus.RUNNING:
                    return task
                await asyncio.sleep(poll_interval_s)


async def _api_error(response: aiohttp.ClientResponse) -> GatewayAPIError:
    async with response:
        text = await response.text(errors="replace")
    try:
        error = json.loads(text)["error"]
        return GatewayAPIError(response.status, str(error["code"]), str(error["message"]),
                               list(error.get("details") or []))
    except (ValueError, KeyError, TypeError):
        return GatewayAPIError(response.status, f"http_{response.status}",
                               text.strip()[:200] or (response.reason or "error"))


def _instant(value: datetime | str) -> str:
    """A time as the API takes it: ISO 8601 with its offset."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("a time needs its timezone (an aware datetime)")
    return iso(value)


def _parse(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise GatewayClientError(
            f"The gateway's answer does not match {model.__name__}: {exc}") from exc
