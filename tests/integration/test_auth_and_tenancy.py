"""Keys and tenancy, through the real app on a real PostgreSQL."""

from __future__ import annotations

import asyncpg

from tests.support import ADMIN_KEY, Api, Receiver


async def test_operator_creates_an_app_and_gets_its_key_once(api: Api, dsn: str) -> None:
    status, body = await api.call("POST", "/v1/apps", ADMIN_KEY, {"name": "shop"})
    assert status == 201
    assert body["id"].startswith("app_") and body["name"] == "shop"
    assert body["api_key"].startswith("gk_")
    conn = await asyncpg.connect(dsn)
    try:
        stored = await conn.fetchval("SELECT api_key_hash FROM apps WHERE id = $1", body["id"])
    finally:
        await conn.close()
    assert body["api_key"].encode() not in bytes(stored)  # only a hash is kept
    status, listed = await api.call("GET", "/v1/apps", ADMIN_KEY)
    assert status == 200 and [a["id"] for a in listed["data"]] == [body["id"]]
    assert "api_key" not in listed["data"][0]


async def test_missing_or_unknown_key_is_401(api: Api) -> None:
    for key in (None, "gk_nope"):
        status, body = await api.call("GET", "/v1/endpoints", key)
        assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body = await api.call("GET", "/v1/endpoints", headers={"Authorization": "Basic x"})
    assert status == 401


async def test_a_key_of_the_wrong_kind_is_403(api: Api) -> None:
    key = await api.new_app()
    status, body = await api.call("POST", "/v1/apps", key, {"name": "x"})
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await api.call("POST", "/v1/events", ADMIN_KEY,
                                  {"type": "a", "payload": {}})
    assert status == 403 and body["error"]["code"] == "forbidden"


async def test_another_apps_resources_are_not_found_not_forbidden(
    api: Api, receiver: Receiver
) -> None:
    mine, theirs = await api.new_app("mine"), await api.new_app("theirs")
    endpoint = await api.new_endpoint(theirs, receiver.url())
    event = await api.emit(theirs)
    _, deliveries = await api.call("GET", "/v1/deliveries", theirs)
    delivery_id = deliveries["data"][0]["id"]
    for method, path in [
        ("GET", f"/v1/endpoints/{endpoint['id']}"),
        ("PATCH", f"/v1/endpoints/{endpoint['id']}"),
        ("DELETE", f"/v1/endpoints/{endpoint['id']}"),
        ("GET", f"/v1/endpoints/{endpoint['id']}/secret"),
        ("POST", f"/v1/endpoints/{endpoint['id']}/secret/rotate"),
        ("GET", f"/v1/events/{event['id']}"),
        ("GET", f"/v1/deliveries/{delivery_id}"),
        ("GET", f"/v1/deliveries/{delivery_id}/attempts"),
        ("POST", f"/v1/deliveries/{delivery_id}/retry"),
    ]:
        body_json = {"description": "x"} if method == "PATCH" else None
        status, body = await api.call(method, path, mine, body_json)
        assert status == 404, (method, path, body)
        assert body["error"]["code"] == "not_found"
    _, listed = await api.call("GET", "/v1/deliveries", mine)
    assert listed["data"] == []
    status, _ = await api.call("GET", f"/v1/endpoints/{endpoint['id']}", theirs)
    assert status == 200


async def test_health_and_readiness(api: Api) -> None:
    assert (await api.call("GET", "/healthz"))[0] == 200
    status, body = await api.call("GET", "/readyz")
    assert status == 200 and body["checks"] == {"database": "ok", "dispatcher": "ok"}


async def test_unknown_route_and_method_answer_json_errors(api: Api) -> None:
    status, body = await api.call("GET", "/v1/nothing")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await api.call("PUT", "/v1/events")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
