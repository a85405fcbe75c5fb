"""What the store hands out: typed, immutable records, never driver rows.

Each record is made from a query's row by :func:`make`, which matches columns to fields
by name (a query selects exactly its record's columns) and turns status text into the
wire enums. Timestamps are timezone-aware ``datetime``; a delivery parked behind a
disabled endpoint has no due time (``due_at is None`` and ``parked``).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from gateway.health import circuit
from gateway_client.models import (
    AttemptOutcome,
    Circuit,
    DeliveryKind,
    DeliveryStatus,
    DeviceStatus,
    DisabledReason,
    EndpointStatus,
    Platform,
    Provider,
)

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Limits:
    """An app's quotas: its own where the operator set them, else the defaults."""

    max_endpoints: int
    max_devices_per_user: int
    max_topics_per_device: int


@dataclass(frozen=True, slots=True)
class App:
    id: str
    name: str
    created_at: datetime
    #: Events per second it may emit (None: no limit).
    rate_limit: int | None
    max_endpoints: int
    max_devices_per_user: int
    max_topics_per_device: int


@dataclass(frozen=True, slots=True)
class CreatedApp(App):
    #: The API key, in clear this once; only its hash is kept.
    api_key: str


@dataclass(frozen=True, slots=True)
class KeyedApp:
    """The app a key belongs to, and until when that key works."""

    app: App
    #: None for the app's current key; for its previous key, the end of its grace.
    key_expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class RotatedAppKey:
    #: The new API key, in clear this once; only its hash is kept.
    api_key: str
    #: Until then the key it replaced keeps working (None: it ended at once).
    previous_key_expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    app_id: str
    url: str
    description: str
    #: None: every event type.
    event_types: list[str] | None
    status: EndpointStatus
    disabled_reason: DisabledReason | None
    disabled_at: datetime | None
    created_at: datetime
    updated_at: datetime
    #: Sends per second (None: no limit).
    rate_limit: int | None
    #: Sent with every delivery (opened: the store seals the values).
    headers: dict[str, str]
    #: {dotted path: value or [values]} the payload must match (None: every event).
    filter: dict[str, Any] | None
    #: Its health (gateway/health.py): failing since (None while its last attempt
    #: succeeded), and until when its circuit is open (None: closed).
    failing_since: datetime | None
    circuit_open_until: datetime | None

    @property
    def circuit(self) -> Circuit:
        return circuit(self.circuit_open_until, datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class CreatedEndpoint(Endpoint):
    secret: str


@dataclass(frozen=True, slots=True)
class EndpointSecret:
    secret: str
    #: Until then, a rotated-out secret signs beside the new one.
    previous_secret_expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class EventType:
    """An entry of an app's event type catalog."""

    name: str
    description: str
    #: A JSON Schema (Draft 2020-12) its payloads must match; None: any payload.
    schema: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class EventTypeSchema:
    """A schema of the catalog, as ingest loads it."""

    name: str
    schema: dict[str, Any]
    #: Its length in characters of JSON (what the per-process cache counts).
    chars: int


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    #: The payload exactly as the backend sent it (JSON text).
    payload: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    event_id: str
    endpoint_id: str | None
    device_id: str | None
    kind: DeliveryKind
    status: DeliveryStatus
    attempt_count: int
    #: When it is due; while claimed, when the claim's lease runs out. None when parked.
    due_at: datetime | None
    #: A dispatcher holds it right now.
    leased: bool
    last_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def in_flight(self) -> bool:
        return self.leased and self.status is DeliveryStatus.PENDING

    @property
    def parked(self) -> bool:
        """Pending behind a disabled endpoint, until it is enabled again."""
        return self.status is DeliveryStatus.PENDING and self.due_at is None

    @property
    def next_attempt_at(self) -> datetime | None:
        """When it is next tried: only while it waits (not in flight, not parked)."""
        return self.due_at if self.status is DeliveryStatus.PENDING and not self.leased \
            else None


@dataclass(frozen=True, slots=True)
class DeliveryView(Delivery):
    """A delivery with where it goes, for the dashboard."""

    event_type: str
    endpoint_url: str | None
    device_token: str | None
    device_platform: Platform | None


@dataclass(frozen=True, slots=True)
class Attempt:
    id: int
    delivery_id: str
    attempted_at: datetime
    duration_ms: int
    outcome: AttemptOutcome
    status_code: int | None
    response_snippet: str | None
    error: str | None


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    platform: Platform
    token: str
    user_id: str
    topics: list[str]
    locale: str | None
    app_version: str | None
    status: DeviceStatus
    pruned_reason: str | None
    pruned_at: datetime | None
    registered_at: datetime
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Credentials:
    """An app's credentials for one push provider, as uploaded (after checking)."""

    provider: Provider
    config: dict[str, Any]
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class EventSummary:
    """An event with its deliveries counted, for the dashboard."""

    id: str
    type: str
    created_at: datetime
    deliveries: int
    pending: int
    succeeded: int
    failed: int


@dataclass(frozen=True, slots=True)
class QueueHealth:
    """The dashboard's health strip, for one app or all."""

    pending: int
    oldest_pending_at: datetime | None
    attempts_last_minute: int
    now: datetime


@dataclass(frozen=True, slots=True)
class Backlog:
    """For /metrics, database-wide."""

    pending: int
    #: How long the most overdue due delivery has waited; 0 when none is overdue.
    oldest_due_s: float


@dataclass(frozen=True, slots=True)
class TestEvent:
    id: str
    delivery_id: str


@dataclass(frozen=True, slots=True)
class Page(Generic[R]):
    items: list[R]
    next_cursor: str | None


# --- rows to records -------------------------------------------------------------------

class Row(Protocol):
    """A driver's row: its columns by name."""

    def __getitem__(self, name: str, /) -> Any: ...


_FIELDS: dict[type[Any], list[tuple[str, Callable[[Any], Any] | None]]] = {}


def _converter(hint: Any) -> Callable[[Any], Any] | None:
    """How to turn a column's value into a field's type, when they differ."""
    target = hint
    if isinstance(hint, types.UnionType):  # X | None: convert to X
        target = next(a for a in typing.get_args(hint) if a is not type(None))
    if isinstance(target, type) and issubclass(target, enum.Enum):
        return lambda v: None if v is None else target(v)
    if target is dict or typing.get_origin(target) is dict:
        return lambda v: json.loads(v) if isinstance(v, str) else v
    if target is str:
        return lambda v: None if v is None else str(v) if isinstance(v, uuid.UUID) else v
    return None


def _fields(cls: type[Any]) -> list[tuple[str, Callable[[Any], Any] | None]]:
    found = _FIELDS.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        found = [(f.name, _converter(hints[f.name])) for f in dataclasses.fields(cls)]
        _FIELDS[cls] = found
    return found


def make(cls: type[R], row: Row, **extra: Any) -> R:
    """The record ``cls`` from a row whose columns are its fields (``extra`` fills the
    rest)."""
    values = dict(extra)
    for name, convert in _fields(cls):
        if name in values:
            continue
        value = row[name]
        values[name] = convert(value) if convert is not None else value
    return cls(**values)


def make_all(cls: type[R], rows: Sequence[Row]) -> list[R]:
    return [make(cls, row) for row in rows]
