"""Endpoints on loopback, private or metadata addresses are refused unless allowed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from adapters.base import DeliveryJob, EndpointTarget, EventView, Verdict
from adapters.webhook import WebhookAdapter
from gateway.app import create_app
from gateway.config import Settings
from tests.support import Api, Receiver


@pytest.fixture
async def strict_api(aiohttp_client: object, dsn: str, settings: Settings
                     ) -> Api:
    app = create_app(replace(settings, allow_private_endpoints=False), dsn, dispatcher=False)
    client: TestClient[aiohttp.web.Request, aiohttp.web.Application] = (
        await aiohttp_client(app)  # type: ignore[operator]
    )
    return Api(client)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://localhost:8080/x", "http://10.0.0.5/",
    "http://169.254.169.254/latest/meta-data", "http://[::1]:9000/", "https://192.168.1.20/",
    "http://2130706433/", "http://169.254.169.\U0001fbf2\U0001fbf5\U0001fbf4/",
    "http://[fe80::1%25eth0]:8080/",
])
async def test_non_public_endpoint_urls_are_refused(strict_api: Api, url: str) -> None:
    key = await strict_api.new_app()
    status, body = await strict_api.call("POST", "/v1/endpoints", key, {"url": url})
    assert status == 422 and body["error"]["code"] == "endpoint_url_forbidden"
    assert "GATEWAY_ALLOW_PRIVATE_ENDPOINTS" in body["error"]["message"]


async def test_an_ipv6_zone_is_refused_even_where_private_endpoints_are_allowed(
        api: Api) -> None:
    key = await api.new_app()
    status, body = await api.call("POST", "/v1/endpoints", key,
                                  {"url": "http://[fe80::1%25eth0]:8080/hook"})
    assert status == 422 and body["error"]["code"] == "validation_error", body
    assert body["error"]["details"][0]["path"] == "url"


async def test_a_host_that_does_not_resolve_yet_is_accepted(strict_api: Api) -> None:
    key = await strict_api.new_app()
    status, _body = await strict_api.call("POST", "/v1/endpoints", key,
                                         {"url": "https://not-yet.invalid/hook"})
    assert status == 201


async def test_patching_to_a_private_url_is_refused(strict_api: Api) -> None:
    key = await strict_api.new_app()
    endpoint = await strict_api.new_endpoint(key, "https://not-yet.invalid/hook")
    status, body = await strict_api.call("PATCH", f"/v1/endpoints/{endpoint['id']}", key,
                                         {"url": "http://127.0.0.1/"})
    assert status == 422 and body["error"]["code"] == "endpoint_url_forbidden"


@pytest.mark.parametrize("host", [
    "localhost", "127.0.0.1", "[::ffff:127.0.0.1]", "2130706433",
    "\U0001fbf1\U0001fbf2\U0001fbf7.\U0001fbf0.\U0001fbf0.\U0001fbf1",  # digits of another
    "\uff11\uff12\uff17.\uff10.\uff10.\uff11",  # script that IDNA makes an address
])
async def test_delivery_checks_the_resolved_address_again(
    receiver: Receiver, host: str
) -> None:
    adapter = WebhookAdapter(timeout_s=2, allow_private=False)
    job = DeliveryJob(
        delivery_id="dlv_1", app_id="app_1", kind="webhook",
        event=EventView("evt_1", "a", "{}", datetime.now(UTC)),
        endpoint=EndpointTarget("ep_1", f"http://{host}:{receiver.port}/hook",
                                ("whsec_" + "A" * 44,)),
    )
    try:
        outcome = await adapter.send(job)
    finally:
        await adapter.close()
    assert outcome.verdict is Verdict.FAILED
    assert outcome.error is not None and "endpoint_url_forbidden" in outcome.error
    assert receiver.requests == []
