"""The one interface between the dispatcher and every outbound transport.

An adapter gets a :class:`DeliveryJob` and answers with an :class:`Outcome`: what
happened, never what to do next. The retry policy (``gateway.retry``) decides that.
Adapters never raise for a failed delivery; an exception out of ``send`` is a bug and
is recorded as a retryable error by the dispatcher.
"""

from __future__ import annotations

import email.utils
import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform

    @dataclass_transform(frozen_default=True)
    def record(cls: type[T]) -> type[T]:
        """A value made per delivery: frozen to the type checker, a plain slotted
        dataclass at run time (see below)."""
        ...
else:
    def record(cls):
        """A dataclass for the values made per delivery and per attempt (jobs, outcomes,
        results): the type checker holds them frozen (no assignment to a field passes
        ``mypy``), and at run time they are plain slotted dataclasses, because a frozen
        dataclass's ``__init__`` sets every field through ``object.__setattr__``: ten
        times the cost (3.2 against 0.3 µs for 19 fields), several times a push. They
        hash by their fields, as the frozen dataclasses the type checker sees would
        (``unsafe_hash``: nothing assigns their fields, so a hash never goes stale)."""
        return dataclass(slots=True, unsafe_hash=True)(cls)


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    #: Worth another attempt later (timeout, 5xx, 429, connection refused…).
    RETRY = "retry"
    #: Will never succeed as it stands; do not retry.
    FAILED = "failed"
    #: The target is gone for good (webhook 410: disable the endpoint; push: prune the device).
    GONE = "gone"


@record
class EventView:
    id: str
    type: str
    #: The payload as the backend sent it, JSON text.
    payload: str
    created_at: datetime
    #: The W3C trace context the event was emitted in: a version 00 ``traceparent`` and
    #: its ``tracestate``, or None.
    traceparent: str | None = None
    tracestate: str | None = None


@record
class EndpointTarget:
    id: str
    url: str
    #: Secrets to sign with: the current one first, then a rotated-out one still in its grace.
    secrets: tuple[str, ...]
    #: The endpoint's own headers (name, value), sent with every delivery.
    headers: tuple[tuple[str, str], ...] = ()


@record
class DeviceTarget:
    id: str
    platform: str  # "ios" | "android"
    token: str


@record
class DeliveryJob:
    delivery_id: str
    app_id: str
    kind: str
    event: EventView
    endpoint: EndpointTarget | None = None
    device: DeviceTarget | None = None
    #: The event's notification (push deliveries), as validated at ingest.
    notification: Mapping[str, Any] | None = None
    #: The app's provider credentials for this kind, or None (the adapter's default).
    credentials: Mapping[str, Any] | None = None
    #: 1 for the first attempt.
    attempt: int = 1
    #: This attempt's W3C ``traceparent``: the event's trace, with the attempt itself as
    #: the parent (the dispatcher sets it, new for each attempt). Webhooks send it, with
    #: the event's ``tracestate``.
    traceparent: str | None = None


@record
class Outcome:
    verdict: Verdict
    duration_ms: int = 0
    status_code: int | None = None
    #: The start of the answer's body, for the attempts log.
    response_snippet: str | None = None
    error: str | None = None
    #: A provider's Retry-After, in seconds, when it gave one.
    retry_after_s: float | None = None
    #: Why the target is gone (with ``Verdict.GONE``), for the operator.
    gone_reason: str | None = None
    #: When the provider says the target stopped being valid (APNs 410 "timestamp").
    gone_since: datetime | None = None
    #: The provider refused the app's credentials, and said this (for the app's
    #: operational webhook: push.credentials_rejected).
    credentials_rejected: str | None = None


class Adapter(Protocol):
    """An outbound transport. One instance serves every delivery of its ``kind``."""

    kind: str

    async def send(self, job: DeliveryJob) -> Outcome: ...

    async def forget_app(self, app_id: str) -> None:
        """Drop what is kept for this app (provider tokens, connections): it was deleted,
        and nothing of it is sent any more."""

    async def close(self) -> None: ...


def snippet(content: bytes | str, limit: int) -> str:
    """At most ``limit`` characters of an answer, fit for the attempts log: decoded
    leniently, control characters and NULs replaced, whitespace runs folded."""
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    text = "".join(c if c.isprintable() else " " for c in text[: limit * 2])
    return " ".join(text.split())[:limit]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


class PerObject(Generic[T, R]):
    """``compute(obj)``, worked out once per object (by identity) for the jobs that share
    it: the jobs of one fan-out batch or one claim share one notification and one app's
    credentials (the store reads each once), so what an adapter derives from them is not
    derived again for every push. Only for objects nothing changes. Keeps at most
    ``size`` objects, each held so that its id is not reused while it is kept."""

    def __init__(self, compute: Callable[[T], R], size: int = 256) -> None:
        self._compute = compute
        self._size = size
        self._kept: dict[int, tuple[T, R]] = {}

    def __call__(self, obj: T) -> R:
        kept = self._kept.get(id(obj))
        if kept is not None and kept[0] is obj:
            return kept[1]
        value = self._compute(obj)
        if len(self._kept) >= self._size:
            self._kept.clear()
        self._kept[id(obj)] = (obj, value)
        return value

    def clear(self) -> None:
        self._kept.clear()
