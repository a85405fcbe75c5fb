"""What one tenant sends can fail only its own request, with a 4xx and its field: never a
500, never another app's request in the same batched write, never an answer that is not
JSON."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway import appkeys
from gateway.store.postgres import EventDraft
from tests.security.conftest import Launch, new_app
from tests.support import Api

#: Bodies that passed validation once and then broke the batched insert for everyone.
POISON = [
    b'{"type": "t", "payload": {}, "user_ids": ["u"], "notification": {"title": "a\\u0000b"}}',
    b'{"type": "t", "payload": {}, "user_ids": ["u"], "notification": {"title": "\\ud800"}}',
    b'{"type": "t", "payload": {}, "user_ids": ["u"], '
    b'"notification": {"title": "t", "data": {"k\\u0000": "v"}}}',
    b'{"type": "t", "payload": {}, "user_ids": ["u"], '
    b'"notification": {"title": "t", "apns": {"payload": {"x": 1e999}}}}',
    b'{"type": "t", "payload": {"n": 1e999}}',
    b'{"type": "t", "payload": {"a": 1, "a": 2}}',
    b'{"type": "t", "type": "u", "payload": {}}',
    b'{"type": "t", "payload": {}, "user_ids": ["\\udfff"], "notification": {"title": "t"}}',
    b'{"type": "t", "payload": {}, "user_ids": ["u"], "notification": {"title": "t", '
    b'"apns": {"headers": {"apns-topic": "x\\r\\ninjected: 1"}}}}',
    b'{"type": "t", "payload": {}, "user_ids": ["u"], "notification": {"title": "t", "fcm": '
    + b'{"android": ' * 80 + b"{}" + b"}" * 80 + b"}}",
    b'{"type": "t", "payload": {"x": "\\ud800"}}',
    b'{"type": "t", "payload": {"\\udfff": 1}}',
]

#: Push overrides of a shape no provider takes: refused at ingest, not on every attempt.
UNSENDABLE = [
    ({"apns": {"payload": [1]}}, "notification.apns.payload"),
    ({"apns": {"payload": "x"}}, "notification.apns.payload"),
    ({"fcm": {"data": [1]}}, "notification.fcm.data"),
    ({"fcm": {"data": {"k": 1}}}, "notification.fcm.data.k"),
    ({"fcm": {"android": [1]}}, "notification.fcm.android"),
    ({"fcm": {"webpush": "x"}}, "notification.fcm.webpush"),
    ({"fcm": {"fcm_options": 1}}, "notification.fcm.fcm_options"),
    ({"apns": {"headers": {"host": "evil"}}}, "notification.apns.headers"),
    ({"apns": {"headers": {":authority": "evil"}}}, "notification.apns.headers"),
    ({"apns": {"headers": {"apns-topic": "com.other.app"}}}, "notification.apns.headers"),
    ({"apns": {"headers": {"authorization": "bearer x"}}}, "notification.apns.headers"),
    ({"apns": {"headers": {"apns-priority": "7"}}}, "notification.apns.headers"),
    ({"apns": {"headers": {"apns-expiration": "soon"}}}, "notification.apns.headers"),
]


async def post_raw(api: Api, key: str, body: bytes) -> tuple[int, str]:
    async with api.session.post("/v1/events", data=body, headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json"}) as resp:
        return resp.status, await resp.text()


@pytest.mark.parametrize("body", POISON)
async def test_a_body_the_database_cannot_hold_is_refused_with_its_field(
        launch: Launch, body: bytes) -> None:
    api = await launch(dispatcher=False)
    key, _ = await new_app(api)
    status, text = await post_raw(api, key, body)
    assert status == 422, text
    error = json.loads(text)["error"]
    assert error["code"] == "validation_error" and error["details"][0]["path"]
    assert "Infinity" not in text and "NaN" not in text


@pytest.mark.parametrize(("override", "path"), UNSENDABLE)
async def test_push_overrides_no_provider_takes_are_refused_at_ingest(
        launch: Launch, override: dict[str, Any], path: str) -> None:
    api = await launch(dispatcher=False)
    key, _ = await new_app(api)
    status, body = await api.call("POST", "/v1/events", key, {
        "type": "t", "payload": {}, "user_ids": ["u"],
        "notification": {"title": "t", **override}})
    assert status == 422, body
    assert body["error"]["details"][0]["path"] == path


async def test_a_notification_is_bounded_before_anything_walks_it(launch: Launch) -> None:
    api = await launch(dispatcher=False)
    key, _ = await new_app(api)
    wide = ",".join(["[]"] * 20_000)
    body = ('{"type": "t", "payload": {}, "user_ids": ["u"], "notification": {"title": "t", '
            f'"fcm": {{"webpush": {{"x": [{wide}]}}}}}}}}').encode()
    status, text = await post_raw(api, key, body)
    assert status == 422, text
    assert json.loads(text)["error"]["details"][0]["path"] == "notification"
    fine = {"title": "t", "apns": {"headers": {"APNS-Priority": 5, "apns-push-type": "alert",
                                               "apns-expiration": 0}}}
    status, _ = await api.call("POST", "/v1/events", key, {
        "type": "t", "payload": {}, "user_ids": ["u"], "notification": fine})
    assert status == 202


@pytest.mark.parametrize("url", ["https://[::1/", "http://[v1.x]/", "https://h:99999/",
                                 "https://exa mple.com/"])
async def test_an_endpoint_url_python_cannot_split_is_a_422(launch: Launch, url: str) -> None:
    api = await launch(dispatcher=False)
    key, _ = await new_app(api)
    status, body = await api.call("POST", "/v1/endpoints", key, {"url": url})
    assert status == 422 and body["error"]["details"][0]["path"] == "url", body


async def test_a_body_that_does_not_match_its_content_encoding_is_a_400(launch: Launch) -> None:
    api = await launch(dispatcher=False)
    key, _ = await new_app(api)
    async with api.session.post("/v1/events", data=b"this is not gzip", headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json",
            "Content-Encoding": "gzip"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "bad_request"


async def test_one_apps_bad_bodies_never_fail_another_apps_requests(launch: Launch) -> None:
    api = await launch(dispatcher=False)
    hostile, _ = await new_app(api, "hostile")
    honest, _ = await new_app(api, "honest")

    async def attack() -> list[int]:
        return [(await post_raw(api, hostile, POISON[i % len(POISON)]))[0]
                for i in range(200)]

    async def ingest(n: int) -> int:
        status, _ = await post_raw(api, honest, json.dumps(
            {"type": "order.created", "payload": {"n": n}}).encode())
        return status

    attacked, honest_statuses = await asyncio.gather(
        attack(), asyncio.gather(*[ingest(n) for n in range(400)]))
    assert set(attacked) == {422}
    assert honest_statuses == [202] * 400


async def test_a_batch_that_fails_in_the_database_fails_only_the_request_that_broke_it(
        launch: Launch) -> None:
    """Validation is not the only guard: whatever makes a batched write fail (here a row
    the database refuses: text holding NUL, which validation would have stopped) fails
    that one request."""
    api = await launch(dispatcher=False)
    honest, honest_id = await new_app(api, "honest")
    ingest = api.session.app[appkeys.INGEST]
    broken = EventDraft(honest_id, "t", '{"nul": "\x00"}')
    results = await asyncio.gather(
        ingest.submit(broken),
        *[ingest.submit(EventDraft(honest_id, "t", json.dumps({"n": n})))
          for n in range(300)],
        return_exceptions=True)
    assert isinstance(results[0], BaseException)
    assert not any(isinstance(r, BaseException) for r in results[1:])
    _, page = await api.call("GET", "/v1/events", honest, params={"limit": "250"})
    assert len(page["data"]) == 250


@pytest.mark.parametrize("token", [
    "ut_", "ut_.", "ut_x.y", "ut_" + "A" * 5000, "ut_e30.e30", "ut_%00.x",
    "ut_eyJhIjogImFwcF8xIiwgInUiOiAidSIsICJlIjogOTk5OTk5OTk5OTl9.x",
    "ut_eyJhIjoiYXBwXyIsInUiOiJ1IiwiZSI6MX0.abc", "ut_é.é", "ut_\udcff",
])
async def test_forged_or_malformed_user_tokens_are_401_never_500(launch: Launch,
                                                                  token: str) -> None:
    api = await launch(dispatcher=False)
    await new_app(api)
    status, body = await api.call("GET", "/v1/devices",
                                  headers={"Authorization": f"Bearer {token}"})
    assert status == 401, body


@pytest.mark.parametrize("path", [
    "/v1/events?type=%ED%A0%80", "/v1/deliveries?event_id=%00", "/v1/devices/%ED%A0%80",
    "/v1/endpoints/%F0%80%80%80", "/v1/events/%00",
])
async def test_lone_surrogates_and_nul_in_urls_never_make_a_500(launch: Launch,
                                                                 path: str) -> None:
    api = await launch(dispatcher=False)
    key, _ = await new_app(api)
    status, _ = await api.call("GET", path, key)
    assert status < 500  # refused (4xx), or read as U+FFFD and answered


@pytest.mark.parametrize("query", [
    "since=9999-12-31T23:59:59%2B14:00", "since=0001-01-01T00:00-14:00",
    "since=0001-01-01T00:00%2B14:00", "until=9999-12-31T23:59:59-14:00",
    "since=9999-12-31T23:59:59.999999-23:59", "until=0001-01-01T00:00",
    "until=2025-13-40T99:99", "since=%00", "since=%ED%A0%80", "window=1y",
    "status=%ED%A0%80", "before=%00",
])
async def test_bad_dashboard_filters_are_4xx_never_500(launch: Launch, query: str) -> None:
    api = await launch(dispatcher=False)
    key, app_id = await new_app(api)
    async with api.session.post("/dashboard/login", data={"key": key},
                                allow_redirects=False) as resp:
        assert resp.status == 303
    for page in ("events", "deliveries"):
        async with api.session.get(f"/dashboard/apps/{app_id}/{page}?{query}",
                                   allow_redirects=False) as resp:
            assert 400 <= resp.status < 500 or resp.status == 200, (page, resp.status)
            assert resp.content_type == "text/html"


@pytest.mark.parametrize("field", [{"endpoint_id": "\x00"}, {"type": "a\x00"},
                                   {"since": "0001-01-01T00:00+14:00"},
                                   {"until": "9999-12-31T23:59:59-14:00"}])
async def test_bad_dashboard_form_fields_are_a_4xx_page_never_500(
        launch: Launch, field: dict[str, str]) -> None:
    api = await launch(dispatcher=False)
    key, app_id = await new_app(api)
    async with api.session.post("/dashboard/login", data={"key": key},
                                allow_redirects=False) as resp:
        assert resp.status == 303
    async with api.session.get(f"/dashboard/apps/{app_id}/deliveries") as resp:
        page = await resp.text()
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    async with api.session.post(f"/dashboard/apps/{app_id}/deliveries/retry",
                                data={"csrf": csrf, **field}, allow_redirects=False) as resp:
        assert 400 <= resp.status < 500, resp.status
        assert resp.content_type == "text/html"


async def test_answers_never_hold_nan_or_infinity(launch: Launch) -> None:
    api = await launch(dispatcher=False)
    key, _ = await new_app(api)
    for payload in ('{"big": 1e308, "tiny": 5e-324, "neg": -1.7976931348623157e308}',
                    '{"n": 123456789012345678901234567890}'):
        status, _ = await post_raw(api, key, f'{{"type": "t", "payload": {payload}}}'.encode())
        assert status == 202
    async with api.session.get("/v1/events", headers={
            "Authorization": f"Bearer {key}"}) as resp:
        text = await resp.text()
    assert "Infinity" not in text and "NaN" not in text
    parsed: Any = json.loads(text)
    assert len(parsed["data"]) == 2
