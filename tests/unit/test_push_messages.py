"""What the push adapters derive from a notification or credentials shared by many jobs
(a fan-out batch's) is worked out once, and every push still gets exactly the bytes it
would get built on its own."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from adapters.apns import APNsAdapter, apns_id
from adapters.base import DeliveryJob, DeviceTarget, EventView, PerObject, Verdict
from adapters.fcm import _TOKEN_MARK, FCMAdapter
from gateway.api.models import APNsCredentials, Notification
from gateway.sandbox import pem_private

NOTIFICATIONS: list[dict[str, Any]] = [
    {"title": "Order shipped", "body": "Your order is on its way", "priority": "high",
     "data": {"order": "42"}},
    {"title": "Ünïcödé ✓", "body": 'quotes " and \\ backslash', "data": {"k": "v"},
     "collapse_key": "orders", "ttl_seconds": 60},
    {"data": {"silent": "1"}, "priority": "normal"},  # data only: no notification
    {"content_available": True},  # a background push, nothing but the wake-up
    {"title": "t", "fcm": {"android": {"notification": {"tag": "x"}},
                           "data": {"extra": "y"}}},
    # The notification's own text holds the stand-in: built per push instead.
    {"title": _TOKEN_MARK, "data": {}},
]
TOKENS = ["fcm-token:APA91b" + "x" * 140, 'odd"token\\with/escapes', "tökén-ü"]


def job(notification: dict[str, Any], token: str) -> DeliveryJob:
    event = EventView("evt_1", "t", "{}", datetime.now(UTC))
    return DeliveryJob("dlv_1", "app_1", "fcm", event,
                       device=DeviceTarget("dev_1", "android", token),
                       notification=notification, credentials={"project_id": "p"})


@pytest.mark.parametrize("notification", NOTIFICATIONS)
def test_an_fcm_message_built_once_per_notification_is_the_one_built_for_each_token(
        notification: dict[str, Any]) -> None:
    shared = FCMAdapter(base_url="http://127.0.0.1:9")
    built = 0
    parse = shared._builder.parse_payload

    def counted(**kwargs: Any) -> bytes:
        nonlocal built
        built += 1
        body: bytes = parse(**kwargs)
        return body

    shared._builder.parse_payload = counted
    for token in TOKENS:
        alone = FCMAdapter(base_url="http://127.0.0.1:9")._build(notification, token)
        assert shared.message(job(notification, token), {}) == alone
        assert json.loads(alone)["message"]["token"] == token
    assert built == (1 if _TOKEN_MARK not in json.dumps(notification) else 1 + len(TOKENS))


def test_per_object_works_each_out_once_and_tells_equal_objects_apart() -> None:
    calls: list[dict[str, str]] = []

    def compute(obj: dict[str, str]) -> str:
        calls.append(obj)
        return obj["v"]

    derived = PerObject(compute, size=2)
    one, same_text = {"v": "a"}, {"v": "a"}
    assert [derived(one), derived(one), derived(same_text)] == ["a", "a", "a"]
    assert calls == [one, same_text] and calls[0] is one and calls[1] is same_text
    derived({"v": "b"})  # over its size: starts afresh
    assert derived(one) == "a" and len(calls) == 4


@pytest.mark.parametrize("delivery_id", ["dlv_0123456789abcdef0123456789abcdef", "", "dlv_ü✓",
                                         "x" * 300])
def test_an_apns_id_is_the_uuid5_of_its_delivery_id(delivery_id: str) -> None:
    assert apns_id(delivery_id) == str(uuid.uuid5(uuid.NAMESPACE_URL, delivery_id))


async def test_an_apns_push_whose_header_http2_cannot_carry_fails_at_once_unsent() -> None:
    """A collapse id with a line break (stored before ingest refused one) cannot be an
    HTTP/2 header: the attempt fails for good, with the reason, before anything is sent,
    instead of raising out of the adapter and being retried as an internal error for
    days."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = pem_private(key)
    adapter = APNsAdapter(base_url="https://127.0.0.1:9")
    try:
        outcome = await adapter.send(DeliveryJob(
            "dlv_1", "app_1", "apns", EventView("evt_1", "t", "{}", datetime.now(UTC)),
            device=DeviceTarget("dev_1", "ios", "ab" * 32),
            notification={"title": "t", "collapse_key": "line\nbreak"},
            credentials={"key_p8": pem, "key_id": "KEY1234567", "team_id": "TEAM123456",
                         "topic": "com.example.app", "environment": "sandbox"}))
    finally:
        await adapter.close()
    assert outcome.verdict is Verdict.FAILED
    assert outcome.error is not None and outcome.error.startswith("APNs request not sent")


@pytest.mark.parametrize("key", ["order-7", "order 7", "order\t7", "zamówienie-7"])
def test_a_collapse_key_a_header_carries_as_it_is_is_accepted(key: str) -> None:
    notification = Notification.model_validate({"title": "t", "collapse_key": key})
    assert notification.collapse_key == key


@pytest.mark.parametrize("key", ["a\nb", "a\rb", "a\x7fb", "a\x1bb", " a", "a\t"])
def test_a_collapse_key_a_header_cannot_carry_as_it_is_is_refused(key: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="collapse_key"):
        Notification.model_validate({"title": "t", "collapse_key": key})


@pytest.mark.parametrize("key", ["order-7", "order 7", " order-7", "order-7 ", "zamówienie-7",
                                 "z" * 64])
def test_an_apns_collapse_id_override_takes_up_to_64_bytes_a_header_carries(key: str) -> None:
    notification = Notification.model_validate(
        {"title": "t", "apns": {"headers": {"apns-collapse-id": key}}})
    assert notification.apns is not None
    assert notification.apns.headers == {"apns-collapse-id": key}


@pytest.mark.parametrize("key", ["a\nb", "a\rb", "a\x7fb", "a\x00", "z" * 65, "ż" * 33, ""])
def test_an_apns_collapse_id_override_a_header_cannot_carry_is_refused(key: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="apns-collapse-id"):
        Notification.model_validate(
            {"title": "t", "apns": {"headers": {"apns-collapse-id": key}}})


def test_an_apns_topic_with_whitespace_around_it_is_still_taken() -> None:
    """h2 sends a header value trimmed, as it always sent this topic: not refused."""
    credentials = APNsCredentials.model_validate({
        "key_p8": "k", "key_id": "KEY1234567", "team_id": "TEAM123456",
        "topic": "com.example.app "})
    assert credentials.topic == "com.example.app "
