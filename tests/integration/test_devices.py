"""Device registration, user tokens and push credentials over the API."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.push_support import android_token, ios_token
from tests.support import ADMIN_KEY, Api


async def user_token(api: Api, key: str, user_id: str, ttl: int = 3600) -> str:
    status, body = await api.call("POST", "/v1/user-tokens", key,
                                  {"user_id": user_id, "ttl_seconds": ttl})
    assert status == 201, body
    token: str = body["token"]
    return token


async def register(api: Api, key: str, **fields: Any) -> tuple[int, Any]:
    body = {"platform": "android", "token": android_token(1), "user_id": "u1", **fields}
    return await api.call("POST", "/v1/devices", key, body)


async def test_register_is_an_upsert_201_then_200(api: Api) -> None:
    key = await api.new_app()
    status, first = await register(api, key, topics=["news", "news", "sale"], locale="fr-FR",
                                   app_version="2.1")
    assert status == 201
    assert first["id"].startswith("dev_") and first["status"] == "active"
    assert first["topics"] == ["news", "sale"] and first["locale"] == "fr-FR"
    status, again = await register(api, key, topics=["sale"])
    assert status == 200 and again["id"] == first["id"] and again["topics"] == ["sale"]


async def test_a_token_registered_under_another_user_moves_to_that_user(api: Api) -> None:
    key = await api.new_app()
    await register(api, key, user_id="alice")
    bob = await user_token(api, key, "bob")
    status, moved = await register(api, bob, user_id=None)
    assert status == 200 and moved["user_id"] == "bob"
    _, page = await api.call("GET", "/v1/devices", key, params={"user_id": "alice"})
    assert page["data"] == []


async def test_user_token_touches_only_its_own_users_devices(api: Api) -> None:
    key = await api.new_app()
    await register(api, key, user_id="alice", token=android_token(1))
    await register(api, key, user_id="bob", token=android_token(2))
    alice = await user_token(api, key, "alice")
    _, page = await api.call("GET", "/v1/devices", alice)
    assert [d["user_id"] for d in page["data"]] == ["alice"]
    status, _ = await api.call("GET", "/v1/devices", alice, params={"user_id": "bob"})
    assert status == 403
    for method, path, body in [
        ("GET", f"/v1/devices/{android_token(2)}", None),
        ("DELETE", f"/v1/devices/{android_token(2)}", None),
        ("PUT", f"/v1/devices/{android_token(2)}/topics", {"topics": ["x"]}),
    ]:
        status, _ = await api.call(method, path, alice, body)
        assert status == 404, (method, path)
    status, _ = await register(api, alice, user_id="bob", token=android_token(3))
    assert status == 403
    status, topics = await api.call("PUT", f"/v1/devices/{android_token(1)}/topics", alice,
                                    {"topics": ["sale"]})
    assert status == 200 and topics["topics"] == ["sale"]
    status, _ = await api.call("DELETE", f"/v1/devices/{android_token(1)}", alice)
    assert status == 204


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/events", {"type": "a", "payload": {}}),
    ("GET", "/v1/endpoints", None),
    ("GET", "/v1/deliveries", None),
    ("POST", "/v1/user-tokens", {"user_id": "other"}),
    ("POST", "/v1/apps", {"name": "x"}),
])
async def test_user_token_gets_403_for_anything_but_its_devices(
    api: Api, method: str, path: str, body: Any
) -> None:
    key = await api.new_app()
    token = await user_token(api, key, "alice")
    status, answer = await api.call(method, path, token, body)
    assert status == 403 and answer["error"]["code"] == "forbidden"


async def test_expired_or_forged_user_tokens_are_401(api: Api) -> None:
    key = await api.new_app()
    token = await user_token(api, key, "alice", ttl=60)
    body, _, mac = token.removeprefix("ut_").partition(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    forged_claims = base64.urlsafe_b64encode(json.dumps(
        {**claims, "u": "mallory"}).encode()).rstrip(b"=").decode()
    for bad in (f"ut_{forged_claims}.{mac}", "ut_garbage", token[:-2] + "xx"):
        status, answer = await api.call("GET", "/v1/devices", bad)
        assert status == 401 and answer["error"]["code"] == "unauthorized", bad
    expired_claims = base64.urlsafe_b64encode(json.dumps(
        {**claims, "e": 1}).encode()).rstrip(b"=").decode()
    status, _ = await api.call("GET", "/v1/devices", f"ut_{expired_claims}.{mac}")
    assert status == 401


@pytest.mark.parametrize(("fields", "path"), [
    ({"platform": "windows"}, "platform"),
    ({"platform": "ios", "token": "not-hex"}, ""),
    ({"platform": "ios", "token": "ab" * 10}, ""),
    ({"platform": "android", "token": "has space"}, ""),
    ({"platform": "android", "token": ""}, "token"),
    ({"topics": ["bad topic!"]}, "topics.0"),
    ({"user_id": None}, "user_id"),
])
async def test_device_validation_is_422_naming_the_field(
    api: Api, fields: dict[str, Any], path: str
) -> None:
    key = await api.new_app()
    status, body = await register(api, key, **fields)
    assert status == 422, body
    assert body["error"]["details"][0]["path"] == path


async def test_ios_tokens_are_hex(api: Api) -> None:
    key = await api.new_app()
    status, _ = await register(api, key, platform="ios", token=ios_token(5))
    assert status == 201


async def test_devices_list_filters_and_paginates(api: Api) -> None:
    key = await api.new_app()
    for n in range(5):
        await register(api, key, token=android_token(n), user_id=f"u{n % 2}",
                       topics=["news"] if n < 3 else [])
    await register(api, key, token=ios_token(9), platform="ios", user_id="u0")
    _, page = await api.call("GET", "/v1/devices", key, params={"topic": "news"})
    assert len(page["data"]) == 3
    _, page = await api.call("GET", "/v1/devices", key, params={"platform": "ios"})
    assert [d["token"] for d in page["data"]] == [ios_token(9)]
    _, page = await api.call("GET", "/v1/devices", key, params={"limit": "4"})
    assert len(page["data"]) == 4 and page["next_cursor"]
    _, rest = await api.call("GET", "/v1/devices", key,
                             params={"limit": "4", "cursor": page["next_cursor"]})
    assert len(rest["data"]) == 2 and rest["next_cursor"] is None


async def test_push_credentials_are_validated_stored_and_only_shown_masked(
    api: Api
) -> None:
    import tempfile
    from pathlib import Path

    from tests.push_support import start_providers

    providers = await start_providers(Path(tempfile.mkdtemp()))
    try:
        status, app = await api.call("POST", "/v1/apps", ADMIN_KEY, {"name": "shop"})
        key, app_id = app["api_key"], app["id"]
        sa = providers.service_account
        status, body = await api.call("PUT", f"/v1/apps/{app_id}/push/fcm", key,
                                      {"service_account": {**sa, "private_key": "nope"}})
        assert status == 422 and body["error"]["details"][0]["path"] == \
            "service_account.private_key"
        status, body = await api.call("PUT", f"/v1/apps/{app_id}/push/fcm", key,
                                      {"service_account": {**sa, "type": "user"}})
        assert status == 422
        status, body = await api.call("PUT", f"/v1/apps/{app_id}/push/apns", key,
                                      {**providers.apns_credentials, "key_p8": sa["private_key"]})
        assert status == 422 and body["error"]["details"][0]["path"] == "key_p8"
        status, body = await api.call("PUT", f"/v1/apps/{app_id}/push/apns", key,
                                      {**providers.apns_credentials, "key_id": "short"})
        assert status == 422
        # The topic is sent as a header with every push: one with a line break would
        # fail every push unsent.
        for topic in ("com.example.app\r\nx-evil: 1", "com.example.app\x1b"):
            status, body = await api.call("PUT", f"/v1/apps/{app_id}/push/apns", key,
                                          {**providers.apns_credentials, "topic": topic})
            assert status == 422 and body["error"]["details"][0]["path"] == "topic", body
            assert "control characters" in body["error"]["message"]
        status, _ = await api.call("PUT", f"/v1/apps/{app_id}/push/fcm", ADMIN_KEY,
                                   {"service_account": sa})
        assert status == 200
        status, _ = await api.call("PUT", f"/v1/apps/{app_id}/push/apns", key,
                                   providers.apns_credentials)
        assert status == 200
        status, shown = await api.call("GET", f"/v1/apps/{app_id}/push", key)
        assert status == 200 and set(shown) == {"fcm", "apns"}
        text = json.dumps(shown)
        assert sa["private_key"].splitlines()[1] not in text
        assert providers.apns_credentials["key_p8"].splitlines()[1] not in text
        assert shown["fcm"]["client_email"] == sa["client_email"]
        other = await api.new_app("other")
        status, _ = await api.call("GET", f"/v1/apps/{app_id}/push", other)
        assert status == 403
        status, _ = await api.call("GET", "/v1/apps/app_nope/push", ADMIN_KEY)
        assert status == 404
    finally:
        await providers.stop()
