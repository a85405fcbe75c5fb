"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against the
real ``gateway serve --sandbox`` process: an operator signs in, finds a delivery that
failed because its receiver was down, brings the receiver up, presses Retry and watches it
succeed. The screenshots it takes on the way are the README's."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.support import ADMIN_KEY, ROOT, Api, GatewayProcess, Receiver, eventually, free_port

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
#: The README's screenshots are refreshed with
#: GATEWAY_SCREENSHOT_DIR=docs/screenshots scripts/check -k dashboard_browser;
#: ordinary runs write them to a temporary folder, leaving the tree clean.
SHOTS = Path(os.environ.get("GATEWAY_SCREENSHOT_DIR")
             or tempfile.mkdtemp(prefix="gw-screenshots-"))
if not SHOTS.is_absolute():
    SHOTS = ROOT / SHOTS


@pytest.fixture
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is missing; .ci/run installs it")
        pytest.skip("needs Debian's chromium: apt-get install chromium")
    return CHROMIUM


@pytest.fixture
async def chromium(chromium_path: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(chromium_path),
                                                   args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest.fixture
def gateway(dsn: str) -> Iterator[GatewayProcess]:
    # The story's receiver is down until the operator retries: the circuit breaker
    # (tested in tests/integration/test_endpoint_health.py) stays out of its way.
    proc = GatewayProcess(dsn, "serve", "--sandbox",
                          env={"GATEWAY_CIRCUIT_FAILURES": "1000"}).start()
    yield proc
    proc.stop()


@pytest.fixture
async def receiver_port() -> AsyncIterator[tuple[int, list[Receiver]]]:
    """A free port where nothing listens yet; the test starts the receiver later."""
    started: list[Receiver] = []
    yield free_port(), started
    for receiver in started:
        await receiver.stop()


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def seed(api: Api, hook_url: str) -> dict[str, Any]:
    """An app whose webhook receiver is down, and push targets in the sandbox."""
    status, app = await api.call("POST", "/v1/apps", ADMIN_KEY, {"name": "shop"})
    assert status == 201
    key = app["api_key"]
    endpoint = await api.new_endpoint(key, hook_url, event_types=["order.*"],
                                      description="orders service")
    for platform, token, user in (("ios", "ab" * 32, "alice"),
                                  ("android", "alice-pixel-8", "alice"),
                                  ("ios", "dead" + "0" * 60, "carol")):
        status, _ = await api.call("POST", "/v1/devices", key, {
            "platform": platform, "token": token, "user_id": user, "topics": ["orders"]})
        assert status == 201
    order = await api.emit(key, "order.created", {"order_id": 1001, "total": 25.5})
    await api.emit(key, "order.paid", {"order_id": 1001})
    await api.call("POST", "/v1/events", key, {
        "type": "chat.message", "payload": {"from": "bob"}, "user_ids": ["alice", "carol"],
        "notification": {"title": "Bob", "body": "Lunch at noon?", "badge": 1,
                         "data": {"chat_id": "42"}}})
    await api.call("POST", "/v1/events", key, {
        "type": "promo.flash_sale", "payload": {}, "topics": ["orders"],
        "notification": {"title": "Flash sale", "body": "20% off everything until midnight"}})
    return {"app": app, "key": key, "endpoint": endpoint, "order": order}


async def test_operator_retries_a_delivery_that_failed_while_its_receiver_was_down(
    chromium: Browser, gateway: GatewayProcess, receiver_port: tuple[int, list[Receiver]]
) -> None:
    port, started = receiver_port
    await gateway.wait_ready()
    async with aiohttp.ClientSession() as http:
        api = Api(http, gateway.base)
        world = await seed(api, f"http://127.0.0.1:{port}/hook")
        key = world["key"]

        async def order_failed() -> dict[str, Any] | None:
            _, body = await api.call("GET", "/v1/deliveries", key, params={
                "event_id": world["order"]["id"], "status": "failed"})
            return body["data"][0] if body["data"] else None

        delivery = await eventually(order_failed, timeout_s=30)

        async def carol_pruned() -> bool:
            _, body = await api.call("GET", "/v1/devices", key, params={"status": "pruned"})
            return len(body["data"]) == 1

        await eventually(carol_pruned, timeout_s=30)

    page = await chromium.new_page(viewport={"width": 1280, "height": 800})
    await page.goto(gateway.base + "/dashboard")
    await expect(page).to_have_url(gateway.base + "/dashboard/login")
    await page.fill("#key", ADMIN_KEY)
    await shot(page, "login")
    await page.click("button:has-text('Sign in')")
    await expect(page).to_have_url(gateway.base + "/dashboard/apps")
    await page.click("a.strong:has-text('shop')")

    await expect(page.locator("h1")).to_have_text("Events")
    await expect(page.locator("#events")).to_contain_text("order.created")
    await shot(page, "events")

    await page.click(f"a:has-text('{world['order']['id']}')")
    card = page.locator(f"section#{delivery['id']}")
    await expect(card.locator(".badge").first).to_have_text("failed")
    await expect(card.locator("table.attempts tbody tr")).to_have_count(4)
    await expect(card).to_contain_text("Cannot connect to host")
    await shot(page, "event-attempts")

    await page.click("nav.tabs a:has-text('Failed deliveries')")
    row = page.locator(f"#deliveries tr#{delivery['id']}")
    await expect(row).to_contain_text("failed")
    await shot(page, "failed-before-retry")

    receiver = await Receiver(port=port).start()
    started.append(receiver)
    await row.locator("button:has-text('Retry')").click()
    await expect(page.locator(".notice")).to_contain_text("Delivery requeued")
    card = page.locator(f"section#{delivery['id']}")
    # The page reloads itself while the delivery is pending; it lands as succeeded.
    await expect(card.locator(".badge").first).to_have_text("succeeded", timeout=20_000)
    await expect(card.locator("table.attempts tbody tr").last).to_contain_text("200")
    await shot(page, "retry-succeeded")
    assert [r.headers["webhook-id"] for r in receiver.on("/hook")] == \
        [world["order"]["id"]]

    await page.click("nav.tabs a:has-text('Endpoints')")
    await expect(page.locator("#endpoints")).to_contain_text("orders service")
    await shot(page, "endpoints")

    await page.click("nav.tabs a:has-text('Devices')")
    await expect(page.locator("#devices")).to_contain_text("Unregistered")
    await shot(page, "devices")

    await page.click("nav.tabs a:has-text('Sandbox inbox')")
    await expect(page.locator(".notif")).to_have_count(4)  # 2 pushes x alice's 2 phones
    await expect(page.locator(".phones")).to_contain_text("Lunch at noon?")
    await shot(page, "sandbox-inbox")

    content = await page.content()
    assert key not in content and ADMIN_KEY not in content
    await page.close()
