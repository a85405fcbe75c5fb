"""A full flow with every log line captured as JSON, at DEBUG: every key, secret, token
and payload value the flow used is looked for in the log, and none is there."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import Settings
from tests.push_support import android_token, ios_token, start_providers
from tests.support import ADMIN_KEY, Api, Receiver, eventually


async def test_no_secret_token_key_or_payload_reaches_a_log_line(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver,
        tmp_path: Path, captured: io.StringIO) -> None:
    providers = await start_providers(tmp_path)
    try:
        client: TestClient[aiohttp.web.Request, aiohttp.web.Application] = \
            await aiohttp_client(create_app(providers.settings(settings), dsn))
        api = Api(client)
        used: dict[str, str] = {"admin key": ADMIN_KEY}

        status, created = await api.call("POST", "/v1/apps", ADMIN_KEY, {"name": "shop"})
        assert status == 201
        key, app_id = created["api_key"], created["id"]
        used["api key"] = key
        status, _ = await api.call("GET", "/v1/apps", "gk_not-a-real-key-but-secret-ish")
        assert status == 401
        used["wrong api key"] = "gk_not-a-real-key-but-secret-ish"

        # Endpoints: a secret in the URL's query and path, a rotated secret, a 503 first.
        receiver.answers["/hook/path-secret-7f3a"] = [(503, {}), (200, {})]
        url = receiver.url("/hook/path-secret-7f3a") + "?token=query-secret-91b2"
        used["url path secret"] = "path-secret-7f3a"
        used["url query secret"] = "query-secret-91b2"
        endpoint = await api.new_endpoint(key, url)
        used["endpoint secret"] = endpoint["secret"]
        status, rotated = await api.call(
            "POST", f"/v1/endpoints/{endpoint['id']}/secret/rotate", key)
        assert status == 200
        used["rotated secret"] = rotated["secret"]
        status, _ = await api.call("GET", f"/v1/endpoints/{endpoint['id']}/secret", key)
        assert status == 200

        # Push credentials, a user token, devices registered with it.
        status, _ = await api.call("PUT", f"/v1/apps/{app_id}/push/fcm", key,
                                   {"service_account": providers.service_account})
        assert status == 200
        status, _ = await api.call("PUT", f"/v1/apps/{app_id}/push/apns", key,
                                   providers.apns_credentials)
        assert status == 200
        for line in providers.service_account["private_key"].splitlines()[1:3]:
            used[f"fcm private key {line[:6]}"] = line
        for line in providers.apns_credentials["key_p8"].splitlines()[1:3]:
            used[f"apns key {line[:6]}"] = line
        status, minted = await api.call("POST", "/v1/user-tokens", key, {"user_id": "alice"})
        assert status == 201
        user_token = minted["token"]
        used["user token"] = user_token
        ios, android = ios_token(0xC0FFEE), android_token(424242)
        used["ios device token"], used["android device token"] = ios, android
        for platform, token in (("ios", ios), ("android", android)):
            status, body = await api.call("POST", "/v1/devices", user_token,
                                          {"platform": platform, "token": token})
            assert status == 201, body
        status, _ = await api.call("GET", f"/v1/devices/{ios}", user_token)
        assert status == 200
        status, _ = await api.call("GET", f"/v1/devices/{android}?x={android}", key)
        assert status == 200

        # One event to the webhook and both devices.
        used["payload value"] = "payload-value-5d1c"
        used["notification body"] = "notification-body-8e2f"
        used["notification data"] = "notification-data-3a7b"
        used["idempotency key"] = "idem-key-6c4d"
        status, event = await api.call(
            "POST", "/v1/events", key,
            {"type": "order.shipped", "payload": {"note": "payload-value-5d1c"},
             "user_ids": ["alice"],
             "notification": {"title": "Shipped", "body": "notification-body-8e2f",
                              "data": {"k": "notification-data-3a7b"}}},
            headers={"Idempotency-Key": "idem-key-6c4d"})
        assert status == 202, event

        async def delivered() -> bool:
            _, body = await api.call("GET", "/v1/deliveries", key,
                                     params={"status": "succeeded"})
            return len(body["data"]) == 3
        await eventually(delivered)
        access_tokens = list(providers.fcm._grants)
    finally:
        await providers.stop()

    text = captured.getvalue()
    records = [json.loads(line) for line in text.splitlines()]
    assert records, "nothing was logged"
    leaked = {what for what, secret in used.items() if secret in text}
    leaked |= {"fcm access token" for token in access_tokens if token in text}
    assert leaked == set()
    for marker in ("Bearer ", "whsec_", "ut_", "ya29.", "eyJ", "BEGIN"):
        assert marker not in text.replace("Bearer [redacted]", ""), marker

    # ...and the lines that should be there are.
    requests = [r for r in records if r["logger"] == "gateway.http"]
    emit = next(r for r in requests if r.get("route") == "/v1/events" and r["method"] == "POST")
    assert emit["event"] == event["id"] and emit["app"] == app_id and emit["status"] == 202
    assert all(r["request_id"] for r in requests)
    assert any(r.get("route") == "/v1/devices/{token}" for r in requests)
    attempts = [r for r in records if r["logger"] == "gateway.dispatcher"
                and r["msg"].startswith("delivery attempt")]
    kinds = {(r["kind"], r["outcome"]) for r in attempts}
    assert {("webhook", "retry"), ("webhook", "delivered"), ("apns", "delivered"),
            ("fcm", "delivered")} <= kinds
    assert all(r["event"] == event["id"] and r["delivery"].startswith("dlv_")
               for r in attempts)
    assert {r["device"][:4] for r in attempts if r["kind"] != "webhook"} == {"dev_"}
