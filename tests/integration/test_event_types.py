"""The event type catalog (/v1/event-types) and what its schemas do to ingest, through the
real server."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from gateway import appkeys
from gateway.schemas import MAX_SCHEMA_CHARS, MAX_SCHEMA_DEPTH
from tests.support import ADMIN_KEY, Api, Receiver

ORDER = {
    "type": "object",
    "properties": {
        "order_id": {"type": "integer"},
        "items": {"type": "array", "items": {
            "type": "object",
            "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
            "required": ["sku", "qty"],
        }},
    },
    "required": ["order_id", "items"],
}
GOOD = {"order_id": 1001, "items": [{"sku": "tea", "qty": 2}]}


async def sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def event_count(dsn: str) -> int:
    return int((await sql(dsn, "SELECT count(*) AS n FROM events"))[0]["n"])


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the catalog -----------------------------------------------------------------------

async def test_event_type_round_trip_create_get_list_patch_delete(api: Api) -> None:
    key = await api.new_app()
    status, created = await api.call("POST", "/v1/event-types", key, {
        "name": "order.created", "description": "An order was placed", "schema": ORDER})
    assert status == 201
    assert list(created) == ["name", "description", "schema", "created_at", "updated_at"]
    assert created["name"] == "order.created" and created["schema"] == ORDER
    status, plain = await api.call("POST", "/v1/event-types", key, {"name": "user.signup"})
    assert status == 201 and plain["description"] == "" and plain["schema"] is None

    status, got = await api.call("GET", "/v1/event-types/order.created", key)
    assert (status, got) == (200, created)
    status, page = await api.call("GET", "/v1/event-types", key)
    assert status == 200 and page["next_cursor"] is None
    assert [t["name"] for t in page["data"]] == ["order.created", "user.signup"]

    status, changed = await api.call("PATCH", "/v1/event-types/order.created", key,
                                     {"description": "Placed"})
    assert status == 200 and changed["description"] == "Placed" and changed["schema"] == ORDER
    assert changed["updated_at"] >= created["updated_at"]
    status, changed = await api.call("PATCH", "/v1/event-types/order.created", key,
                                     {"schema": None})
    assert status == 200 and changed["schema"] is None and changed["description"] == "Placed"
    status, changed = await api.call("PATCH", "/v1/event-types/user.signup", key,
                                     {"schema": {"type": "object"}})
    assert status == 200 and changed["schema"] == {"type": "object"}

    status, body = await api.call("DELETE", "/v1/event-types/order.created", key)
    assert (status, body) == (204, None)
    status, body = await api.call("GET", "/v1/event-types/order.created", key)
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_the_catalog_lists_by_name_a_page_at_a_time(api: Api) -> None:
    key = await api.new_app()
    for name in ("c.one", "a.one", "b.one"):
        await api.call("POST", "/v1/event-types", key, {"name": name})
    _, first = await api.call("GET", "/v1/event-types", key, params={"limit": "2"})
    assert [t["name"] for t in first["data"]] == ["a.one", "b.one"]
    assert first["next_cursor"] == "b.one"
    _, second = await api.call("GET", "/v1/event-types", key,
                               params={"limit": "2", "cursor": first["next_cursor"]})
    assert [t["name"] for t in second["data"]] == ["c.one"] and second["next_cursor"] is None


async def test_a_name_already_in_the_catalog_is_a_conflict(api: Api) -> None:
    key = await api.new_app()
    await api.call("POST", "/v1/event-types", key, {"name": "order.created"})
    status, body = await api.call("POST", "/v1/event-types", key,
                                  {"name": "order.created", "description": "again"})
    assert status == 409
    assert body["error"]["code"] == "event_type_exists"
    assert body["error"]["details"] == [{"path": "name", "name": "order.created"}]


async def test_an_unknown_event_type_is_not_found_for_get_patch_and_delete(api: Api) -> None:
    key = await api.new_app()
    for method, body in (("GET", None), ("PATCH", {"description": "x"}), ("DELETE", None)):
        status, answer = await api.call(method, "/v1/event-types/nothing.here", key, body)
        assert status == 404, method
        assert answer["error"]["code"] == "not_found"


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("POST", "/v1/event-types", {"name": "has space"}, "name"),
    ("POST", "/v1/event-types", {"name": "x" * 129}, "name"),
    ("POST", "/v1/event-types", {"name": "a", "version": 2}, "version"),
    ("POST", "/v1/event-types", {"name": "a", "schema": "not an object"}, "schema"),
    ("POST", "/v1/event-types", {"name": "a", "description": "d" * 1001}, "description"),
    ("PATCH", "/v1/event-types/a", {"description": None}, "description"),
])
async def test_bad_event_type_bodies_are_refused_with_the_field(
    api: Api, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    key = await api.new_app()
    await api.call("POST", "/v1/event-types", key, {"name": "a"})
    status, answer = await api.call(method, path, key, body)
    assert status == 422, answer
    assert answer["error"]["code"] == "validation_error"
    assert answer["error"]["details"][0]["path"] == field


@pytest.mark.parametrize(("schema", "path"), [
    ({"type": "strin"}, "schema.type"),
    ({"properties": {"n": {"minimum": "one"}}}, "schema.properties.n.minimum"),
    ({"$schema": "http://json-schema.org/draft-07/schema#"}, "schema.$schema"),
    ({"properties": {"a": {"$ref": "#/$defs/missing"}}}, "schema.properties.a.$ref"),
    ({"properties": {"a": {"type": "string", "pattern": "(a)\\1"}}},
     "schema.properties.a.pattern"),
    ({"patternProperties": {"(?=x)": {}}}, "schema.patternProperties.(?=x)"),
    ({"patternProperties": {"^x_": {}}, "unevaluatedProperties": False},
     "schema.unevaluatedProperties"),
    ({"$ref": "#"}, "schema"),
])
async def test_a_schema_that_is_not_one_the_gateway_runs_is_refused_with_its_path(
    api: Api, schema: dict[str, Any], path: str
) -> None:
    key = await api.new_app()
    status, answer = await api.call("POST", "/v1/event-types", key,
                                    {"name": "order.created", "schema": schema})
    assert status == 422, answer
    assert answer["error"]["code"] == "validation_error"
    assert answer["error"]["details"][0]["path"] == path
    status, _ = await api.call("GET", "/v1/event-types/order.created", key)
    assert status == 404  # nothing was written


async def test_a_schema_too_large_or_too_deep_is_refused(api: Api) -> None:
    key = await api.new_app()
    large = {"enum": ["x" * 1000] * (MAX_SCHEMA_CHARS // 1000 + 1)}
    status, answer = await api.call("POST", "/v1/event-types", key,
                                    {"name": "big", "schema": large})
    assert status == 422 and answer["error"]["details"][0]["path"] == "schema"
    deep: dict[str, Any] = {}
    for _ in range(MAX_SCHEMA_DEPTH):
        deep = {"not": deep}
    status, answer = await api.call("POST", "/v1/event-types", key,
                                    {"name": "deep", "schema": deep})
    assert status == 422 and answer["error"]["details"][0]["path"] == "schema"
    status, _ = await api.call("PATCH", "/v1/event-types/deep", key, {"schema": deep})
    assert status == 422  # checked before the name is looked up


async def test_only_app_keys_manage_the_catalog(api: Api) -> None:
    status, answer = await api.call("GET", "/v1/event-types", ADMIN_KEY)
    assert status == 403 and answer["error"]["code"] == "forbidden"
    status, _ = await api.call("POST", "/v1/event-types", None, {"name": "a"})
    assert status == 401


# --- ingest ----------------------------------------------------------------------------

async def test_ingest_refuses_a_payload_off_its_schema_with_the_payload_path_and_writes_nothing(
    api: Api, dsn: str
) -> None:
    key = await api.new_app()
    await api.call("POST", "/v1/event-types", key, {"name": "order.created", "schema": ORDER})
    bad = {"order_id": "1001", "items": [{"sku": "tea", "qty": 0}, {"qty": 1}]}
    status, answer = await api.call("POST", "/v1/events", key,
                                    {"type": "order.created", "payload": bad})
    assert status == 422
    error = answer["error"]
    assert error["code"] == "validation_error"
    assert {(d["path"], d["message"]) for d in error["details"]} == {
        ("payload.order_id", "'1001' is not of type 'integer'"),
        ("payload.items.0.qty", "0 is less than the minimum of 1"),
        ("payload.items.1.sku", "is a required property"),
    }
    assert "payload." in error["message"]
    assert await event_count(dsn) == 0


async def test_ingest_accepts_a_payload_that_matches_its_schema(
    api: Api, receiver: Receiver
) -> None:
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    await api.call("POST", "/v1/event-types", key, {"name": "order.created", "schema": ORDER})
    status, _ = await api.call("POST", "/v1/events", key,
                               {"type": "order.created", "payload": GOOD})
    assert status == 202
    await receiver.wait_for(1)
    assert json.loads(receiver.requests[0].body)["data"] == GOOD
    # format is an annotation in Draft 2020-12, not an assertion.
    await api.call("PATCH", "/v1/event-types/order.created", key,
                   {"schema": {"properties": {"email": {"format": "email"}}}})
    status, _ = await api.call("POST", "/v1/events", key,
                               {"type": "order.created", "payload": {"email": "not one"}})
    assert status == 202


async def test_types_without_an_entry_or_without_a_schema_are_accepted_as_before(
    api: Api
) -> None:
    key = await api.new_app()
    await api.call("POST", "/v1/event-types", key, {"name": "order.created", "schema": ORDER})
    await api.call("POST", "/v1/event-types", key, {"name": "user.signup"})
    for event_type in ("user.signup", "never.declared", "order.created.v2"):
        status, _ = await api.call("POST", "/v1/events", key,
                                   {"type": event_type, "payload": {"anything": [1, "x"]}})
        assert status == 202, event_type


async def test_a_catalog_change_made_here_applies_to_the_next_event(api: Api) -> None:
    key = await api.new_app()
    await api.call("POST", "/v1/event-types", key, {"name": "order.created"})
    assert (await api.call("POST", "/v1/events", key,
                           {"type": "order.created", "payload": {}}))[0] == 202
    await api.call("PATCH", "/v1/event-types/order.created", key, {"schema": ORDER})
    assert (await api.call("POST", "/v1/events", key,
                           {"type": "order.created", "payload": {}}))[0] == 422
    await api.call("DELETE", "/v1/event-types/order.created", key)
    assert (await api.call("POST", "/v1/events", key,
                           {"type": "order.created", "payload": {}}))[0] == 202


async def test_a_schema_changed_by_another_process_applies_after_the_cache_ttl(
    api: Api, dsn: str
) -> None:
    clock = Clock()
    schemas = api.session.app[appkeys.SCHEMAS]
    schemas.clock = clock
    key = await api.new_app()
    await api.call("POST", "/v1/event-types", key, {"name": "order.created"})
    assert (await api.call("POST", "/v1/events", key,
                           {"type": "order.created", "payload": {}}))[0] == 202
    # Another gateway process sets a schema: this one has read the catalog already.
    await sql(dsn, "UPDATE event_types SET schema = $1", json.dumps(ORDER))
    clock.now += schemas.ttl_s - 0.001
    assert (await api.call("POST", "/v1/events", key,
                           {"type": "order.created", "payload": {}}))[0] == 202
    clock.now += 0.001
    status, answer = await api.call("POST", "/v1/events", key,
                                    {"type": "order.created", "payload": {}})
    assert status == 422
    assert answer["error"]["details"][0]["path"] == "payload.order_id"


async def test_another_apps_event_types_are_invisible_and_do_not_apply_to_its_events(
    api: Api
) -> None:
    mine, theirs = await api.new_app("mine"), await api.new_app("theirs")
    await api.call("POST", "/v1/event-types", mine, {"name": "order.created", "schema": ORDER})
    for method, body in (("GET", None), ("PATCH", {"schema": None}), ("DELETE", None)):
        status, _ = await api.call(method, "/v1/event-types/order.created", theirs, body)
        assert status == 404, method
    _, page = await api.call("GET", "/v1/event-types", theirs)
    assert page["data"] == []
    status, _ = await api.call("POST", "/v1/events", theirs,
                               {"type": "order.created", "payload": {"free": "form"}})
    assert status == 202
    status, own = await api.call("POST", "/v1/event-types", theirs, {"name": "order.created"})
    assert status == 201 and own["schema"] is None
    status, _ = await api.call("POST", "/v1/events", mine,
                               {"type": "order.created", "payload": {"free": "form"}})
    assert status == 422


async def test_a_large_payload_is_checked_off_the_event_loop_to_the_last_item(
    api: Api
) -> None:
    key = await api.new_app()
    await api.call("POST", "/v1/event-types", key, {"name": "order.created", "schema": ORDER})
    items = [{"sku": f"sku-{i}", "qty": 1} for i in range(3000)]
    status, _ = await api.call("POST", "/v1/events", key, {
        "type": "order.created", "payload": {"order_id": 1, "items": items}})
    assert status == 202
    items[-1] = {"sku": "last", "qty": 0}
    status, answer = await api.call("POST", "/v1/events", key, {
        "type": "order.created", "payload": {"order_id": 1, "items": items}})
    assert status == 422
    assert answer["error"]["details"] == [
        {"path": "payload.items.2999.qty", "message": "0 is less than the minimum of 1"}]
