"""Operational webhooks: what the gateway tells an app about its own resources.

An app names one URL (``PUT /v1/operational-webhook``); the gateway then sends it, signed
per Standard Webhooks with that webhook's own secret and in the envelope of every other
delivery (``{"id", "type", "timestamp", "data"}``), one event per state change:

============================  ===============================================================
``endpoint.disabled``         an endpoint was disabled (410 Gone, the API, the dashboard)
``endpoint.enabled``          a disabled endpoint was enabled again
``delivery.exhausted``        a delivery failed for good (its retries ran out, the receiver
                              or provider refused it for good, or its target is gone)
``device.invalidated``        a provider said a device token is dead; the device is pruned
``push.credentials_rejected`` a provider refused the app's push credentials
============================  ===============================================================

Each is built here and written with :func:`gateway.store.operational.emit_operational`
inside the transaction that makes the change it reports, so a change and its notice
commit (or vanish) together. They are events and deliveries like any other (one queue,
one retry schedule, attempts, metrics), of kind :data:`OPERATIONAL_KIND` and filed under
the app's operational feed (:func:`feed_of`), so they never show among the app's own
events and deliveries, never reach its endpoints, and, since none of the changes above
can happen to an operational delivery, never cause operational events of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway_client.models import OperationalEventType, Platform, Provider

#: The delivery kind of operational events; sent by the webhook adapter.
OPERATIONAL_KIND = "operational"
#: An app's operational events are filed under this prefix and its id (see the
#: migration 0011_operational_webhooks.sql).
FEED_PREFIX = "ops:"
#: A provider refusing the app's credentials again is told again after this long (each
#: upload of new credentials re-arms it at once).
CREDENTIALS_REJECTED_REPEAT_S = 3600.0

#: Which devices each push provider serves.
PLATFORM_OF_PROVIDER = {Provider.APNS.value: Platform.IOS.value,
                        Provider.FCM.value: Platform.ANDROID.value}


def feed_of(app_id: str) -> str:
    """The app id the app's operational events and deliveries are filed under."""
    return FEED_PREFIX + app_id


def type_matches(pattern: str, event_type: str) -> bool:
    """An endpoint's rule (``gateway_type_matches``): exact, ``prefix.*`` or ``*``."""
    if pattern in ("*", event_type):
        return True
    return pattern.endswith(".*") and len(event_type) > len(pattern) - 1 \
        and event_type.startswith(pattern[:-1])


def known_pattern(pattern: str) -> bool:
    """Whether ``pattern`` takes at least one operational event type."""
    return any(type_matches(pattern, t.value) for t in OperationalEventType)


@dataclass(frozen=True, slots=True)
class OperationalEvent:
    """One notice for an app's operational webhook: its type and its ``data``."""

    app_id: str
    type: OperationalEventType
    data: dict[str, Any]


def endpoint_disabled(app_id: str, endpoint_id: str, reason: str | None) -> OperationalEvent:
    """``reason`` is the endpoint's ``disabled_reason`` as stored."""
    return OperationalEvent(app_id, OperationalEventType.ENDPOINT_DISABLED,
                            {"endpoint_id": endpoint_id, "reason": reason})


def endpoint_enabled(app_id: str, endpoint_id: str) -> OperationalEvent:
    return OperationalEvent(app_id, OperationalEventType.ENDPOINT_ENABLED,
                            {"endpoint_id": endpoint_id})


def delivery_exhausted(
    app_id: str, *, delivery_id: str, event_id: str, event_type: str, kind: str,
    endpoint_id: str | None, device_id: str | None, attempts: int,
    last_status_code: int | None, last_error: str | None,
) -> OperationalEvent:
    """A delivery that ended ``failed``: to an endpoint (``endpoint_id``) or a device
    (``device_id``); its last attempt's HTTP status and error."""
    return OperationalEvent(app_id, OperationalEventType.DELIVERY_EXHAUSTED, {
        "delivery_id": delivery_id, "event_id": event_id, "event_type": event_type,
        "kind": kind, "endpoint_id": endpoint_id, "device_id": device_id,
        "attempts": attempts, "last_status_code": last_status_code,
        "last_error": last_error})


def device_invalidated(app_id: str, *, device_id: str, token: str, platform: str,
                       user_id: str, reason: str | None) -> OperationalEvent:
    """``reason`` as the device's ``pruned_reason`` (``fcm:UNREGISTERED``,
    ``apns:Unregistered``, ...)."""
    return OperationalEvent(app_id, OperationalEventType.DEVICE_INVALIDATED, {
        "device_id": device_id, "token": token, "platform": platform, "user_id": user_id,
        "reason": reason})


def credentials_rejected(app_id: str, provider: str, reason: str) -> OperationalEvent:
    """``reason``: what the provider answered (``InvalidProviderToken``,
    ``THIRD_PARTY_AUTH_ERROR``, ``invalid_grant: ...``)."""
    return OperationalEvent(app_id, OperationalEventType.PUSH_CREDENTIALS_REJECTED, {
        "platform": PLATFORM_OF_PROVIDER.get(provider, provider), "provider": provider,
        "reason": reason})
