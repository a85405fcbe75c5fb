"""How the dashboard writes things: times, durations, payloads, a delivery's target and
next attempt, and a sandbox push as the phone would show it. Pure functions, registered
as Jinja filters and globals."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.store.records import Delivery, DeliveryView
from gateway_client.models import DeliveryKind, DeliveryStatus


def when(value: datetime | None) -> str:
    if value is None:
        return "—"
    if value.year >= 9999:
        return "never"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def ago(value: datetime | None) -> str:
    if value is None or value.year >= 9999:
        return ""
    delta = (datetime.now(UTC) - value).total_seconds()
    return f"{duration(delta)} ago" if delta >= 0 else f"in {duration(-delta)}"


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def pretty(text: str | None) -> str:
    """JSON text indented; a lone surrogate escape (from before ingest refused them) stays
    an escape, since a page cannot carry the character."""
    if text is None:
        return ""
    try:
        shown = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        shown = text
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", shown)


def middle(text: str | None, keep: int = 10) -> str:
    if not text or len(text) <= 2 * keep + 1:
        return text or ""
    return f"{text[:keep]}…{text[-keep:]}"


def next_attempt(delivery: Delivery) -> str:
    """When a delivery is next tried, in words (as the API's ``next_attempt_at`` says)."""
    if delivery.status is not DeliveryStatus.PENDING:
        return "—"
    if delivery.in_flight:
        return "in flight now"
    if delivery.parked:
        return "parked until the endpoint is enabled"
    due = delivery.next_attempt_at
    return "—" if due is None else f"{when(due)} ({ago(due)})"


def target(delivery: DeliveryView) -> str:
    if delivery.kind is DeliveryKind.WEBHOOK:
        return str(delivery.endpoint_url or delivery.endpoint_id or "endpoint deleted")
    if delivery.device_platform is None:
        return f"{delivery.kind} device deleted"
    return f"{delivery.kind} · {middle(delivery.device_token)}"


# --- a sandbox push, drawn as a phone notification -------------------------------------

@dataclass(frozen=True)
class Notification:
    title: str
    subtitle: str
    body: str
    image: str
    received_at: datetime
    background: bool
    details: list[tuple[str, str]]


@dataclass
class Phone:
    provider: str
    token: str
    notifications: list[Notification] = field(default_factory=list)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def notification(provider: str, payload: Mapping[str, Any], received_at: float) -> Notification:
    """What a phone would show for a push, read from what the fake provider received."""
    at = datetime.fromtimestamp(received_at, UTC)
    details: list[tuple[str, str]] = []
    if provider == "apns":
        aps = _obj(payload.get("aps"))
        alert = aps.get("alert")
        title = subtitle = body = ""
        if isinstance(alert, str):
            body = alert
        else:
            alert = _obj(alert)
            title, subtitle, body = (_str(alert.get("title")), _str(alert.get("subtitle")),
                                     _str(alert.get("body")))
        details += [(name, json.dumps(aps[name]))
                    for name in ("badge", "sound", "category", "thread-id") if name in aps]
        details += [(k, json.dumps(v)) for k, v in payload.items() if k != "aps"]
        return Notification(title, subtitle, body, "", at,
                            background=not (title or body) and bool(aps.get("content-available")),
                            details=details)
    shown, android = _obj(payload.get("notification")), _obj(payload.get("android"))
    overrides = _obj(android.get("notification"))
    title = _str(overrides.get("title")) or _str(shown.get("title"))
    body = _str(overrides.get("body")) or _str(shown.get("body"))
    details += [(k, _str(v)) for k, v in _obj(payload.get("data")).items()]
    details += [(name, json.dumps(android[name]))
                for name in ("priority", "collapse_key", "ttl") if name in android]
    return Notification(title, "", body, _str(shown.get("image")), at,
                        background=not (title or body), details=details)
