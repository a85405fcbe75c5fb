"""Metric labels stay few, whatever the traffic; the hot series read as
prometheus_client's would."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import (
    ATTEMPT_BUCKETS_S,
    EVENT_TYPE_LIMIT,
    HotCounter,
    HotHistogram,
    Metrics,
    error_code,
    prune_reason,
)
from gateway.store.queue import AttemptResult
from gateway_client.models import AttemptOutcome, DeliveryStatus


@pytest.mark.parametrize(("error", "status", "code"), [
    ("UNREGISTERED", 404, "UNREGISTERED"),
    ("INVALID_ARGUMENT: The registration token is not valid", 400, "INVALID_ARGUMENT"),
    ("BadDeviceToken", 400, "BadDeviceToken"),
    ("endpoint_url_forbidden: 10.0.0.1 is not a public address", None,
     "endpoint_url_forbidden"),
    ("HTTP 503", 503, "http_503"),
    ("endpoint answered 410 Gone", 410, "http_410"),
    ("timed out after 15 s", None, "timeout"),
    ("FCM timed out", None, "timeout"),
    ("connection failed: Cannot connect to host example.com:443", None, "connection"),
    ("APNs connection failed: ConnectError()", None, "connection"),
    ("FCM access token: refused", None, "access_token"),
    ("no FCM credentials for this app", None, "no_credentials"),
    ("internal error: KeyError", None, "internal"),
    (None, None, "other"),
])
def test_error_code_is_the_provider_code_or_a_small_fixed_word(
        error: str | None, status: int | None, code: str) -> None:
    assert error_code(error, status) == code


def test_prune_reason_keeps_the_providers_reason_only() -> None:
    assert prune_reason("apns:Unregistered") == "Unregistered"
    assert prune_reason("fcm:INVALID_ARGUMENT token") == "INVALID_ARGUMENT_token"
    assert prune_reason("something odd: with ; punctuation") == "other"


def record(outcome: str, status: str, error: str | None = None) -> AttemptResult:
    return AttemptResult(
        delivery_id="dlv_1", app_id="app_1", lease_id=uuid.uuid4(), status=DeliveryStatus(status),
        next_attempt_at=None, schedule_pos=0, attempted_at=datetime.now(UTC), duration_ms=5,
        outcome=AttemptOutcome(outcome),
        status_code=None, response_snippet=None, error=error)


def label_values(metrics: Metrics, family: str, label: str) -> set[str]:
    found: set[str] = set()
    for fam in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        if fam.name == family:
            found |= {s.labels[label] for s in fam.samples if label in s.labels}
    return found


def test_event_types_past_the_limit_count_as_other() -> None:
    metrics = Metrics()
    for n in range(EVENT_TYPE_LIMIT + 50):
        metrics.event_ingested(f"type.{n}")
    metrics.event_ingested("type.0")
    types = label_values(metrics, "gateway_events_ingested", "type")
    assert len(types) == EVENT_TYPE_LIMIT + 1 and "other" in types and "type.0" in types


def test_error_codes_past_the_limit_count_as_other() -> None:
    metrics = Metrics()
    for n in range(200):
        metrics.attempt("webhook", record("retry", "pending", f"Error{n}: x"),
                        datetime.now(UTC), sent=True)
    codes = label_values(metrics, "gateway_provider_errors", "code")
    assert len(codes) <= 51 and "other" in codes
    assert label_values(metrics, "gateway_delivery_attempts", "kind") == {
        "webhook", "fcm", "apns", "operational"}


def test_a_kind_the_gateway_does_not_know_is_other() -> None:
    metrics = Metrics()
    metrics.attempt("carrier-pigeon", record("failed", "failed", "lost"), datetime.now(UTC),
                    sent=False)
    assert "other" in label_values(metrics, "gateway_delivery_attempts", "kind")


def _exposed(registry: CollectorRegistry) -> str:
    """The exposition text with each ``_created`` time blanked (they differ by when)."""
    return re.sub(r"(_created(\{[^}]*\})?) \S+", r"\1 T", generate_latest(registry).decode())


@pytest.mark.parametrize("created", [True, False])
def test_hot_series_expose_exactly_what_prometheus_client_would_for_the_same_moves(
        created: bool) -> None:
    """Series for series, with ``_created`` series or without them (as an operator may
    set with PROMETHEUS_DISABLE_CREATED_SERIES)."""
    if not created:
        prometheus_client.disable_created_metrics()
    try:
        _same_moves_both_ways()
    finally:
        prometheus_client.enable_created_metrics()


def _same_moves_both_ways() -> None:
    ours, theirs = CollectorRegistry(auto_describe=False), CollectorRegistry()
    hot_counter = HotCounter("t_moves", "Moves.", ["kind", "outcome"], ours)
    hot_histogram = HotHistogram("t_seconds", "Seconds.", ["kind"], ATTEMPT_BUCKETS_S, ours)
    counter = Counter("t_moves", "Moves.", ["kind", "outcome"], registry=theirs)
    histogram = Histogram("t_seconds", "Seconds.", ["kind"], buckets=ATTEMPT_BUCKETS_S,
                          registry=theirs)
    hot_counter.touch(("fcm", "retry"))
    counter.labels("fcm", "retry")
    moves = [("webhook", "delivered", 0.003), ("webhook", "delivered", 0.005),
             ("fcm", "retry", 0.0051), ("webhook", "gone", 1.0), ("apns", "delivered", 31.0),
             ("webhook", "delivered", 0.0), ("fcm", "retry", 15.0)]
    for kind, outcome, seconds in moves:
        hot_counter.inc((kind, outcome))
        counter.labels(kind, outcome).inc()
        hot_histogram.observe((kind,), seconds)
        histogram.labels(kind).observe(seconds)
    hot_counter.inc(("apns", "delivered"), 2.5)
    counter.labels("apns", "delivered").inc(2.5)
    assert _exposed(ours) == _exposed(theirs)
    assert "t_seconds_bucket{kind=\"fcm\",le=\"0.01\"} 1.0" in _exposed(ours)


def test_a_second_metric_of_a_hot_series_name_is_refused_as_prometheus_client_refuses_it(
        ) -> None:
    registry = CollectorRegistry(auto_describe=False)
    HotCounter("t_moves", "Moves.", ["kind"], registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("t_moves", "Moves again.", ["kind"], registry=registry)
