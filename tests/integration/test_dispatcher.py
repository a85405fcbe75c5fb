"""The dispatcher is never silently gone: a loop that dies or stalls is noticed and
restarted, and /readyz tells the truth meanwhile."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from gateway import appkeys
from gateway.app import create_app
from gateway.config import Settings
from gateway.store.queue import UNLIMITED, Claim, Rooms
from tests.support import Api, Receiver, eventually


async def _client(aiohttp_client: Any, dsn: str, settings: Settings
                  ) -> TestClient[aiohttp.web.Request, aiohttp.web.Application]:
    client: TestClient[aiohttp.web.Request, aiohttp.web.Application] = await aiohttp_client(
        create_app(settings, dsn))
    return client


async def test_a_dispatcher_loop_that_dies_is_restarted_and_delivers(
    aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver
) -> None:
    client = await _client(aiohttp_client, dsn, settings)
    dispatcher = client.app[appkeys.DISPATCHER]
    # The event goes through a claim, not handed over by ingest: only a loop that is
    # back can send it.
    dispatcher.handoff_wait_s = 0
    real_claim = dispatcher.queue.claim
    calls = 0

    async def broken_once(limit: int, lease_s: float, lease_id: uuid.UUID,
                          rooms: Rooms = UNLIMITED) -> Claim:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return await real_claim(limit, lease_s, lease_id, rooms)

    dispatcher.queue.claim = broken_once  # type: ignore[method-assign]
    dispatcher._wake.set()
    # The loop has died: no claim it started before the patch can take the event.
    await eventually(lambda: asyncio.sleep(0, calls >= 1))
    api = Api(client)
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    await api.emit(key)
    await receiver.wait_for(1, timeout_s=10)
    assert dispatcher.restarts >= 1


async def test_a_stalled_dispatcher_fails_readiness_and_is_restarted(
    aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver
) -> None:
    client = await _client(aiohttp_client, dsn, settings)
    dispatcher = client.app[appkeys.DISPATCHER]
    # The event goes through a claim, not handed over by ingest: only a loop that is
    # back can send it.
    dispatcher.handoff_wait_s = 0
    dispatcher.stall_after_s = 0.6
    real_claim = dispatcher.queue.claim
    hang = asyncio.Event()

    async def hangs_once(limit: int, lease_s: float, lease_id: uuid.UUID,
                         rooms: Rooms = UNLIMITED) -> Claim:
        if not hang.is_set():
            hang.set()
            await asyncio.Event().wait()  # never returns: a stuck loop
        return await real_claim(limit, lease_s, lease_id, rooms)

    dispatcher.queue.claim = hangs_once  # type: ignore[method-assign]
    dispatcher._wake.set()
    api = Api(client)

    async def not_ready() -> bool:
        status, body = await api.call("GET", "/readyz")
        return status == 503 and body["error"]["code"] == "dispatcher_stalled"

    await eventually(not_ready, timeout_s=5)
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    await api.emit(key)
    await receiver.wait_for(1, timeout_s=10)
    assert dispatcher.restarts >= 1
    status, _ = await api.call("GET", "/readyz")
    assert status == 200


async def test_many_events_are_each_delivered_exactly_once_by_one_dispatcher(
    aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver
) -> None:
    client = await _client(aiohttp_client, dsn, settings)
    api = Api(client)
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    sent = await asyncio.gather(*[api.emit(key, payload={"i": i}) for i in range(300)])
    await receiver.wait_for(300, timeout_s=30)
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert sorted(ids) == sorted(e["id"] for e in sent)
