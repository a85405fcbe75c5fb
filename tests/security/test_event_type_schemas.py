"""What an app's event type catalog cannot be used for: making the gateway fetch a URL,
holding up ingest with a regex or a payload costly to check, or holding more than its
share of catalog entries or of a process's memory."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg

from gateway import appkeys
from gateway.schemas import MAX_STEPS
from tests.security.conftest import Launch, new_app
from tests.support import Api, Receiver


async def post_event(api: Api, key: str, event_type: str, payload: Any) -> tuple[int, Any]:
    return await api.call("POST", "/v1/events", key, {"type": event_type, "payload": payload})


async def test_a_remote_ref_is_refused_and_never_fetched(
        launch: Launch, receiver: Receiver) -> None:
    api = await launch(dispatcher=False)
    key, _ = await new_app(api)
    remote = {"type": "object", "properties": {"order": {"$ref": receiver.url("/order.json")}}}
    status, answer = await api.call("POST", "/v1/event-types", key,
                                    {"name": "order.created", "schema": remote})
    assert status == 422
    assert answer["error"]["details"][0]["path"] == "schema.properties.order.$ref"
    based = {"$id": receiver.url("/schemas/order"), "$ref": "item.json"}
    status, answer = await api.call("POST", "/v1/event-types", key,
                                    {"name": "order.created", "schema": based})
    assert status == 422 and answer["error"]["details"][0]["path"] == "schema.$ref"
    assert receiver.requests == []


async def test_a_remote_ref_stored_behind_the_apis_back_is_still_never_fetched(
        launch: Launch, dsn: str, receiver: Receiver) -> None:
    api = await launch(dispatcher=False)
    key, app_id = await new_app(api)
    remote = {"properties": {"order": {"$ref": receiver.url("/order.json")}}}
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO event_types (app_id, name, schema) VALUES ($1, $2, $3)",
                           app_id, "order.created", json.dumps(remote))
        status, answer = await post_event(api, key, "order.created", {"order": {}})
        assert status == 422
        assert answer["error"]["details"][0]["path"] == "payload"
        assert await conn.fetchval("SELECT count(*) FROM events") == 0
    finally:
        await conn.close()
    assert receiver.requests == []


async def test_a_backtracking_regex_cannot_hold_up_ingest(launch: Launch) -> None:
    api = await launch(dispatcher=False)
    key, _ = await new_app(api)
    schema = {"properties": {"code": {"type": "string", "pattern": "^(a+)+$"}},
              "patternProperties": {"^(b+)+$": {"type": "integer"}},
              "additionalProperties": False}
    status, _ = await api.call("POST", "/v1/event-types", key,
                               {"name": "evil", "schema": schema})
    assert status == 201
    # Python's re takes longer than the age of the universe on these; RE2 microseconds.
    status, answer = await post_event(api, key, "evil",
                                      {"code": "a" * 5000 + "!", "b" * 5000 + "!": 1})
    assert status == 422
    assert {d["path"] for d in answer["error"]["details"]} == {
        "payload.code", "payload." + "b" * 5000 + "!"}


async def test_a_payload_too_costly_to_check_is_refused(launch: Launch) -> None:
    api = await launch(dispatcher=False)
    key, _ = await new_app(api)
    schema = {"items": {"enum": list(range(1000))}}
    await api.call("POST", "/v1/event-types", key, {"name": "costly", "schema": schema})
    payload = {"list": list(range(MAX_STEPS // 1000 + 1))}
    status, _ = await post_event(api, key, "costly", payload)
    assert status == 202  # the schema applies to arrays; this payload is an object
    await api.call("PATCH", "/v1/event-types/costly", key, {"schema": {
        "properties": {"list": schema}}})
    status, answer = await post_event(api, key, "costly", payload)
    assert status == 422
    assert answer["error"]["details"][0]["path"] == "payload"
    assert "too large or too complex" in answer["error"]["details"][0]["message"]


async def test_the_catalog_cannot_grow_past_its_quota_even_all_at_once(
        launch: Launch) -> None:
    api = await launch(dispatcher=False, max_event_types=3)
    key, _ = await new_app(api)
    answers = await asyncio.gather(*[
        api.call("POST", "/v1/event-types", key, {"name": f"type.{i}"}) for i in range(8)])
    assert sorted(status for status, _ in answers) == [201] * 3 + [422] * 5
    refused = next(body for status, body in answers if status == 422)
    assert refused["error"]["code"] == "limit_exceeded"
    assert refused["error"]["details"] == [{"limit": "max_event_types", "value": 3}]
    _, page = await api.call("GET", "/v1/event-types", key)
    assert len(page["data"]) == 3
    # A taken name is still a conflict at the limit; deleting an entry frees its place.
    status, body = await api.call("POST", "/v1/event-types", key,
                                  {"name": page["data"][0]["name"]})
    assert (status, body["error"]["code"]) == (409, "event_type_exists")
    await api.call("DELETE", f"/v1/event-types/{page['data'][0]['name']}", key)
    assert (await api.call("POST", "/v1/event-types", key, {"name": "type.new"}))[0] == 201
    other, _ = await new_app(api, "other")  # the quota is each app's own
    assert (await api.call("POST", "/v1/event-types", other, {"name": "type.0"}))[0] == 201


async def test_an_event_reads_only_its_own_types_schema_however_large_the_catalog(
        launch: Launch) -> None:
    api = await launch(dispatcher=False)
    key, _ = await new_app(api)
    for i in range(20):  # about 40 KiB of schema each
        schema = {"properties": {"code": {"enum": [f"{i}-{n}-" + "x" * 30 for n in range(1000)]}}}
        status, _ = await api.call("POST", "/v1/event-types", key,
                                   {"name": f"type.{i}", "schema": schema})
        assert status == 201
    status, _ = await post_event(api, key, "type.7", {"code": "7-3-" + "x" * 30})
    assert status == 202
    kept = api.session.app[appkeys.SCHEMAS].cached_chars
    assert 40_000 < kept < 60_000
