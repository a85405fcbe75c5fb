"""The API description is generated from the route table and describes every route."""

from __future__ import annotations

import re

from tests.support import Api


async def test_every_route_of_the_running_app_is_in_the_openapi_document(api: Api) -> None:
    status, doc = await api.call("GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    app = api.session.app
    served = set()
    for resource in app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter")
        for route in resource:
            if route.method in ("HEAD", "OPTIONS", "*"):
                continue
            served.add((route.method.lower(), path))
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    undocumented = {(m, p) for m, p in served - documented
                    if p not in ("/openapi.json", "/docs") and not p.startswith("/dashboard")
                    and not p.startswith("/static")}
    assert undocumented == set()
    assert documented <= served


async def test_document_carries_auth_bodies_and_the_error_shape(api: Api) -> None:
    _, doc = await api.call("GET", "/openapi.json")
    emit = doc["paths"]["/v1/events"]["post"]
    assert emit["security"] == [{"appKey": []}]
    body_ref = emit["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schemas = doc["components"]["schemas"]
    assert set(schemas[body_ref.rsplit("/", 1)[1]]["properties"]) >= {
        "type", "payload", "user_ids", "topics", "notification"}
    assert {"202", "200", "409", "422", "503"} <= set(emit["responses"])
    error = schemas["ErrorBody"]["properties"]["error"]
    for code in ("validation_error", "idempotency_key_reused", "database_unavailable"):
        assert code in error["description"]
    for path, ops in doc["paths"].items():
        for op in ops.values():
            for name in re.findall(r"{(\w+)}", path):
                assert any(p["name"] == name and p["in"] == "path" for p in op["parameters"])


async def test_docs_page_is_served_from_the_gateway_itself(api: Api) -> None:
    async with api.session.get("/docs") as resp:
        assert resp.status == 200
        page = await resp.text()
    assert "/openapi.json" in page
    assert "http://" not in page and "https://" not in page  # no CDN: works offline
