"""Endpoints that keep failing (issue 10, points 1 and 2), through the real server: the
circuit breaker, one probe after each cooldown, auto-disable, and the disabled reasons.

The receiver is a loopback server that answers each request by the next step of a script:
an error status, a hang (the gateway times out), then success.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import appkeys
from gateway.app import create_app
from gateway.config import Settings
from gateway.store.queue import UNLIMITED, Claim, Rooms
from tests.support import Api, eventually, serve_on_loopback

#: Retries every 0.1 s, long enough that no delivery runs out of them here.
QUICK_RETRIES = (0.1,) * 30
HANG = "hang"


@dataclass
class Scripted:
    """A real HTTP receiver on loopback answering request n with step n (the last step
    repeats): a status, or HANG (no answer until ``release`` is set or 10 s pass)."""

    steps: list[int | str]
    seen: list[tuple[int | str, float]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def answers(self) -> list[int | str]:
        return [step for step, _ in self.seen]

    def gap(self, before: int, after: int) -> float:
        """Seconds between the arrivals of two requests."""
        return self.seen[after][1] - self.seen[before][1]

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        self.seen.append((step, time.monotonic()))
        if step == HANG:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), 10)
            return web.Response(status=200)
        assert isinstance(step, int)
        return web.Response(status=step)


@contextlib.asynccontextmanager
async def scripted(*steps: int | str) -> AsyncIterator[Scripted]:
    hook = Scripted(list(steps))
    runner, hook.port = await serve_on_loopback(hook.handle)
    try:
        yield hook
    finally:
        hook.release.set()
        await runner.cleanup()


Client = TestClient[web.Request, web.Application]


async def gateway(aiohttp_client: Any, dsn: str, settings: Settings,
                  **changes: Any) -> tuple[Api, Client]:
    """A gateway (API and dispatcher) in this process with these settings changed."""
    client: Client = await aiohttp_client(create_app(
        replace(settings, retry_schedule=QUICK_RETRIES, **changes), dsn))
    return Api(client), client


async def endpoint(api: Api, key: str, endpoint_id: str) -> dict[str, Any]:
    status, body = await api.call("GET", f"/v1/endpoints/{endpoint_id}", key)
    assert status == 200, body
    result: dict[str, Any] = body
    return result


async def deliveries(api: Api, key: str, **query: str) -> list[dict[str, Any]]:
    _, body = await api.call("GET", "/v1/deliveries", key, params=query)
    result: list[dict[str, Any]] = body["data"]
    return result


async def circuit_is(api: Api, key: str, endpoint_id: str, state: str) -> bool:
    return bool((await endpoint(api, key, endpoint_id))["circuit"] == state)


async def metrics(api: Api) -> str:
    async with api.session.get("/metrics") as resp:
        assert resp.status == 200
        text: str = await resp.text()
        return text


async def test_the_circuit_opens_after_failures_in_a_row_and_nothing_is_tried_while_open(
    aiohttp_client: Any, dsn: str, settings: Settings
) -> None:
    async with scripted(500) as hook:
        api, _ = await gateway(aiohttp_client, dsn, settings, circuit_failures=3,
                               circuit_cooldown_s=60, endpoint_concurrency=1)
        key = await api.new_app()
        ep = await api.new_endpoint(key, hook.url)
        for _ in range(5):
            await api.emit(key)
        await eventually(lambda: circuit_is(api, key, ep["id"], "open"))
        assert hook.answers == [500, 500, 500]
        await asyncio.sleep(1.0)  # ten retry delays
        assert len(hook.seen) == 3
        held = await deliveries(api, key)
        assert [d["status"] for d in held] == ["pending"] * 5
        assert sum(d["attempt_count"] for d in held) == 3
        assert (await endpoint(api, key, ep["id"]))["status"] == "active"
        assert "gateway_circuit_opened_total 1.0" in await metrics(api)


async def test_one_probe_after_each_cooldown_a_failed_one_reopens_a_good_one_closes(
    aiohttp_client: Any, dsn: str, settings: Settings
) -> None:
    # Fails, times out (that counts too), then recovers.
    async with scripted(500, HANG, 500, 200) as hook:
        api, _ = await gateway(aiohttp_client, dsn, settings, circuit_failures=2,
                               circuit_cooldown_s=0.5, delivery_timeout_s=0.5,
                               endpoint_concurrency=1)
        key = await api.new_app()
        ep = await api.new_endpoint(key, hook.url)
        for _ in range(3):
            await api.emit(key)

        async def all_succeeded() -> bool:
            return len(await deliveries(api, key, status="succeeded")) == 3

        await eventually(all_succeeded, timeout_s=20)
        # Two failures opened it; each cooldown let one probe through: the first failed
        # and opened it again, the second succeeded and let the rest go.
        assert hook.answers == [500, HANG, 500, 200, 200, 200]
        assert hook.gap(1, 2) >= 0.5 + 0.5  # the timeout, then the cooldown
        assert hook.gap(2, 3) >= 0.5
        assert (await endpoint(api, key, ep["id"]))["circuit"] == "closed"
        assert "gateway_circuit_opened_total 1.0" in await metrics(api)


async def test_two_dispatchers_send_one_probe_between_them(
    aiohttp_client: Any, dsn: str, settings: Settings
) -> None:
    async with scripted(500, HANG, 200) as hook:
        changes = {"circuit_failures": 1, "circuit_cooldown_s": 0.2,
                   "delivery_timeout_s": 15.0}
        api, _ = await gateway(aiohttp_client, dsn, settings, **changes)
        await gateway(aiohttp_client, dsn, settings, **changes)
        key = await api.new_app()
        ep = await api.new_endpoint(key, hook.url)
        await api.emit(key)
        await eventually(lambda: circuit_is(api, key, ep["id"], "open"))
        for _ in range(4):
            await api.emit(key)
        await eventually(lambda: asyncio.sleep(0, len(hook.seen) == 2))  # the probe
        await asyncio.sleep(1.0)  # five cooldowns, both dispatchers polling
        assert hook.answers == [500, HANG]
        assert await circuit_is(api, key, ep["id"], "half_open")
        hook.release.set()

        async def all_succeeded() -> bool:
            return len(await deliveries(api, key, status="succeeded")) == 5

        await eventually(all_succeeded, timeout_s=20)
        assert hook.answers == [500, HANG, 200, 200, 200, 200]


async def test_an_endpoint_failing_for_the_whole_window_is_disabled_as_failing(
    aiohttp_client: Any, dsn: str, settings: Settings
) -> None:
    async with scripted(500) as hook:
        api, _ = await gateway(aiohttp_client, dsn, settings, disable_after_s=0.5,
                               circuit_failures=1000)
        key = await api.new_app()
        ep = await api.new_endpoint(key, hook.url)
        await api.emit(key)

        async def disabled() -> dict[str, Any] | None:
            found = await endpoint(api, key, ep["id"])
            return found if found["status"] == "disabled" else None

        found = await eventually(disabled)
        assert found["disabled_reason"] == "failing" and found["disabled_at"]
        tried = len(hook.seen)
        await asyncio.sleep(0.5)
        assert len(hook.seen) == tried  # its delivery waits, parked
        (waiting,) = await deliveries(api, key, status="pending")
        assert waiting["next_attempt_at"] is None
        assert "gateway_endpoints_disabled_total 1.0" in await metrics(api)

        # Fixed, and enabled again: a clean slate, and the delivery goes.
        hook.steps = [200]
        status, body = await api.call("PATCH", f"/v1/endpoints/{ep['id']}", key,
                                      {"status": "active"})
        assert status == 200
        assert (body["status"], body["disabled_reason"], body["disabled_at"],
                body["circuit"]) == ("active", None, None, "closed")
        await eventually(lambda: deliveries(api, key, status="succeeded"))


async def test_a_patch_disables_as_manual_and_refuses_any_other_reason(
    aiohttp_client: Any, dsn: str, settings: Settings
) -> None:
    api, _ = await gateway(aiohttp_client, dsn, settings)
    key = await api.new_app()
    ep = await api.new_endpoint(key, "http://127.0.0.1:9/hook")
    path = f"/v1/endpoints/{ep['id']}"
    status, body = await api.call("PATCH", path, key,
                                  {"status": "disabled", "disabled_reason": "maintenance"})
    assert status == 422 and body["error"]["details"][0]["path"] == "disabled_reason"
    assert (await endpoint(api, key, ep["id"]))["status"] == "active"
    status, body = await api.call("PATCH", path, key, {"status": "disabled"})
    assert (status, body["disabled_reason"]) == (200, "manual")
    # Disabling again keeps the reason and the time it was disabled.
    status, again = await api.call("PATCH", path, key,
                                   {"status": "disabled", "disabled_reason": "manual"})
    assert (status, again["disabled_at"]) == (200, body["disabled_at"])


async def test_setting_an_active_endpoint_active_closes_its_circuit_and_sends_at_once(
    aiohttp_client: Any, dsn: str, settings: Settings
) -> None:
    async with scripted(500, 200) as hook:
        api, _ = await gateway(aiohttp_client, dsn, settings, circuit_failures=1,
                               circuit_cooldown_s=60)
        key = await api.new_app()
        ep = await api.new_endpoint(key, hook.url)
        await api.emit(key)
        await eventually(lambda: circuit_is(api, key, ep["id"], "open"))
        await api.emit(key)
        await asyncio.sleep(0.5)
        assert len(hook.seen) == 1
        status, body = await api.call("PATCH", f"/v1/endpoints/{ep['id']}", key,
                                      {"status": "active"})
        assert (status, body["circuit"]) == (200, "closed")

        async def both_succeeded() -> bool:
            return len(await deliveries(api, key, status="succeeded")) == 2

        await eventually(both_succeeded)


async def test_the_dispatcher_does_not_spin_while_all_due_work_is_behind_an_open_circuit(
    aiohttp_client: Any, dsn: str, settings: Settings
) -> None:
    async with scripted(500) as hook:
        api, client = await gateway(aiohttp_client, dsn, settings, circuit_failures=1,
                                    circuit_cooldown_s=60, poll_interval_s=1.0)
        key = await api.new_app()
        ep = await api.new_endpoint(key, hook.url)
        for _ in range(3):
            await api.emit(key)
        await eventually(lambda: circuit_is(api, key, ep["id"], "open"))
        await asyncio.sleep(0.5)  # the claims that park what is due there
        queue = client.app[appkeys.QUEUE]
        real_claim = queue.claim
        claims = 0

        async def counted(limit: int, lease_s: float, lease_id: Any,
                          rooms: Rooms = UNLIMITED) -> Claim:
            nonlocal claims
            claims += 1
            return await real_claim(limit, lease_s, lease_id, rooms)

        queue.claim = counted  # type: ignore[method-assign]
        await asyncio.sleep(2.0)
        # It waits for the poll interval (or the cooldown, or a wake-up) between looks;
        # spinning would look every few milliseconds.
        assert claims <= 5
        assert len(hook.seen) <= 3


async def test_an_endpoint_answering_410_is_disabled_as_gone(
    aiohttp_client: Any, dsn: str, settings: Settings
) -> None:
    async with scripted(410) as hook:
        api, _ = await gateway(aiohttp_client, dsn, settings)
        key = await api.new_app()
        ep = await api.new_endpoint(key, hook.url)
        await api.emit(key)

        async def disabled() -> dict[str, Any] | None:
            found = await endpoint(api, key, ep["id"])
            return found if found["status"] == "disabled" else None

        assert (await eventually(disabled))["disabled_reason"] == "gone"
