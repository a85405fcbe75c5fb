"""Operational webhooks, the pure parts: which event types a webhook may ask for, what
each notice says, which settled attempts tell what, how the providers' refusals of an
app's credentials are recognised, and that an operational delivery disables nothing."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.apns import APNsAdapter
from adapters.base import DeliveryJob, EndpointTarget, EventView, Outcome, Verdict
from adapters.fcm import judge
from adapters.http2 import Response
from gateway.api.http import validate
from gateway.api.models import OperationalWebhookPut
from gateway.dispatcher import Dispatcher
from gateway.errors import ValidationError
from gateway.operational import (
    OPERATIONAL_KIND,
    credentials_rejected,
    device_invalidated,
    feed_of,
    known_pattern,
)
from gateway.retry import RetryPolicy
from gateway.store.memory_queue import InMemoryQueue
from gateway.store.postgres_queue import exhausted, refused_credentials
from gateway.store.queue import AttemptResult
from gateway_client.models import (
    AttemptOutcome,
    DeliveryStatus,
    EndpointStatus,
    OperationalEventType,
)
from tests.support import eventually


@pytest.mark.parametrize(("pattern", "known"), [
    ("*", True), ("endpoint.*", True), ("endpoint.disabled", True),
    ("push.credentials_rejected", True), ("delivery.*", True),
    ("order.created", False), ("endpoint", False), ("device.invalidated.*", False),
])
def test_a_webhook_may_ask_only_for_patterns_that_take_an_operational_type(
        pattern: str, known: bool) -> None:
    assert known_pattern(pattern) is known


def test_the_request_names_the_entry_that_takes_no_operational_type() -> None:
    chosen = validate(OperationalWebhookPut, {"url": "https://ops.example/hook",
                                              "event_types": ["endpoint.*", "*"]})
    assert chosen.event_types == ["endpoint.*", "*"]
    with pytest.raises(ValidationError) as refused:
        validate(OperationalWebhookPut, {"url": "https://ops.example/hook",
                                         "event_types": ["device.*", "order.created"]})
    assert refused.value.details[0]["path"] == "event_types.1"


def test_notices_are_filed_under_the_apps_operational_feed_and_say_who_and_why() -> None:
    assert feed_of("app_1") == "ops:app_1"
    assert credentials_rejected("app_1", "apns", "InvalidProviderToken").data == {
        "platform": "ios", "provider": "apns", "reason": "InvalidProviderToken"}
    notice = device_invalidated("app_1", device_id="dev_1", token="t", platform="android",
                                user_id="u", reason="fcm:UNREGISTERED")
    assert notice.type is OperationalEventType.DEVICE_INVALIDATED
    assert set(notice.data) == {"device_id", "token", "platform", "user_id", "reason"}


def _result(delivery_id: str, status: DeliveryStatus, *, error: str | None = None,
            credentials: str | None = None) -> AttemptResult:
    return AttemptResult(
        delivery_id=delivery_id, app_id="app_1", lease_id=uuid.uuid4(), status=status,
        next_attempt_at=None, schedule_pos=3, attempted_at=datetime.now(UTC),
        duration_ms=5, outcome=AttemptOutcome.FAILED, status_code=500, response_snippet=None,
        error=error, credentials_rejected=credentials)


def _moved(delivery_id: str, kind: str) -> dict[str, Any]:
    return {"id": delivery_id, "event_id": "evt_1", "event_type": "order.created",
            "endpoint_id": "ep_1" if kind in ("webhook", OPERATIONAL_KIND) else None,
            "device_id": "dev_1" if kind in ("fcm", "apns") else None, "kind": kind,
            "app_id": "app_1", "attempt_count": 4}


def test_only_deliveries_failed_for_good_and_not_operational_ones_tell_exhausted() -> None:
    results = [_result("dlv_failed", DeliveryStatus.FAILED, error="HTTP 500"),
               _result("dlv_pending", DeliveryStatus.PENDING),
               _result("dlv_operational", DeliveryStatus.FAILED),
               _result("dlv_lost_lease", DeliveryStatus.FAILED),
               _result("dlv_push", DeliveryStatus.FAILED, error="UNREGISTERED")]
    moved = {"dlv_failed": _moved("dlv_failed", "webhook"),
             "dlv_pending": _moved("dlv_pending", "webhook"),
             "dlv_operational": _moved("dlv_operational", OPERATIONAL_KIND),
             "dlv_push": _moved("dlv_push", "fcm")}
    told = exhausted(results, moved)
    assert [t.data["delivery_id"] for t in told] == ["dlv_failed", "dlv_push"]
    assert told[0].data == {
        "delivery_id": "dlv_failed", "event_id": "evt_1", "event_type": "order.created",
        "kind": "webhook", "endpoint_id": "ep_1", "device_id": None, "attempts": 4,
        "last_status_code": 500, "last_error": "HTTP 500"}
    assert told[1].data["device_id"] == "dev_1" and told[1].data["endpoint_id"] is None


def test_refused_credentials_are_counted_once_per_app_and_provider() -> None:
    results = [_result(f"dlv_{n}", DeliveryStatus.FAILED, credentials="InvalidProviderToken")
               for n in range(3)] + [_result("dlv_ok", DeliveryStatus.SUCCEEDED)]
    moved = {f"dlv_{n}": _moved(f"dlv_{n}", "apns") for n in range(3)}
    moved["dlv_ok"] = _moved("dlv_ok", "fcm")
    assert refused_credentials(results, moved) == {("app_1", "apns"): "InvalidProviderToken"}


def _fcm_error(status: int, code: str, fcm_error: str | None = None) -> bytes:
    details = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": fcm_error}] if fcm_error else []
    return json.dumps({"error": {"code": status, "message": "refused", "status": code,
                                 "details": details}}).encode()


@pytest.mark.parametrize(("status", "code", "fcm_error", "refused"), [
    (401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", "THIRD_PARTY_AUTH_ERROR"),
    (403, "PERMISSION_DENIED", None, "PERMISSION_DENIED: refused"),
    (403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", None),
    (404, "NOT_FOUND", "UNREGISTERED", None),
    (503, "UNAVAILABLE", "UNAVAILABLE", None),
])
def test_fcm_answers_that_refuse_the_apps_credentials_say_so(
        status: int, code: str, fcm_error: str | None, refused: str | None) -> None:
    outcome = judge(status, {}, _fcm_error(status, code, fcm_error), 5)
    assert outcome.credentials_rejected == refused


@pytest.mark.parametrize(("status", "reason", "refused"), [
    (403, "InvalidProviderToken", True), (403, "BadCertificate", True),
    (403, "BadCertificateEnvironment", True), (400, "TopicDisallowed", True),
    (400, "BadDeviceToken", False), (410, "Unregistered", False),
    (413, "PayloadTooLarge", False), (503, "ServiceUnavailable", False),
])
def test_apns_answers_that_refuse_the_apps_credentials_say_so(
        status: int, reason: str, refused: bool) -> None:
    answer = Response(status, {}, json.dumps({"reason": reason}).encode())
    outcome = APNsAdapter()._judge(answer, 0.0)
    assert outcome.credentials_rejected == (reason if refused else None)


@dataclass
class Gone:
    """An adapter whose every receiver answers 410 Gone."""

    kind: str = "webhook"
    sent: list[str] = field(default_factory=list)

    async def send(self, job: DeliveryJob) -> Outcome:
        self.sent.append(job.delivery_id)
        return Outcome(Verdict.GONE, status_code=410, gone_reason="endpoint answered 410 Gone")

    async def forget_app(self, app_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


async def test_a_410_fails_an_operational_delivery_and_disables_nothing() -> None:
    queue = InMemoryQueue()
    event = EventView("evt_1", "endpoint.disabled", "{}", datetime.now(UTC))
    queue.add(DeliveryJob("dlv_ops", "ops:app_1", OPERATIONAL_KIND, event,
                          endpoint=EndpointTarget("opw_1", "http://ops/", ("s",))))
    queue.add(DeliveryJob("dlv_hook", "app_1", "webhook", event,
                          endpoint=EndpointTarget("ep_1", "http://hook/", ("s",))))
    adapter = Gone()
    worker = Dispatcher(queue, {"webhook": adapter, OPERATIONAL_KIND: adapter},
                        RetryPolicy((0.05,), jitter=0), poll_interval_s=0.05, lease_s=30)
    await worker.start()
    try:
        async def settled() -> bool:
            return all(e.status is DeliveryStatus.FAILED for e in queue.entries.values())
        await eventually(settled, timeout_s=10)
    finally:
        await worker.stop(1)
    assert queue.endpoints == {"opw_1": EndpointStatus.ACTIVE,
                               "ep_1": EndpointStatus.DISABLED}
