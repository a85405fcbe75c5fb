"""The OpenAPI 3.1 document, generated from the route table and the pydantic models the
handlers validate with; served at ``/openapi.json`` and read by ``/docs``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway import __version__
from gateway.api.routing import Route
from gateway.errors import GatewayError
from gateway_client.models import ErrorBody

#: Errors any authenticated JSON route may answer, with the codes behind each status.
COMMON_ERRORS: dict[int, str] = {
    400: "invalid_json: the body is not JSON",
    401: "unauthorized: missing or unknown key",
    403: "forbidden: a key of the wrong kind",
    404: "not_found: no such resource in this app",
    413: "payload_too_large: body over GATEWAY_MAX_PAYLOAD_BYTES",
    415: "unsupported_media_type: the body is not application/json",
    422: "validation_error (details name the field) / endpoint_url_forbidden / "
         "limit_exceeded",
    429: "rate_limited: too many failed keys from this address, or past the app's "
         "rate_limit or stream limit; see Retry-After",
    503: "database_unavailable: nothing was written; retry",
}
EXTRA_ERRORS: dict[int, str] = {
    409: "idempotency_key_reused / delivery_not_retryable / event_type_exists",
}
SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "admin": [{"operatorKey": []}],
    "app": [{"appKey": []}],
    "user": [{"userToken": []}],
    "own_app": [{"operatorKey": []}, {"appKey": []}],
}


def _error_codes() -> list[str]:
    codes: set[str] = set()
    stack: list[type[GatewayError]] = [GatewayError]
    while stack:
        cls = stack.pop()
        codes.add(cls.code)
        stack.extend(cls.__subclasses__())
    return sorted(codes)


def _path_params(path: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", path)]


def build(routes: Sequence[Route]) -> dict[str, Any]:
    documented = [r for r in routes if not r.internal]
    models: set[type[BaseModel]] = {ErrorBody}
    for r in documented:
        if r.body is not None:
            models.add(r.body)
        for model in (r.ok[1], *(extra[1] for extra in r.also)):
            if model is not None:
                models.add(model)
    ordered = sorted(models, key=lambda m: m.__name__)
    keys, schema = models_json_schema(
        [(m, "validation") for m in ordered], ref_template="#/components/schemas/{model}")
    refs = {m: keys[(m, "validation")] for m in ordered}
    components: dict[str, Any] = dict(schema.get("$defs", {}))
    components["ErrorBody"]["properties"]["error"]["description"] = (
        "Every error; code is one of: " + ", ".join(_error_codes()))

    def content(model: type[BaseModel] | None, media_type: str) -> dict[str, Any]:
        if model is None:
            return {media_type: {"schema": {"type": "string"}}} if media_type != \
                "application/json" else {}
        return {"application/json": {"schema": refs[model]}}

    paths: dict[str, dict[str, Any]] = {}
    for r in documented:
        responses: dict[str, Any] = {}
        status, model = r.ok
        responses[str(status)] = {"description": r.summary, "content": content(model,
                                                                               r.media_type)}
        for extra_status, extra_model, why in r.also:
            responses[str(extra_status)] = {"description": why,
                                            "content": content(extra_model, r.media_type)}
        public = tuple(r.auth) == ("none",)
        error_statuses = dict(COMMON_ERRORS) if not public else {}
        error_statuses.update({s: EXTRA_ERRORS.get(s, COMMON_ERRORS.get(s, "error"))
                               for s in r.errors})
        if r.body is None and not public:
            for unused in (413, 415):
                error_statuses.pop(unused, None)
        for err, why in sorted(error_statuses.items()):
            responses[str(err)] = {"description": why, "content": {
                "application/json": {"schema": refs[ErrorBody]}}}
        operation: dict[str, Any] = {
            "operationId": r.handler.__name__,
            "summary": r.summary,
            "tags": [r.tag],
            "parameters": _path_params(r.path) + [
                {"name": p.name, "in": p.where, "required": p.required,
                 "description": p.description, "schema": p.schema}
                for p in (*r.query, *r.headers)],
            "responses": responses,
            "security": [] if public else [s for a in r.auth for s in SECURITY.get(a, [])],
        }
        if r.description:
            operation["description"] = r.description
        if r.body is not None:
            operation["requestBody"] = {"required": r.body_required, "content": {
                "application/json": {"schema": refs[r.body]}}}
        paths.setdefault(r.path, {})[r.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Event gateway API", "version": __version__,
            "description": "Durable ingest, signed webhook delivery and mobile push fan-out. "
                           "Every error is {\"error\": {\"code\", \"message\", \"details\"}}.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "operatorKey": {"type": "http", "scheme": "bearer",
                                "description": "GATEWAY_ADMIN_KEY: manages apps."},
                "appKey": {"type": "http", "scheme": "bearer",
                           "description": "An app's API key (gk_...): acts inside its app."},
                "userToken": {"type": "http", "scheme": "bearer",
                              "description": "A user token (ut_...): the user's own devices."},
            },
        },
    }


#: Documents built, by the identity of the routes in their table (routes hold dicts, so
#: they do not hash); each entry keeps its routes alive, so no identity is reused.
_built: dict[tuple[int, ...], tuple[tuple[Route, ...], dict[str, Any]]] = {}


def _document(all_routes: Sequence[Route]) -> dict[str, Any]:
    # Built once per route table and process: pydantic's schema generation takes about
    # 0.1 s, and a process that makes many apps (the test suite makes over a thousand)
    # would spend it on each. Only ever read (served as JSON), so sharing it is safe.
    key = tuple(map(id, all_routes))
    if key not in _built:
        _built[key] = (tuple(all_routes), build(all_routes))
    return _built[key][1]


def routes(all_routes: Sequence[Route]) -> list[Route]:
    """``/openapi.json`` and ``/docs`` for a given route table."""
    document = _document(all_routes)

    async def openapi_json(request: web.Request) -> web.Response:
        return web.json_response(document)

    page = resources.files("gateway.api").joinpath("static/docs.html").read_text("utf-8")

    async def docs(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    return [
        Route("GET", "/openapi.json", openapi_json, "This API's OpenAPI 3.1 document", "docs",
              auth=("none",), internal=True),
        Route("GET", "/docs", docs, "A readable reference of this API", "docs",
              auth=("none",), internal=True, media_type="text/html"),
    ]
