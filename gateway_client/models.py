"""The gateway's answers, each shape defined once: the server renders every answer
through these models (and documents them in its OpenAPI description), and the client
parses every answer with them.

Forward compatible by design: an answer may carry fields and status values this version
does not know yet (a newer server), and parsing it still works: unknown fields are
ignored, and a status value outside the enum stays a plain string.

Timestamps travel as ISO 8601 text in UTC (``2025-01-31T14:30:00.123456Z``); the server
hands ``datetime`` objects to the models and :data:`Timestamp` writes them that way.
"""

from __future__ import annotations

import enum
import json
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, RootModel, WithJsonSchema


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class DeliveryKind(enum.StrEnum):
    WEBHOOK = "webhook"
    FCM = "fcm"
    APNS = "apns"


class EndpointStatus(enum.StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"


class DisabledReason(enum.StrEnum):
    """Why an endpoint is disabled: it answered 410 Gone, it failed for the whole disable
    window (GATEWAY_DISABLE_AFTER_S), or someone disabled it."""

    GONE = "gone"
    FAILING = "failing"
    MANUAL = "manual"


class Circuit(enum.StrEnum):
    """An endpoint's circuit breaker: closed (deliveries go), open (held back after
    failures in a row), half_open (the cooldown is over: one probe goes)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class DeviceStatus(enum.StrEnum):
    ACTIVE = "active"
    PRUNED = "pruned"


class Platform(enum.StrEnum):
    IOS = "ios"
    ANDROID = "android"


class AttemptOutcome(enum.StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"
    GONE = "gone"


class Provider(enum.StrEnum):
    FCM = "fcm"
    APNS = "apns"


def iso(value: datetime, timespec: str = "auto") -> str:
    """``2025-01-31T14:30:00.123456Z``: the one spelling of a time, in answers, logs and
    notifications (``timespec`` as :meth:`datetime.isoformat` takes it)."""
    return value.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def _timestamp(value: Any) -> Any:
    return iso(value) if isinstance(value, datetime) else value


def _json_text(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


#: A time on the wire. The server passes ``datetime``; the client reads the text.
Timestamp = Annotated[str, BeforeValidator(_timestamp),
                      WithJsonSchema({"type": "string", "format": "date-time"})]


def _documented(values: type[enum.StrEnum]) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "enum": [v.value for v in values]})


# Each enum field lets a value it does not know through as text (a newer server's), and
# is documented with the values this version knows.
_KNOWN_FIRST = Field(union_mode="left_to_right")
EndpointStatusValue = Annotated[EndpointStatus | str, _KNOWN_FIRST, _documented(EndpointStatus)]
DisabledReasonValue = Annotated[DisabledReason | str, _KNOWN_FIRST, _documented(DisabledReason)]
CircuitValue = Annotated[Circuit | str, _KNOWN_FIRST, _documented(Circuit)]
DeliveryKindValue = Annotated[DeliveryKind | str, _KNOWN_FIRST, _documented(DeliveryKind)]
DeliveryStatusValue = Annotated[DeliveryStatus | str, _KNOWN_FIRST, _documented(DeliveryStatus)]
AttemptOutcomeValue = Annotated[AttemptOutcome | str, _KNOWN_FIRST, _documented(AttemptOutcome)]
PlatformValue = Annotated[Platform | str, _KNOWN_FIRST, _documented(Platform)]
DeviceStatusValue = Annotated[DeviceStatus | str, _KNOWN_FIRST, _documented(DeviceStatus)]
ProviderValue = Annotated[Provider | str, _KNOWN_FIRST, _documented(Provider)]


class Answer(BaseModel):
    """Every answer model: reads the server's records by attribute, ignores unknown fields."""

    model_config = ConfigDict(extra="ignore", from_attributes=True)


class ErrorDetail(Answer):
    code: str = Field(description="Stable machine code, e.g. validation_error.")
    message: str = Field(description="For a human.")
    details: list[dict[str, Any]] = Field(description="Field paths and specifics.")


class ErrorBody(Answer):
    error: ErrorDetail


class Health(Answer):
    status: str


class Ready(Answer):
    status: str
    checks: dict[str, str]


class App(Answer):
    id: str
    name: str
    created_at: Timestamp
    rate_limit: int | None = Field(
        default=None, description="Events per second it may emit; null: no limit.")
    max_endpoints: int | None = Field(default=None, description="Endpoints it may have.")
    max_devices_per_user: int | None = Field(
        default=None, description="Live devices each of its users may have.")
    max_topics_per_device: int | None = Field(
        default=None, description="Topics each of its devices may follow.")


class AppCreated(App):
    api_key: str = Field(description="Shown once; store it.")


class AppPage(Answer):
    data: list[App]
    next_cursor: str | None


class RotatedAppKey(Answer):
    api_key: str = Field(description="The app's new API key. Shown once; store it.")
    previous_key_expires_at: Timestamp | None = Field(
        description="Until then the key it replaced keeps working; null: it ended now.")


class Endpoint(Answer):
    id: str
    url: str
    description: str
    event_types: list[str] | None = Field(description="null: every event type")
    status: EndpointStatusValue
    disabled_reason: DisabledReasonValue | None
    disabled_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp
    circuit: CircuitValue = Circuit.CLOSED
    rate_limit: int | None = Field(default=None, description="Sends per second; null: none.")
    headers: dict[str, str] = Field(default_factory=dict, description="Sent with each delivery.")
    filter: dict[str, Any] | None = Field(default=None, description="null: every event.")


class EndpointCreated(Endpoint):
    secret: str = Field(description="Standard Webhooks signing secret (whsec_...).")


class EndpointPage(Answer):
    data: list[Endpoint]
    next_cursor: str | None


class Secret(Answer):
    secret: str


class RotatedSecret(Answer):
    secret: str
    previous_secret_expires_at: Timestamp | None


class EventType(Answer):
    """An entry of the app's event type catalog (``schema_`` in Python, ``schema`` on the
    wire)."""

    name: str
    description: str
    schema_: dict[str, Any] | None = Field(
        alias="schema", description="JSON Schema (Draft 2020-12) every payload of this type "
        "must match at ingest; null: any payload.")
    created_at: Timestamp
    updated_at: Timestamp


class EventTypePage(Answer):
    data: list[EventType]
    next_cursor: str | None


class EventAccepted(Answer):
    id: str
    type: str
    created_at: Timestamp


class Event(Answer):
    id: str
    type: str
    created_at: Timestamp
    payload: Annotated[dict[str, Any], BeforeValidator(_json_text)]


class Delivery(Answer):
    id: str
    event_id: str
    endpoint_id: str | None
    kind: DeliveryKindValue
    status: DeliveryStatusValue
    attempt_count: int
    device_id: str | None
    in_flight: bool = Field(description="A dispatcher is sending it right now.")
    next_attempt_at: Timestamp | None = Field(
        description="When it is next tried; null while in flight, finished or parked "
                    "behind a disabled endpoint or an open circuit.")
    last_attempt_at: Timestamp | None
    last_error: str | None
    created_at: Timestamp
    updated_at: Timestamp


class EventWithDeliveries(Event):
    deliveries: list[Delivery]


class EventPage(Answer):
    data: list[Event]
    next_cursor: str | None


class DeliveryPage(Answer):
    data: list[Delivery]
    next_cursor: str | None


class Attempt(Answer):
    id: int
    attempted_at: Timestamp
    duration_ms: int
    outcome: AttemptOutcomeValue
    status_code: int | None
    response_snippet: str | None
    error: str | None


class AttemptList(Answer):
    data: list[Attempt]


class UserToken(Answer):
    token: str
    user_id: str
    expires_at: Timestamp


class Device(Answer):
    id: str
    platform: PlatformValue
    token: str
    user_id: str
    topics: list[str]
    locale: str | None
    app_version: str | None
    status: DeviceStatusValue
    pruned_reason: str | None
    pruned_at: Timestamp | None
    registered_at: Timestamp
    created_at: Timestamp
    updated_at: Timestamp


class DevicePage(Answer):
    data: list[Device]
    next_cursor: str | None


class FCMCredentialsShown(Answer):
    """An app's FCM service account as answers show it: the key never leaves."""

    provider: ProviderValue
    project_id: str
    client_email: str
    private_key_id: str = Field(description="Its last four characters only.")
    private_key: str = Field(description="Always hidden.")
    updated_at: Timestamp | None = None


class APNsCredentialsShown(Answer):
    """An app's APNs token key as answers show it: the key never leaves."""

    provider: ProviderValue
    key_id: str
    team_id: str
    topic: str
    environment: str
    key_p8: str = Field(description="Always hidden.")
    updated_at: Timestamp | None = None


class APNsCertificateShown(Answer):
    """An app's APNs push certificate as answers show it: what the certificate says, never
    it or its private key."""

    provider: ProviderValue
    auth: str = Field(description='"certificate" (token-key credentials have no "auth").')
    topic: str
    environment: str
    certificate_subject_uid: str | None = Field(
        description="The bundle id in the certificate's subject UID.")
    certificate_expires_at: Timestamp = Field(
        description="The certificate's notAfter: APNs refuses it from then on.")
    certificate_sha256: str = Field(description="SHA-256 of the certificate (DER), hex.")
    certificate_pem: str = Field(description="Always hidden.")
    updated_at: Timestamp | None = None


class APNsCredentialsAnswer(RootModel[APNsCredentialsShown | APNsCertificateShown]):
    """An app's APNs credentials as answers show them: a token key, or a certificate."""


class PushCredentials(Answer):
    """Only the providers the app has credentials for are present."""

    apns: APNsCredentialsShown | APNsCertificateShown | None = None
    fcm: FCMCredentialsShown | None = None


class SandboxPush(Answer):
    provider: ProviderValue
    token: str
    payload: dict[str, Any]
    headers: dict[str, str]
    received_at: Timestamp


class SandboxPushes(Answer):
    data: list[SandboxPush]


# --- operational webhooks (issue 10) ------------------------------------------------

class OperationalEventType(enum.StrEnum):
    """What the gateway tells an app's operational webhook about its own resources."""

    ENDPOINT_DISABLED = "endpoint.disabled"
    ENDPOINT_ENABLED = "endpoint.enabled"
    DELIVERY_EXHAUSTED = "delivery.exhausted"
    DEVICE_INVALIDATED = "device.invalidated"
    PUSH_CREDENTIALS_REJECTED = "push.credentials_rejected"


class OperationalWebhook(Answer):
    """Where the gateway sends the app's operational events."""

    url: str
    event_types: list[str] | None = Field(
        description="Operational event types sent (exact, 'prefix.*' or '*'); null: all.")
    created_at: Timestamp
    updated_at: Timestamp


class OperationalWebhookSet(OperationalWebhook):
    secret: str = Field(description="Standard Webhooks signing secret (whsec_...); kept "
                        "when the webhook is set again.")


# --- background tasks (recover, replay) ------------------------------------------------

class TaskKind(enum.StrEnum):
    RECOVER = "endpoint.recover"
    REPLAY = "endpoint.replay"


class TaskStatus(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


TaskKindValue = Annotated[TaskKind | str, _KNOWN_FIRST, _documented(TaskKind)]
TaskStatusValue = Annotated[TaskStatus | str, _KNOWN_FIRST, _documented(TaskStatus)]


class Task(Answer):
    """Work the gateway does in the background, in batches, for one app."""

    id: str
    kind: TaskKindValue
    status: TaskStatusValue = Field(
        description="running until every batch is done; failed when it stopped on an "
                    "error (see error).")
    endpoint_id: str
    since: Timestamp = Field(description="Events created at or after this time ...")
    until: Timestamp = Field(description="... and before this one.")
    counts: dict[str, int] = Field(
        description="What it did so far: endpoint.recover {scanned, requeued} (deliveries "
                    "of the endpoint looked at, failed ones requeued); endpoint.replay "
                    "{scanned, created} (events looked at, deliveries made).")
    error: str | None
    created_at: Timestamp
    updated_at: Timestamp
    finished_at: Timestamp | None


class TaskPage(Answer):
    data: list[Task]
    next_cursor: str | None
