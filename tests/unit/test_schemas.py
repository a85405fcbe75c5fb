"""Event type schemas (gateway/schemas.py): what a schema may be, what checking a payload
costs, and the per-process cache ingest reads them from."""

from __future__ import annotations

import asyncio
import threading
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
    found = EventTypeSchemas(Store({}), 10)
    try:
        await found.check("app_1", schema, list(range(10)))  # 10,000 steps
        with pytest.raises(ValidationError) as refused:
            await found.check("app_1", schema, list(range(300)))
        assert "too large or too complex" in refused.value.details[0]["message"]
    finally:
        found.close()


class Held(PayloadSchema):
    """Costly to check; each check on the worker waits there until released."""

    def __init__(self) -> None:
        super().__init__({"items": {"enum": list(range(1000))}})
        self.release = threading.Event()
        self.started = 0
        self._count = threading.Lock()
        self._loop = asyncio.get_running_loop()
        #: Set once a check is on the worker.
        self.entered = asyncio.Event()

    def problems(self, payload: Any, steps: int) -> list[dict[str, str]]:
        if steps == schemas.MAX_STEPS:
            with self._count:
                self.started += 1
            self._loop.call_soon_threadsafe(self.entered.set)
            self.release.wait(timeout=60)  # only so that a failing test ends
        return super().problems(payload, steps)


COSTLY = list(range(10))  # 10,000 steps with Held's schema: past INLINE_STEPS


async def test_an_apps_costly_checks_take_one_worker_thread_at_a_time() -> None:
    found, held = EventTypeSchemas(Store({}), 10, workers=2), Held()
    try:
        first = asyncio.create_task(found.check("app_a", held, COSTLY))
        await held.entered.wait()
        second = asyncio.create_task(found.check("app_a", held, COSTLY))
        await asyncio.sleep(0)  # the second check runs until it waits for its app's turn
        # Another app's costly check finds the second thread free.
        await found.check("app_b", PayloadSchema(held.schema), COSTLY)
        assert held.started == 1
        held.release.set()
        await asyncio.gather(first, second)
        assert held.started == 2
    finally:
        held.release.set()
        found.close()


async def test_a_dropped_request_keeps_its_apps_turn_until_its_check_ends() -> None:
    found, held = EventTypeSchemas(Store({}), 10, workers=2), Held()
    try:
        dropped = asyncio.create_task(found.check("app_a", held, COSTLY))
        await held.entered.wait()
        dropped.cancel()
        next_one = asyncio.create_task(found.check("app_a", held, COSTLY))
        await asyncio.sleep(0)
        await found.check("app_b", PayloadSchema(held.schema), COSTLY)
        assert held.started == 1 and not next_one.done()
        held.release.set()
        await next_one
        assert held.started == 2
    finally:
        held.release.set()
        found.close()


# --- the cache -------------------------------------------------------------------------

class Store:
    """Stands in for the store: the catalog's schemas by (app, name), and the reads."""

    def __init__(self, schemas: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.schemas = schemas
        self.reads: list[tuple[str, str]] = []
        self.gate: asyncio.Event | None = None
        self.reading = asyncio.Event()

    async def event_type_schema(self, app_id: str, name: str) -> EventTypeSchema | None:
        self.reads.append((app_id, name))
        schema = self.schemas.get((app_id, name))
        self.reading.set()
        if self.gate is not None:
            await self.gate.wait()
        return None if schema is None else EventTypeSchema(name, schema, len(str(schema)))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def cache(store: Store, clock: Clock, max_chars: int = 1 << 20) -> EventTypeSchemas:
    return EventTypeSchemas(store, 10.0, clock=clock, max_chars=max_chars, workers=1)


async def test_the_cache_reads_each_type_once_per_ttl_with_or_without_a_schema() -> None:
    store, clock = Store({("app_1", "a"): {"type": "object"}}), Clock()
    found = cache(store, clock)
    schema = await found.schema("app_1", "a")
    assert schema is not None and schema.schema == {"type": "object"}
    assert await found.schema("app_1", "b") is None
    clock.now += 9.999
    assert await found.schema("app_1", "a") is schema
    assert await found.schema("app_1", "b") is None
    assert store.reads == [("app_1", "a"), ("app_1", "b")]
    clock.now += 0.001
    await found.schema("app_1", "a")
    assert store.reads[2:] == [("app_1", "a")]
    found.close()


async def test_the_same_type_name_in_another_app_is_read_for_that_app() -> None:
    store, clock = Store({("app_1", "a"): {"type": "object"}}), Clock()
    found = cache(store, clock)
    assert await found.schema("app_1", "a") is not None
    assert await found.schema("app_2", "a") is None
    found.close()


async def test_concurrent_readers_share_one_query() -> None:
    store, clock = Store({}), Clock()
    store.gate = asyncio.Event()
    found = cache(store, clock)
    readers = [asyncio.create_task(found.schema("app_1", "a")) for _ in range(5)]
    await store.reading.wait()
    store.gate.set()
    assert await asyncio.gather(*readers) == [None] * 5
    assert store.reads == [("app_1", "a")]
    found.close()


async def test_a_read_that_overlapped_a_change_is_not_kept() -> None:
    store, clock = Store({}), Clock()
    store.gate = asyncio.Event()
    found = cache(store, clock)
    stale = asyncio.create_task(found.schema("app_1", "a"))
    await store.reading.wait()
    store.schemas[("app_1", "a")] = {"type": "object"}
    found.forget("app_1", "a")
    store.gate.set()
    assert await stale is None
    assert await found.schema("app_1", "a") is not None
    assert found.cached_chars > 0
    found.close()


async def test_what_the_cache_keeps_is_bounded_and_the_oldest_types_make_room() -> None:
    big = {"enum": ["x" * 100] * 10}  # about 1,000 characters
    store = Store({("app_1", f"t{i}"): big for i in range(10)})
    found = cache(store, Clock(), max_chars=3_500)
    for i in range(10):
        assert await found.schema("app_1", f"t{i}") is not None
        assert found.cached_chars <= 3_500
    store.reads.clear()
    for i in (9, 8, 7):  # the last three read are kept
        await found.schema("app_1", f"t{i}")
    assert store.reads == []
    await found.schema("app_1", "t0")
    assert store.reads == [("app_1", "t0")]
    found.close()


async def test_a_schema_larger_than_the_whole_cache_is_used_but_not_kept() -> None:
    store = Store({("app_1", "huge"): {"enum": ["x" * 1000]}})
    found = cache(store, Clock(), max_chars=500)
    assert await found.schema("app_1", "huge") is not None
    assert found.cached_chars == 0
    await found.schema("app_1", "huge")
    assert len(store.reads) == 2
    found.close()
