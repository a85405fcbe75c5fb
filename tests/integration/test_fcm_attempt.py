"""An FCM attempt that refreshes a refused access token and sends again stays within two
delivery timeouts (a token fetch and a push), the most the dispatcher's lease is sized
for, even when each step alone takes almost a whole timeout."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.base import DeliveryJob, DeviceTarget, EventView, Verdict
from adapters.fcm import FCMAdapter
from gateway.sandbox import pem_private

TIMEOUT_S = 1.0
#: Each step takes three quarters of a timeout: alone within it, three in a row beyond two.
STEP_S = 0.75 * TIMEOUT_S


def _account() -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = pem_private(key)
    return {"type": "service_account", "project_id": "p", "client_email": "a@p.iam",
            "private_key_id": "k", "private_key": pem}


async def test_a_refreshed_token_and_second_push_stay_within_two_delivery_timeouts() -> None:
    calls = {"token": 0, "push": 0}

    async def token(request: web.Request) -> web.Response:
        calls["token"] += 1
        if calls["token"] > 1:
            await asyncio.sleep(STEP_S)  # the refresh is slow
        return web.json_response({"access_token": f"at-{calls['token']}",
                                  "expires_in": 3600})

    async def push(request: web.Request) -> web.Response:
        calls["push"] += 1
        await asyncio.sleep(STEP_S)
        if calls["push"] == 1:  # the first token refused, as if it expired early
            return web.json_response({"error": {"code": 401, "status": "UNAUTHENTICATED",
                                                "message": "expired"}}, status=401)
        return web.json_response({"name": "projects/p/messages/1"})

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_post("/v1/projects/p/messages:send", push)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    adapter = FCMAdapter(base_url=str(server.make_url("")),
                         token_url=str(server.make_url("/token")), timeout_s=TIMEOUT_S)
    try:
        job = DeliveryJob("dlv_1", "app_1", "fcm",
                          EventView("evt_1", "t", "{}", datetime.now(UTC)),
                          device=DeviceTarget("dev_1", "android", "device-token"),
                          notification={"title": "hi", "data": {}}, credentials=_account())
        outcome = await adapter.send(job)
    finally:
        await adapter.close()
        await server.close()
    # The refresh and the second push were under way when two timeouts ran out: the
    # attempt ends then, worth retrying (its outcome unknown), and is not delivered late.
    assert calls["token"] == 2 and calls["push"] == 2
    assert outcome.verdict is Verdict.RETRY and outcome.error == "FCM timed out"
