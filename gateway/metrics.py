"""Prometheus metrics, served at ``GET /metrics``.

Each application owns its :class:`Metrics` and with it its own ``CollectorRegistry`` (never
the global one), so several apps in one process (the tests) do not share counters.
Counters move where things happen (ingest, every attempt the dispatcher settles,
retention); what lives in PostgreSQL (the pending backlog) and the dispatcher's heartbeat
are read at scrape time (``/metrics`` is served by :mod:`gateway.api.health`).

Labels stay bounded: kinds, outcomes and codes come from small sets, event types are
capped (the first :data:`EVENT_TYPE_LIMIT` seen, then ``other``), and no event, user,
device or endpoint id is ever a label.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from gateway.errors import DatabaseUnavailable
from gateway.operational import OPERATIONAL_KIND
from gateway.store.queue import AttemptResult
from gateway.store.records import Backlog
from gateway_client.models import AttemptOutcome, DeliveryKind, DeliveryStatus

log = logging.getLogger("gateway.metrics")
#: A bucket's bound as prometheus_client spells it in ``le`` (untyped there).
_go_float: Callable[[float], str] = floatToGoString


def _created_series() -> bool:
    """Whether prometheus_client writes ``_created`` series now: it leaves them out under
    ``PROMETHEUS_DISABLE_CREATED_SERIES=true`` or after ``disable_created_metrics()``,
    and the hot series follow it (its flag, read the way its own series read it)."""
    return bool(getattr(prometheus_metrics, "_use_created", True))

KINDS = (*(k.value for k in DeliveryKind), OPERATIONAL_KIND)
VERDICTS = tuple(o.value for o in AttemptOutcome)
OTHER = "other"
#: Distinct event types counted by name per process; later ones count as "other".
EVENT_TYPE_LIMIT = 100
#: Distinct error codes (and prune reasons) counted by name per process.
CODE_LIMIT = 50
#: The scrape-time database read gives up after this long; the scrape still answers.
BACKLOG_TIMEOUT_S = 2.0

ATTEMPT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                     300.0, 1800.0, 3600.0, 21600.0, 86400.0)

_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_]{1,63}")
#: Error texts without a provider code, by what they say (first match wins).
_PHRASES = (
    ("timed out", "timeout"),
    ("connection failed", "connection"),
    ("access token", "access_token"),
    ("credentials", "no_credentials"),
    ("internal error", "internal"),
)


class DispatcherState(Protocol):
    """What a scrape reads of this process's dispatcher."""

    heartbeat: float
    restarts: int

    @property
    def inflight(self) -> int: ...

    def healthy(self) -> bool: ...


class BoundedValues:
    """Passes the first ``limit`` distinct values as they are; any later one is "other".

    Keeps a label's cardinality bounded whatever callers send (per process: two processes
    may have let different values through)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self.limit:
            return OTHER
        self._seen.add(value)
        return value


def error_code(error: str | None, status_code: int | None) -> str:
    """A short, bounded code for a failed attempt: the provider's own code when the adapter
    reported one (``UNREGISTERED``, ``BadDeviceToken``, ``endpoint_url_forbidden``), else
    the HTTP status (``http_503``), else what kind of failure it was."""
    text = (error or "").strip()
    head = text.split(":", 1)[0].strip()
    if _CODE.fullmatch(head):
        return head
    lowered = text.lower()
    for phrase, code in _PHRASES:
        if phrase in lowered:
            return code
    if status_code is not None and 100 <= status_code <= 599:
        return f"http_{status_code}"
    return OTHER


def prune_reason(reason: str | None) -> str:
    """``fcm:UNREGISTERED`` → ``UNREGISTERED``; ``fcm:INVALID_ARGUMENT token`` →
    ``INVALID_ARGUMENT_token``."""
    tail = (reason or "").split(":", 1)[-1].strip().replace(" ", "_")
    return tail if _CODE.fullmatch(tail) else OTHER


def _kind(kind: str) -> str:
    return kind if kind in KINDS else OTHER


class HotCounter:
    """A labelled counter moved on every request or attempt, kept as plain numbers by label
    values and exposed at scrape time as prometheus_client exposes a ``Counter`` (the
    ``_total`` and ``_created`` series, in the order the series were first moved).

    A prometheus_client series takes a lock and checks its argument on every ``inc``,
    and an attempt moves four or five: :meth:`Metrics.attempt` cost 6.6 µs that way,
    about 3 µs this way (bench/README.md, "Without HTTP"). Moved and scraped on the event
    loop's thread only."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._values: dict[tuple[str, ...], float] = {}
        self._created: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        if labels in self._values:
            self._values[labels] += amount
        else:
            self._created[labels] = time.time()
            self._values[labels] = amount

    def touch(self, labels: tuple[str, ...]) -> None:
        """The series exists from now on, at 0 if it never moved."""
        self.inc(labels, 0.0)

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def describe(self) -> Iterable[Metric]:
        """The family without samples: the registry records its names (so a second
        metric of the same name is refused, as it would be for a prometheus_client one)."""
        yield self._family()

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        created = _created_series()
        for labels, value in self._values.items():
            family.add_metric(labels, value,
                              created=self._created[labels] if created else None)
        yield family


class HotHistogram:
    """A labelled histogram observed on every attempt, kept as plain bucket counts and
    exposed at scrape time as prometheus_client exposes a ``Histogram`` (``_bucket``,
    ``_count``, ``_sum`` and ``_created``). An observation is one ``bisect`` and two
    additions where prometheus_client's walks its buckets in Python under a lock."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._bounds = tuple(float(b) for b in buckets)
        self._les = [_go_float(b) for b in self._bounds] + ["+Inf"]
        #: Per series: the count of each bucket alone (the last one +Inf), then the sum.
        self._series: dict[tuple[str, ...], list[float]] = {}
        self._created: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def observe(self, labels: tuple[str, ...], amount: float) -> None:
        series = self._series.get(labels)
        if series is None:
            self._created[labels] = time.time()
            series = self._series[labels] = [0.0] * (len(self._bounds) + 2)
        series[bisect.bisect_left(self._bounds, amount)] += 1.0
        series[-1] += amount

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def describe(self) -> Iterable[Metric]:
        """The family without samples (see :meth:`HotCounter.describe`)."""
        yield self._family()

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        created = _created_series()
        for labels, series in self._series.items():
            buckets: list[tuple[str, float]] = []
            total = 0.0
            for le, count in zip(self._les, series, strict=False):
                total += count
                buckets.append((le, total))
            family.add_metric(labels, buckets, series[-1])
            if created:
                family.samples.append(Sample(f"{self.name}_created",
                                             dict(zip(self.labelnames, labels, strict=True)),
                                             self._created[labels]))
        yield family


class Metrics:
    """Every metric of one gateway process, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.events_ingested = HotCounter(
            "gateway_events_ingested", "Events accepted by POST /v1/events (idempotent "
            "replays not counted), by type (the first 100 types seen, then 'other').",
            ["type"], r)
        self.attempts = HotCounter(
            "gateway_delivery_attempts", "Delivery attempts by kind and outcome "
            "(delivered, retry, failed, gone).", ["kind", "outcome"], r)
        self.completed = HotCounter(
            "gateway_deliveries_completed", "Deliveries that reached a final status "
            "(succeeded, failed), by kind.", ["kind", "status"], r)
        self.attempt_seconds = HotHistogram(
            "gateway_attempt_duration_seconds", "How long one attempt took (the request to "
            "the endpoint or provider), by kind.", ["kind"], ATTEMPT_BUCKETS_S, r)
        self.latency_seconds = HotHistogram(
            "gateway_ingest_to_delivery_seconds", "From the event's acceptance to the "
            "successful attempt of one of its deliveries, by kind.", ["kind"],
            LATENCY_BUCKETS_S, r)
        self.retries = HotCounter(
            "gateway_retries_scheduled", "Attempts after which the delivery was scheduled "
            "for another try, by kind.", ["kind"], r)
        self.endpoints_disabled = Counter(
            "gateway_endpoints_disabled", "Endpoints the gateway disabled: they answered "
            "410 Gone, or every attempt failed for GATEWAY_DISABLE_AFTER_S.", registry=r)
        self.circuits_opened = Counter(
            "gateway_circuit_opened", "Endpoint circuits that opened after "
            "GATEWAY_CIRCUIT_FAILURES failed attempts in a row (a failed probe keeps one "
            "open and is not counted).", registry=r)
        self.devices_pruned = Counter(
            "gateway_devices_pruned", "Device tokens the provider called dead, by provider "
            "(fcm, apns) and the provider's reason.", ["provider", "reason"], registry=r)
        self.provider_errors = Counter(
            "gateway_provider_errors", "Failed attempts by kind and error code: the "
            "provider's code (UNREGISTERED, BadDeviceToken...), http_<status>, timeout, "
            "connection...", ["kind", "code"], registry=r)
        self.auth_failures = Counter(
            "gateway_auth_failures", "Requests refused 401 for a missing, unknown or forged "
            "key.", registry=r)
        self.auth_rate_limited = Counter(
            "gateway_auth_rate_limited", "Requests refused 429 because their address sent "
            "too many failed keys.", registry=r)
        self.ingest_rate_limited = Counter(
            "gateway_ingest_rate_limited", "Events refused 429 for their app's rate_limit.",
            registry=r)
        self.rate_limited = Counter(
            "gateway_deliveries_rate_limited", "Due deliveries a claim held back for their "
            "endpoint's rate_limit, each booked a later send time (held back again: counted "
            "again).", registry=r)
        self.retention_deleted = Counter(
            "gateway_retention_deleted_rows", "Rows deleted by retention, by table.",
            ["table"], registry=r)
        self.cleanup_deleted = Counter(
            "gateway_app_cleanup_deleted_rows", "Rows of deleted apps removed, by table.",
            ["table"], registry=r)
        self.live = _Live()
        r.register(self.live)
        self._types = BoundedValues(EVENT_TYPE_LIMIT)
        #: Each event type's label tuple of events_ingested (types past the limit are not
        #: kept: they count as "other").
        self._ingested: dict[str, tuple[str]] = {}
        self._codes = BoundedValues(CODE_LIMIT)
        self._reasons = BoundedValues(CODE_LIMIT)
        for kind in KINDS:  # series exist at 0 from the start, so rate() sees the first one
            for verdict in VERDICTS:
                self.attempts.touch((kind, verdict))
            for status in (DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED):
                self.completed.touch((kind, status.value))
            self.retries.touch((kind,))
        for table in ("attempts", "deliveries", "events", "idempotency_keys"):
            self.retention_deleted.labels(table)

    # --- hooks --------------------------------------------------------------------------

    def event_ingested(self, event_type: str) -> None:
        labels = self._ingested.get(event_type)
        if labels is None:
            labels = (self._types(event_type),)
            if labels[0] == event_type:  # kept for the types that have a series of their own
                self._ingested[event_type] = labels
        self.events_ingested.inc(labels)

    def attempt(self, kind: str, record: AttemptResult, event_created_at: datetime, *,
                sent: bool) -> None:
        """One attempt as the dispatcher records it; ``sent`` is False when it never left
        the gateway (device pruned or deleted, no adapter)."""
        k = _kind(kind)
        self.attempts.inc((k, record.outcome.value))
        if sent:
            self.attempt_seconds.observe((k,), record.duration_ms / 1000)
        if record.status is DeliveryStatus.PENDING:
            self.retries.inc((k,))
        else:
            self.completed.inc((k, record.status.value))
        if record.status is DeliveryStatus.SUCCEEDED:
            latency = (datetime.now(UTC) - event_created_at).total_seconds()
            self.latency_seconds.observe((k,), max(latency, 0.0))
        elif sent and record.outcome is not AttemptOutcome.DELIVERED:
            self.provider_errors.labels(
                k, self._codes(error_code(record.error, record.status_code))).inc()
        if record.disable_endpoint_id is not None:
            self.endpoints_disabled.inc()
        if record.prune_device_id is not None:
            self.devices_pruned.labels(k, self._reasons(prune_reason(record.prune_reason))).inc()

    def endpoints_changed(self, circuits_opened: int, disabled_failing: int) -> None:
        """Circuits opened and endpoints disabled for failing, as settling attempts found."""
        if circuits_opened:
            self.circuits_opened.inc(circuits_opened)
        if disabled_failing:
            self.endpoints_disabled.inc(disabled_failing)

    def auth_failed(self) -> None:
        self.auth_failures.inc()

    def auth_refused(self) -> None:
        self.auth_rate_limited.inc()

    def deleted(self, table: str, rows: int) -> None:
        if rows:
            self.retention_deleted.labels(table).inc(rows)

    def cleaned(self, table: str, rows: int) -> None:
        """Rows of a deleted app removed (``table`` is one of the cleanup's, or attempts)."""
        if rows:
            self.cleanup_deleted.labels(table).inc(rows)

    # --- scrape -------------------------------------------------------------------------

    async def render(self, backlog_of: Callable[[], Awaitable[Backlog]] | None,
                     dispatcher: DispatcherState | None) -> bytes:
        """The exposition text, with the backlog read from PostgreSQL just now."""
        backlog = None
        if backlog_of is not None:
            try:
                async with asyncio.timeout(BACKLOG_TIMEOUT_S):
                    backlog = await backlog_of()
            except (DatabaseUnavailable, TimeoutError) as exc:
                log.warning("metrics: cannot read the delivery backlog (%s)",
                            type(exc).__name__)
        # Synchronous from here: no other scrape can interleave with these values.
        self.live.database_up = backlog is not None
        self.live.pending = None if backlog is None else backlog.pending
        self.live.oldest_due_s = None if backlog is None else backlog.oldest_due_s
        self.live.dispatcher = dispatcher
        return generate_latest(self.registry)


class _Live:
    """Scrape-time values: the database's backlog and this process's dispatcher."""

    def __init__(self) -> None:
        self.database_up = False
        self.pending: int | None = None
        self.oldest_due_s: float | None = None
        self.dispatcher: DispatcherState | None = None

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("gateway_database_up", "1 when this scrape could read the "
                                "delivery backlog from PostgreSQL.",
                                value=1 if self.database_up else 0)
        if self.pending is not None and self.oldest_due_s is not None:
            yield GaugeMetricFamily(
                "gateway_pending_deliveries", "Deliveries not yet succeeded or failed, in "
                "the whole database (due, scheduled for a retry, in flight or parked).",
                value=self.pending)
            yield GaugeMetricFamily(
                "gateway_oldest_pending_delivery_age_seconds", "How long the longest-"
                "waiting due delivery has been due (its age, for a first attempt); 0 when "
                "none is overdue. Whole database.", value=self.oldest_due_s)
        worker = self.dispatcher
        if worker is not None:
            beat = time.time() - (time.monotonic() - worker.heartbeat)
            yield GaugeMetricFamily(
                "gateway_dispatcher_heartbeat_timestamp_seconds", "When this process's "
                "dispatcher loop last turned (Unix time).", value=beat)
            yield GaugeMetricFamily("gateway_dispatcher_up", "1 while this process's "
                                    "dispatcher loop runs and moves.",
                                    value=1 if worker.healthy() else 0)
            yield GaugeMetricFamily("gateway_dispatcher_inflight", "Deliveries this "
                                    "process is sending right now.",
                                    value=worker.inflight)
            yield CounterMetricFamily("gateway_dispatcher_restarts", "Times the supervisor "
                                      "restarted a dead or stalled dispatcher loop.",
                                      value=worker.restarts)
