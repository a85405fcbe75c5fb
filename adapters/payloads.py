"""What a notification becomes on each provider's wire: the APNs payload and headers, and
the parts of an FCM v1 message the gateway builds itself.

Pure functions over the validated ``notification`` object, with no client library
behind them: ingest checks with them what a provider would refuse (the request models
import this module), and the adapters build their requests with them, so the two can
never disagree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

#: APNs refuses larger payloads with 413 PayloadTooLarge (VoIP: 5120).
APNS_MAX_PAYLOAD_BYTES = 4096
APNS_MAX_COLLAPSE_ID_BYTES = 64
#: FCM reserves these data keys, and any that start with the prefixes.
FCM_RESERVED_DATA_KEYS = ("from", "message_type")
FCM_RESERVED_DATA_PREFIXES = ("google", "gcm")
#: What an HTTP field value may not hold (RFC 9110 5.5): control characters but the tab.
_NOT_IN_A_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def header_value_problem(value: str, *, trimmed: bool = False) -> str | None:
    """Why ``value`` cannot be sent as an HTTP header's value as it is, or None: HTTP/2
    refuses a request with a line break or a NUL in a header (the push would fail unsent),
    and strips whitespace around a value (the provider would get another value; allowed
    with ``trimmed``, where the trimmed value is the one meant)."""
    if _NOT_IN_A_HEADER.search(value):
        return "must hold no control characters"
    if not trimmed and value != value.strip(" \t"):
        return "must not begin or end with whitespace"
    return None


def apns_topic_problem(topic: str) -> str | None:
    """Why APNs could never be sent ``topic`` as its ``apns-topic`` header (a line break
    fails every push unsent), or None; whitespace around it goes trimmed, as it always
    did."""
    problem = header_value_problem(topic, trimmed=True)
    return None if problem is None else f"{problem} (it is sent as the APNs apns-topic header)"


def is_background(notification: Mapping[str, Any]) -> bool:
    """A silent push: ``content_available`` and nothing to show."""
    return bool(notification.get("content_available")) and not (
        notification.get("title") or notification.get("body"))


def apns_payload(notification: Mapping[str, Any]) -> dict[str, Any]:
    """The APNs JSON payload: ``aps`` from the notification, ``data`` beside it, then the
    raw ``apns.payload`` override merged on top."""
    aps: dict[str, Any] = {}
    alert = {k: notification[k] for k in ("title", "body") if notification.get(k)}
    if alert:
        aps["alert"] = alert
    if notification.get("badge") is not None:
        aps["badge"] = notification["badge"]
    if notification.get("sound"):
        aps["sound"] = notification["sound"]
    if notification.get("content_available"):
        aps["content-available"] = 1
    if notification.get("image") or notification.get("mutable_content"):
        aps["mutable-content"] = 1
    if notification.get("category"):
        aps["category"] = notification["category"]
    if notification.get("thread_id"):
        aps["thread-id"] = notification["thread_id"]
    payload: dict[str, Any] = {**(notification.get("data") or {}), "aps": aps}
    if notification.get("image"):
        payload["image"] = notification["image"]
    override = (notification.get("apns") or {}).get("payload") or {}
    for key, value in override.items():
        if key == "aps" and isinstance(value, dict):
            aps.update(value)
        else:
            payload[key] = value
    return payload


def encode_apns_payload(notification: Mapping[str, Any]) -> bytes:
    return json.dumps(apns_payload(notification), separators=(",", ":"),
                      ensure_ascii=False).encode()


def apns_headers(notification: Mapping[str, Any], topic: str, now: float) -> dict[str, str]:
    background = is_background(notification)
    headers = {
        "apns-topic": topic,
        "apns-push-type": "background" if background else "alert",
        # Apple requires priority 5 for background pushes and drops them otherwise.
        "apns-priority": "5" if background or notification.get("priority") == "normal" else "10",
    }
    ttl = notification.get("ttl_seconds")
    if ttl is not None:
        headers["apns-expiration"] = str(int(now) + int(ttl)) if ttl > 0 else "0"
    if notification.get("collapse_key"):
        headers["apns-collapse-id"] = str(notification["collapse_key"])
    override = (notification.get("apns") or {}).get("headers") or {}
    headers.update({str(k).lower(): str(v) for k, v in override.items()})
    return headers


def fcm_reserved_data_key(key: str) -> bool:
    return key in FCM_RESERVED_DATA_KEYS or key.lower().startswith(FCM_RESERVED_DATA_PREFIXES)


def fcm_android_config(notification: Mapping[str, Any]) -> dict[str, Any]:
    """The message's ``android`` block, with the raw ``fcm.android`` override on top."""
    config: dict[str, Any] = {"priority": "high" if notification.get("priority", "high")
                              == "high" else "normal"}
    if notification.get("ttl_seconds") is not None:
        config["ttl"] = f"{int(notification['ttl_seconds'])}s"
    if notification.get("collapse_key"):
        config["collapse_key"] = notification["collapse_key"]
    sound = notification.get("sound")
    if sound:
        config["notification"] = {"sound": sound}
    override = (notification.get("fcm") or {}).get("android") or {}
    return {**config, **override}
