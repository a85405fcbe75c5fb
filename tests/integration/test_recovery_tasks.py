"""Recovering an endpoint through the real server: ``POST /v1/endpoints/{id}/recover`` and
``.../replay`` as background tasks (``GET /v1/tasks/{id}``), delivering to a real receiver
on loopback through the in-process dispatcher."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import Settings
from gateway.store import tasks as task_store
from gateway.store.tasks import Batch, Task
from gateway_client.models import TaskKind, iso
from tests.support import ADMIN_KEY, Api, Receiver, eventually


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Deliveries here fail until their retries run out, several to one endpoint; the
    circuit breaker (tests/integration/test_endpoint_health.py) stays out of the way."""
    return dataclasses.replace(settings, circuit_failures=1000)


async def deliveries(api: Api, key: str, **query: str) -> list[dict[str, Any]]:
    status, body = await api.call("GET", "/v1/deliveries", key,
                                  params={"limit": "250", **query})
    assert status == 200, body
    result: list[dict[str, Any]] = body["data"]
    return result


async def start(api: Api, key: str, endpoint_id: str, action: str,
                **window: str) -> dict[str, Any]:
    status, task = await api.call("POST", f"/v1/endpoints/{endpoint_id}/{action}", key, window)
    assert status == 202, task
    result: dict[str, Any] = task
    return result


async def finished(api: Api, key: str, task_id: str) -> dict[str, Any]:
    """The task once it is no longer running."""
    async def settled() -> dict[str, Any] | None:
        status, task = await api.call("GET", f"/v1/tasks/{task_id}", key)
        assert status == 200, task
        return task if task["status"] != "running" else None

    result: dict[str, Any] = await eventually(settled)
    return result


async def emit_apart(api: Api, key: str, event_type: str = "order.created",
                     n: int = 1) -> list[dict[str, Any]]:
    """``n`` events, each in a millisecond of its own (a window's bounds are to the
    millisecond)."""
    made = []
    for i in range(n):
        await asyncio.sleep(0.005)
        made.append(await api.emit(key, event_type, {"n": i}))
    await asyncio.sleep(0.005)
    return made


def webhook_ids(receiver: Receiver, path: str = "/hook") -> list[str]:
    return [r.headers["webhook-id"] for r in receiver.on(path)]


# --- recover -------------------------------------------------------------------------------

async def test_recover_requeues_the_failed_deliveries_of_its_window_once_the_receiver_is_back(
    api: Api, receiver: Receiver
) -> None:
    receiver.answers["/hook"] = [(500, {})]
    receiver.answers["/other"] = [(500, {})]
    key = await api.new_app()
    endpoint = await api.new_endpoint(key, receiver.url())
    await api.new_endpoint(key, receiver.url("/other"))
    (before,) = await emit_apart(api, key)
    inside = await emit_apart(api, key, n=3)
    (after,) = await emit_apart(api, key)
    await eventually(lambda: _count(api, key, "failed", 10))  # 5 events x 2 endpoints
    receiver.answers["/hook"] = [(200, {})]
    receiver.requests.clear()

    task = await start(api, key, endpoint["id"], "recover", since=inside[0]["created_at"],
                       until=after["created_at"])
    assert task["id"].startswith("task_") and task["kind"] == "endpoint.recover"
    assert task["status"] == "running" and task["endpoint_id"] == endpoint["id"]
    assert task["counts"] == {"scanned": 0, "requeued": 0}
    done = await finished(api, key, task["id"])
    assert done["status"] == "done" and done["error"] is None and done["finished_at"]
    assert done["counts"] == {"scanned": 3, "requeued": 3}

    await eventually(lambda: _count(api, key, "succeeded", 3))
    assert sorted(webhook_ids(receiver)) == sorted(e["id"] for e in inside)
    assert receiver.on("/other") == []  # another endpoint's failures stay as they are
    still_failed = {d["event_id"] for d in await deliveries(api, key, status="failed")}
    assert {before["id"], after["id"]} <= still_failed
    recovered = await deliveries(api, key, status="succeeded")
    assert all(d["attempt_count"] == 5 for d in recovered)  # 4 failed, then one more


async def test_recover_on_a_disabled_endpoint_parks_the_deliveries_until_it_is_enabled(
    api: Api, receiver: Receiver
) -> None:
    receiver.answers["/hook"] = [(500, {})]
    key = await api.new_app()
    endpoint = await api.new_endpoint(key, receiver.url())
    events = await emit_apart(api, key, n=2)
    await eventually(lambda: _count(api, key, "failed", 2))
    status, _ = await api.call("PATCH", f"/v1/endpoints/{endpoint['id']}", key,
                               {"status": "disabled"})
    assert status == 200
    receiver.answers["/hook"] = [(200, {})]
    receiver.requests.clear()

    task = await start(api, key, endpoint["id"], "recover", since=events[0]["created_at"])
    assert (await finished(api, key, task["id"]))["counts"] == {"scanned": 2, "requeued": 2}
    parked = await deliveries(api, key, status="pending")
    assert len(parked) == 2 and all(d["next_attempt_at"] is None for d in parked)
    assert receiver.requests == []

    await api.call("PATCH", f"/v1/endpoints/{endpoint['id']}", key, {"status": "active"})
    await eventually(lambda: _count(api, key, "succeeded", 2))
    assert sorted(webhook_ids(receiver)) == sorted(e["id"] for e in events)


# --- replay --------------------------------------------------------------------------------

async def test_replay_sends_the_events_an_endpoint_missed_while_disabled_and_only_those(
    api: Api, receiver: Receiver
) -> None:
    key = await api.new_app()
    endpoint = await api.new_endpoint(key, receiver.url())
    (first,) = await emit_apart(api, key)
    await receiver.wait_for(1)
    await api.call("PATCH", f"/v1/endpoints/{endpoint['id']}", key, {"status": "disabled"})
    missed = await emit_apart(api, key, n=3)
    await api.call("PATCH", f"/v1/endpoints/{endpoint['id']}", key, {"status": "active"})

    task = await start(api, key, endpoint["id"], "replay", since=first["created_at"])
    assert task["kind"] == "endpoint.replay" and task["counts"] == {"scanned": 0, "created": 0}
    done = await finished(api, key, task["id"])
    assert done["status"] == "done" and done["counts"] == {"scanned": 4, "created": 3}
    await eventually(lambda: _count(api, key, "succeeded", 4))
    assert sorted(webhook_ids(receiver)) == sorted(e["id"] for e in [first, *missed])


async def test_replay_to_an_endpoint_made_later_takes_only_the_event_types_it_subscribes_to(
    api: Api, receiver: Receiver
) -> None:
    key = await api.new_app()
    since = iso(datetime.now(UTC) - timedelta(seconds=1))
    orders = await emit_apart(api, key, "order.created", n=2)
    await emit_apart(api, key, "user.created")
    paid = await emit_apart(api, key, "order.paid")
    endpoint = await api.new_endpoint(key, receiver.url(), event_types=["order.*"])

    task = await start(api, key, endpoint["id"], "replay", since=since)
    assert (await finished(api, key, task["id"]))["counts"] == {"scanned": 4, "created": 3}
    await receiver.wait_for(3)
    await eventually(lambda: _count(api, key, "succeeded", 3))
    assert sorted(webhook_ids(receiver)) == sorted(e["id"] for e in [*orders, *paid])


async def test_replay_takes_only_the_events_the_endpoints_filter_lets_through(
    api: Api, receiver: Receiver
) -> None:
    key = await api.new_app()
    since = iso(datetime.now(UTC) - timedelta(seconds=1))
    eu = []
    for region in ("eu", "us", "eu", "apac"):
        await asyncio.sleep(0.005)
        event = await api.emit(key, "order.created", {"region": region})
        if region == "eu":
            eu.append(event)
    endpoint = await api.new_endpoint(key, receiver.url(), filter={"region": "eu"})

    task = await start(api, key, endpoint["id"], "replay", since=since)
    assert (await finished(api, key, task["id"]))["counts"] == {"scanned": 4, "created": 2}
    await eventually(lambda: _count(api, key, "succeeded", 2))
    assert sorted(webhook_ids(receiver)) == sorted(e["id"] for e in eu)


async def test_replay_twice_at_once_sends_each_missed_event_once(
    api: Api, receiver: Receiver
) -> None:
    key = await api.new_app()
    since = iso(datetime.now(UTC) - timedelta(seconds=1))
    events = await emit_apart(api, key, n=5)
    endpoint = await api.new_endpoint(key, receiver.url())

    tasks = await asyncio.gather(*(start(api, key, endpoint["id"], "replay", since=since)
                                   for _ in range(2)))
    done = [await finished(api, key, t["id"]) for t in tasks]
    assert [d["counts"]["scanned"] for d in done] == [5, 5]
    assert sum(d["counts"]["created"] for d in done) == 5
    await eventually(lambda: _count(api, key, "succeeded", 5))
    again = await finished(api, key, (await start(api, key, endpoint["id"], "replay",
                                                  since=since))["id"])
    assert again["counts"] == {"scanned": 5, "created": 0}
    assert sorted(webhook_ids(receiver)) == sorted(e["id"] for e in events)
    assert len(await deliveries(api, key)) == 5


async def test_replay_on_a_disabled_endpoint_makes_deliveries_that_wait_for_it(
    api: Api, receiver: Receiver
) -> None:
    key = await api.new_app()
    since = iso(datetime.now(UTC) - timedelta(seconds=1))
    events = await emit_apart(api, key, n=2)
    endpoint = await api.new_endpoint(key, receiver.url())
    await api.call("PATCH", f"/v1/endpoints/{endpoint['id']}", key, {"status": "disabled"})

    task = await start(api, key, endpoint["id"], "replay", since=since)
    assert (await finished(api, key, task["id"]))["counts"]["created"] == 2
    parked = await deliveries(api, key, status="pending")
    assert len(parked) == 2 and all(d["next_attempt_at"] is None for d in parked)
    await api.call("PATCH", f"/v1/endpoints/{endpoint['id']}", key, {"status": "active"})
    await receiver.wait_for(2)
    assert sorted(webhook_ids(receiver)) == sorted(e["id"] for e in events)


# --- tasks survive their process --------------------------------------------------------

async def test_a_task_goes_on_from_its_cursor_after_the_process_running_it_stopped(
    aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver
) -> None:
    # The first process does one batch of 2 and then pauses an hour: stopped there, it
    # leaves the task mid-way; a second process over the same database finishes it.
    first: TestClient[aiohttp.web.Request, aiohttp.web.Application] = await aiohttp_client(
        create_app(dataclasses.replace(settings, task_batch=2, task_pause_s=3600), dsn))
    api = Api(first)
    key = await api.new_app()
    since = iso(datetime.now(UTC) - timedelta(seconds=1))
    events = await emit_apart(api, key, n=5)
    endpoint = await api.new_endpoint(key, receiver.url())
    task = await start(api, key, endpoint["id"], "replay", since=since)

    async def first_batch() -> dict[str, Any] | None:
        _, shown = await api.call("GET", f"/v1/tasks/{task['id']}", key)
        return shown if shown["counts"]["scanned"] else None

    midway = await eventually(first_batch)
    assert midway["status"] == "running" and midway["counts"] == {"scanned": 2, "created": 2}
    await eventually(lambda: _count(api, key, "succeeded", 2))
    await first.close()

    second: TestClient[aiohttp.web.Request, aiohttp.web.Application] = await aiohttp_client(
        create_app(dataclasses.replace(settings, task_batch=2, task_pause_s=0), dsn))
    api = Api(second)
    done = await finished(api, key, task["id"])
    assert done["status"] == "done" and done["counts"] == {"scanned": 5, "created": 5}
    await eventually(lambda: _count(api, key, "succeeded", 5))
    assert sorted(webhook_ids(receiver)) == sorted(e["id"] for e in events)


async def test_a_batch_that_raises_fails_its_task_and_other_tasks_go_on(
    api: Api, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(conn: Any, task: Task, batch: int) -> Batch:
        await conn.execute("SELECT 1")
        raise RuntimeError("a bug")

    monkeypatch.setitem(task_store.STEPS, TaskKind.RECOVER, broken)
    key = await api.new_app()
    endpoint = await api.new_endpoint(key, receiver.url())
    since = iso(datetime.now(UTC) - timedelta(minutes=1))
    (event,) = await emit_apart(api, key)
    await receiver.wait_for(1)
    late = await api.new_endpoint(key, receiver.url("/late"))

    recover = await start(api, key, endpoint["id"], "recover", since=since)
    replay = await start(api, key, late["id"], "replay", since=since)
    failed = await finished(api, key, recover["id"])
    assert failed["status"] == "failed" and failed["finished_at"]
    assert "unexpected error" in failed["error"] and "a bug" not in failed["error"]
    assert failed["counts"] == {"scanned": 0, "requeued": 0}
    done = await finished(api, key, replay["id"])
    assert done["status"] == "done" and done["counts"] == {"scanned": 1, "created": 1}
    await receiver.wait_for(1, "/late")
    assert webhook_ids(receiver, "/late") == [event["id"]]


# --- scope and validation ------------------------------------------------------------------

async def test_tasks_and_endpoints_are_scoped_to_the_calling_app(
    api: Api, receiver: Receiver
) -> None:
    key_a, key_b = await api.new_app("a"), await api.new_app("b")
    since = iso(datetime.now(UTC) - timedelta(seconds=1))
    await emit_apart(api, key_a, n=2)
    await emit_apart(api, key_b, n=3)
    endpoint_a = await api.new_endpoint(key_a, receiver.url("/a"))
    endpoint_b = await api.new_endpoint(key_b, receiver.url("/b"))

    for action in ("recover", "replay"):
        status, body = await api.call("POST", f"/v1/endpoints/{endpoint_a['id']}/{action}",
                                      key_b, {"since": since})
        assert status == 404 and body["error"]["code"] == "not_found"
        status, body = await api.call("POST", f"/v1/endpoints/{endpoint_a['id']}/{action}",
                                      ADMIN_KEY, {"since": since})
        assert status == 403
    task = await start(api, key_a, endpoint_a["id"], "replay", since=since)
    assert (await finished(api, key_a, task["id"]))["counts"] == {"scanned": 2, "created": 2}
    status, body = await api.call("GET", f"/v1/tasks/{task['id']}", key_b)
    assert status == 404 and body["error"]["code"] == "not_found"
    _, listed = await api.call("GET", "/v1/tasks", key_b)
    assert listed == {"data": [], "next_cursor": None}
    other = await start(api, key_b, endpoint_b["id"], "replay", since=since)
    assert (await finished(api, key_b, other["id"]))["counts"] == {"scanned": 3, "created": 3}
    await receiver.wait_for(5)
    assert len(receiver.on("/a")) == 2 and len(receiver.on("/b")) == 3


async def test_tasks_are_listed_newest_first_page_by_page(api: Api, receiver: Receiver) -> None:
    key = await api.new_app()
    endpoint = await api.new_endpoint(key, receiver.url())
    since = iso(datetime.now(UTC) - timedelta(hours=1))
    made = []
    for action in ("recover", "replay", "recover"):
        await asyncio.sleep(0.002)  # ids sort by their millisecond
        made.append(await start(api, key, endpoint["id"], action, since=since))
    status, page = await api.call("GET", "/v1/tasks", key, params={"limit": "2"})
    assert status == 200 and [t["id"] for t in page["data"]] == [made[2]["id"], made[1]["id"]]
    _, rest = await api.call("GET", "/v1/tasks", key, params={"cursor": page["next_cursor"]})
    assert [t["id"] for t in rest["data"]] == [made[0]["id"]] and rest["next_cursor"] is None


async def test_windows_that_are_not_iso_8601_or_end_before_they_begin_are_refused(
    api: Api, receiver: Receiver
) -> None:
    key = await api.new_app()
    endpoint = await api.new_endpoint(key, receiver.url())
    now = datetime.now(UTC)
    path = f"/v1/endpoints/{endpoint['id']}/recover"
    refused = [
        ({"since": iso(now + timedelta(minutes=5))}, "since"),
        ({"since": iso(now - timedelta(hours=1)), "until": iso(now - timedelta(hours=2))},
         "until"),
        ({"since": iso(now - timedelta(hours=1)), "until": iso(now - timedelta(hours=1))},
         "until"),
        ({"since": "2030-01-31T14:30:00"}, "since"),
        ({"since": "yesterday"}, "since"),
        ({"since": 1700000000}, "since"),
        ({"since": iso(now), "until": "soon"}, "until"),
        ({}, "since"),
        ({"since": iso(now - timedelta(hours=1)), "endpoint": "x"}, "endpoint"),
    ]
    for body, field in refused:
        status, answer = await api.call("POST", path, key, body)
        assert status == 422, body
        assert answer["error"]["code"] == "validation_error"
        assert answer["error"]["details"][0]["path"] == field, body
    status, _ = await api.call("POST", "/v1/endpoints/ep_unknown/replay", key,
                               {"since": iso(now - timedelta(hours=1))})
    assert status == 404
    status, _ = await api.call("GET", "/v1/tasks/task_unknown", key)
    assert status == 404
    await api.call("DELETE", f"/v1/endpoints/{endpoint['id']}", key)
    status, _ = await api.call("POST", path, key, {"since": iso(now - timedelta(hours=1))})
    assert status == 404


async def test_until_stops_at_now_and_a_replay_looks_back_no_further_than_retention(
    api: Api, receiver: Receiver, settings: Settings
) -> None:
    key = await api.new_app()
    endpoint = await api.new_endpoint(key, receiver.url())
    long_ago = datetime.now(UTC) - timedelta(days=400)
    task = await start(api, key, endpoint["id"], "replay", since=iso(long_ago),
                       until=iso(datetime.now(UTC) + timedelta(days=1)))
    until = datetime.fromisoformat(task["until"])
    since = datetime.fromisoformat(task["since"])
    assert until <= datetime.now(UTC)
    assert until - since <= timedelta(days=settings.retention_days)
    assert since > long_ago
    recover = await start(api, key, endpoint["id"], "recover", since=iso(long_ago))
    assert datetime.fromisoformat(recover["since"]) == long_ago  # recover has no such bound
    status, body = await api.call(
        "POST", f"/v1/endpoints/{endpoint['id']}/replay", key,
        {"since": iso(long_ago), "until": iso(long_ago + timedelta(days=1))})
    assert status == 422 and "GATEWAY_RETENTION_DAYS" in body["error"]["message"]


async def _count(api: Api, key: str, status: str, n: int) -> bool:
    return len(await deliveries(api, key, status=status)) == n
