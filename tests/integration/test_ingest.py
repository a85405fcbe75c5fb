"""POST /v1/events: durability, idempotency and every kind of bad input."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from tests.support import Api, Receiver


async def count(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        value: int = await conn.fetchval(f"SELECT count(*) FROM {table}")
        return value
    finally:
        await conn.close()


async def test_event_is_durable_with_one_delivery_per_subscribed_endpoint(
    api: Api, dsn: str, receiver: Receiver
) -> None:
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url("/all"))
    await api.new_endpoint(key, receiver.url("/orders"), event_types=["order.*"])
    await api.new_endpoint(key, receiver.url("/exact"), event_types=["order.created"])
    await api.new_endpoint(key, receiver.url("/users"), event_types=["user.*"])
    await api.new_endpoint(key, receiver.url("/star"), event_types=["*"])
    status, body = await api.call("POST", "/v1/events", key,
                                  {"type": "order.created", "payload": {"id": 1}})
    assert status == 202
    assert body["id"].startswith("evt_") and body["type"] == "order.created"
    _, event = await api.call("GET", f"/v1/events/{body['id']}", key)
    assert event["payload"] == {"id": 1}
    assert len(event["deliveries"]) == 4
    await receiver.wait_for(4)
    assert sorted(r.path for r in receiver.requests) == ["/all", "/exact", "/orders", "/star"]


@pytest.mark.parametrize(("patterns", "event_type", "matches"), [
    (["order.*"], "order.created", True),
    (["order.*"], "order.a.b", True),
    (["order.*"], "order", False),
    (["order.*"], "orders.created", False),
    (["order.created"], "order.created", True),
    (["order.created"], "order.created.v2", False),
    (["*"], "anything", True),
    (["a.*", "b"], "b", True),
])
async def test_event_type_patterns(
    api: Api, receiver: Receiver, patterns: list[str], event_type: str, matches: bool
) -> None:
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url(), event_types=patterns)
    event = await api.emit(key, event_type)
    _, body = await api.call("GET", f"/v1/events/{event['id']}", key)
    assert bool(body["deliveries"]) is matches


async def test_same_idempotency_key_and_body_returns_the_first_event(
    api: Api, dsn: str, receiver: Receiver
) -> None:
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    headers = {"Idempotency-Key": "order-42"}
    s1, first = await api.call("POST", "/v1/events", key,
                               {"type": "order.created", "payload": {"a": 1, "b": 2}},
                               headers=headers)
    s2, again = await api.call("POST", "/v1/events", key,
                               {"payload": {"b": 2, "a": 1}, "type": "order.created"},
                               headers=headers)
    assert (s1, s2) == (202, 200)
    assert again == first
    assert await count(dsn, "events") == 1
    assert await count(dsn, "deliveries") == 1


async def test_same_idempotency_key_with_another_body_is_409(api: Api, dsn: str) -> None:
    key = await api.new_app()
    headers = {"Idempotency-Key": "k1"}
    await api.emit(key, payload={"a": 1}, headers=headers)
    status, body = await api.call("POST", "/v1/events", key,
                                  {"type": "order.created", "payload": {"a": 2}},
                                  headers=headers)
    assert status == 409 and body["error"]["code"] == "idempotency_key_reused"
    assert await count(dsn, "events") == 1


async def test_idempotency_keys_are_scoped_to_the_app(api: Api, dsn: str) -> None:
    a, b = await api.new_app("a"), await api.new_app("b")
    headers = {"Idempotency-Key": "same"}
    e1 = await api.emit(a, headers=headers)
    e2 = await api.emit(b, headers=headers)
    assert e1["id"] != e2["id"]


async def test_idempotency_key_expires_after_24_hours(api: Api, dsn: str) -> None:
    key = await api.new_app()
    headers = {"Idempotency-Key": "old"}
    first = await api.emit(key, headers=headers)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
    finally:
        await conn.close()
    status, second = await api.call("POST", "/v1/events", key,
                                    {"type": "order.created", "payload": {"other": True}},
                                    headers=headers)
    assert status == 202 and second["id"] != first["id"]


async def test_concurrent_requests_with_one_idempotency_key_make_one_event(
    api: Api, dsn: str
) -> None:
    import asyncio

    key = await api.new_app()
    results = await asyncio.gather(*[
        api.call("POST", "/v1/events", key, {"type": "t", "payload": {"x": 1}},
                 headers={"Idempotency-Key": "race"}) for _ in range(20)
    ])
    assert sorted(s for s, _ in results).count(202) == 1
    assert {b["id"] for _, b in results} == {results[0][1]["id"]}
    assert await count(dsn, "events") == 1


def _raw(body: bytes, content_type: str = "application/json") -> dict[str, Any]:
    return {"data": body, "headers": {"Content-Type": content_type}}


BAD_INPUT: list[tuple[str, dict[str, Any], int, str]] = [
    ("not json", _raw(b"{nope"), 400, "invalid_json"),
    ("empty body", _raw(b""), 400, "invalid_json"),
    ("not utf-8", _raw(b'{"type": "a", "payload": {"s": "\xff"}}'), 400, "invalid_json"),
    ("json array", _raw(b"[1, 2]"), 422, "validation_error"),
    ("json string", _raw(b'"hello"'), 422, "validation_error"),
    ("missing type", {"json": {"payload": {}}}, 422, "validation_error"),
    ("missing payload", {"json": {"type": "a"}}, 422, "validation_error"),
    ("type not a string", {"json": {"type": 5, "payload": {}}}, 422, "validation_error"),
    ("payload not an object", {"json": {"type": "a", "payload": [1]}}, 422,
     "validation_error"),
    ("type with a space", {"json": {"type": "order created", "payload": {}}}, 422,
     "validation_error"),
    ("type too long", {"json": {"type": "a" * 129, "payload": {}}}, 422, "validation_error"),
    ("empty type", {"json": {"type": "", "payload": {}}}, 422, "validation_error"),
    ("unknown field", {"json": {"type": "a", "payload": {}, "user_id": "u"}}, 422,
     "validation_error"),
    ("push targets", {"json": {"type": "a", "payload": {}, "user_ids": ["u1"]}}, 422,
     "validation_error"),
    ("deep nesting", _raw(b'{"type": "a", "payload": {"x": ' + b"[" * 5000 + b"]" * 5000
                          + b"}}"), 422, "validation_error"),
    ("wrong content type", _raw(b'{"type": "a", "payload": {}}', "text/plain"), 415,
     "unsupported_media_type"),
    ("form content type", _raw(b"type=a", "application/x-www-form-urlencoded"), 415,
     "unsupported_media_type"),
    ("NaN literal", _raw(b'{"type": "a", "payload": {"x": NaN}}'), 400, "invalid_json"),
]


@pytest.mark.parametrize(("case", "request_args", "status", "code"), BAD_INPUT,
                         ids=[c[0] for c in BAD_INPUT])
async def test_bad_event_input_is_refused_clearly_and_writes_nothing(
    api: Api, dsn: str, case: str, request_args: dict[str, Any], status: int, code: str
) -> None:
    key = await api.new_app()
    headers = {"Authorization": f"Bearer {key}", **request_args.pop("headers", {})}
    async with api.session.post("/v1/events", headers=headers, **request_args) as resp:
        assert resp.status == status, await resp.text()
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert "Traceback" not in json.dumps(body)
    assert await count(dsn, "events") == 0


async def test_validation_errors_name_the_field(api: Api) -> None:
    key = await api.new_app()
    status, body = await api.call("POST", "/v1/events", key, {"type": "a", "payload": 3})
    assert status == 422
    assert body["error"]["details"][0]["path"] == "payload"


async def test_oversized_body_is_413_and_writes_nothing(api: Api, dsn: str) -> None:
    key = await api.new_app()
    big = {"type": "a", "payload": {"blob": "x" * (300 * 1024)}}
    status, body = await api.call("POST", "/v1/events", key, big)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert await count(dsn, "events") == 0


async def test_nul_characters_in_the_payload_are_delivered_faithfully(
    api: Api, receiver: Receiver
) -> None:
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    raw = b'{"type": "a", "payload": {"s": "nul\\u0000here", "t": "\\ud83d\\ude00"}}'
    async with api.session.post("/v1/events", data=raw, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"}) as resp:
        assert resp.status == 202
    await receiver.wait_for(1)
    assert receiver.requests[0].body.endswith(b'"data": {"s": "nul\\u0000here", '
                                              b'"t": "\\ud83d\\ude00"}}')


async def test_nul_in_a_stored_text_field_is_422(api: Api) -> None:
    key = await api.new_app()
    status, body = await api.call("POST", "/v1/endpoints", key,
                                  {"url": "http://127.0.0.1:9/x", "description": "a\u0000b"})
    assert status == 422 and body["error"]["details"][0]["path"] == "description"


async def test_bad_idempotency_key_header_is_422(api: Api) -> None:
    key = await api.new_app()
    status, _body = await api.call("POST", "/v1/events", key, {"type": "a", "payload": {}},
                                  headers={"Idempotency-Key": "x" * 300})
    assert status == 422


@pytest.mark.parametrize("path", [
    "/v1/deliveries?endpoint_id=%00x", "/v1/events?cursor=a%00", "/v1/events?type=%00",
    "/v1/endpoints/ep_%00", "/v1/devices?user_id=%00", "/v1/events?limit=%C2%B9",
])
async def test_nul_or_non_ascii_digits_in_query_or_path_are_422_not_a_server_error(
    api: Api, path: str
) -> None:
    key = await api.new_app()
    status, body = await api.call("GET", path, key)
    assert status == 422 and body["error"]["code"] == "validation_error"
