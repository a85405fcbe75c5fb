"""The event type catalog: names an app's events use, each with a description and,
optionally, a JSON Schema its payloads must match at ingest (see :mod:`gateway.schemas`).
A type without an entry is still accepted."""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web

from gateway import appkeys
from gateway.api.http import PAGE, answer, app_id, page_answer, page_args, read_body, validate
from gateway.api.models import EventTypeCreate, EventTypePatch
from gateway.api.routing import Route
from gateway.errors import ValidationError
from gateway.schemas import MAX_SCHEMA_CHARS, check_schema
from gateway_client.models import EventType, EventTypePage


async def _checked(request: web.Request, schema: dict[str, Any] | None) -> None:
    """A schema is checked off the event loop, in the app's turn on the schema worker: up
    to 64 KiB of it is walked and tried."""
    if schema is not None:
        await request.app[appkeys.SCHEMAS].offload(
            app_id(request), functools.partial(check_schema, schema))


async def create_event_type(request: web.Request) -> web.Response:
    _, data, _ = await read_body(request, {"schema": MAX_SCHEMA_CHARS})
    body = validate(EventTypeCreate, data)
    await _checked(request, body.schema_)
    app = app_id(request)
    created = await request.app[appkeys.STORE].create_event_type(
        app, body.name, body.description, body.schema_,
        request.app[appkeys.SETTINGS].max_event_types)
    request.app[appkeys.SCHEMAS].forget(app, body.name)
    return answer(EventType, created, 201)


async def list_event_types(request: web.Request) -> web.Response:
    cursor, limit = page_args(request)
    page = await request.app[appkeys.STORE].list_event_types(app_id(request), cursor, limit)
    return page_answer(EventTypePage, page)


async def get_event_type(request: web.Request) -> web.Response:
    return answer(EventType, await request.app[appkeys.STORE].get_event_type(
        app_id(request), request.match_info["name"]))


async def patch_event_type(request: web.Request) -> web.Response:
    _, data, _ = await read_body(request, {"schema": MAX_SCHEMA_CHARS})
    body = validate(EventTypePatch, data)
    changes: dict[str, Any] = {}
    if "description" in body.model_fields_set:
        if body.description is None:
            raise ValidationError("'description' cannot be null.",
                                  details=[{"path": "description",
                                            "message": "must not be null"}])
        changes["description"] = body.description
    if "schema_" in body.model_fields_set:
        await _checked(request, body.schema_)
        changes["schema"] = body.schema_
    app, name = app_id(request), request.match_info["name"]
    updated = await request.app[appkeys.STORE].update_event_type(app, name, changes)
    request.app[appkeys.SCHEMAS].forget(app, name)
    return answer(EventType, updated)


async def delete_event_type(request: web.Request) -> web.Response:
    app, name = app_id(request), request.match_info["name"]
    await request.app[appkeys.STORE].delete_event_type(app, name)
    request.app[appkeys.SCHEMAS].forget(app, name)
    return web.Response(status=204)


_CACHED = ("Ingest applies a change at once in the process that made it, and in every "
           "other process within GATEWAY_EVENT_TYPE_CACHE_S.")

ROUTES = [
    Route("POST", "/v1/event-types", create_event_type, "Add an event type to the catalog",
          "event types", body=EventTypeCreate, ok=(201, EventType), errors=(409,),
          description="With a schema (JSON Schema Draft 2020-12), every event of this type "
          "must match it: POST /v1/events answers 422 otherwise. An app's catalog holds "
          "at most GATEWAY_MAX_EVENT_TYPES entries (422 limit_exceeded). " + _CACHED),
    Route("GET", "/v1/event-types", list_event_types, "List the event type catalog",
          "event types", ok=(200, EventTypePage), query=PAGE,
          description="By name; the cursor is the last name of the previous page."),
    Route("GET", "/v1/event-types/{name}", get_event_type, "An event type", "event types",
          ok=(200, EventType)),
    Route("PATCH", "/v1/event-types/{name}", patch_event_type,
          "Change an event type's description or schema", "event types",
          body=EventTypePatch, ok=(200, EventType),
          description="Fields left out stay as they are; \"schema\": null removes the "
          "schema. " + _CACHED),
    Route("DELETE", "/v1/event-types/{name}", delete_event_type,
          "Remove an event type from the catalog", "event types", ok=(204, None),
          description="Events of that type are accepted again whatever their payload; "
          "nothing already stored changes. " + _CACHED),
]
