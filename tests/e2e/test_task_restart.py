"""A background task outlives the process running it: killed with SIGKILL between two
batches, the task is finished by the next gateway process over the same database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from gateway_client.models import iso
from tests.support import Api, GatewayProcess, Receiver, eventually

pytestmark = pytest.mark.e2e


async def test_a_replay_cut_short_by_sigkill_is_finished_by_the_next_process(
    dsn: str, procs: list[GatewayProcess], http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    # Batches of 2, and an hour's pause after each: the first process does one batch.
    first = GatewayProcess(dsn, env={"GATEWAY_TASK_BATCH": "2",
                                     "GATEWAY_TASK_PAUSE_S": "3600"}).start()
    procs.append(first)
    await first.wait_ready()
    api = Api(http, first.base)
    key = await api.new_app()
    since = iso(datetime.now(UTC) - timedelta(seconds=1))
    events = []
    for n in range(5):
        events.append(await api.emit(key, "order.created", {"n": n}))
        await asyncio.sleep(0.005)
    endpoint = await api.new_endpoint(key, receiver.url())
    status, task = await api.call("POST", f"/v1/endpoints/{endpoint['id']}/replay", key,
                                  {"since": since})
    assert status == 202, task

    async def shown() -> dict[str, Any]:
        _, body = await api.call("GET", f"/v1/tasks/{task['id']}", key)
        result: dict[str, Any] = body
        return result

    async def first_batch_delivered() -> bool:
        _, page = await api.call("GET", "/v1/deliveries", key, params={"status": "succeeded"})
        return (await shown())["counts"]["scanned"] == 2 and len(page["data"]) == 2

    await eventually(first_batch_delivered, timeout_s=20)
    first.kill()

    second = GatewayProcess(dsn, env={"GATEWAY_TASK_BATCH": "2",
                                      "GATEWAY_TASK_PAUSE_S": "0"}).start()
    procs.append(second)
    await second.wait_ready()
    api = Api(http, second.base)

    async def done() -> dict[str, Any] | None:
        body = await shown()
        return body if body["status"] != "running" else None

    finished = await eventually(done, timeout_s=30)
    assert finished["status"] == "done" and finished["counts"] == {"scanned": 5, "created": 5}
    await receiver.wait_for(5, timeout_s=30)
    assert sorted(r.headers["webhook-id"] for r in receiver.requests) == sorted(
        e["id"] for e in events)
