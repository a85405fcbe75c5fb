"""Request bodies, as pydantic models: the handlers validate with these, and the API
description is generated from them. (Answers are :mod:`gateway_client.models`.)"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from adapters import payloads
from gateway.jsonbody import storable
from gateway.operational import known_pattern
from gateway_client.models import EndpointStatus, OperationalEventType, Platform

EVENT_TYPE_RE = r"^[A-Za-z0-9_.\-]{1,128}$"
_EVENT_TYPE = re.compile(EVENT_TYPE_RE)


def _storable(value: str) -> str:
    """PostgreSQL text holds neither NUL nor lone surrogates; refuse them up front."""
    if not storable(value):
        raise ValueError("must hold neither the NUL character (\\u0000) nor a lone "
                         "surrogate")
    return value


def _event_type_pattern(value: str) -> str:
    if value == "*":
        return value
    base = value[:-2] if value.endswith(".*") else value
    if not _EVENT_TYPE.match(base):
        raise ValueError(
            "must be an event type ([A-Za-z0-9_.-], 1-128 characters), 'prefix.*' or '*'"
        )
    return value


Text = Annotated[str, AfterValidator(_storable)]
EventType = Annotated[str, StringConstraints(pattern=EVENT_TYPE_RE)]
EventTypePattern = Annotated[str, StringConstraints(
    pattern=r"^(\*|[A-Za-z0-9_.\-]{1,128}|[A-Za-z0-9_.\-]{1,128}\.\*)$"),
    AfterValidator(_event_type_pattern)]
HttpURL = Annotated[Text, StringConstraints(min_length=8, max_length=2048,
                                            pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#\s]+")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class AppCreate(_Body):
    name: Annotated[Text, StringConstraints(min_length=1, max_length=200)]


Quota = Annotated[int, Field(ge=0, le=1_000_000)]


class AppPatch(_Body):
    """An app's limits, set by the operator: ``null`` means no ingest rate limit, and
    for a quota the operator's default."""

    rate_limit: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    max_endpoints: Quota | None = None
    max_devices_per_user: Quota | None = None
    max_topics_per_device: Quota | None = None


class AppKeyRotate(_Body):
    """How long the key being replaced keeps working (at most 30 days): 0 ends it now."""

    grace_s: Annotated[int, Field(ge=0, le=30 * 24 * 3600)] = 24 * 3600


UserId = Annotated[Text, StringConstraints(min_length=1, max_length=256)]
#: FCM's topic alphabet, used for both providers.
Topic = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.~%\-]{1,256}$")]
ShortText = Annotated[Text, StringConstraints(max_length=256)]


#: The APNs request headers a notification may set; the rest (authorization, apns-topic,
#: apns-id, HTTP/2 pseudo and connection headers) belong to the gateway.
APNS_HEADERS = {
    "apns-push-type": re.compile(r"alert|background|location|voip|complication|fileprovider"
                                 r"|mdm|liveactivity|pushtotalk|widgets"),
    "apns-priority": re.compile(r"1|5|10"),
    "apns-expiration": re.compile(r"0|[1-9][0-9]{0,10}"),
    # At most 64 bytes of what a header carries (sent trimmed, as it always was).
    "apns-collapse-id": re.compile(r".{1,64}", re.DOTALL),
}


def _apns_headers(headers: dict[str, str | int]) -> dict[str, str]:
    checked: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        pattern = APNS_HEADERS.get(key)
        if pattern is None:
            raise ValueError(f"{name!r} is not a header a notification may set (one of "
                             f"{', '.join(sorted(APNS_HEADERS))})")
        text = str(value)
        # Every one of these values is short (apns-collapse-id's 64 bytes the longest)
        # and goes as a header, trimmed.
        if (isinstance(value, bool) or not pattern.fullmatch(text)
                or len(text.encode()) > payloads.APNS_MAX_COLLAPSE_ID_BYTES
                or payloads.header_value_problem(text, trimmed=True)):
            raise ValueError(f"{name!r} does not take {text[:40]!r}")
        checked[key] = text
    return checked


class ApnsOverrides(_Body):
    """``notification.apns``: merged over the APNs request the gateway builds."""

    headers: Annotated[dict[str, str | int], Field(max_length=len(APNS_HEADERS)),
                       AfterValidator(_apns_headers)] = Field(default_factory=dict)
    #: Keys merged into the payload (``aps`` merged into ``aps``).
    payload: dict[str, Any] = Field(default_factory=dict)


class FcmOverrides(_Body):
    """``notification.fcm``: merged over the FCM v1 message the gateway builds."""

    android: dict[str, Any] | None = None
    apns: dict[str, Any] | None = None
    webpush: dict[str, Any] | None = None
    fcm_options: dict[str, Any] | None = None
    data: dict[str, Text] | None = None


class Notification(_Body):
    """What a push says; the adapters turn it into an APNs payload and an FCM message."""

    title: Annotated[Text, StringConstraints(max_length=1024)] | None = None
    body: Annotated[Text, StringConstraints(max_length=4096)] | None = None
    data: dict[str, Text] = Field(default_factory=dict)
    badge: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    sound: ShortText | None = None
    image: Annotated[Text, StringConstraints(max_length=2048)] | None = None
    collapse_key: ShortText | None = None
    ttl_seconds: Annotated[int, Field(ge=0, le=28 * 24 * 3600)] | None = None
    priority: Literal["high", "normal"] = "high"
    content_available: bool | None = None
    category: ShortText | None = None
    thread_id: ShortText | None = None
    #: Raw APNs overrides merged over what is built.
    apns: ApnsOverrides | None = None
    #: Raw FCM overrides merged over what is built.
    fcm: FcmOverrides | None = None

    @model_validator(mode="after")
    def _providers_would_accept(self) -> Notification:
        problems: list[tuple[str, str]] = []
        if not (self.title or self.body or self.content_available):
            problems.append(("", "needs a title, a body or content_available"))
        if payloads.is_background(self.model_dump()):
            problems += [(f, "a background push (content_available without title or body) "
                          "cannot carry it") for f in ("badge", "sound")
                         if getattr(self, f) is not None]
        for key in self.data:
            if payloads.fcm_reserved_data_key(key):
                problems.append((f"data.{key}", "is reserved by FCM (from, message_type, "
                                 "google*, gcm*)"))
        if (self.collapse_key
                and len(self.collapse_key.encode()) > payloads.APNS_MAX_COLLAPSE_ID_BYTES):
            problems.append(("collapse_key", "must be at most 64 bytes (APNs apns-collapse-id)"))
        if self.collapse_key and (problem := payloads.header_value_problem(self.collapse_key)):
            problems.append(("collapse_key", f"{problem} (it is sent as the APNs "
                             "apns-collapse-id header)"))
        if not problems:
            size = len(payloads.encode_apns_payload(self.model_dump()))
            if size > payloads.APNS_MAX_PAYLOAD_BYTES:
                problems.append(("", f"the APNs payload would be {size} bytes; APNs takes at "
                                 f"most {payloads.APNS_MAX_PAYLOAD_BYTES}"))
        if problems:
            raise ValueError("; ".join(f"{f}: {m}" if f else m for f, m in problems))
        return self


class EventCreate(_Body):
    type: EventType
    payload: dict[str, Any]
    #: Push targets: every live device of these users and of these topics.
    user_ids: list[UserId] | None = Field(default=None, max_length=1000)
    topics: list[Topic] | None = Field(default=None, max_length=100)
    notification: Notification | None = None

    @model_validator(mode="after")
    def _targets_and_notification_go_together(self) -> EventCreate:
        targeted = bool(self.user_ids or self.topics)
        if targeted and self.notification is None:
            raise ValueError("user_ids/topics need a notification to push")
        if self.notification is not None and not targeted:
            raise ValueError("a notification needs user_ids or topics to push to")
        return self


class DeviceRegister(_Body):
    platform: Annotated[Platform, Field(strict=False)]
    token: Annotated[Text, StringConstraints(min_length=1, max_length=4096)]
    #: Optional with a user token (it names the user); required with an app key.
    user_id: UserId | None = None
    topics: list[Topic] = Field(default_factory=list, max_length=100)
    locale: Annotated[Text, StringConstraints(max_length=35)] | None = None
    app_version: Annotated[Text, StringConstraints(max_length=64)] | None = None

    @model_validator(mode="after")
    def _token_format(self) -> DeviceRegister:
        if self.platform is Platform.IOS:
            if not (64 <= len(self.token) <= 200 and len(self.token) % 2 == 0
                    and all(c in "0123456789abcdefABCDEF" for c in self.token)):
                raise ValueError("an iOS (APNs) token is an even number (64-200) of hex digits")
        elif any(c.isspace() for c in self.token) or len(self.token) > 4096:
            raise ValueError("an Android (FCM) token has no spaces and at most 4096 characters")
        return self


class DeviceTopics(_Body):
    topics: list[Topic] = Field(max_length=100)


class UserTokenCreate(_Body):
    user_id: UserId
    ttl_seconds: Annotated[int, Field(ge=60, le=30 * 24 * 3600)] = 3600


class FCMCredentials(_Body):
    service_account: dict[str, Any]


def _apns_topic(value: str) -> str:
    if problem := payloads.apns_topic_problem(value):
        raise ValueError(problem)
    return value


#: An APNs topic, refused when the credentials are stored if APNs could never be sent it.
BundleId = Annotated[str, StringConstraints(min_length=1, max_length=255),
                     AfterValidator(_apns_topic)]
APNsEnvironment = Literal["production", "sandbox"]


class APNsCredentials(_Body):
    """Token-based: the .p8 key that signs provider tokens."""

    key_p8: Annotated[str, StringConstraints(min_length=1, max_length=10_000)]
    key_id: Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{10}$")]
    team_id: Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{10}$")]
    topic: BundleId
    environment: APNsEnvironment = "production"


class APNsCertificateCredentials(_Body):
    """Certificate-based: the push certificate and its unencrypted private key in PEM, as
    ``openssl pkcs12 -in cert.p12 -out cert.pem -nodes -clcerts`` exports them."""

    certificate_pem: Annotated[str, StringConstraints(min_length=1, max_length=20_000)]
    #: Default: the bundle id in the certificate's subject UID.
    topic: BundleId | None = None
    environment: APNsEnvironment = "production"


class APNsCredentialsBody(RootModel[APNsCredentials | APNsCertificateCredentials]):
    """``PUT /v1/apps/{id}/push/apns``: a token key (``key_p8``) or a push certificate
    (``certificate_pem``), never both. The handler picks the model by which of the two the
    body has, so a refusal names the fields of the form meant."""


#: Sends per second to one endpoint (gateway/sendrate.py).
SendRateLimit = Annotated[int, Field(ge=1, le=100_000, description=(
    "Sends per second at most, across every dispatcher process (null: no limit)."))]
#: Checked name by name in the handler (gateway/endpoint_headers.py).
EndpointHeaders = Annotated[dict[str, str], Field(description=(
    "Headers sent with every delivery: RFC 9110 token names (not webhook-*, content-*, "
    "host, user-agent, traceparent, tracestate, expect or hop-by-hop ones) to visible "
    "ASCII values; at most 32, values up to 4096 characters. null or {}: none."))]
#: Checked entry by entry in the handler (gateway/filters.py).
PayloadFilter = Annotated[dict[str, Any], Field(description=(
    "Dotted paths into the event payload to a value (equal) or a list of values (any "
    "of); every entry must match for the endpoint to get the event. null or {}: every "
    "event."))]


class EndpointCreate(_Body):
    url: HttpURL
    event_types: list[EventTypePattern] | None = Field(default=None, min_length=1,
                                                       max_length=256)
    description: Annotated[Text, StringConstraints(max_length=1000)] = ""
    rate_limit: SendRateLimit | None = None
    headers: EndpointHeaders | None = None
    filter: PayloadFilter | None = None


class EndpointPatch(_Body):
    url: HttpURL | None = None
    event_types: list[EventTypePattern] | None = Field(default=None, min_length=1,
                                                       max_length=256)
    description: Annotated[Text, StringConstraints(max_length=1000)] | None = None
    status: Annotated[EndpointStatus, Field(strict=False)] | None = None
    #: A PATCH that disables gives reason "manual"; it may say so, and nothing else.
    disabled_reason: Literal["manual"] | None = None
    rate_limit: SendRateLimit | None = None
    headers: EndpointHeaders | None = None
    filter: PayloadFilter | None = None


Description = Annotated[Text, StringConstraints(max_length=1000)]
#: A JSON Schema (Draft 2020-12); its own checks are gateway.schemas.check_schema. Named
#: ``schema_`` in Python (``schema`` is a pydantic method), ``schema`` on the wire.
JSONSchema = Annotated[dict[str, Any] | None, Field(alias="schema")]


class EventTypeCreate(_Body):
    name: EventType
    description: Description = ""
    schema_: JSONSchema = None


class EventTypePatch(_Body):
    """Only the fields sent change; ``"schema": null`` removes the schema."""

    description: Description | None = None
    schema_: JSONSchema = None


# --- operational webhooks (issue 10) ------------------------------------------------

def _operational_type(value: str) -> str:
    if not known_pattern(value):
        raise ValueError("takes no operational event type (one of "
                         + ", ".join(t.value for t in OperationalEventType) + ")")
    return value


OperationalEventTypePattern = Annotated[EventTypePattern, AfterValidator(_operational_type)]


class OperationalWebhookPut(_Body):
    url: HttpURL
    #: Which operational events to send (exact, 'prefix.*' or '*'); null: all of them.
    event_types: list[OperationalEventTypePattern] | None = Field(default=None, min_length=1,
                                                                  max_length=16)


def _instant(value: Any) -> Any:
    """An ISO 8601 time with its offset (``Z`` or ``+hh:mm``), as a timezone-aware
    datetime; anything else is refused (a time without an offset means nothing certain)."""
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 time, e.g. 2030-01-31T14:30:00Z")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be an ISO 8601 time, e.g. 2030-01-31T14:30:00Z") from None
    if parsed.tzinfo is None:
        raise ValueError("needs a timezone offset (Z or +hh:mm)")
    return parsed


Instant = Annotated[datetime, BeforeValidator(_instant),
                    WithJsonSchema({"type": "string", "format": "date-time"})]


class TaskWindow(_Body):
    """The events a recover or replay covers: created at or after ``since`` and before
    ``until`` (default: now)."""

    since: Instant
    until: Instant | None = None
