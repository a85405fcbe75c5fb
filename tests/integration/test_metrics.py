"""/metrics after real flows: counters move with ingest, delivery, retries, 410s and
pruned devices; the backlog is read from PostgreSQL; labels carry no ids."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.config import Settings
from tests.push_support import android_token, start_providers
from tests.support import ADMIN_KEY, Api, Receiver, eventually

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(api: Api, key: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with api.session.get("/metrics", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def wait_status(api: Api, key: str, status: str, count: int) -> None:
    async def check() -> bool:
        _, body = await api.call("GET", "/v1/deliveries", key,
                                 params={"status": status, "limit": "250"})
        return len(body["data"]) >= count
    await eventually(check)


async def test_a_webhook_flow_moves_ingest_delivery_and_latency_metrics(
        api: Api, receiver: Receiver) -> None:
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url("/ok"))
    for _ in range(3):
        await api.emit(key, "order.created", {"n": 1})
    await api.emit(key, "order.created", {"n": 1}, headers={"Idempotency-Key": "k1"})
    await api.emit(key, "order.created", {"n": 1}, headers={"Idempotency-Key": "k1"})
    await wait_status(api, key, "succeeded", 4)
    m = await scrape(api)
    assert value(m, "gateway_events_ingested_total", type="order.created") == 4  # no replay
    assert value(m, "gateway_delivery_attempts_total", kind="webhook", outcome="delivered") == 4
    assert value(m, "gateway_deliveries_completed_total", kind="webhook",
                 status="succeeded") == 4
    assert value(m, "gateway_attempt_duration_seconds_count", kind="webhook") == 4
    assert value(m, "gateway_ingest_to_delivery_seconds_count", kind="webhook") == 4
    assert 0 < value(m, "gateway_ingest_to_delivery_seconds_sum", kind="webhook") < 40
    assert value(m, "gateway_pending_deliveries") == 0
    assert value(m, "gateway_oldest_pending_delivery_age_seconds") == 0
    assert value(m, "gateway_database_up") == 1
    assert value(m, "gateway_dispatcher_up") == 1
    assert abs(value(m, "gateway_dispatcher_heartbeat_timestamp_seconds") - time.time()) < 5


async def test_retries_failures_and_a_410_are_counted_by_kind_and_code(
        api: Api, receiver: Receiver) -> None:
    receiver.answers["/flaky"] = [(503, {}), (200, {})]
    receiver.answers["/down"] = [(500, {})]
    receiver.answers["/gone"] = [(410, {})]
    key = await api.new_app()
    for path in ("/flaky", "/down", "/gone"):
        await api.new_endpoint(key, receiver.url(path), event_types=[path[1:]])
        await api.emit(key, path[1:])
    await wait_status(api, key, "succeeded", 1)
    await wait_status(api, key, "failed", 2)  # /down after its 3 retries, /gone at once
    m = await scrape(api)
    assert value(m, "gateway_retries_scheduled_total", kind="webhook") == 1 + 3
    assert value(m, "gateway_provider_errors_total", kind="webhook", code="http_503") == 1
    assert value(m, "gateway_provider_errors_total", kind="webhook", code="http_500") == 4
    assert value(m, "gateway_provider_errors_total", kind="webhook", code="http_410") == 1
    assert value(m, "gateway_endpoints_disabled_total") == 1
    assert value(m, "gateway_deliveries_completed_total", kind="webhook", status="failed") == 2
    assert value(m, "gateway_delivery_attempts_total", kind="webhook", outcome="gone") == 1
    assert value(m, "gateway_delivery_attempts_total", kind="webhook", outcome="retry") == 5


async def test_pruned_devices_are_counted_by_provider_and_reason(
        aiohttp_client: Any, dsn: str, settings: Settings, tmp_path: Path) -> None:
    providers = await start_providers(tmp_path)
    try:
        client: TestClient[aiohttp.web.Request, aiohttp.web.Application] = \
            await aiohttp_client(create_app(providers.settings(settings), dsn))
        api = Api(client)
        status, created = await api.call("POST", "/v1/apps", ADMIN_KEY, {"name": "shop"})
        key, app_id = created["api_key"], created["id"]
        await api.call("PUT", f"/v1/apps/{app_id}/push/fcm", key,
                       {"service_account": providers.service_account})
        await api.call("PUT", f"/v1/apps/{app_id}/push/apns", key, providers.apns_credentials)
        for platform, token in (("ios", "dead" + "0" * 60), ("ios", "bad0" + "1" * 60),
                                ("android", "fcm-unregistered-" + android_token(1)),
                                ("android", android_token(2))):
            status, body = await api.call("POST", "/v1/devices", key, {
                "platform": platform, "token": token, "user_id": "u1"})
            assert status == 201, body
        await api.call("POST", "/v1/events", key, {
            "type": "chat.message", "payload": {}, "user_ids": ["u1"],
            "notification": {"title": "Hi", "body": "there"}})
        await wait_status(api, key, "failed", 3)
        await wait_status(api, key, "succeeded", 1)
        m = await scrape(api)
    finally:
        await providers.stop()
    assert value(m, "gateway_devices_pruned_total", provider="apns", reason="Unregistered") == 1
    assert value(m, "gateway_devices_pruned_total", provider="apns",
                 reason="BadDeviceToken") == 1
    assert value(m, "gateway_devices_pruned_total", provider="fcm", reason="UNREGISTERED") == 1
    assert value(m, "gateway_provider_errors_total", kind="fcm", code="UNREGISTERED") == 1
    assert value(m, "gateway_provider_errors_total", kind="apns", code="BadDeviceToken") == 1
    assert value(m, "gateway_delivery_attempts_total", kind="fcm", outcome="delivered") == 1
    assert value(m, "gateway_ingest_to_delivery_seconds_count", kind="fcm") == 1


async def test_an_api_only_process_reports_the_databases_backlog_and_no_dispatcher(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver) -> None:
    client = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    api = Api(client)
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    for _ in range(3):
        await api.emit(key)
    await asyncio.sleep(0.3)
    m = await scrape(api)
    assert value(m, "gateway_pending_deliveries") == 3
    assert 0.3 <= value(m, "gateway_oldest_pending_delivery_age_seconds") < 30
    assert not any(name.startswith("gateway_dispatcher") for name, _ in m)


async def test_labels_hold_no_ids_and_stay_few(api: Api, receiver: Receiver) -> None:
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    await asyncio.gather(*(api.emit(key, f"type.{n}") for n in range(130)))
    await wait_status(api, key, "succeeded", 130)
    m = await scrape(api)
    values = {v for _, labels in m for _, v in labels}
    assert not [v for v in values if re.match(r"(evt|dlv|ep|app|dev)_[0-9a-f]{12}", v)]
    types = {dict(labels)["type"] for name, labels in m
             if name == "gateway_events_ingested_total"}
    assert len(types) == 101 and "other" in types
    assert sum(v for (name, _), v in m.items() if name == "gateway_events_ingested_total") == 130
    assert len(m) < 400


async def test_metrics_key_when_set_is_required_as_bearer(
        aiohttp_client: Any, dsn: str, settings: Settings) -> None:
    secured = replace(settings, metrics_key="scrape-me-please")
    client = await aiohttp_client(create_app(secured, dsn, dispatcher=False))
    api = Api(client)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        async with client.get("/metrics", headers=headers) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "unauthorized"
    assert value(await scrape(api, "scrape-me-please"), "gateway_database_up") == 1
