"""The operator dashboard in process: sign-in, every page, app scoping, CSRF, the
actions (retry one and all, enable/disable, rotate, test event) and what never shows."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from multidict import CIMultiDictProxy

from gateway import dashboard
from gateway.app import create_app
from gateway.config import Settings
from tests.support import ADMIN_KEY, Api, Receiver, eventually


@dataclass
class Page:
    status: int
    text: str
    headers: CIMultiDictProxy[str]

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")

    def csrf(self) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', self.text)
        assert found, "no CSRF field on this page"
        return found[1]


class Browser:
    """One signed-in identity over the test client; cookies are sent by hand so several
    identities can share one app."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client
        self.cookie: str | None = None

    async def request(self, method: str, path: str, data: dict[str, str] | None = None,
                      cookie: str | None = None) -> Page:
        sent = cookie if cookie is not None else self.cookie
        headers = {"Cookie": f"{dashboard.SESSION_COOKIE}={sent}"} if sent else {}
        async with self.client.request(method, path, data=data, headers=headers,
                                       allow_redirects=False) as resp:
            page = Page(resp.status, await resp.text(), resp.headers)
        self.client.session.cookie_jar.clear()
        return page

    async def get(self, path: str) -> Page:
        return await self.request("GET", path)

    async def post(self, path: str, data: dict[str, str] | None = None) -> Page:
        return await self.request("POST", path, data=data or {})

    async def login(self, key: str) -> Page:
        page = await self.request("POST", "/dashboard/login", {"key": key}, cookie="")
        found = re.search(rf"{dashboard.SESSION_COOKIE}=([^;]+)",
                          page.headers.get("Set-Cookie", ""))
        if page.status == 303 and found:
            self.cookie = found[1]
        return page

    async def act(self, form_page: str, action: str, **fields: str) -> Page:
        """Submit a form as a browser would: with the CSRF token of the page it is on."""
        csrf = (await self.get(form_page)).csrf()
        return await self.post(action, {"csrf": csrf, **fields})


@pytest.fixture
def browser(api: Api) -> Browser:
    return Browser(api.session)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Deliveries here fail until their retries run out, several to one endpoint; the
    circuit breaker (tests/integration/test_endpoint_health.py) stays out of the way."""
    return replace(settings, circuit_failures=1000)


async def new_app(api: Api, name: str) -> tuple[str, str]:
    status, body = await api.call("POST", "/v1/apps", ADMIN_KEY, {"name": name})
    assert status == 201
    return body["id"], body["api_key"]


async def deliveries(api: Api, key: str, **query: str) -> list[dict[str, Any]]:
    _, body = await api.call("GET", "/v1/deliveries", key, params=query)
    result: list[dict[str, Any]] = body["data"]
    return result


async def failed_delivery(api: Api, key: str, receiver: Receiver,
                          path: str = "/hook", event_type: str = "order.created",
                          **endpoint: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """An endpoint that answers 500 until told otherwise, and a delivery to it that failed."""
    receiver.answers[path] = [(500, {})]
    ep = await api.new_endpoint(key, receiver.url(path), **endpoint)
    event = await api.emit(key, event_type)

    async def failed() -> list[dict[str, Any]]:
        return [d for d in await deliveries(api, key, status="failed", endpoint_id=ep["id"])
                if d["event_id"] == event["id"]]

    (delivery,) = await eventually(failed)
    return ep, delivery


# --- signing in ----------------------------------------------------------------------

async def test_operator_key_signs_in_with_a_strict_httponly_12h_cookie(
    api: Api, browser: Browser
) -> None:
    await new_app(api, "shop")
    page = await browser.login(ADMIN_KEY)
    assert page.status == 303 and page.location == "/dashboard/apps"
    cookie = page.headers["Set-Cookie"]
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/dashboard", "Max-Age=43200"):
        assert attribute in cookie
    assert ADMIN_KEY not in cookie
    apps = await browser.get("/dashboard/apps")
    assert apps.status == 200 and "shop" in apps.text
    assert apps.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in apps.headers["Content-Security-Policy"]
    home = await browser.get("/dashboard")
    assert home.status == 303 and home.location == "/dashboard/apps"


async def test_an_app_key_signs_in_straight_to_its_own_events(
    api: Api, browser: Browser
) -> None:
    app_id, key = await new_app(api, "shop")
    page = await browser.login(key)
    assert page.status == 303 and page.location == f"/dashboard/apps/{app_id}/events"
    picker = await browser.get("/dashboard/apps")
    assert picker.status == 303 and picker.location == f"/dashboard/apps/{app_id}/events"


async def test_unknown_keys_and_user_tokens_cannot_sign_in(api: Api, browser: Browser) -> None:
    _, key = await new_app(api, "shop")
    wrong = await browser.login("gk_not-a-key")
    assert wrong.status == 401 and "neither the operator key" in wrong.text
    assert "Set-Cookie" not in wrong.headers
    empty = await browser.login("")
    assert empty.status == 401 and "Set-Cookie" not in empty.headers
    _, token = await api.call("POST", "/v1/user-tokens", key, {"user_id": "alice"})
    user = await browser.login(token["token"])
    assert user.status == 403 and "User tokens cannot sign in" in user.text
    assert "Set-Cookie" not in user.headers
    assert token["token"] not in user.text


async def test_a_sign_in_posted_from_another_site_is_refused(
    api: Api, browser: Browser
) -> None:
    async with api.session.post("/dashboard/login", data={"key": ADMIN_KEY},
                                headers={"Origin": "https://evil.example"},
                                allow_redirects=False) as resp:
        assert resp.status == 403 and "Set-Cookie" not in resp.headers
    async with api.session.post("/dashboard/login", data={"key": ADMIN_KEY},
                                headers={"Origin": f"http://{api.session.host}:{api.session.port}"},
                                allow_redirects=False) as resp:
        assert resp.status == 303 and "Set-Cookie" in resp.headers
    api.session.session.cookie_jar.clear()


async def test_pages_without_a_valid_session_redirect_to_the_sign_in_form(
    api: Api, browser: Browser
) -> None:
    app_id, _ = await new_app(api, "shop")
    key = dashboard.session_key(ADMIN_KEY)
    expired = dashboard.issue_session(key, "admin", None, time.time() - 13 * 3600)
    good = dashboard.issue_session(key, "app", app_id, time.time())
    body, _, sig = good.partition(".")
    tampered_claims = dashboard.issue_session(key, "admin", None, time.time()).split(".")[0]
    forged = dashboard.issue_session(b"some other key", "admin", None, time.time())
    for cookie in ("", expired, forged, f"{tampered_claims}.{sig}", "garbage", f"{body}."):
        for path in ("/dashboard", "/dashboard/apps", f"/dashboard/apps/{app_id}/events",
                     f"/dashboard/apps/{app_id}/devices"):
            page = await browser.request("GET", path, cookie=cookie or "")
            assert page.status == 303 and page.location == "/dashboard/login", (cookie, path)
    form = await browser.request("GET", "/dashboard/login", cookie="")
    assert form.status == 200 and 'name="key"' in form.text


async def test_signing_out_clears_the_session_cookie(api: Api, browser: Browser) -> None:
    await new_app(api, "shop")
    await browser.login(ADMIN_KEY)
    page = await browser.act("/dashboard/apps", "/dashboard/logout")
    assert page.status == 303 and page.location.startswith("/dashboard/login")
    cleared = page.headers["Set-Cookie"]
    assert f"{dashboard.SESSION_COOKIE}=" in cleared and "Max-Age=0" in cleared


# --- pages ---------------------------------------------------------------------------

async def test_every_page_renders_its_content_and_the_health_strip(
    api: Api, browser: Browser, receiver: Receiver
) -> None:
    app_id, key = await new_app(api, "shop")
    ep = await api.new_endpoint(key, receiver.url(), description="orders service")
    event = await api.emit(key, "order.created", {"order_id": 1001})
    await receiver.wait_for(1)
    (delivery,) = await eventually(lambda: deliveries(api, key, status="succeeded"))
    _, ut = await api.call("POST", "/v1/user-tokens", key, {"user_id": "alice"})
    await api.call("POST", "/v1/devices", ut["token"],
                   {"platform": "android", "token": "android-token-of-alice",
                    "topics": ["news"]})
    await browser.login(ADMIN_KEY)
    base = f"/dashboard/apps/{app_id}"

    events = await browser.get(f"{base}/events")
    assert events.status == 200
    assert event["id"] in events.text and "order.created" in events.text
    assert "1 succeeded" in events.text
    for label in ("Queue depth", "Oldest pending", "Dispatcher", "Deliveries / min"):
        assert label in events.text
    assert "alive" in events.text  # the dispatcher runs in this process

    detail = await browser.get(f"{base}/events/{event['id']}")
    assert detail.status == 200
    for expected in (delivery["id"], receiver.url(), "succeeded", "delivered", " ms",
                     "&#34;order_id&#34;: 1001", "Next attempt"):
        assert expected in detail.text, expected
    assert re.search(r"<td>200</td>", detail.text)

    endpoints = await browser.get(f"{base}/endpoints")
    assert endpoints.status == 200
    for expected in (ep["id"], receiver.url(), "orders service", "active", "Rotate secret",
                     "Send test event", "Disable"):
        assert expected in endpoints.text

    failed = await browser.get(f"{base}/deliveries?status=failed")
    assert failed.status == 200 and "No failed deliveries match" in failed.text
    everything = await browser.get(f"{base}/deliveries")
    assert everything.status == 200 and delivery["id"] in everything.text

    devices = await browser.get(f"{base}/devices?q=alice")
    assert devices.status == 200
    assert "alice" in devices.text and "Android" in devices.text and "news" in devices.text

    inbox = await browser.get(f"{base}/sandbox")
    assert inbox.status == 200 and "The sandbox is off" in inbox.text

    missing = await browser.get(f"{base}/events/evt_nope")
    assert missing.status == 404 and "evt_nope" in missing.text
    assert missing.headers["Content-Type"].startswith("text/html")


async def test_the_event_types_page_lists_the_catalog_with_each_schema_escaped(
    api: Api, browser: Browser
) -> None:
    app_id, key = await new_app(api, "shop")
    base = f"/dashboard/apps/{app_id}"
    await browser.login(key)
    empty = await browser.get(f"{base}/event-types")
    assert empty.status == 200 and "No event types in the catalog" in empty.text
    await api.call("POST", "/v1/event-types", key, {
        "name": "order.created", "description": "<b>An order</b> was placed",
        "schema": {"type": "object", "title": "<script>alert(1)</script>"}})
    await api.call("POST", "/v1/event-types", key, {"name": "user.signup"})
    page = await browser.get(f"{base}/events")
    assert f'href="{base}/event-types"' in page.text
    page = await browser.get(f"{base}/event-types")
    assert page.status == 200
    for expected in ("order.created", "user.signup", "&lt;b&gt;An order&lt;/b&gt; was placed",
                     "JSON Schema", "&#34;title&#34;: &#34;&lt;script&gt;alert(1)&lt;/script&gt;",
                     "none: any payload"):
        assert expected in page.text, expected
    assert "<script>alert" not in page.text and "<b>An order" not in page.text

    theirs_id, theirs = await new_app(api, "theirs")
    await api.call("POST", "/v1/event-types", theirs, {"name": "their.secret.type"})
    assert "their.secret.type" not in page.text
    assert (await browser.get(f"/dashboard/apps/{theirs_id}/event-types")).status == 404


async def test_the_event_types_page_pages_through_a_long_catalog(
    api: Api, browser: Browser
) -> None:
    app_id, key = await new_app(api, "shop")
    for i in range(dashboard.pages.PAGE_SIZE + 1):
        await api.call("POST", "/v1/event-types", key, {"name": f"type.{i:03d}"})
    await browser.login(key)
    first = await browser.get(f"/dashboard/apps/{app_id}/event-types")
    assert "type.000" in first.text and "type.050" not in first.text
    more = re.search(r'href="([^"]+after=[^"]+)"', first.text)
    assert more is not None
    second = await browser.get(more[1].replace("&amp;", "&"))
    assert "type.050" in second.text and "type.000" not in second.text


async def test_event_filters_and_search_by_id(
    api: Api, browser: Browser, receiver: Receiver
) -> None:
    app_id, key = await new_app(api, "shop")
    _, bad = await failed_delivery(api, key, receiver, event_type="order.refunded")
    good = await api.emit(key, "user.created")
    await browser.login(key)
    base = f"/dashboard/apps/{app_id}/events"

    by_type = await browser.get(f"{base}?type=order.*")
    assert bad["event_id"] in by_type.text and good["id"] not in by_type.text
    by_status = await browser.get(f"{base}?status=failed&window=1h")
    assert bad["event_id"] in by_status.text and good["id"] not in by_status.text
    by_id = await browser.get(f"{base}?q={good['id'][:-4]}")
    assert good["id"] in by_id.text and bad["event_id"] not in by_id.text
    future = await browser.get(f"{base}?since=2999-01-01T00:00")
    assert "No events match" in future.text
    by_delivery = await browser.get(f"{base}?q={bad['id']}")
    assert by_delivery.status == 303
    assert by_delivery.location == f"{base}/{bad['event_id']}#{bad['id']}"
    nonsense = await browser.get(f"{base}?since=yesterday")
    assert nonsense.status == 422 and "since" in nonsense.text


async def test_devices_search_by_user_or_token_shows_pruned_reason_and_time(
    api: Api, browser: Browser, dsn: str
) -> None:
    app_id, key = await new_app(api, "shop")
    for user, token in (("alice", "tok-alice-1"), ("bob", "tok-bob-1")):
        status, _ = await api.call("POST", "/v1/devices", key,
                                   {"platform": "android", "token": token, "user_id": user})
        assert status == 201
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE devices SET status = 'pruned', pruned_reason = "
                           "'UNREGISTERED', pruned_at = now() WHERE token = 'tok-bob-1'")
    finally:
        await conn.close()
    await browser.login(key)
    base = f"/dashboard/apps/{app_id}/devices"
    by_user = await browser.get(f"{base}?q=alice")
    assert "tok-alice-1" in by_user.text and "tok-bob-1" not in by_user.text
    by_token = await browser.get(f"{base}?q=tok-bob")
    assert "tok-bob-1" in by_token.text and "tok-alice-1" not in by_token.text
    assert "UNREGISTERED" in by_token.text and "pruned" in by_token.text
    pruned = await browser.get(f"{base}?status=pruned")
    assert "tok-bob-1" in pruned.text and "tok-alice-1" not in pruned.text


# --- scoping -------------------------------------------------------------------------

async def test_an_app_key_never_sees_another_apps_data(
    api: Api, browser: Browser, receiver: Receiver
) -> None:
    mine_id, mine = await new_app(api, "mine")
    theirs_id, theirs = await new_app(api, "theirs")
    my_event = await api.emit(mine, "order.created")
    their_ep, their_delivery = await failed_delivery(api, theirs, receiver,
                                                     description="their endpoint")
    await api.call("POST", "/v1/devices", theirs,
                   {"platform": "android", "token": "their-device", "user_id": "eve"})
    await browser.login(mine)
    base = f"/dashboard/apps/{mine_id}"
    for path in ("/events", "/deliveries", "/deliveries?status=failed", "/endpoints",
                 "/devices"):
        page = await browser.get(base + path)
        assert page.status == 200
        for secret in (their_ep["id"], their_delivery["id"], their_delivery["event_id"],
                       "their-device", "theirs", theirs_id):
            assert secret not in page.text, (path, secret)
    assert my_event["id"] in (await browser.get(base + "/events")).text

    other = f"/dashboard/apps/{theirs_id}"
    for path in ("/events", f"/events/{their_delivery['event_id']}", "/endpoints",
                 "/devices", "/sandbox", "/deliveries"):
        page = await browser.get(other + path)
        assert page.status == 404, path
        assert their_delivery["event_id"] not in page.text
    crossed = await browser.get(f"{base}/events/{their_delivery['event_id']}")
    assert crossed.status == 404

    csrf = (await browser.get(base + "/events")).csrf()
    for action in (f"{other}/deliveries/{their_delivery['id']}/retry",
                   f"{base}/deliveries/{their_delivery['id']}/retry",
                   f"{other}/deliveries/retry",
                   f"{base}/endpoints/{their_ep['id']}/test",
                   f"{base}/endpoints/{their_ep['id']}/rotate"):
        page = await browser.post(action, {"csrf": csrf})
        assert page.status == 404, action
    assert [d["status"] for d in await deliveries(api, theirs)] == ["failed"]

    operator = Browser(browser.client)
    await operator.login(ADMIN_KEY)
    picker = await operator.get("/dashboard/apps")
    assert "mine" in picker.text and "theirs" in picker.text
    assert their_delivery["id"] in (await operator.get(f"{other}/deliveries")).text
    unknown = await operator.get("/dashboard/apps/app_nope/events")
    assert unknown.status == 404


# --- actions -------------------------------------------------------------------------

async def test_forms_are_refused_without_the_sessions_csrf_token(
    api: Api, browser: Browser, receiver: Receiver
) -> None:
    app_id, key = await new_app(api, "shop")
    ep, delivery = await failed_delivery(api, key, receiver)
    await browser.login(key)
    base = f"/dashboard/apps/{app_id}"
    someone_else = Browser(browser.client)
    await someone_else.login(ADMIN_KEY)
    their_token = (await someone_else.get("/dashboard/apps")).csrf()
    for data in ({}, {"csrf": ""}, {"csrf": "x" * 43}, {"csrf": their_token}):
        for action in (f"{base}/deliveries/{delivery['id']}/retry", f"{base}/deliveries/retry",
                       f"{base}/endpoints/{ep['id']}/status", f"{base}/endpoints/{ep['id']}/test",
                       f"{base}/endpoints/{ep['id']}/rotate", "/dashboard/logout"):
            page = await browser.post(action, {**data, "status": "disabled"})
            assert page.status == 403, (action, data)
            assert "stale or did not come from this dashboard" in page.text
    assert [d["status"] for d in await deliveries(api, key)] == ["failed"]
    _, endpoint = await api.call("GET", f"/v1/endpoints/{ep['id']}", key)
    assert endpoint["status"] == "active"
    anonymous = await browser.request("POST", f"{base}/deliveries/{delivery['id']}/retry",
                                      {"csrf": their_token}, cookie="")
    assert anonymous.status == 303 and anonymous.location == "/dashboard/login"


async def test_retry_one_requeues_a_failed_delivery_and_it_succeeds(
    api: Api, browser: Browser, receiver: Receiver
) -> None:
    app_id, key = await new_app(api, "shop")
    _, delivery = await failed_delivery(api, key, receiver)
    await browser.login(key)
    base = f"/dashboard/apps/{app_id}"
    listed = await browser.get(f"{base}/deliveries?status=failed")
    assert delivery["id"] in listed.text and "Retry all matching" in listed.text
    receiver.answers["/hook"] = [(200, {})]
    page = await browser.post(f"{base}/deliveries/{delivery['id']}/retry",
                              {"csrf": listed.csrf()})
    assert page.status == 303
    assert page.location == (f"{base}/events/{delivery['event_id']}?notice=retried"
                             f"#{delivery['id']}")

    async def succeeded() -> bool:
        _, body = await api.call("GET", f"/v1/deliveries/{delivery['id']}", key)
        return bool(body["status"] == "succeeded")

    await eventually(succeeded)
    shown = await browser.get(page.location.split("#")[0])
    assert "Delivery requeued" in shown.text and "badge-succeeded" in shown.text
    again = await browser.post(f"{base}/deliveries/{delivery['id']}/retry",
                               {"csrf": listed.csrf()})
    assert again.status == 409 and "Only failed deliveries can be retried" in again.text


async def test_retry_all_requeues_the_failed_deliveries_matching_the_filter_only(
    api: Api, browser: Browser, receiver: Receiver
) -> None:
    app_id, key = await new_app(api, "shop")
    receiver.answers["/a"] = [(500, {})]
    receiver.answers["/b"] = [(500, {})]
    ep_a = await api.new_endpoint(key, receiver.url("/a"))
    ep_b = await api.new_endpoint(key, receiver.url("/b"))
    order = await api.emit(key, "order.created")
    await api.emit(key, "user.created")

    async def all_failed() -> list[dict[str, Any]]:
        found = await deliveries(api, key, status="failed")
        return found if len(found) == 4 else []

    failed = await eventually(all_failed)
    (chosen,) = [d for d in failed
                 if d["endpoint_id"] == ep_a["id"] and d["event_id"] == order["id"]]
    receiver.answers["/a"] = [(200, {})]
    receiver.answers["/b"] = [(200, {})]
    await browser.login(key)
    base = f"/dashboard/apps/{app_id}"
    page = await browser.act(f"{base}/deliveries?status=failed", f"{base}/deliveries/retry",
                             endpoint_id=ep_a["id"], type="order.*", window="1h")
    assert page.status == 303
    query = parse_qs(urlsplit(page.location).query)
    assert query["count"] == ["1"] and query["endpoint_id"] == [ep_a["id"]]
    assert query["type"] == ["order.*"] and query["status"] == ["failed"]
    notice = await browser.get(page.location)
    assert "1 failed deliveries requeued" in notice.text

    async def chosen_succeeded() -> bool:
        _, body = await api.call("GET", f"/v1/deliveries/{chosen['id']}", key)
        return bool(body["status"] == "succeeded")

    await eventually(chosen_succeeded)
    still = {d["id"] for d in await deliveries(api, key, status="failed")}
    assert still == {d["id"] for d in failed} - {chosen["id"]}
    assert {d["endpoint_id"] for d in failed if d["id"] in still} == {ep_a["id"], ep_b["id"]}
    everything = await browser.act(f"{base}/deliveries?status=failed",
                                   f"{base}/deliveries/retry")
    assert parse_qs(urlsplit(everything.location).query)["count"] == ["3"]

    async def none_failed() -> bool:
        return not await deliveries(api, key, status="failed")

    await eventually(none_failed)


async def test_send_test_event_delivers_to_that_endpoint_only(
    api: Api, browser: Browser, receiver: Receiver
) -> None:
    app_id, key = await new_app(api, "shop")
    ep_a = await api.new_endpoint(key, receiver.url("/a"))
    await api.new_endpoint(key, receiver.url("/b"))
    await browser.login(key)
    base = f"/dashboard/apps/{app_id}"
    page = await browser.act(f"{base}/endpoints", f"{base}/endpoints/{ep_a['id']}/test")
    assert page.status == 303 and page.location.endswith("?notice=test_sent")
    await receiver.wait_for(1, "/a")
    await asyncio.sleep(0.3)
    assert receiver.on("/b") == []
    (got,) = receiver.on("/a")
    assert b'"type": "gateway.test"' in got.body or b'"type":"gateway.test"' in got.body
    event_page = await browser.get(page.location)
    assert "gateway.test" in event_page.text and "Test event sent" in event_page.text
    _, listed = await api.call("GET", "/v1/events", key, params={"type": "gateway.test"})
    assert len(listed["data"]) == 1

    disabled = await browser.act(f"{base}/endpoints", f"{base}/endpoints/{ep_a['id']}/status",
                                 status="disabled")
    assert disabled.status == 303
    refused = await browser.act(f"{base}/endpoints", f"{base}/endpoints/{ep_a['id']}/test")
    assert refused.status == 409 and "enable it" in refused.text


async def test_disable_and_enable_an_endpoint(api: Api, browser: Browser) -> None:
    app_id, key = await new_app(api, "shop")
    ep = await api.new_endpoint(key, "http://127.0.0.1:9/hook")
    await browser.login(key)
    base = f"/dashboard/apps/{app_id}"
    page = await browser.act(f"{base}/endpoints", f"{base}/endpoints/{ep['id']}/status",
                             status="disabled")
    assert page.status == 303 and page.location.endswith("?notice=disabled")
    _, body = await api.call("GET", f"/v1/endpoints/{ep['id']}", key)
    assert body["status"] == "disabled" and body["disabled_reason"] == "manual"
    listed = await browser.get(page.location)
    assert "manual: disabled through the API or here" in listed.text
    assert ">Enable<" in listed.text
    page = await browser.act(f"{base}/endpoints", f"{base}/endpoints/{ep['id']}/status",
                             status="active")
    _, body = await api.call("GET", f"/v1/endpoints/{ep['id']}", key)
    assert body["status"] == "active"
    bad = await browser.act(f"{base}/endpoints", f"{base}/endpoints/{ep['id']}/status",
                            status="deleted")
    assert bad.status == 422


async def test_endpoints_show_their_circuit_and_since_when_they_fail(
    api: Api, browser: Browser, dsn: str
) -> None:
    app_id, key = await new_app(api, "shop")
    tripped = await api.new_endpoint(key, "http://127.0.0.1:9/down")
    await api.new_endpoint(key, "http://127.0.0.1:9/fine")
    conn = await asyncpg.connect(dsn)
    try:  # as two failures in a row and a 60 s cooldown leave it
        await conn.execute(
            "UPDATE endpoints SET consecutive_failures = 2, circuit_open_until = now() + "
            "interval '60 seconds', failing_since = now() - interval '2 hours' WHERE id = $1",
            tripped["id"])
    finally:
        await conn.close()
    await browser.login(key)
    page = await browser.get(f"/dashboard/apps/{app_id}/endpoints")
    row = page.text.split(f'id="{tripped["id"]}"', 1)[1].split("</tr>", 1)[0]
    assert 'class="badge badge-open">open<' in row and "failing since 2 h 0 min ago" in row
    assert page.text.count('class="badge badge-closed">closed<') == 1
    assert row.count(">Close circuit<") == 1
    closed = await browser.act(f"/dashboard/apps/{app_id}/endpoints",
                               f"/dashboard/apps/{app_id}/endpoints/{tripped['id']}/status",
                               status="active")
    assert closed.status == 303
    _, body = await api.call("GET", f"/v1/endpoints/{tripped['id']}", key)
    assert (body["status"], body["circuit"]) == ("active", "closed")


async def test_health_strip_counts_the_queue_and_tells_when_no_dispatcher_runs_here(
    aiohttp_client: Any, dsn: str, settings: Settings
) -> None:
    client = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    api = Api(client)
    app_id, key = await new_app(api, "shop")
    _, other = await new_app(api, "other")
    for app_key in (key, key, other):
        await api.new_endpoint(app_key, "http://127.0.0.1:9/hook")
    for app_key in (key, other):
        await api.emit(app_key)
    browser = Browser(client)
    await browser.login(key)
    page = await browser.get(f"/dashboard/apps/{app_id}/events")
    assert 'data-stat="pending">2<' in page.text  # this app's two; not the other's
    assert 'data-stat="rate">0<' in page.text and "not in this process" in page.text
    assert not re.search(r'data-stat="oldest">—<', page.text)
    await browser.login(ADMIN_KEY)
    everyone = await browser.get("/dashboard/apps")
    assert 'data-stat="pending">3<' in everyone.text and "all apps" in everyone.text


async def test_secrets_never_show_except_the_new_one_right_after_rotation(
    api: Api, browser: Browser, receiver: Receiver
) -> None:
    app_id, key = await new_app(api, "shop")
    ep = await api.new_endpoint(key, receiver.url())
    event = await api.emit(key)
    await receiver.wait_for(1)
    for who in (ADMIN_KEY, key):
        browser.cookie = None
        await browser.login(who)
        base = f"/dashboard/apps/{app_id}"
        for path in ("/dashboard/apps", f"{base}/events", f"{base}/events/{event['id']}",
                     f"{base}/endpoints", f"{base}/deliveries", f"{base}/devices",
                     f"{base}/sandbox"):
            page = await browser.get(path)
            for secret in (ep["secret"], key, ADMIN_KEY, browser.cookie or "-"):
                assert secret not in page.text, (who == key, path)
            assert "whsec_" not in page.text
    rotated = await browser.act(f"{base}/endpoints", f"{base}/endpoints/{ep['id']}/rotate")
    assert rotated.status == 200 and rotated.headers["Cache-Control"] == "no-store"
    _, now = await api.call("GET", f"/v1/endpoints/{ep['id']}/secret", key)
    assert now["secret"] != ep["secret"]
    assert now["secret"] in rotated.text and ep["secret"] not in rotated.text
    after = await browser.get(f"{base}/endpoints")
    assert now["secret"] not in after.text and "whsec_" not in after.text


async def test_everything_rendered_is_escaped(api: Api, browser: Browser) -> None:
    app_id, key = await new_app(api, "<b>shop</b>")
    await api.new_endpoint(key, "http://127.0.0.1:9/hook?<script>",
                           description="<img src=x onerror=alert(1)>")
    event = await api.emit(key, "order.created", {"note": "<script>alert(1)</script>"})
    await browser.login(ADMIN_KEY)
    base = f"/dashboard/apps/{app_id}"
    for path in ("/dashboard/apps", f"{base}/events/{event['id']}", f"{base}/endpoints"):
        page = await browser.get(path)
        assert "<script>alert" not in page.text and "<img src=x" not in page.text
        assert "<b>shop</b>" not in page.text and "&lt;b&gt;shop&lt;/b&gt;" in page.text


async def test_sandbox_inbox_draws_the_pushes_this_apps_devices_received(
    aiohttp_client: Any, dsn: str, settings: Settings
) -> None:
    client = await aiohttp_client(create_app(settings, dsn, sandbox=True))
    api = Api(client)
    app_id, key = await new_app(api, "chat")
    _, other_key = await new_app(api, "other")
    _, ut = await api.call("POST", "/v1/user-tokens", key, {"user_id": "alice"})
    ios = "ab" * 32
    for platform, token in (("ios", ios), ("android", "alice-android")):
        status, _ = await api.call("POST", "/v1/devices", ut["token"],
                                   {"platform": platform, "token": token})
        assert status == 201
    await api.call("POST", "/v1/devices", other_key,
                   {"platform": "android", "token": "someone-elses", "user_id": "eve"})
    for sender_key, user, title in ((key, "alice", "Bob"), (other_key, "eve", "Secret")):
        status, _ = await api.call("POST", "/v1/events", sender_key, {
            "type": "chat.message", "payload": {}, "user_ids": [user],
            "notification": {"title": title, "body": f"Hi {user}!", "badge": 3,
                             "data": {"chat": "42"}}})
        assert status == 202

    async def arrived() -> bool:
        _, body = await api.call("GET", "/v1/sandbox/pushes", key)
        return len(body["data"]) == 2

    await eventually(arrived)
    browser = Browser(client)
    await browser.login(key)
    page = await browser.get(f"/dashboard/apps/{app_id}/sandbox")
    assert page.status == 200
    assert page.text.count('class="notif"') == 2
    assert "Bob" in page.text and "Hi alice!" in page.text and "chat: 42" in page.text
    assert "iOS · APNs" in page.text and "Android · FCM" in page.text
    assert "Secret" not in page.text and "someone-elses" not in page.text
    assert "bearer" not in page.text.lower()


async def test_the_dashboard_is_left_out_of_the_openapi_document(api: Api) -> None:
    _, doc = await api.call("GET", "/openapi.json")
    assert not [p for p in doc["paths"] if p.startswith(("/dashboard", "/static"))]
    async with api.session.get("/static/dashboard.css") as resp:
        assert resp.status == 200 and resp.content_type == "text/css"
    async with api.session.get("/static/../app.py") as resp:
        assert resp.status == 404



async def test_the_endpoints_page_shows_the_apps_operational_webhook(
        api: Api, browser: Browser, receiver: Receiver) -> None:
    app_id, key = await new_app(api, "told")
    await browser.login(ADMIN_KEY)
    base = f"/dashboard/apps/{app_id}"
    page = await browser.get(f"{base}/endpoints")
    assert page.status == 200 and "PUT /v1/operational-webhook" in page.text
    status, made = await api.call("PUT", "/v1/operational-webhook", key, {
        "url": receiver.url("/ops"), "event_types": ["endpoint.*"]})
    assert status == 200
    page = await browser.get(f"{base}/endpoints")
    assert receiver.url("/ops") in page.text and "endpoint.*" in page.text
    assert made["secret"] not in page.text


async def test_the_endpoints_page_shows_rate_limit_header_names_and_filter_not_values(
    api: Api, browser: Browser
) -> None:
    app_id, key = await new_app(api, "shop")
    await api.new_endpoint(key, "http://127.0.0.1:9/hook", rate_limit=25,
                           headers={"Authorization": "Bearer dash-s3cret"},
                           filter={"region": "<eu>"})
    await api.new_endpoint(key, "http://127.0.0.1:9/plain")
    for who in (ADMIN_KEY, key):
        browser.cookie = None
        await browser.login(who)
        page = await browser.get(f"/dashboard/apps/{app_id}/endpoints")
        assert page.status == 200
        assert "at most 25/s" in page.text and "<code>Authorization</code>" in page.text
        assert "dash-s3cret" not in page.text
        assert "region" in page.text and "<eu>" not in page.text  # escaped like the rest
        assert page.text.count('class="small options"') == 2 and ">none<" in page.text
