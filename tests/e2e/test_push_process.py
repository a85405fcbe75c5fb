"""Push end to end through the real ``gateway`` process: restart safety mid-fan-out, APNs
certificate auth, and the sandbox a newcomer starts with ``gateway serve --sandbox``."""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.push_support import TOPIC, Providers, android_token, ios_token, start_providers
from tests.support import ADMIN_KEY, Api, GatewayProcess, eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
async def providers(tmp_path: Path) -> AsyncIterator[Providers]:
    started = await start_providers(tmp_path)
    yield started
    await started.stop()


def provider_env(providers: Providers) -> dict[str, str]:
    return {
        "GATEWAY_FCM_URL": providers.fcm.base_url,
        "GATEWAY_FCM_TOKEN_URL": providers.fcm.token_url,
        "GATEWAY_APNS_URL": providers.apns.base_url,
        "GATEWAY_PROVIDER_CA_FILE": str(providers.ca_file),
        "GATEWAY_LEASE_S": "3",
        "GATEWAY_PUSH_CONCURRENCY": "16",
        "GATEWAY_DISPATCH_CONCURRENCY": "32",
    }


async def _app_with_devices(api: Api, dsn: str, providers: Providers, devices: int) -> str:
    """An app with both providers' credentials and ``devices`` devices on topic "all"
    (alternately iOS and Android); its API key."""
    _, app = await api.call("POST", "/v1/apps", ADMIN_KEY, {"name": "shop"})
    key: str = app["api_key"]
    await api.call("PUT", f"/v1/apps/{app['id']}/push/fcm", key,
                   {"service_account": providers.service_account})
    await api.call("PUT", f"/v1/apps/{app['id']}/push/apns", key, providers.apns_credentials)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO devices (id, app_id, platform, token, user_id, topics) "
            "SELECT 'dev_' || lpad(i::text, 8, '0'), $1, "
            "  CASE WHEN i % 2 = 0 THEN 'ios' ELSE 'android' END, "
            "  CASE WHEN i % 2 = 0 THEN lpad(to_hex(i), 64, '0') ELSE 'tok-' || i END, "
            "  'user-' || i, ARRAY['all'] FROM generate_series(1, $2) AS i",
            app["id"], devices)
    finally:
        await conn.close()
    return key


def _tokens(providers: Providers) -> list[str]:
    return [p.token for p in providers.apns.received] + [p.token for p in providers.fcm.received]


async def _kill_mid_fanout(dsn: str, procs: list[GatewayProcess], http: aiohttp.ClientSession,
                           providers: Providers, env: dict[str, str]) -> None:
    """A gateway pushes one event to 6,000 devices and is killed once 300 have arrived."""
    gw = GatewayProcess(dsn, env=env).start()
    procs.append(gw)
    await gw.wait_ready()
    api = Api(http, gw.base)
    key = await _app_with_devices(api, dsn, providers, 6000)
    status, _ = await api.call("POST", "/v1/events", key, {
        "type": "promo", "payload": {}, "topics": ["all"],
        "notification": {"title": "Sale", "body": "Today only"}})
    assert status == 202
    await eventually(lambda: _ready(len(_tokens(providers)) >= 300), timeout_s=60)
    gw.kill()
    assert len(_tokens(providers)) < 6000, "the kill must land mid-fan-out"


async def _restart_until_every_device_is_pushed(dsn: str, procs: list[GatewayProcess],
                                                providers: Providers,
                                                env: dict[str, str]) -> None:
    again = GatewayProcess(dsn, env=env).start()
    procs.append(again)
    await again.wait_ready()
    await eventually(lambda: _ready(len(set(_tokens(providers))) >= 6000),
                     timeout_s=120, interval_s=0.5)
    assert again.terminate() == 0


async def test_gateway_killed_mid_fanout_delivers_to_every_device_after_restart(
    dsn: str, procs: list[GatewayProcess], http: aiohttp.ClientSession, providers: Providers
) -> None:
    env = provider_env(providers)
    await _kill_mid_fanout(dsn, procs, http, providers, env)
    await _restart_until_every_device_is_pushed(dsn, procs, providers, env)


async def test_a_process_killed_while_sending_the_pushes_it_expanded_loses_none(
    dsn: str, procs: list[GatewayProcess], http: aiohttp.ClientSession, providers: Providers
) -> None:
    """With a lease long enough for the hand-over (a delivery timeout of 1 s), the killed
    process leaves deliveries leased to itself and batches not yet expanded: after a
    restart the leases lapse and every device gets its push."""
    env = {**provider_env(providers), "GATEWAY_LEASE_S": "4", "GATEWAY_DELIVERY_TIMEOUT_S": "1"}
    await _kill_mid_fanout(dsn, procs, http, providers, env)
    conn = await asyncpg.connect(dsn)
    try:
        leased = await conn.fetchval("SELECT count(*) FROM deliveries WHERE lease_id IS NOT "
                                     "NULL AND status = 'pending'")
    finally:
        await conn.close()
    assert leased > 0, "the killed process held handed-over deliveries"
    await _restart_until_every_device_is_pushed(dsn, procs, providers, env)


async def test_two_workers_fan_out_one_event_and_push_every_device_exactly_once(
    dsn: str, procs: list[GatewayProcess], http: aiohttp.ClientSession, providers: Providers
) -> None:
    """Each worker expands batches of the same event and sends what it expanded: every
    device gets the push once, and both workers sent some."""
    env = {**provider_env(providers), "GATEWAY_LEASE_S": "45"}
    gw = GatewayProcess(dsn, "serve", "--workers", "2", env=env).start()
    procs.append(gw)
    await gw.wait_ready(timeout_s=40)

    async def both_ready() -> bool:
        return gw.log().count("gateway ready worker=") == 2

    await eventually(both_ready, timeout_s=40)
    api = Api(http, gw.base)
    key = await _app_with_devices(api, dsn, providers, 8000)
    status, _ = await api.call("POST", "/v1/events", key, {
        "type": "promo", "payload": {}, "topics": ["all"],
        "notification": {"title": "Sale", "body": "Today only"}})
    assert status == 202
    await eventually(lambda: _ready(len(_tokens(providers)) >= 8000), timeout_s=120,
                     interval_s=0.5)
    await asyncio.sleep(0.5)  # time for a duplicate to show up
    tokens = _tokens(providers)
    assert len(tokens) == 8000 and len(set(tokens)) == 8000
    assert gw.terminate() == 0
    attempts = collections.Counter(re.findall(r"delivery attempt delivered: succeeded .*?"
                                              r"worker=(\d+)", gw.log()))
    assert set(attempts) == {"1", "2"} and sum(attempts.values()) == 8000, attempts


async def test_gateway_pushes_with_an_uploaded_certificate_to_apns_that_requires_one(
    dsn: str, procs: list[GatewayProcess], http: aiohttp.ClientSession, providers: Providers
) -> None:
    certificates = providers.push_certificates
    providers.apns.trust_client_certificates(certificates.ca_pem, required=True)
    gw = GatewayProcess(dsn, env=provider_env(providers)).start()
    procs.append(gw)
    await gw.wait_ready()
    api = Api(http, gw.base)
    status, app = await api.call("POST", "/v1/apps", ADMIN_KEY, {"name": "shop"})
    key = app["api_key"]
    status, shown = await api.call("PUT", f"/v1/apps/{app['id']}/push/apns", key, {
        "certificate_pem": certificates.issue(TOPIC), "environment": "sandbox"})
    assert status == 200, shown
    for n in range(3):
        status, _ = await api.call("POST", "/v1/devices", key, {
            "platform": "ios", "token": ios_token(n), "user_id": "alice"})
        assert status == 201
    status, _ = await api.call("POST", "/v1/events", key, {
        "type": "order.shipped", "payload": {}, "user_ids": ["alice"],
        "notification": {"title": "Shipped"}})
    assert status == 202
    await eventually(lambda: _ready(len(providers.apns.received) >= 3), timeout_s=30)
    assert {p.token for p in providers.apns.received} == {ios_token(n) for n in range(3)}
    assert {p.sender for p in providers.apns.received} == {shown["certificate_sha256"]}
    assert all("authorization" not in p.headers for p in providers.apns.received)
    assert providers.apns.handshakes_refused == 0
    assert gw.terminate() == 0


async def test_sandbox_shows_pushes_without_any_provider_account(
    dsn: str, procs: list[GatewayProcess], http: aiohttp.ClientSession
) -> None:
    gw = GatewayProcess(dsn, "serve", "--sandbox").start()
    procs.append(gw)
    await gw.wait_ready()
    api = Api(http, gw.base)
    key = await api.new_app()
    status, minted = await api.call("POST", "/v1/user-tokens", key, {"user_id": "alice"})
    assert status == 201
    for platform, token in (("ios", ios_token(7)), ("android", android_token(7))):
        status, _ = await api.call("POST", "/v1/devices", minted["token"],
                                   {"platform": platform, "token": token})
        assert status == 201
    status, _ = await api.call("POST", "/v1/events", key, {
        "type": "chat.message", "payload": {"from": "bob"}, "user_ids": ["alice"],
        "notification": {"title": "Bob", "body": "Hi!", "data": {"chat": "42"}}})
    assert status == 202

    async def inbox() -> list[dict[str, object]] | None:
        _, body = await api.call("GET", "/v1/sandbox/pushes", key)
        return body["data"] if len(body["data"]) >= 2 else None

    pushes = await eventually(inbox, timeout_s=20)
    assert {p["provider"] for p in pushes} == {"apns", "fcm"}
    assert {p["token"] for p in pushes} == {ios_token(7), android_token(7)}
    other = await api.new_app("other")
    _, theirs = await api.call("GET", "/v1/sandbox/pushes", other)
    assert theirs["data"] == []


async def test_sandbox_endpoint_is_404_when_the_sandbox_is_off(
    dsn: str, procs: list[GatewayProcess], http: aiohttp.ClientSession
) -> None:
    gw = GatewayProcess(dsn).start()
    procs.append(gw)
    await gw.wait_ready()
    api = Api(http, gw.base)
    key = await api.new_app()
    status, body = await api.call("GET", "/v1/sandbox/pushes", key)
    assert status == 404 and "--sandbox" in body["error"]["message"]


async def _ready(value: bool) -> bool:
    return value
