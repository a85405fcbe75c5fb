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

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema


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


class Endpoint(Answer):
    id: str
    url: str
    description: str
    event_types: list[str] | None = Field(description="null: every event type")
    status: EndpointStatusValue
    disabled_reason: str | None
    disabled_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp
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
                    "behind a disabled endpoint.")
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


class PushCredentials(Answer):
    """Only the providers the app has credentials for are present."""

    apns: APNsCredentialsShown | None = None
    fcm: FCMCredentialsShown | None = None


class SandboxPush(Answer):
    provider: ProviderValue
    token: str
    payload: dict[str, Any]
    headers: dict[str, str]
    received_at: Timestamp


class SandboxPushes(Answer):
    data: list[SandboxPush]
