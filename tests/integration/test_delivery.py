"""Webhook delivery through the in-process dispatcher to a real receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import standardwebhooks

from tests.support import Api, Receiver, eventually


async def deliveries(api: Api, key: str, **query: str) -> list[dict[str, Any]]:
    _, body = await api.call("GET", "/v1/deliveries", key, params=query)
    result: list[dict[str, Any]] = body["data"]
    return result


async def attempts(api: Api, key: str, delivery_id: str) -> list[dict[str, Any]]:
    _, body = await api.call("GET", f"/v1/deliveries/{delivery_id}/attempts", key)
    result: list[dict[str, Any]] = body["data"]
    return result


async def test_webhook_is_signed_and_carries_the_payload_byte_for_byte(
    api: Api, receiver: Receiver
) -> None:
    key = await api.new_app()
    endpoint = await api.new_endpoint(key, receiver.url())
    raw = b'{"type": "order.created", "payload": {"z": 1.50, "a": [1e3, -0.0], "u": "\\u00e9"}}'
    async with api.session.post("/v1/events", data=raw, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"}) as resp:
        assert resp.status == 202
        event = await resp.json()
    await receiver.wait_for(1)
    got = receiver.requests[0]
    headers = {k.lower(): v for k, v in got.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"] == event["id"]
    assert headers["user-agent"].startswith("event-gateway/")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 30
    verified = standardwebhooks.Webhook(endpoint["secret"]).verify(got.body.decode(), headers)
    assert verified["id"] == event["id"] and verified["type"] == "order.created"
    assert got.body.endswith(b'"data": {"z": 1.50, "a": [1e3, -0.0], "u": "\\u00e9"}}')
    assert json.loads(got.body)["timestamp"].endswith("Z")


async def test_failed_attempts_are_retried_on_schedule_until_2xx_and_logged(
    api: Api, receiver: Receiver
) -> None:
    receiver.answers["/hook"] = [(500, {}), (503, {}), (200, {})]
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    event = await api.emit(key)
    await receiver.wait_for(3)
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    assert receiver.requests[0].headers["webhook-id"] == event["id"]
    (delivery,) = await eventually(
        lambda: deliveries(api, key, status="succeeded"))
    assert delivery["attempt_count"] == 3
    log = await attempts(api, key, delivery["id"])
    assert [a["status_code"] for a in log] == [500, 503, 200]
    assert [a["outcome"] for a in log] == ["retry", "retry", "delivered"]
    assert all(a["duration_ms"] >= 0 and a["attempted_at"] for a in log)
    assert log[0]["response_snippet"] == "no" and log[0]["error"] == "HTTP 500"


async def test_exhausted_schedule_fails_the_delivery_and_manual_retry_delivers_it(
    api: Api, receiver: Receiver
) -> None:
    receiver.answers["/hook"] = [(500, {})]
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    await api.emit(key)
    (failed,) = await eventually(lambda: deliveries(api, key, status="failed"))
    assert failed["attempt_count"] == 4  # first try + 3 scheduled retries
    assert failed["last_error"] == "HTTP 500"
    receiver.answers["/hook"] = [(204, {})]
    status, body = await api.call("POST", f"/v1/deliveries/{failed['id']}/retry", key)
    assert status == 202 and body["status"] == "pending"
    (done,) = await eventually(lambda: deliveries(api, key, status="succeeded"))
    assert done["attempt_count"] == 5
    status, body = await api.call("POST", f"/v1/deliveries/{failed['id']}/retry", key)
    assert status == 409 and body["error"]["code"] == "delivery_not_retryable"


async def test_redirects_are_not_followed_and_count_as_failures(
    api: Api, receiver: Receiver
) -> None:
    receiver.answers["/hook"] = [(302, {"Location": receiver.url("/elsewhere")}), (200, {})]
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    await api.emit(key)
    await eventually(lambda: deliveries(api, key, status="succeeded"))
    assert [r.path for r in receiver.requests] == ["/hook", "/hook"]
    (delivery,) = await deliveries(api, key)
    log = await attempts(api, key, delivery["id"])
    assert log[0]["status_code"] == 302 and "redirect" in log[0]["error"]


async def test_410_gone_disables_the_endpoint_and_later_events_skip_it(
    api: Api, receiver: Receiver
) -> None:
    receiver.answers["/hook"] = [(410, {})]
    key = await api.new_app()
    endpoint = await api.new_endpoint(key, receiver.url())
    await api.emit(key)
    await eventually(lambda: deliveries(api, key, status="failed"))
    _, ep = await api.call("GET", f"/v1/endpoints/{endpoint['id']}", key)
    assert ep["status"] == "disabled" and ep["disabled_reason"] == "gone"
    second = await api.emit(key)
    _, event = await api.call("GET", f"/v1/events/{second['id']}", key)
    assert event["deliveries"] == []
    assert len(receiver.requests) == 1


async def test_retry_after_on_429_is_honoured(api: Api, receiver: Receiver) -> None:
    receiver.answers["/hook"] = [(429, {"Retry-After": "1"}), (200, {})]
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    await api.emit(key)
    await receiver.wait_for(2, timeout_s=10)
    gap = receiver.requests[1].at - receiver.requests[0].at
    assert gap >= 0.95  # the schedule alone would retry after 0.1 s


async def test_slow_receiver_times_out_and_is_retried(
    api: Api, receiver: Receiver
) -> None:
    receiver.delay_s = 3.0  # the test settings' delivery timeout is 2 s
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    await api.emit(key)
    (delivery,) = await deliveries(api, key)

    async def timed_out() -> list[dict[str, Any]]:
        return [a for a in await attempts(api, key, delivery["id"])
                if a["error"] and "timed out" in a["error"]]

    await eventually(timed_out, timeout_s=10)
    receiver.delay_s = 0


async def test_refused_connection_is_retried_with_the_error_logged(
    api: Api, receiver: Receiver
) -> None:
    key = await api.new_app()
    await api.new_endpoint(key, "http://127.0.0.1:9/closed")
    await api.emit(key)
    (delivery,) = await eventually(lambda: deliveries(api, key, status="failed"))
    log = await attempts(api, key, delivery["id"])
    assert len(log) == 4 and all("connection failed" in a["error"] for a in log)


async def test_disabled_endpoint_gets_no_new_deliveries_and_pending_ones_resume_on_enable(
    api: Api, receiver: Receiver
) -> None:
    receiver.answers["/hook"] = [(500, {}), (200, {})]
    key = await api.new_app()
    endpoint = await api.new_endpoint(key, receiver.url())
    await api.emit(key)
    await receiver.wait_for(1)
    status, body = await api.call("PATCH", f"/v1/endpoints/{endpoint['id']}", key,
                                  {"status": "disabled"})
    assert status == 200 and body["status"] == "disabled"
    assert body["disabled_reason"] == "manual"
    later = await api.emit(key)
    _, event = await api.call("GET", f"/v1/events/{later['id']}", key)
    assert event["deliveries"] == []
    (waiting,) = await deliveries(api, key, status="pending")
    await asyncio.sleep(0.5)  # well past the 0.1 s retry: nothing may be sent while disabled
    assert len(receiver.requests) == 1
    status, body = await api.call("PATCH", f"/v1/endpoints/{endpoint['id']}", key,
                                  {"status": "active"})
    assert body["status"] == "active" and body["disabled_reason"] is None
    await receiver.wait_for(2)
    (done,) = await eventually(lambda: deliveries(api, key, status="succeeded"))
    assert done["id"] == waiting["id"]


async def test_rotated_secret_signs_with_both_secrets_during_the_grace(
    api: Api, receiver: Receiver
) -> None:
    key = await api.new_app()
    endpoint = await api.new_endpoint(key, receiver.url())
    old = endpoint["secret"]
    status, rotated = await api.call("POST", f"/v1/endpoints/{endpoint['id']}/secret/rotate", key)
    assert status == 200 and rotated["secret"] != old
    assert rotated["secret"].startswith("whsec_")
    _, shown = await api.call("GET", f"/v1/endpoints/{endpoint['id']}/secret", key)
    assert shown["secret"] == rotated["secret"]
    await api.emit(key)
    await receiver.wait_for(1)
    got = receiver.requests[0]
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, rotated["secret"]):
        standardwebhooks.Webhook(secret).verify(got.body.decode(), got.headers)


async def test_secrets_appear_only_where_asked_for(api: Api, receiver: Receiver) -> None:
    key = await api.new_app()
    endpoint = await api.new_endpoint(key, receiver.url())
    secret = endpoint["secret"]
    for path in ("/v1/endpoints", f"/v1/endpoints/{endpoint['id']}"):
        _, body = await api.call("GET", path, key)
        assert secret not in json.dumps(body)
    _, body = await api.call("PATCH", f"/v1/endpoints/{endpoint['id']}", key,
                             {"description": "d"})
    assert secret not in json.dumps(body)


async def test_deleted_endpoint_is_gone_and_its_pending_deliveries_fail(
    api: Api, receiver: Receiver
) -> None:
    receiver.answers["/hook"] = [(500, {})]
    key = await api.new_app()
    endpoint = await api.new_endpoint(key, receiver.url())
    await api.emit(key)
    await receiver.wait_for(1)
    status, _ = await api.call("DELETE", f"/v1/endpoints/{endpoint['id']}", key)
    assert status == 204
    assert (await api.call("GET", f"/v1/endpoints/{endpoint['id']}", key))[0] == 404
    (delivery,) = await eventually(lambda: deliveries(api, key, status="failed"))
    assert delivery["last_error"] in ("endpoint deleted", "HTTP 500")


async def test_endpoint_crud_and_validation(api: Api) -> None:
    key = await api.new_app()
    for bad in ("ftp://example.com/x", "not a url", "http://", "//example.com/x",
                "http://example.com:99999/"):
        status, body = await api.call("POST", "/v1/endpoints", key, {"url": bad})
        assert status == 422 and body["error"]["code"] == "validation_error", bad
    status, body = await api.call("POST", "/v1/endpoints", key,
                                  {"url": "https://example.com/x", "event_types": ["bad type"]})
    assert status == 422 and body["error"]["details"][0]["path"] == "event_types.0"
    created = await api.new_endpoint(key, "https://hooks.invalid/x", description="d",
                                     event_types=["order.*"])
    assert created["id"].startswith("ep_") and created["status"] == "active"
    status, patched = await api.call("PATCH", f"/v1/endpoints/{created['id']}", key,
                                     {"event_types": ["user.created"], "url": "https://b.invalid/"})
    assert status == 200
    assert patched["event_types"] == ["user.created"] and patched["url"] == "https://b.invalid/"
    status, body = await api.call("PATCH", f"/v1/endpoints/{created['id']}", key, {"url": None})
    assert status == 422
    status, page = await api.call("GET", "/v1/endpoints", key, params={"limit": "1"})
    assert [e["id"] for e in page["data"]] == [created["id"]] and page["next_cursor"] is None


async def test_pagination_walks_every_delivery_once(api: Api, receiver: Receiver) -> None:
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    for _ in range(7):
        await api.emit(key)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        _, page = await api.call("GET", "/v1/deliveries", key, params=params)
        seen += [d["id"] for d in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 7
    status, _ = await api.call("GET", "/v1/deliveries", key, params={"limit": "0"})
    assert status == 422
    status, _body = await api.call("GET", "/v1/deliveries", key, params={"status": "weird"})
    assert status == 422
