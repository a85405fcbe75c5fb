"""Operational webhooks end to end through the real server: the app sets one over the API,
state changes happen for real (a 410 receiver, PATCH, a receiver down until the retries
run out, the fake FCM and APNs answering dead tokens and refusing credentials), and a
loopback receiver checks every notice's Standard Webhooks signature with the secret the
PUT answered."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import standardwebhooks
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway import crypto
from gateway.app import create_app
from gateway.config import Settings
from gateway.sandbox import pem_private
from gateway_client.client import GatewayAPIError, GatewayClient
from gateway_client.models import OperationalWebhookSet
from tests.push_support import Providers, android_token, ios_token, start_providers
from tests.support import ADMIN_KEY, Api, Receiver, eventually


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Deliveries here fail until their retries run out, several to one endpoint; the
    circuit breaker (tests/integration/test_endpoint_health.py) stays out of the way."""
    return replace(settings, circuit_failures=1000)


ENVELOPE = {"id", "type", "timestamp", "data"}


@dataclass
class Tenant:
    """An app with its key, and its operational webhook once set."""

    api: Api
    id: str
    key: str
    secret: str = ""
    path: str = "/ops"


async def new_tenant(api: Api, name: str = "shop") -> Tenant:
    status, body = await api.call("POST", "/v1/apps", ADMIN_KEY, {"name": name})
    assert status == 201, body
    return Tenant(api, body["id"], body["api_key"])


async def set_ops(tenant: Tenant, receiver: Receiver, path: str = "/ops",
                  **fields: Any) -> dict[str, Any]:
    status, body = await tenant.api.call("PUT", "/v1/operational-webhook", tenant.key,
                                         {"url": receiver.url(path), **fields})
    assert status == 200, body
    tenant.secret, tenant.path = body["secret"], path
    result: dict[str, Any] = body
    return result


def told(tenant: Tenant, receiver: Receiver) -> list[dict[str, Any]]:
    """Every notice the tenant's operational webhook got, each checked against its
    secret (standardwebhooks raises on a bad signature) and its envelope."""
    notices = []
    for request in receiver.on(tenant.path):
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified = standardwebhooks.Webhook(tenant.secret).verify(request.body.decode(),
                                                                  headers)
        assert set(verified) == ENVELOPE and verified["id"] == headers["webhook-id"]
        notices.append(verified)
    return notices


async def told_of(tenant: Tenant, receiver: Receiver, event_type: str,
                  count: int = 1) -> list[dict[str, Any]]:
    """Wait until the tenant was told ``count`` notices of ``event_type``; their data."""
    async def seen() -> list[dict[str, Any]]:
        found = [n["data"] for n in told(tenant, receiver) if n["type"] == event_type]
        return found if len(found) >= count else []
    result: list[dict[str, Any]] = await eventually(seen)
    return result


async def feed(dsn: str, app_id: str) -> list[dict[str, Any]]:
    """The app's operational events with their delivery, as stored."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT e.type, d.status, d.kind, d.attempt_count, d.last_error "
            "FROM events e JOIN deliveries d ON d.app_id = e.app_id AND d.event_id = e.id "
            "WHERE e.app_id = 'ops:' || $1 ORDER BY e.id", app_id)
    finally:
        await conn.close()
    return [dict(r) for r in rows]


async def delivery_status(tenant: Tenant, endpoint_id: str) -> list[str]:
    _, body = await tenant.api.call("GET", "/v1/deliveries", tenant.key,
                                    params={"endpoint_id": endpoint_id})
    return [d["status"] for d in body["data"]]


# --- the resource ----------------------------------------------------------------------

async def test_put_answers_a_secret_get_hides_it_a_second_put_keeps_it_delete_removes_it(
        api: Api, receiver: Receiver) -> None:
    tenant = await new_tenant(api)
    assert (await api.call("GET", "/v1/operational-webhook", tenant.key))[0] == 404
    assert (await api.call("DELETE", "/v1/operational-webhook", tenant.key))[0] == 404

    first = await set_ops(tenant, receiver)
    assert first["url"] == receiver.url("/ops") and first["event_types"] is None
    assert first["secret"].startswith("whsec_")
    status, shown = await api.call("GET", "/v1/operational-webhook", tenant.key)
    assert status == 200 and "secret" not in shown
    assert shown["url"] == first["url"] and shown["event_types"] is None

    again = await set_ops(tenant, receiver, "/ops2", event_types=["endpoint.*"])
    assert again["secret"] == first["secret"]
    assert again["url"] == receiver.url("/ops2") and again["event_types"] == ["endpoint.*"]
    assert again["created_at"] == first["created_at"]
    # It is not one of the app's endpoints.
    _, endpoints = await api.call("GET", "/v1/endpoints", tenant.key)
    assert endpoints["data"] == []

    assert (await api.call("DELETE", "/v1/operational-webhook", tenant.key))[0] == 204
    assert (await api.call("GET", "/v1/operational-webhook", tenant.key))[0] == 404
    renewed = await set_ops(tenant, receiver)
    assert renewed["secret"] != first["secret"]


@pytest.mark.parametrize(("body", "path"), [
    ({"url": "ftp://example.com/ops"}, "url"),
    ({"url": "https://example.com/ops", "event_types": ["order.created"]}, "event_types.0"),
    ({"url": "https://example.com/ops", "event_types": ["nothing.*"]}, "event_types.0"),
    ({"url": "https://example.com/ops", "event_types": []}, "event_types"),
    ({"url": "https://example.com/ops", "secret": "whsec_mine"}, "secret"),
])
async def test_a_malformed_operational_webhook_is_refused_with_422(
        api: Api, body: dict[str, Any], path: str) -> None:
    tenant = await new_tenant(api)
    status, answer = await api.call("PUT", "/v1/operational-webhook", tenant.key, body)
    assert status == 422, answer
    assert answer["error"]["code"] == "validation_error"
    assert answer["error"]["details"][0]["path"] == path


async def test_only_an_app_key_may_set_an_operational_webhook(api: Api) -> None:
    status, answer = await api.call("PUT", "/v1/operational-webhook", ADMIN_KEY,
                                    {"url": "https://example.com/ops"})
    assert status == 403 and answer["error"]["code"] == "forbidden"


async def test_the_url_passes_the_endpoints_ssrf_guard(
        aiohttp_client: Any, dsn: str, settings: Settings) -> None:
    guarded = replace(settings, allow_private_endpoints=False)
    client: TestClient[aiohttp.web.Request, aiohttp.web.Application] = await aiohttp_client(
        create_app(guarded, dsn, dispatcher=False))
    tenant = await new_tenant(Api(client))
    for url in ("http://127.0.0.1:9/ops", "http://169.254.169.254/latest/meta-data",
                "http://[::1]/ops"):
        status, answer = await tenant.api.call("PUT", "/v1/operational-webhook",
                                               tenant.key, {"url": url})
        assert status == 422 and answer["error"]["code"] == "endpoint_url_forbidden", url
    assert (await tenant.api.call("GET", "/v1/operational-webhook", tenant.key))[0] == 404


async def test_the_typed_client_sets_shows_and_deletes_it(
        api: Api, receiver: Receiver) -> None:
    tenant = await new_tenant(api)
    base = str(api.session.make_url("")).rstrip("/")
    async with GatewayClient(base, tenant.key, max_retries=0) as gw:
        made = await gw.set_operational_webhook(receiver.url("/ops"),
                                                event_types=["delivery.exhausted"])
        assert isinstance(made, OperationalWebhookSet) and made.secret.startswith("whsec_")
        shown = await gw.operational_webhook()
        assert shown.url == made.url and shown.event_types == ["delivery.exhausted"]
        await gw.delete_operational_webhook()
        with pytest.raises(GatewayAPIError) as missing:
            await gw.operational_webhook()
        assert missing.value.status == 404


# --- each event, triggered for real --------------------------------------------------

async def test_a_410_sends_endpoint_disabled_and_delivery_exhausted_signed_with_its_secret(
        api: Api, receiver: Receiver) -> None:
    tenant = await new_tenant(api)
    await set_ops(tenant, receiver)
    receiver.answers["/gone"] = [(410, {})]
    endpoint = await api.new_endpoint(tenant.key, receiver.url("/gone"))
    event = await api.emit(tenant.key)

    [disabled] = await told_of(tenant, receiver, "endpoint.disabled")
    assert disabled == {"endpoint_id": endpoint["id"], "reason": "gone"}
    [exhausted] = await told_of(tenant, receiver, "delivery.exhausted")
    _, deliveries = await api.call("GET", "/v1/deliveries", tenant.key)
    [delivery] = deliveries["data"]
    assert exhausted == {
        "delivery_id": delivery["id"], "event_id": event["id"],
        "event_type": "order.created", "kind": "webhook", "endpoint_id": endpoint["id"],
        "device_id": None, "attempts": 1, "last_status_code": 410,
        "last_error": "endpoint answered 410 Gone"}
    notice = told(tenant, receiver)[0]
    assert notice["timestamp"].endswith("Z")
    headers = {k.lower(): v for k, v in receiver.on("/ops")[0].headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["webhook-signature"].startswith("v1,")


async def test_patch_sends_endpoint_disabled_with_its_reason_then_endpoint_enabled(
        api: Api, receiver: Receiver, dsn: str) -> None:
    tenant = await new_tenant(api)
    await set_ops(tenant, receiver)
    endpoint = await api.new_endpoint(tenant.key, receiver.url("/hook"))
    path = f"/v1/endpoints/{endpoint['id']}"
    assert (await api.call("PATCH", path, tenant.key, {"description": "renamed"}))[0] == 200
    assert (await api.call("PATCH", path, tenant.key,
                           {"status": "disabled"}))[0] == 200
    [disabled] = await told_of(tenant, receiver, "endpoint.disabled")
    assert disabled == {"endpoint_id": endpoint["id"], "reason": "manual"}
    assert (await api.call("PATCH", path, tenant.key, {"status": "active"}))[0] == 200
    [enabled] = await told_of(tenant, receiver, "endpoint.enabled")
    assert enabled == {"endpoint_id": endpoint["id"]}
    # The description change told nothing; each notice was one delivery, delivered once
    # (recorded just after the receiver has it).
    async def recorded() -> list[tuple[str, str, str]] | None:
        stored = [(f["type"], f["kind"], f["status"]) for f in await feed(dsn, tenant.id)]
        return stored if all(status != "pending" for _, _, status in stored) else None

    assert await eventually(recorded) == [
        ("endpoint.disabled", "operational", "succeeded"),
        ("endpoint.enabled", "operational", "succeeded")]
    assert len(receiver.on("/ops")) == 2


async def test_a_delivery_whose_retries_run_out_sends_delivery_exhausted(
        api: Api, receiver: Receiver) -> None:
    tenant = await new_tenant(api)
    await set_ops(tenant, receiver)
    receiver.answers["/down"] = [(500, {})]
    endpoint = await api.new_endpoint(tenant.key, receiver.url("/down"))
    event = await api.emit(tenant.key, "invoice.paid")
    [exhausted] = await told_of(tenant, receiver, "delivery.exhausted")
    assert exhausted["event_id"] == event["id"] and exhausted["event_type"] == "invoice.paid"
    assert exhausted["endpoint_id"] == endpoint["id"] and exhausted["device_id"] is None
    # The test schedule has three retries: four attempts, the last answered 500.
    assert exhausted["attempts"] == 4 == len(receiver.on("/down"))
    assert exhausted["last_status_code"] == 500 and exhausted["last_error"] == "HTTP 500"
    assert await delivery_status(tenant, endpoint["id"]) == ["failed"]
    # Retrying by hand and failing again tells again: it failed for good once more.
    status, _ = await api.call("POST", f"/v1/deliveries/{exhausted['delivery_id']}/retry",
                               tenant.key)
    assert status == 202
    await told_of(tenant, receiver, "delivery.exhausted", count=2)


@pytest.fixture
async def providers(tmp_path: Path) -> AsyncIterator[Providers]:
    started = await start_providers(tmp_path)
    try:
        yield started
    finally:
        await started.stop()


@pytest.fixture
async def push_api(aiohttp_client: Any, dsn: str, settings: Settings,
                   providers: Providers) -> Api:
    client: TestClient[aiohttp.web.Request, aiohttp.web.Application] = await aiohttp_client(
        create_app(providers.settings(settings), dsn))
    return Api(client)


async def push_tenant(api: Api, providers: Providers, receiver: Receiver, *,
                      fcm: dict[str, Any] | None = None,
                      apns: dict[str, Any] | None = None) -> Tenant:
    tenant = await new_tenant(api)
    for provider, body in (
            ("fcm", {"service_account": fcm or providers.service_account}),
            ("apns", apns or providers.apns_credentials)):
        status, answer = await api.call("PUT", f"/v1/apps/{tenant.id}/push/{provider}",
                                        tenant.key, body)
        assert status == 200, answer
    await set_ops(tenant, receiver)
    return tenant


async def push_to(tenant: Tenant, user_id: str, *tokens: tuple[str, str]) -> None:
    for platform, token in tokens:
        status, body = await tenant.api.call("POST", "/v1/devices", tenant.key, {
            "platform": platform, "token": token, "user_id": user_id})
        assert status in (200, 201), body
    status, body = await tenant.api.call("POST", "/v1/events", tenant.key, {
        "type": "order.shipped", "payload": {"order": 7}, "user_ids": [user_id],
        "notification": {"title": "Shipped", "body": "On its way"}})
    assert status == 202, body


async def test_dead_push_tokens_send_device_invalidated(
        push_api: Api, providers: Providers, receiver: Receiver) -> None:
    tenant = await push_tenant(push_api, providers, receiver)
    android, ios = android_token(1), ios_token(2)
    providers.fcm.fail(android, "UNREGISTERED")
    providers.apns.fail(ios, "Unregistered")
    await push_to(tenant, "u1", ("android", android), ("ios", ios))
    invalidated = await told_of(tenant, receiver, "device.invalidated", count=2)
    by_platform = {d["platform"]: d for d in invalidated}
    assert by_platform["android"]["token"] == android
    assert by_platform["android"]["reason"] == "fcm:UNREGISTERED"
    assert by_platform["ios"]["token"] == ios
    assert by_platform["ios"]["reason"] == "apns:Unregistered"
    for shown in invalidated:
        assert shown["user_id"] == "u1" and shown["device_id"].startswith("dev_")
        _, device = await push_api.call("GET", f"/v1/devices/{shown['token']}", tenant.key)
        assert device["status"] == "pruned" and device["id"] == shown["device_id"]
    exhausted = await told_of(tenant, receiver, "delivery.exhausted", count=2)
    assert {e["device_id"] for e in exhausted} == {d["device_id"] for d in invalidated}
    assert {e["kind"] for e in exhausted} == {"fcm", "apns"}


async def test_apns_refusing_the_apps_key_sends_push_credentials_rejected_once(
        push_api: Api, providers: Providers, receiver: Receiver, dsn: str) -> None:
    # A key Apple does not know: every push answers 403 InvalidProviderToken.
    unknown = {**providers.apns_credentials,
               "key_p8": pem_private(ec.generate_private_key(ec.SECP256R1()))}
    tenant = await push_tenant(push_api, providers, receiver, apns=unknown)
    await push_to(tenant, "u1", ("ios", ios_token(1)), ("ios", ios_token(2)))
    [rejected] = await told_of(tenant, receiver, "push.credentials_rejected")
    assert rejected == {"platform": "ios", "provider": "apns",
                        "reason": "InvalidProviderToken"}

    async def both_failed() -> bool:
        _, body = await push_api.call("GET", "/v1/deliveries", tenant.key,
                                      params={"status": "failed"})
        return len(body["data"]) == 2
    await eventually(both_failed)
    stored = [f["type"] for f in await feed(dsn, tenant.id)]
    assert stored.count("push.credentials_rejected") == 1
    assert stored.count("delivery.exhausted") == 2

    # New credentials are not known to be refused: refused again, told again.
    status, _ = await push_api.call("PUT", f"/v1/apps/{tenant.id}/push/apns", tenant.key,
                                    unknown)
    assert status == 200
    await push_to(tenant, "u1")
    await told_of(tenant, receiver, "push.credentials_rejected", count=2)


async def test_fcm_refusing_the_service_account_sends_push_credentials_rejected(
        push_api: Api, providers: Providers, receiver: Receiver, dsn: str) -> None:
    # A key Google does not trust for this account: the token grant answers invalid_grant.
    wrong = {**providers.service_account, "private_key": pem_private(
        rsa.generate_private_key(public_exponent=65537, key_size=2048))}
    tenant = await push_tenant(push_api, providers, receiver, fcm=wrong)
    await push_to(tenant, "u1", ("android", android_token(1)))
    [rejected] = await told_of(tenant, receiver, "push.credentials_rejected")
    assert rejected["platform"] == "android" and rejected["provider"] == "fcm"
    assert "invalid_grant" in rejected["reason"]
    # Retried on schedule (new credentials may come) until it fails for good: told once.
    [exhausted] = await told_of(tenant, receiver, "delivery.exhausted")
    assert exhausted["attempts"] == 4 and "invalid_grant" in exhausted["last_error"]
    stored = [f["type"] for f in await feed(dsn, tenant.id)]
    assert stored.count("push.credentials_rejected") == 1


async def test_fcm_third_party_auth_error_sends_push_credentials_rejected(
        push_api: Api, providers: Providers, receiver: Receiver) -> None:
    tenant = await push_tenant(push_api, providers, receiver)
    token = android_token(3)
    providers.fcm.fail(token, "THIRD_PARTY_AUTH_ERROR")
    await push_to(tenant, "u1", ("android", token))
    [rejected] = await told_of(tenant, receiver, "push.credentials_rejected")
    assert rejected == {"platform": "android", "provider": "fcm",
                        "reason": "THIRD_PARTY_AUTH_ERROR"}


# --- what is told, and to whom ------------------------------------------------------

async def test_an_operational_webhook_that_fails_for_good_tells_nothing_about_itself(
        api: Api, receiver: Receiver, dsn: str) -> None:
    tenant = await new_tenant(api)
    await set_ops(tenant, receiver)
    # Down, then 410: the notice fails for good; a later one is delivered.
    receiver.answers["/ops"] = [(500, {}), (410, {}), (200, {})]
    endpoint = await api.new_endpoint(tenant.key, receiver.url("/hook"))
    path = f"/v1/endpoints/{endpoint['id']}"
    await api.call("PATCH", path, tenant.key, {"status": "disabled"})

    async def settled() -> list[dict[str, Any]]:
        stored = await feed(dsn, tenant.id)
        return stored if stored and stored[0]["status"] == "failed" else []
    [failed] = await eventually(settled)
    assert failed["type"] == "endpoint.disabled" and failed["attempt_count"] == 2
    # No delivery.exhausted about it, and its 410 disabled nothing.
    assert (await api.call("GET", "/v1/operational-webhook", tenant.key))[0] == 200
    _, still = await api.call("GET", path, tenant.key)
    assert still["status"] == "disabled"
    await api.call("PATCH", path, tenant.key, {"status": "active"})
    [enabled] = await told_of(tenant, receiver, "endpoint.enabled")
    assert enabled == {"endpoint_id": endpoint["id"]}
    assert [f["type"] for f in await feed(dsn, tenant.id)] == [
        "endpoint.disabled", "endpoint.enabled"]


async def test_operational_events_reach_no_endpoint_and_no_listing_of_the_app(
        api: Api, receiver: Receiver, dsn: str) -> None:
    tenant = await new_tenant(api)
    await set_ops(tenant, receiver)
    everything = await api.new_endpoint(tenant.key, receiver.url("/all"), event_types=["*"])
    other = await api.new_endpoint(tenant.key, receiver.url("/other"))
    await api.call("PATCH", f"/v1/endpoints/{other['id']}", tenant.key,
                   {"status": "disabled"})
    [disabled] = await told_of(tenant, receiver, "endpoint.disabled")
    assert disabled["endpoint_id"] == other["id"]
    _, events = await api.call("GET", "/v1/events", tenant.key)
    assert events["data"] == []
    _, deliveries = await api.call("GET", "/v1/deliveries", tenant.key)
    assert deliveries["data"] == []
    assert await delivery_status(tenant, everything["id"]) == []
    event = await api.emit(tenant.key)
    await receiver.wait_for(1, "/all")
    assert [json.loads(r.body)["id"] for r in receiver.on("/all")] == [event["id"]]
    # The notice's own delivery is not the app's to see or retry.
    [stored] = await feed(dsn, tenant.id)
    assert stored["kind"] == "operational"
    conn = await asyncpg.connect(dsn)
    try:
        delivery_id = await conn.fetchval(
            "SELECT id FROM deliveries WHERE app_id = 'ops:' || $1", tenant.id)
    finally:
        await conn.close()
    assert (await api.call("GET", f"/v1/deliveries/{delivery_id}", tenant.key))[0] == 404


async def test_app_b_never_gets_app_a_operational_events(
        api: Api, receiver: Receiver, dsn: str) -> None:
    a, b = await new_tenant(api, "a"), await new_tenant(api, "b")
    await set_ops(a, receiver, "/ops-a")
    await set_ops(b, receiver, "/ops-b")
    receiver.answers["/gone-a"] = [(410, {})]
    await api.new_endpoint(a.key, receiver.url("/gone-a"))
    await api.emit(a.key)
    await told_of(a, receiver, "endpoint.disabled")
    await told_of(a, receiver, "delivery.exhausted")
    assert receiver.on("/ops-b") == [] and await feed(dsn, b.id) == []
    # B's webhook, its secret and its removal are its own.
    _, shown = await api.call("GET", "/v1/operational-webhook", b.key)
    assert shown["url"] == receiver.url("/ops-b") and a.secret != b.secret
    assert (await api.call("DELETE", "/v1/operational-webhook", b.key))[0] == 204
    assert (await api.call("GET", "/v1/operational-webhook", a.key))[0] == 200


async def test_event_types_choose_which_operational_events_are_sent(
        api: Api, receiver: Receiver, dsn: str) -> None:
    tenant = await new_tenant(api)
    await set_ops(tenant, receiver, event_types=["endpoint.enabled"])
    endpoint = await api.new_endpoint(tenant.key, receiver.url("/hook"))
    path = f"/v1/endpoints/{endpoint['id']}"
    await api.call("PATCH", path, tenant.key, {"status": "disabled"})
    await api.call("PATCH", path, tenant.key, {"status": "active"})
    await told_of(tenant, receiver, "endpoint.enabled")
    assert [n["type"] for n in told(tenant, receiver)] == ["endpoint.enabled"]
    assert [f["type"] for f in await feed(dsn, tenant.id)] == ["endpoint.enabled"]


async def test_an_app_without_an_operational_webhook_queues_nothing(
        api: Api, receiver: Receiver, dsn: str) -> None:
    tenant = await new_tenant(api)
    receiver.answers["/gone"] = [(410, {})]
    endpoint = await api.new_endpoint(tenant.key, receiver.url("/gone"))
    await api.emit(tenant.key)

    async def disabled() -> bool:
        _, body = await api.call("GET", f"/v1/endpoints/{endpoint['id']}", tenant.key)
        return bool(body["status"] == "disabled")
    await eventually(disabled)
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM events WHERE app_id LIKE 'ops:%'") == 0
    finally:
        await conn.close()


async def test_deleting_the_operational_webhook_fails_its_pending_notices(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver) -> None:
    slow = replace(settings, retry_schedule=(3600.0,))
    client: TestClient[aiohttp.web.Request, aiohttp.web.Application] = await aiohttp_client(
        create_app(slow, dsn))
    api = Api(client)
    tenant = await new_tenant(api)
    await set_ops(tenant, receiver)
    receiver.answers["/ops"] = [(503, {})]
    endpoint = await api.new_endpoint(tenant.key, receiver.url("/hook"))
    await api.call("PATCH", f"/v1/endpoints/{endpoint['id']}", tenant.key,
                   {"status": "disabled"})

    async def waiting() -> bool:
        stored = await feed(dsn, tenant.id)
        return bool(stored) and stored[0]["attempt_count"] == 1
    await eventually(waiting)
    assert (await api.call("DELETE", "/v1/operational-webhook", tenant.key))[0] == 204
    [stored] = await feed(dsn, tenant.id)
    assert stored["status"] == "failed"
    assert stored["last_error"] == "operational webhook deleted"


async def test_the_operational_secret_is_sealed_at_rest_and_still_signs(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver) -> None:
    sealed = replace(settings, secret_key=crypto.new_key())
    client: TestClient[aiohttp.web.Request, aiohttp.web.Application] = await aiohttp_client(
        create_app(sealed, dsn))
    api = Api(client)
    tenant = await new_tenant(api)
    made = await set_ops(tenant, receiver)
    conn = await asyncpg.connect(dsn)
    try:
        stored = await conn.fetchval("SELECT secret FROM operational_webhooks "
                                     "WHERE app_id = $1", tenant.id)
    finally:
        await conn.close()
    assert stored.startswith(crypto.PREFIX) and made["secret"] not in stored
    assert (await set_ops(tenant, receiver))["secret"] == made["secret"]
    endpoint = await api.new_endpoint(tenant.key, receiver.url("/hook"))
    await api.call("PATCH", f"/v1/endpoints/{endpoint['id']}", tenant.key,
                   {"status": "disabled"})
    await told_of(tenant, receiver, "endpoint.disabled")
