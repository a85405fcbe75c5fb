"""The live tail: ``GET /v1/deliveries/stream`` over a real socket, outcomes arriving
through PostgreSQL NOTIFY from the dispatcher."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway import appkeys, outcomes
from gateway.api import deliveries
from gateway.app import create_app
from gateway.config import Settings
from tests.support import ADMIN_KEY, Api, Receiver, eventually


@dataclass
class SSE:
    """What one stream client has read so far."""

    events: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    def deliveries(self) -> list[dict[str, Any]]:
        return [data for name, _, data in self.events if name == "delivery"]


async def _read(resp: aiohttp.ClientResponse, into: SSE) -> None:
    name, ident, data = "message", None, ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith(":"):
            into.comments.append(line[1:].strip())
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("id: "):
            ident = line[4:]
        elif line.startswith("data: "):
            data = line[6:]
        elif not line and data:
            into.events.append((name, ident, json.loads(data)))
            name, ident, data = "message", None, ""


@contextlib.asynccontextmanager
async def tail(api: Api, key: str, **params: str) -> AsyncIterator[SSE]:
    """An open stream, read in the background; subscribed once this yields."""
    seen = SSE()
    async with api.session.get("/v1/deliveries/stream", params=params,
                               headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        reader = asyncio.create_task(_read(resp, seen))
        try:
            await eventually(lambda: asyncio.sleep(0, "connected" in seen.comments))
            yield seen
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def new_app(api: Api, name: str) -> tuple[str, str]:
    status, body = await api.call("POST", "/v1/apps", ADMIN_KEY, {"name": name})
    assert status == 201
    return body["id"], body["api_key"]


async def settled(api: Api, key: str, count: int) -> None:
    async def done() -> bool:
        _, body = await api.call("GET", "/v1/deliveries", key, params={"status": "succeeded"})
        return len(body["data"]) >= count
    await eventually(done)


async def test_stream_carries_its_own_apps_outcomes_and_no_other_apps(
    api: Api, receiver: Receiver
) -> None:
    mine_id, mine = await new_app(api, "mine")
    _, theirs = await new_app(api, "theirs")
    endpoint = await api.new_endpoint(mine, receiver.url("/mine"))
    await api.new_endpoint(theirs, receiver.url("/theirs"))
    async with tail(api, mine) as seen:
        await api.emit(theirs, "order.created")
        await settled(api, theirs, 1)
        event = await api.emit(mine, "order.created", {"secret_payload": "hidden"})
        (outcome,) = await eventually(lambda: asyncio.sleep(0, seen.deliveries()))
        await asyncio.sleep(0.3)
        assert len(seen.deliveries()) == 1
    assert outcome["event_id"] == event["id"] and outcome["app_id"] == mine_id
    assert outcome["endpoint_id"] == endpoint["id"] and outcome["event_type"] == "order.created"
    assert (outcome["kind"], outcome["status"], outcome["outcome"]) == (
        "webhook", "succeeded", "delivered")
    assert outcome["status_code"] == 200 and outcome["attempt"] == 1
    assert outcome["at"].endswith("Z")
    assert set(outcome) == {"delivery_id", "event_id", "event_type", "endpoint_id", "kind",
                            "app_id", "status", "outcome", "status_code", "attempt", "at"}
    assert "hidden" not in json.dumps(seen.events)
    assert seen.events[0][1] == f"{outcome['delivery_id']}:1"


async def test_every_attempt_of_a_retried_delivery_is_streamed(
    api: Api, receiver: Receiver
) -> None:
    receiver.answers["/hook"] = [(500, {}), (200, {})]
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    async with tail(api, key) as seen:
        await api.emit(key)
        first, second = await eventually(
            lambda: asyncio.sleep(0, len(seen.deliveries()) >= 2 and seen.deliveries()))
    assert (first["outcome"], first["status"], first["status_code"], first["attempt"]) == (
        "retry", "pending", 500, 1)
    assert (second["outcome"], second["status"], second["attempt"]) == (
        "delivered", "succeeded", 2)


async def test_stream_filters_by_endpoint_and_by_event_type_pattern(
    api: Api, receiver: Receiver
) -> None:
    key = await api.new_app()
    everything = await api.new_endpoint(key, receiver.url("/all"))
    orders = await api.new_endpoint(key, receiver.url("/orders"), event_types=["order.*"])
    async with tail(api, key, endpoint_id=orders["id"]) as by_endpoint, \
            tail(api, key, event_type="order.*") as by_prefix, \
            tail(api, key, event_type="user.created") as by_type:
        for event_type in ("user.created", "order.created", "order.shipped", "invoice.paid",
                           "orders"):
            await api.emit(key, event_type)
        await settled(api, key, 7)
        await asyncio.sleep(0.3)
    assert sorted(o["event_type"] for o in by_endpoint.deliveries()) == [
        "order.created", "order.shipped"]
    assert {o["endpoint_id"] for o in by_endpoint.deliveries()} == {orders["id"]}
    assert sorted((o["event_type"], o["endpoint_id"]) for o in by_prefix.deliveries()) == sorted(
        [("order.created", everything["id"]), ("order.created", orders["id"]),
         ("order.shipped", everything["id"]), ("order.shipped", orders["id"])])
    assert [(o["event_type"], o["endpoint_id"]) for o in by_type.deliveries()] == [
        ("user.created", everything["id"])]


async def test_a_slow_consumer_loses_outcomes_without_holding_up_the_others(
    api: Api, receiver: Receiver
) -> None:
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    outcomes = api.session.app[appkeys.OUTCOMES]
    outcomes.queue_size = 5
    # A client that never reads: its socket buffers fill, then its queue.
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    slow.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(slow, ("127.0.0.1", api.session.port))
    try:
        await loop.sock_sendall(slow, (
            f"GET /v1/deliveries/stream HTTP/1.1\r\nHost: gw\r\n"
            f"Authorization: Bearer {key}\r\n\r\n").encode())
        await eventually(lambda: asyncio.sleep(0, outcomes.subscriber_count() == 1))
        outcomes.queue_size = 1000  # for the next subscriber
        async with tail(api, key) as fast:
            started = time.monotonic()
            count = 150
            for batch in range(0, count, 25):
                await asyncio.gather(*(api.emit(key, payload={"n": n})
                                       for n in range(batch, batch + 25)))
            await eventually(lambda: asyncio.sleep(0, len(fast.deliveries()) >= count))
            assert time.monotonic() - started < 15
            assert len({o["delivery_id"] for o in fast.deliveries()}) == count
            assert outcomes.dropped_total > 0
            # Reading again, the slow client learns how many it lost.
            received = b""
            deadline = time.monotonic() + 10
            while b"event: dropped" not in received and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    received += await asyncio.wait_for(loop.sock_recv(slow, 65536), 1)
            assert b"event: dropped" in received
            assert not any(name == "dropped" for name, _, _ in fast.events)
    finally:
        slow.close()


async def test_outcomes_dispatched_by_another_process_reach_an_api_only_process(
    aiohttp_client: Any, aiohttp_server: Any, dsn: str, settings: Settings,
    receiver: Receiver,
) -> None:
    api_only = Api(await aiohttp_client(create_app(settings, dsn, dispatcher=False)))
    key = await api_only.new_app()
    await api_only.new_endpoint(key, receiver.url())
    async with tail(api_only, key) as seen:
        event = await api_only.emit(key)
        await asyncio.sleep(0.3)
        assert seen.deliveries() == []  # nobody dispatches yet
        await aiohttp_server(create_app(settings, dsn, serve_api=False))
        (outcome,) = await eventually(lambda: asyncio.sleep(0, seen.deliveries()))
    assert outcome["event_id"] == event["id"] and outcome["outcome"] == "delivered"


async def test_stream_takes_only_an_app_key_and_a_valid_filter(api: Api) -> None:
    key = await api.new_app()
    for who, status in ((None, 401), (ADMIN_KEY, 403)):
        got, body = await api.call("GET", "/v1/deliveries/stream", who)
        assert (got, body["error"]["code"]) == (status, {401: "unauthorized",
                                                         403: "forbidden"}[status])
    got, body = await api.call("GET", "/v1/deliveries/stream", key,
                               params={"event_type": "order.**"})
    assert got == 422 and body["error"]["details"][0]["path"] == "event_type"


async def test_an_idle_stream_sends_a_heartbeat_comment(
    aiohttp_client: Any, dsn: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outcomes, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(deliveries, "CLIENT_CHECK_S", 0.05)
    api = Api(await aiohttp_client(create_app(settings, dsn)))
    key = await api.new_app()
    async with tail(api, key) as seen:
        await eventually(lambda: asyncio.sleep(0, "heartbeat" in seen.comments),
                         timeout_s=3)


async def test_open_streams_end_promptly_when_the_app_shuts_down(
    dsn: str, settings: Settings
) -> None:
    client = TestClient(TestServer(create_app(settings, dsn)))
    await client.start_server()
    api = Api(client)
    key = await api.new_app()
    resp = await client.get("/v1/deliveries/stream", headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200
    await resp.content.readline()  # ": connected"
    started = time.monotonic()
    await client.close()  # the server would wait up to 60 s for open handlers
    assert time.monotonic() - started < 5
    resp.close()
