"""Event type schemas (gateway/schemas.py): what a schema may be, what checking a payload
costs, and the per-process cache ingest reads them from."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

import pytest

from gateway import schemas
from gateway.errors import ValidationError
from gateway.schemas import EventTypeSchemas, PayloadSchema, check_schema
from gateway.store.records import EventTypeSchema


def refusal(schema: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as refused:
        check_schema(schema)
    detail: dict[str, str] = refused.value.details[0]
    return detail


def paths(schema: dict[str, Any], payload: Any) -> list[str]:
    return [p["path"] for p in PayloadSchema(schema).problems(payload, schemas.MAX_STEPS)]


def test_references_inside_the_schema_resolve_whatever_its_base() -> None:
    check_schema({"$id": "https://example.com/order.json",
                  "properties": {"a": {"$ref": "#/$defs/qty"}, "b": {"$ref": "item.json"}},
                  "$defs": {"qty": {"type": "integer"},
                            "item": {"$id": "item.json", "type": "string"}}})
    check_schema({"$dynamicAnchor": "node", "properties": {"child": {"$dynamicRef": "#node"}}})


@pytest.mark.parametrize("ref", ["https://example.com/other.json", "other.json#/x",
                                 "#/$defs/none", "#no-anchor", "http://["])
def test_a_reference_leaving_the_schema_is_refused(ref: str) -> None:
    assert refusal({"items": {"$ref": ref}})["path"] == "schema.items.$ref"


def test_no_reference_is_ever_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Any] = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: opened.append(a))
    refusal({"$ref": "http://127.0.0.1:9/schema.json"})
    problems = PayloadSchema({"$ref": "http://127.0.0.1:9/schema.json"}).problems(
        {}, schemas.MAX_STEPS)
    assert problems[0]["path"] == "payload" and "never fetched" in problems[0]["message"]
    assert opened == []


def test_values_that_merely_look_like_references_are_data() -> None:
    check_schema({"const": {"$ref": "https://example.com/x"},
                  "examples": [{"$ref": "elsewhere"}]})


def test_a_missing_property_is_reported_at_its_own_path() -> None:
    schema = {"properties": {"items": {"items": {"required": ["sku", "qty"]}}}}
    assert paths(schema, {"items": [{"sku": "a"}, {}]}) == [
        "payload.items.0.qty", "payload.items.1.sku", "payload.items.1.qty"]


def test_unique_items_compares_as_json_does() -> None:
    schema = {"uniqueItems": True}
    assert paths(schema, [1, 1.0]) == ["payload.1"]
    assert paths(schema, [{"a": 1, "b": [2]}, {"b": [2], "a": 1}]) == ["payload.1"]
    assert paths(schema, [True, 1, False, 0, None, "1", [1], {"1": 1}]) == []


def test_additional_properties_and_pattern_properties_match_as_jsonschema_does() -> None:
    schema = {"properties": {"id": {}}, "patternProperties": {"^x-": {"type": "string"}},
              "additionalProperties": False}
    assert paths(schema, {"id": 1, "x-a": "s", "x-b": 2, "other": 3}) == [
        "payload.x-b", "payload.other"]
    assert paths({"additionalProperties": {"type": "integer"}}, {"a": 1, "b": "2"}) == [
        "payload.b"]


def test_a_check_past_its_steps_is_too_costly() -> None:
    schema = PayloadSchema({"items": {"enum": list(range(100))}})
    assert schema.problems(list(range(10)), 2_000) == []
    with pytest.raises(schemas._TooCostly):
        schema.problems(list(range(30)), 2_000)


async def test_a_costly_check_runs_on_the_worker_and_a_hopeless_one_is_refused() -> None:
    schema = PayloadSchema({"items": {"enum": list(range(1000))}})
    worker = EventTypeSchemas(Store([]), 10).worker
    try:
        await schemas.check_payload(schema, list(range(10)), worker)  # 10,000 steps
        with pytest.raises(ValidationError) as refused:
            await schemas.check_payload(schema, list(range(300)), worker)
        assert "too large or too complex" in refused.value.details[0]["message"]
    finally:
        worker.shutdown()


# --- the cache -------------------------------------------------------------------------

class Store:
    """Stands in for the store: the catalog's schemas, and how often they were read."""

    def __init__(self, rows: list[EventTypeSchema]) -> None:
        self.rows = rows
        self.reads = 0
        self.gate: asyncio.Event | None = None

    async def event_type_schemas(self, app_id: str) -> list[EventTypeSchema]:
        self.reads += 1
        rows = list(self.rows)
        if self.gate is not None:
            await self.gate.wait()
        return rows


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def cache(store: Store, clock: Clock) -> EventTypeSchemas:
    return EventTypeSchemas(store, 10.0, clock=clock)


async def test_the_cache_reads_an_app_once_per_ttl() -> None:
    store, clock = Store([EventTypeSchema("a", {"type": "object"})]), Clock()
    found = cache(store, clock)
    assert found.fresh("app_1") is None
    catalog = await found.load("app_1")
    assert catalog.get("a") is not None and catalog.get("b") is None
    assert found.fresh("app_1") is catalog
    clock.now += 9.999
    assert found.fresh("app_1") is catalog
    clock.now += 0.001
    assert found.fresh("app_1") is None
    await found.load("app_1")
    assert store.reads == 2
    found.close()


async def test_concurrent_readers_share_one_query() -> None:
    store, clock = Store([]), Clock()
    store.gate = asyncio.Event()
    found = cache(store, clock)
    readers = [asyncio.create_task(found.load("app_1")) for _ in range(5)]
    await asyncio.sleep(0)
    store.gate.set()
    catalogs = await asyncio.gather(*readers)
    assert store.reads == 1 and all(c is catalogs[0] for c in catalogs)
    found.close()


async def test_a_read_that_overlapped_a_change_is_not_kept() -> None:
    store, clock = Store([]), Clock()
    store.gate = asyncio.Event()
    found = cache(store, clock)
    stale = asyncio.create_task(found.load("app_1"))
    await asyncio.sleep(0)
    store.rows = [EventTypeSchema("a", {"type": "object"})]
    found.forget("app_1")
    store.gate.set()
    await stale
    assert found.fresh("app_1") is None
    assert (await found.load("app_1")).get("a") is not None
    found.close()
