"""One app can never reach another's: not its provider tokens, not its sandbox inbox,
not its share of the dispatcher, not its quota; and nobody can guess keys at speed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from prometheus_client.parser import text_string_to_metric_families

from gateway import appkeys
from gateway.sandbox import pem_private, pem_public
from tests.push_support import (
    TEAM_ID,
    TOPIC,
    Providers,
    android_token,
    ios_token,
    start_providers,
)
from tests.security.conftest import Launch, new_app
from tests.support import ADMIN_KEY, Api, Receiver, eventually, serve_on_loopback


def _providers(providers: Providers) -> dict[str, Any]:
    return {"fcm_url": providers.fcm.base_url, "fcm_token_url": providers.fcm.token_url,
            "apns_url": providers.apns.base_url, "provider_ca_file": str(providers.ca_file)}


async def _push(api: Api, key: str, platform: str, token: str) -> str:
    """Register a device, push to it, and wait for the attempt; the delivery's status."""
    user = f"u-{token[:40]}"
    status, _ = await api.call("POST", "/v1/devices", key, {
        "platform": platform, "token": token, "user_id": user})
    assert status in (200, 201)
    status, event = await api.call("POST", "/v1/events", key, {
        "type": "t", "payload": {}, "user_ids": [user], "notification": {"title": "hi"}})
    assert status == 202

    async def settled() -> str | None:
        _, found = await api.call("GET", f"/v1/events/{event['id']}", key)
        done = [d for d in found["deliveries"] if d["attempt_count"]]
        return str(done[0]["status"]) if done else None

    status_text: str = await eventually(settled, timeout_s=10)
    return status_text


async def test_two_apps_naming_the_same_service_account_never_share_access_tokens(
        launch: Launch, tmp_path: Path) -> None:
    providers = await start_providers(tmp_path)
    try:
        api = await launch(**_providers(providers))
        owner, owner_id = await new_app(api, "owner")
        copycat, copycat_id = await new_app(api, "copycat")
        genuine = providers.service_account
        # Same project, same client_email, same key id: another (untrusted) key.
        forged = {**genuine, "private_key": pem_private(rsa.generate_private_key(65537, 2048))}
        assert (await api.call("PUT", f"/v1/apps/{owner_id}/push/fcm", owner,
                               {"service_account": genuine}))[0] == 200
        assert await _push(api, owner, "android", android_token(1)) == "succeeded"
        assert (await api.call("PUT", f"/v1/apps/{copycat_id}/push/fcm", copycat,
                               {"service_account": forged}))[0] == 200
        # The copycat gets no token of the owner's: its own key is refused by Google.
        assert await _push(api, copycat, "android", android_token(2)) == "pending"
        # And the owner's tokens were not spoiled by the copycat's attempts.
        assert await _push(api, owner, "android", android_token(3)) == "succeeded"
        owner_auth = {p.headers["authorization"] for p in providers.fcm.received
                      if p.token in (android_token(1), android_token(3))}
        assert len(owner_auth) == 1
        assert not any(p.token == android_token(2) for p in providers.fcm.received)
    finally:
        await providers.stop()


async def test_two_apps_naming_the_same_apns_key_id_never_share_provider_tokens(
        launch: Launch, tmp_path: Path) -> None:
    providers = await start_providers(tmp_path)
    try:
        api = await launch(**_providers(providers))
        owner, owner_id = await new_app(api, "owner")
        copycat, copycat_id = await new_app(api, "copycat")
        genuine = providers.apns_credentials
        forged = {**genuine, "key_p8": pem_private(ec.generate_private_key(ec.SECP256R1()))}
        assert (await api.call("PUT", f"/v1/apps/{owner_id}/push/apns", owner, genuine))[0] \
            == 200
        assert await _push(api, owner, "ios", ios_token(1)) == "succeeded"
        assert (await api.call("PUT", f"/v1/apps/{copycat_id}/push/apns", copycat,
                               forged))[0] == 200
        assert await _push(api, copycat, "ios", ios_token(2)) == "failed"
        assert await _push(api, owner, "ios", ios_token(3)) == "succeeded"
        assert {p.token for p in providers.apns.received} == {ios_token(1), ios_token(3)}
        assert all(p.headers.get("authorization", "").count(".") == 2
                   for p in providers.apns.received)
        assert TEAM_ID == genuine["team_id"] == forged["team_id"]
    finally:
        await providers.stop()


async def test_a_replaced_credential_is_used_from_the_next_send(
        launch: Launch, tmp_path: Path) -> None:
    providers = await start_providers(tmp_path)
    try:
        api = await launch(**_providers(providers))
        key, app_id = await new_app(api)
        first = providers.service_account
        assert (await api.call("PUT", f"/v1/apps/{app_id}/push/fcm", key,
                               {"service_account": first}))[0] == 200
        assert await _push(api, key, "android", android_token(1)) == "succeeded"
        rotated_key = rsa.generate_private_key(65537, 2048)
        providers.fcm.add_service_account(
            project_id=first["project_id"], client_email=first["client_email"],
            public_key_pem=pem_public(rotated_key), private_key_id="rotated")
        second = {**first, "private_key_id": "rotated", "private_key": pem_private(rotated_key)}
        requested = providers.fcm.token_requests
        assert (await api.call("PUT", f"/v1/apps/{app_id}/push/fcm", key,
                               {"service_account": second}))[0] == 200
        assert await _push(api, key, "android", android_token(2)) == "succeeded"
        assert providers.fcm.token_requests == requested + 1  # a token for the new key
        tokens = {p.token: p.headers["authorization"] for p in providers.fcm.received}
        assert tokens[android_token(1)] != tokens[android_token(2)]
    finally:
        await providers.stop()


async def test_the_sandbox_inbox_lists_only_the_calling_apps_pushes(launch: Launch) -> None:
    api = await launch(sandbox=True)
    one, _ = await new_app(api, "one")
    two, _ = await new_app(api, "two")
    shared_token = ios_token(7)  # the same device token, registered in both apps
    for key, title in ((one, "for one"), (two, "for two")):
        assert await _push_titled(api, key, shared_token, title) == "succeeded"
    for key, mine, theirs in ((one, "for one", "for two"), (two, "for two", "for one")):
        _, inbox = await api.call("GET", "/v1/sandbox/pushes", key)
        titles = [p["payload"]["aps"]["alert"]["title"] for p in inbox["data"]]
        assert titles == [mine] and theirs not in titles


async def _push_titled(api: Api, key: str, token: str, title: str) -> str:
    status, _ = await api.call("POST", "/v1/devices", key, {
        "platform": "ios", "token": token, "user_id": "u"})
    assert status in (200, 201)
    status, event = await api.call("POST", "/v1/events", key, {
        "type": "t", "payload": {}, "user_ids": ["u"], "notification": {"title": title}})
    assert status == 202

    async def settled() -> str | None:
        _, found = await api.call("GET", f"/v1/events/{event['id']}", key)
        done = [d for d in found["deliveries"] if d["attempt_count"]]
        return str(done[0]["status"]) if done else None

    result: str = await eventually(settled, timeout_s=10)
    return result


async def test_an_app_with_hanging_endpoints_never_delays_another_apps_deliveries(
        launch: Launch, receiver: Receiver) -> None:
    """App A: three endpoints that accept and never answer, 3,000 deliveries due to them,
    the default 15 s timeout. App B's events all reach B's receiver while not one of A's
    deliveries has even timed out: B never waited behind A."""
    started = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(3600)
        return web.Response()

    # Its handlers never answer: its cleanup has nothing to wait for (60 s by default).
    runner, port = await serve_on_loopback(hang, shutdown_timeout_s=0.1)
    try:
        api = await launch(delivery_timeout_s=15.0)
        a, _ = await new_app(api, "a")
        b, _ = await new_app(api, "b")
        for n in range(3):
            await api.new_endpoint(a, f"http://127.0.0.1:{port}/hang{n}")
        await api.new_endpoint(b, receiver.url())
        async with aiohttp.ClientSession() as raw:
            base = str(api.session.make_url(""))
            sem = asyncio.Semaphore(32)

            async def emit_a(n: int) -> None:
                async with sem, raw.post(base + "/v1/events", json={
                        "type": "t", "payload": {"n": n}},
                        headers={"Authorization": f"Bearer {a}"}) as resp:
                    assert resp.status == 202
            await asyncio.gather(*[emit_a(n) for n in range(1000)])
        await asyncio.wait_for(started.wait(), 10)
        sent: dict[str, float] = {}
        for n in range(50):
            event = await api.emit(b, payload={"n": n})
            sent[event["id"]] = time.monotonic()
            await asyncio.sleep(0.02)
        await receiver.wait_for(50, timeout_s=12)
        latencies = sorted(r.at for r in receiver.requests)
        assert len(latencies) == 50
        dispatcher = api.session.app[appkeys.DISPATCHER]
        assert dispatcher.inflight <= dispatcher.concurrency
        _, a_page = await api.call("GET", "/v1/deliveries", a, params={"limit": "250"})
        assert all(d["attempt_count"] == 0 for d in a_page["data"])  # none timed out yet
    finally:
        await runner.cleanup()


async def test_a_cookie_one_apps_endpoint_sets_is_never_sent_to_another_app_or_back(
        launch: Launch) -> None:
    """Two apps' endpoints on one host (a shared relay service, say): what one answers
    with Set-Cookie is never sent again, neither to the other app's endpoint nor to its
    own: webhook requests carry no state from one delivery to the next."""
    seen: list[tuple[str, str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Cookie")))
        response = web.Response(text="ok")
        response.set_cookie("session", f"secret-of-{request.path.strip('/')}", path="/")
        return response

    runner, port = await serve_on_loopback(handler)
    try:
        api = await launch()
        a, _ = await new_app(api, "a")
        b, _ = await new_app(api, "b")
        # A name, not an address: cookie jars keep no cookies of IP addresses.
        await api.new_endpoint(a, f"http://localhost:{port}/a")
        await api.new_endpoint(b, f"http://localhost:{port}/b")
        await api.emit(a, payload={"n": 1})
        await eventually(lambda: asyncio.sleep(0, len(seen) == 1), timeout_s=10)
        await api.emit(b, payload={"n": 2})
        await api.emit(a, payload={"n": 3})
        await eventually(lambda: asyncio.sleep(0, len(seen) == 3), timeout_s=10)
        assert sorted(path for path, _ in seen) == ["/a", "/a", "/b"]
        assert [cookie for _, cookie in seen] == [None, None, None]
    finally:
        await runner.cleanup()


async def test_repeated_failed_keys_from_one_address_get_429_others_are_unaffected(
        launch: Launch) -> None:
    api = await launch(dispatcher=False, auth_failures=5, auth_failure_window_s=30,
                       auth_block_s=60)
    key, _ = await new_app(api)
    for _ in range(5):
        status, _ = await api.call("GET", "/v1/events", "gk_guess")
        assert status == 401
    status, body = await api.call("GET", "/v1/events", key)  # even a valid key, from here
    assert status == 429 and body["error"]["code"] == "rate_limited"
    async with api.session.get("/v1/events", headers={
            "Authorization": f"Bearer {key}"}) as resp:
        assert 0 < int(resp.headers["Retry-After"]) <= 60
    base = str(api.session.make_url(""))
    elsewhere = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=elsewhere) as other, other.get(
            base + "/v1/events", headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status == 200
    async with api.session.get("/metrics") as resp:
        families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    assert families["gateway_auth_rate_limited"].samples[0].value >= 2
    assert families["gateway_auth_failures"].samples[0].value == 5


async def test_quotas_refuse_what_is_past_them_with_limit_exceeded(launch: Launch) -> None:
    api = await launch(dispatcher=False, max_endpoints=2, max_devices_per_user=2,
                       max_topics_per_device=3)
    key, app_id = await new_app(api)
    status, app = await api.call("GET", f"/v1/apps/{app_id}", key)
    assert status == 200 and (app["max_endpoints"], app["max_devices_per_user"],
                              app["max_topics_per_device"], app["rate_limit"]) == (2, 2, 3, None)
    for n in range(2):
        await api.new_endpoint(key, f"http://127.0.0.1:9/{n}")
    status, body = await api.call("POST", "/v1/endpoints", key, {"url": "http://127.0.0.1:9/x"})
    assert status == 422 and body["error"]["code"] == "limit_exceeded"
    for n in range(2):
        status, _ = await api.call("POST", "/v1/devices", key, {
            "platform": "android", "token": f"t{n}", "user_id": "alice"})
        assert status == 201
    status, body = await api.call("POST", "/v1/devices", key, {
        "platform": "android", "token": "t2", "user_id": "alice"})
    assert status == 422 and body["error"]["code"] == "limit_exceeded"
    status, _ = await api.call("POST", "/v1/devices", key, {  # updating one is no new one
        "platform": "android", "token": "t1", "user_id": "alice", "topics": ["a"]})
    assert status == 200
    status, body = await api.call("PUT", "/v1/devices/t1/topics", key,
                                  {"topics": ["a", "b", "c", "d"]})
    assert status == 422 and body["error"]["code"] == "limit_exceeded"
    # Only the operator raises them, and the app object shows the new ones.
    status, _ = await api.call("PATCH", f"/v1/apps/{app_id}", key, {"max_endpoints": 5})
    assert status == 403
    status, app = await api.call("PATCH", f"/v1/apps/{app_id}", ADMIN_KEY,
                                 {"max_endpoints": 5, "rate_limit": 1000})
    assert status == 200 and (app["max_endpoints"], app["rate_limit"]) == (5, 1000)
    status, _ = await api.call("POST", "/v1/endpoints", key, {"url": "http://127.0.0.1:9/x"})
    assert status == 201


async def test_an_apps_ingest_rate_holds_across_gateway_processes(launch: Launch) -> None:
    """Two gateways on one database (two processes in production) share one count."""
    first = await launch(dispatcher=False)
    second = await launch(dispatcher=False)
    key, app_id = await new_app(first)
    status, _ = await first.call("PATCH", f"/v1/apps/{app_id}", ADMIN_KEY, {"rate_limit": 20})
    assert status == 200
    began = time.time()
    results = await asyncio.gather(*[
        (first if n % 2 else second).call("POST", "/v1/events", key,
                                         {"type": "t", "payload": {"n": n}})
        for n in range(120)])
    seconds = int(time.time()) - int(began) + 1
    accepted = [s for s, _ in results if s == 202]
    refused = [b for s, b in results if s == 429]
    assert len(accepted) + len(refused) == 120
    assert 0 < len(accepted) <= 20 * seconds
    assert refused and refused[0]["error"]["code"] == "rate_limited"


async def test_replaying_an_idempotency_key_never_spends_the_apps_rate(launch: Launch) -> None:
    api = await launch(dispatcher=False)
    key, app_id = await new_app(api)
    status, _ = await api.call("PATCH", f"/v1/apps/{app_id}", ADMIN_KEY, {"rate_limit": 3})
    assert status == 200
    headers = {"Idempotency-Key": "order-1"}
    body = {"type": "t", "payload": {"n": 1}}
    # The first use is counted; its replays (one after another, then all at once, so
    # some share a batched write) answer with the same event and count for nothing.
    statuses = [(await api.call("POST", "/v1/events", key, body, headers=headers))[0]
                for _ in range(4)]
    statuses += [s for s, _ in await asyncio.gather(*[
        api.call("POST", "/v1/events", key, body, headers=headers) for _ in range(6)])]
    assert statuses[0] == 202 and set(statuses[1:]) == {200}, statuses


async def test_one_app_cannot_hold_more_than_its_share_of_delivery_streams(
        launch: Launch) -> None:
    api = await launch(dispatcher=False, max_streams_per_app=2)
    greedy, _ = await new_app(api, "greedy")
    other, _ = await new_app(api, "other")

    def open_stream(key: str) -> Any:
        return api.session.get("/v1/deliveries/stream",
                               headers={"Authorization": f"Bearer {key}"})

    async with open_stream(greedy) as first, open_stream(greedy) as second:
        assert (first.status, second.status) == (200, 200)
        async with open_stream(greedy) as third:
            assert third.status == 429 and int(third.headers["Retry-After"]) > 0
            assert (await third.json())["error"]["code"] == "rate_limited"
        async with open_stream(other) as others:
            assert others.status == 200
    async with open_stream(greedy) as again:  # the two closed: room again
        assert again.status == 200


async def test_two_apps_uploading_the_same_certificate_never_share_a_connection(
        launch: Launch, tmp_path: Path) -> None:
    providers = await start_providers(tmp_path)
    try:
        api = await launch(**_providers(providers))
        pem = providers.push_certificates.issue(TOPIC)
        for name, token in (("one", ios_token(1)), ("two", ios_token(2))):
            key, app_id = await new_app(api, name)
            status, _ = await api.call("PUT", f"/v1/apps/{app_id}/push/apns", key, {
                "certificate_pem": pem, "environment": "sandbox"})
            assert status == 200
            assert await _push(api, key, "ios", token) == "succeeded"
        assert providers.apns.connections_opened == 2
        assert {p.token for p in providers.apns.received} == {ios_token(1), ios_token(2)}
    finally:
        await providers.stop()
