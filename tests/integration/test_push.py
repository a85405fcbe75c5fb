"""Mobile push end to end in process: devices registered over the API, events emitted,
pushes checked where the faithful fake FCM (HTTP) and fake APNs (TLS + HTTP/2) got them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import Settings
from tests.push_support import TOPIC, Providers, android_token, ios_token, start_providers
from tests.support import ADMIN_KEY, Api, eventually


@dataclass
class Push:
    api: Api
    key: str
    app_id: str
    providers: Providers
    dsn: str

    async def device(self, platform: str, token: str, user_id: str = "u1",
                     topics: list[str] | None = None, key: str | None = None,
                     expect: int | None = None) -> dict[str, Any]:
        status, body = await self.api.call("POST", "/v1/devices", key or self.key, {
            "platform": platform, "token": token, "user_id": user_id, "topics": topics or []})
        assert status in ((expect,) if expect else (200, 201)), body
        result: dict[str, Any] = body
        return result

    async def emit(self, notification: dict[str, Any], **targets: Any) -> dict[str, Any]:
        status, body = await self.api.call("POST", "/v1/events", self.key, {
            "type": "order.shipped", "payload": {"order": 7}, "notification": notification,
            **targets})
        assert status == 202, body
        result: dict[str, Any] = body
        return result

    async def deliveries(self, **query: str) -> list[dict[str, Any]]:
        _, body = await self.api.call("GET", "/v1/deliveries", self.key,
                                      params={"limit": "250", **query})
        result: list[dict[str, Any]] = body["data"]
        return result

    async def device_row(self, token: str) -> dict[str, Any]:
        status, body = await self.api.call("GET", f"/v1/devices/{token}", self.key)
        assert status == 200, body
        result: dict[str, Any] = body
        return result


@pytest.fixture
async def push(aiohttp_client: Any, dsn: str, settings: Settings, tmp_path: Path
               ) -> AsyncIterator[Push]:
    providers = await start_providers(tmp_path)
    client: TestClient[aiohttp.web.Request, aiohttp.web.Application] = await aiohttp_client(
        create_app(providers.settings(settings), dsn))
    api = Api(client)
    status, app = await api.call("POST", "/v1/apps", ADMIN_KEY, {"name": "shop"})
    assert status == 201
    key = app["api_key"]
    status, body = await api.call("PUT", f"/v1/apps/{app['id']}/push/fcm", key,
                                  {"service_account": providers.service_account})
    assert status == 200, body
    status, body = await api.call("PUT", f"/v1/apps/{app['id']}/push/apns", key,
                                  providers.apns_credentials)
    assert status == 200, body
    try:
        yield Push(api, key, app["id"], providers, dsn)
    finally:
        await providers.stop()


ALERT = {"title": "Shipped", "body": "Your order is on its way", "data": {"order": "7"}}


async def test_every_live_device_of_a_user_gets_the_push_on_its_platform(push: Push) -> None:
    ios, android = ios_token(1), android_token(1)
    await push.device("ios", ios)
    await push.device("android", android)
    await push.device("ios", ios_token(2), user_id="someone-else")
    await push.emit({**ALERT, "badge": 3, "sound": "default", "collapse_key": "order-7",
                     "ttl_seconds": 600}, user_ids=["u1"])
    await eventually(lambda: _count(push.providers.apns.received, 1))
    await eventually(lambda: _count(push.providers.fcm.received, 1))
    apns_push = push.providers.apns.received[0]
    assert apns_push.token == ios
    assert apns_push.payload == {"order": "7", "aps": {
        "alert": {"title": "Shipped", "body": "Your order is on its way"}, "badge": 3,
        "sound": "default"}}
    assert apns_push.headers["apns-topic"] == TOPIC
    assert apns_push.headers["apns-push-type"] == "alert"
    assert apns_push.headers["apns-priority"] == "10"
    assert apns_push.headers["apns-collapse-id"] == "order-7"
    assert int(apns_push.headers["apns-expiration"]) > datetime.now(UTC).timestamp() + 500
    fcm_push = push.providers.fcm.received[0]
    assert fcm_push.token == android and fcm_push.app == "shop-project"
    assert fcm_push.payload["notification"] == {"title": "Shipped",
                                                "body": "Your order is on its way"}
    assert fcm_push.payload["data"] == {"order": "7"}
    assert fcm_push.payload["android"]["priority"] in ("high", "HIGH")
    assert fcm_push.payload["android"]["ttl"] == "600s"
    assert fcm_push.payload["android"]["collapse_key"] == "order-7"
    done = await eventually(lambda: _all(push, "succeeded", 2))
    assert {d["kind"] for d in done} == {"apns", "fcm"}


async def test_background_push_is_apns_background_priority_5_and_fcm_data_only(
    push: Push
) -> None:
    await push.device("ios", ios_token(1))
    await push.device("android", android_token(1))
    await push.emit({"content_available": True, "data": {"sync": "1"}}, user_ids=["u1"])
    await eventually(lambda: _count(push.providers.apns.received, 1))
    await eventually(lambda: _count(push.providers.fcm.received, 1))
    got = push.providers.apns.received[0]
    assert got.headers["apns-push-type"] == "background"
    assert got.headers["apns-priority"] == "5"
    assert got.payload == {"sync": "1", "aps": {"content-available": 1}}
    assert push.providers.apns.background_priority_violations == 0
    assert "notification" not in push.providers.fcm.received[0].payload


async def test_topic_fanout_to_ten_thousand_devices_answers_at_once_and_reaches_all(
    push: Push
) -> None:
    conn = await asyncpg.connect(push.dsn)
    try:
        await conn.execute(
            "INSERT INTO devices (id, app_id, platform, token, user_id, topics) "
            "SELECT 'dev_' || lpad(i::text, 8, '0'), $1, "
            "  CASE WHEN i % 2 = 0 THEN 'ios' ELSE 'android' END, "
            "  CASE WHEN i % 2 = 0 THEN lpad(to_hex(i), 64, '0') ELSE 'tok-' || i END, "
            "  'user-' || i, ARRAY['news'] FROM generate_series(1, 10000) AS i", push.app_id)
    finally:
        await conn.close()
    loop = asyncio.get_running_loop()
    started = loop.time()
    event = await push.emit({"title": "Breaking", "body": "news"}, topics=["news"])
    answered_s = loop.time() - started
    assert answered_s < 2, "ingest must not wait for fan-out"
    def total() -> int:
        return len(push.providers.apns.received) + len(push.providers.fcm.received)

    await eventually(lambda: _ready(total() >= 10_000), timeout_s=120, interval_s=0.5)
    tokens = [p.token for p in push.providers.apns.received + push.providers.fcm.received]
    assert len(set(tokens)) == 10_000
    _, shown = await push.api.call("GET", f"/v1/events/{event['id']}", push.key)
    assert len(shown["deliveries"]) == 10_000
    assert push.providers.apns.connections_opened <= 4, "pushes must share connections"
    assert push.providers.apns.max_concurrent_streams_seen > 1


async def test_pruned_devices_are_shown_and_skipped_by_later_fanouts(push: Push) -> None:
    dead, alive = android_token(1), android_token(2)
    await push.device("android", dead)
    await push.device("android", alive)
    push.providers.fcm.fail(dead, "UNREGISTERED")
    await push.emit(ALERT, user_ids=["u1"])
    row = await eventually(lambda: _pruned(push, dead))
    assert row["pruned_reason"] == "fcm:UNREGISTERED" and row["pruned_at"]
    _, page = await push.api.call("GET", "/v1/devices", push.key, params={"status": "pruned"})
    assert [d["token"] for d in page["data"]] == [dead]
    second = await push.emit(ALERT, user_ids=["u1"])
    await eventually(lambda: _count(push.providers.fcm.received, 2))
    _, shown = await push.api.call("GET", f"/v1/events/{second['id']}", push.key)
    assert len(shown["deliveries"]) == 1
    assert [p.token for p in push.providers.fcm.received] == [alive, alive]


async def test_a_pruned_token_registered_again_is_live_again(push: Push) -> None:
    token = android_token(1)
    await push.device("android", token)
    push.providers.fcm.fail(token, "UNREGISTERED")
    await push.emit(ALERT, user_ids=["u1"])
    await eventually(lambda: _pruned(push, token))
    again = await push.device("android", token, expect=200)
    assert again["status"] == "active" and again["pruned_reason"] is None
    await push.emit(ALERT, user_ids=["u1"])
    await eventually(lambda: _count(push.providers.fcm.received, 1))


@pytest.mark.parametrize(("answer", "prunes"), [
    ("UNREGISTERED", True), ("SENDER_ID_MISMATCH", True), ("INVALID_ARGUMENT", True),
    ("INVALID_ARGUMENT_NO_DETAILS", False), ("THIRD_PARTY_AUTH_ERROR", False),
])
async def test_fcm_permanent_errors_fail_and_prune_only_dead_tokens(
    push: Push, answer: str, prunes: bool
) -> None:
    token = android_token(1)
    await push.device("android", token)
    push.providers.fcm.fail(token, answer)
    await push.emit(ALERT, user_ids=["u1"])
    (failed,) = await eventually(lambda: push.deliveries(status="failed"))
    assert failed["attempt_count"] == 1
    assert (await push.device_row(token))["status"] == ("pruned" if prunes else "active")


async def test_a_failed_push_can_be_retried_by_hand(push: Push) -> None:
    token = android_token(1)
    await push.device("android", token)
    push.providers.fcm.fail(token, "THIRD_PARTY_AUTH_ERROR")
    await push.emit(ALERT, user_ids=["u1"])
    (failed,) = await eventually(lambda: push.deliveries(status="failed"))
    status, body = await push.api.call("POST", f"/v1/deliveries/{failed['id']}/retry", push.key)
    assert status == 202 and body["status"] == "pending"
    (done,) = await eventually(lambda: push.deliveries(status="succeeded"))
    assert done["id"] == failed["id"] and done["kind"] == "fcm"
    assert [p.token for p in push.providers.fcm.received] == [token]


@pytest.mark.parametrize("answer", ["UNAVAILABLE", "INTERNAL", "HTML_502"])
async def test_fcm_transient_errors_are_retried_until_delivered(push: Push, answer: str) -> None:
    token = android_token(1)
    await push.device("android", token)
    push.providers.fcm.fail(token, answer, answer)
    await push.emit(ALERT, user_ids=["u1"])
    (done,) = await eventually(lambda: push.deliveries(status="succeeded"))
    assert done["attempt_count"] == 3
    assert (await push.device_row(token))["status"] == "active"


async def test_fcm_quota_exceeded_waits_at_least_a_minute(push: Push) -> None:
    token = android_token(1)
    await push.device("android", token)
    push.providers.fcm.fail(token, "QUOTA_EXCEEDED")
    await push.emit(ALERT, user_ids=["u1"])

    async def waiting() -> list[dict[str, Any]]:
        return [d for d in await push.deliveries(status="pending") if d["attempt_count"] == 1]

    (pending,) = await eventually(waiting)
    due = datetime.fromisoformat(pending["next_attempt_at"])
    assert (due - datetime.fromisoformat(pending["last_attempt_at"])).total_seconds() >= 59


async def test_fcm_expired_access_token_is_refreshed_once_and_the_push_sent(push: Push) -> None:
    token = android_token(1)
    await push.device("android", token)
    await push.emit(ALERT, user_ids=["u1"])
    await eventually(lambda: _count(push.providers.fcm.received, 1))
    minted = push.providers.fcm.token_requests
    push.providers.fcm.expire_access_tokens()
    await push.emit(ALERT, user_ids=["u1"])
    await eventually(lambda: _count(push.providers.fcm.received, 2))
    assert push.providers.fcm.token_requests == minted + 1
    done = await eventually(lambda: _all(push, "succeeded", 2))
    assert all(d["attempt_count"] == 1 for d in done)


async def test_fcm_access_token_is_reused_across_pushes(push: Push) -> None:
    for n in range(5):
        await push.device("android", android_token(n))
    await push.emit(ALERT, user_ids=["u1"])
    await push.emit(ALERT, user_ids=["u1"])
    await eventually(lambda: _count(push.providers.fcm.received, 10))
    assert push.providers.fcm.token_requests == 1


@pytest.mark.parametrize(("reason", "prunes"), [
    ("BadDeviceToken", True), ("DeviceTokenNotForTopic", True),
])
async def test_apns_dead_token_answers_prune_the_device(
    push: Push, reason: str, prunes: bool
) -> None:
    token = ios_token(1)
    await push.device("ios", token)
    push.providers.apns.fail(token, reason)
    await push.emit(ALERT, user_ids=["u1"])
    row = await eventually(lambda: _pruned(push, token))
    assert row["pruned_reason"] == f"apns:{reason}"


async def test_apns_410_prunes_unless_registered_again_after_its_timestamp(push: Push) -> None:
    stale, fresh = ios_token(1), ios_token(2)
    await push.device("ios", stale)
    await push.device("ios", fresh)
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    push.providers.apns.unregister(stale, now_ms + 60_000)   # died after its registration
    push.providers.apns.unregister(fresh, now_ms - 3_600_000)  # registered again since
    await push.emit(ALERT, user_ids=["u1"])
    await eventually(lambda: _pruned(push, stale))
    await eventually(lambda: _all(push, "failed", 2))
    assert (await push.device_row(fresh))["status"] == "active"


async def test_apns_payload_too_large_fails_without_retry(push: Push) -> None:
    token = ios_token(1)
    await push.device("ios", token)
    push.providers.apns.fail(token, "PayloadTooLarge")
    await push.emit(ALERT, user_ids=["u1"])
    (failed,) = await eventually(lambda: push.deliveries(status="failed"))
    assert failed["attempt_count"] == 1
    assert (await push.device_row(token))["status"] == "active"


@pytest.mark.parametrize("reason", ["TooManyRequests", "InternalServerError",
                                    "ServiceUnavailable"])
async def test_apns_transient_errors_are_retried(push: Push, reason: str) -> None:
    token = ios_token(1)
    await push.device("ios", token)
    push.providers.apns.fail(token, reason)
    await push.emit(ALERT, user_ids=["u1"])
    (done,) = await eventually(lambda: push.deliveries(status="succeeded"))
    assert done["attempt_count"] == 2


async def test_apns_expired_provider_token_is_refreshed_and_the_push_sent(push: Push) -> None:
    token = ios_token(1)
    await push.device("ios", token)
    push.providers.apns.fail(token, "ExpiredProviderToken")
    await push.emit(ALERT, user_ids=["u1"])
    (done,) = await eventually(lambda: push.deliveries(status="succeeded"))
    assert done["attempt_count"] == 1
    tokens = {p.headers["authorization"] for p in push.providers.apns.received}
    assert len(tokens) == 1


BAD_NOTIFICATIONS = [
    ("reserved data key", {"title": "t", "data": {"from": "x"}}, "data.from"),
    ("google prefix", {"title": "t", "data": {"google.x": "1"}}, "google.x"),
    ("non-string data", {"title": "t", "data": {"n": 1}}, "notification.data.n"),
    ("nothing to show", {"data": {"a": "b"}}, "title"),
    ("background with badge", {"content_available": True, "badge": 1}, "badge"),
    ("background with sound", {"content_available": True, "sound": "x"}, "sound"),
    ("too big for APNs", {"title": "t", "body": "x" * 4000, "data": {"k": "y" * 1000}},
     "4096"),
    ("long collapse key", {"title": "t", "collapse_key": "c" * 65}, "collapse_key"),
    ("collapse key with a line break", {"title": "t", "collapse_key": "order\n7"},
     "control characters"),
    ("collapse key with a control character", {"title": "t", "collapse_key": "order\x017"},
     "control characters"),
    ("collapse key with a trailing space", {"title": "t", "collapse_key": "order-7 "},
     "whitespace"),
    ("bad priority", {"title": "t", "priority": "urgent"}, "priority"),
]


@pytest.mark.parametrize(("case", "notification", "named"), BAD_NOTIFICATIONS,
                         ids=[c[0] for c in BAD_NOTIFICATIONS])
async def test_what_providers_would_reject_is_422_at_ingest(
    push: Push, case: str, notification: dict[str, Any], named: str
) -> None:
    status, body = await push.api.call("POST", "/v1/events", push.key, {
        "type": "a", "payload": {}, "user_ids": ["u1"], "notification": notification})
    assert status == 422, body
    assert named in json.dumps(body["error"])


async def test_targets_and_notification_need_each_other(push: Push) -> None:
    for extra in ({"user_ids": ["u1"]}, {"notification": {"title": "t"}}):
        status, _ = await push.api.call("POST", "/v1/events", push.key,
                                        {"type": "a", "payload": {}, **extra})
        assert status == 422
    status, _ = await push.api.call("POST", "/v1/events", push.key, {
        "type": "a", "payload": {}, "user_ids": ["u"] * 1001, "notification": {"title": "t"}})
    assert status == 422


async def _count(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def _ready(value: bool) -> bool:
    return value


async def _all(push: Push, status: str, n: int) -> list[dict[str, Any]] | None:
    rows = await push.deliveries(status=status)
    return rows if len(rows) >= n else None


async def _pruned(push: Push, token: str) -> dict[str, Any] | None:
    row = await push.device_row(token)
    return row if row["status"] == "pruned" else None
