"""A tenant's uploaded push credentials cannot make the gateway connect where the tenant
chooses, nor read what it fetched: token exchanges go only to the operator's token URL,
never follow a redirect, and leave only a short, sanitized snippet in the attempts log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from tests.push_support import Providers, android_token, start_providers
from tests.security.conftest import Launch, new_app
from tests.support import Api, eventually, serve_on_loopback

SECRET_PAGE = "INTERNAL-ADMIN-PAGE root-password=hunter2 " * 40


class Internal:
    """A server on the gateway's own network that a tenant would love to read."""

    def __init__(self) -> None:
        self.hits: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        return web.Response(text=SECRET_PAGE + "\n2026-01-01 INFO forged line\x00")


async def push_once(api: Api, key: str, providers: Providers) -> dict[str, Any]:
    status, _ = await api.call("POST", "/v1/devices", key, {
        "platform": "android", "token": android_token(1), "user_id": "u1"})
    assert status in (200, 201)
    status, _ = await api.call("POST", "/v1/events", key, {
        "type": "t", "payload": {}, "user_ids": ["u1"],
        "notification": {"title": "hi"}})
    assert status == 202

    async def attempted() -> Any:
        _, page = await api.call("GET", "/v1/deliveries", key, params={"limit": "250"})
        done = [d for d in page["data"] if d["attempt_count"]]
        return done[0] if done else None

    delivery: dict[str, Any] = await eventually(attempted, timeout_s=10)
    return delivery


async def test_a_service_account_naming_another_token_url_is_refused_at_upload(
        launch: Launch, tmp_path: Path) -> None:
    providers = await start_providers(tmp_path)
    try:
        api = await launch(**_provider_settings(providers))
        key, app_id = await _app(api)
        for url in ("http://169.254.169.254/computeMetadata/v1/",
                    "http://127.0.0.1:9/token", "https://evil.example/token",
                    "https://oauth2.googleapis.com/token?x=1"):
            account = {**providers.service_account, "token_uri": url}
            status, body = await api.call("PUT", f"/v1/apps/{app_id}/push/fcm", key,
                                          {"service_account": account})
            assert status == 422, url
            assert body["error"]["code"] == "validation_error"
            assert body["error"]["details"][0]["path"] == "service_account.token_uri"
        account = {**providers.service_account, "universe_domain": "evil.example"}
        status, body = await api.call("PUT", f"/v1/apps/{app_id}/push/fcm", key,
                                      {"service_account": account})
        assert status == 422
        assert body["error"]["details"][0]["path"] == "service_account.universe_domain"
    finally:
        await providers.stop()


async def test_a_token_url_stored_before_the_rule_is_never_fetched(
        launch: Launch, tmp_path: Path, dsn: str) -> None:
    """Even a credential already in the database (or slipped in some other way) that
    names an internal token URL only ever reaches the operator's token URL."""
    internal = Internal()
    runner, port = await serve_on_loopback(internal.handle)
    providers = await start_providers(tmp_path)
    try:
        api = await launch(**_provider_settings(providers))
        key, app_id = await _app(api)
        status, _ = await api.call("PUT", f"/v1/apps/{app_id}/push/fcm", key,
                                   {"service_account": providers.service_account})
        assert status == 200
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "UPDATE push_credentials SET config = jsonb_set(config, '{token_uri}', $1) "
                "WHERE app_id = $2", json.dumps(f"http://127.0.0.1:{port}/token"), app_id)
        finally:
            await conn.close()
        delivery = await push_once(api, key, providers)
        assert delivery["status"] == "succeeded"
        assert internal.hits == []
    finally:
        await providers.stop()
        await runner.cleanup()


async def test_token_exchanges_never_follow_a_redirect_and_log_only_a_short_snippet(
        launch: Launch, tmp_path: Path) -> None:
    internal = Internal()
    internal_runner, internal_port = await serve_on_loopback(internal.handle)

    async def redirecting(request: web.Request) -> web.Response:
        await request.read()
        raise web.HTTPFound(f"http://127.0.0.1:{internal_port}/admin")

    token_runner, token_port = await serve_on_loopback(redirecting)
    providers = await start_providers(tmp_path)
    token_url = f"http://127.0.0.1:{token_port}/token"
    try:
        api = await launch(**{**_provider_settings(providers), "fcm_token_url": token_url})
        key, app_id = await _app(api)
        account = {**providers.service_account, "token_uri": token_url}
        status, _ = await api.call("PUT", f"/v1/apps/{app_id}/push/fcm", key,
                                   {"service_account": account})
        assert status == 200
        delivery = await push_once(api, key, providers)
        assert internal.hits == []  # the redirect was not followed
        _, attempts = await api.call("GET", f"/v1/deliveries/{delivery['id']}/attempts", key)
        error = attempts["data"][0]["error"]
        assert error.startswith("FCM access token: HTTP 302")
        assert len(error) <= 160 and "\n" not in error and "\x00" not in error
    finally:
        await providers.stop()
        await token_runner.cleanup()
        await internal_runner.cleanup()


async def test_a_token_urls_answer_reaches_the_log_only_as_a_short_sanitized_snippet(
        launch: Launch, tmp_path: Path) -> None:
    internal = Internal()
    runner, port = await serve_on_loopback(internal.handle)
    providers = await start_providers(tmp_path)
    token_url = f"http://127.0.0.1:{port}/token"
    try:
        api = await launch(**{**_provider_settings(providers), "fcm_token_url": token_url})
        key, app_id = await _app(api)
        account = {**providers.service_account, "token_uri": token_url}
        status, _ = await api.call("PUT", f"/v1/apps/{app_id}/push/fcm", key,
                                   {"service_account": account})
        assert status == 200
        delivery = await push_once(api, key, providers)
        _, attempts = await api.call("GET", f"/v1/deliveries/{delivery['id']}/attempts", key)
        error = attempts["data"][0]["error"]
        assert len(error) <= 160 and "\n" not in error and "\x00" not in error
        assert error.count("root-password") <= 2  # a glimpse at most, never the page
    finally:
        await providers.stop()
        await runner.cleanup()


def _provider_settings(providers: Providers) -> dict[str, Any]:
    return {"fcm_url": providers.fcm.base_url, "fcm_token_url": providers.fcm.token_url,
            "apns_url": providers.apns.base_url, "provider_ca_file": str(providers.ca_file)}


async def _app(api: Api) -> tuple[str, str]:
    return await new_app(api, "tenant")
