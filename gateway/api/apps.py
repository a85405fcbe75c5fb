"""Apps: created, listed and deleted by the operator; each is a tenant with its own API
key, which the operator or the app itself rotates."""

from __future__ import annotations

from aiohttp import web

from gateway import appkeys
from gateway.api.http import PAGE, answer, page_answer, page_args, read, read_optional
from gateway.api.models import AppCreate, AppKeyRotate, AppPatch
from gateway.api.routing import Route
from gateway_client.models import App, AppCreated, AppPage, RotatedAppKey


async def create_app(request: web.Request) -> web.Response:
    body = await read(request, AppCreate)
    return answer(AppCreated, await request.app[appkeys.STORE].create_app(body.name), 201)


async def list_apps(request: web.Request) -> web.Response:
    cursor, limit = page_args(request)
    return page_answer(AppPage, await request.app[appkeys.STORE].list_apps(cursor, limit))


async def get_app(request: web.Request) -> web.Response:
    return answer(App, await request.app[appkeys.STORE].get_app(request.match_info["app_id"]))


async def patch_app(request: web.Request) -> web.Response:
    body = await read(request, AppPatch)
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    return answer(App, await request.app[appkeys.STORE].set_app_limits(
        request.match_info["app_id"], changes))


async def delete_app(request: web.Request) -> web.Response:
    app_id = request.match_info["app_id"]
    await request.app[appkeys.STORE].delete_app(app_id)
    # Every process forgets the app's keys when the deletion's notification arrives; this
    # one does at once, so the next request here is refused whatever the timing.
    request.app[appkeys.AUTH].forget(app_id)
    return web.Response(status=204)


async def rotate_app_key(request: web.Request) -> web.Response:
    body = await read_optional(request, AppKeyRotate)
    app_id = request.match_info["app_id"]
    rotated = await request.app[appkeys.STORE].rotate_app_key(app_id, body.grace_s)
    request.app[appkeys.AUTH].forget(app_id)
    return answer(RotatedAppKey, rotated)


ROUTES = [
    Route("POST", "/v1/apps", create_app, "Create an app and its API key", "apps",
          auth=("admin",), body=AppCreate, ok=(201, AppCreated)),
    Route("GET", "/v1/apps", list_apps, "List apps", "apps", auth=("admin",), ok=(200, AppPage),
          query=PAGE),
    Route("GET", "/v1/apps/{app_id}", get_app, "An app and its limits", "apps",
          auth=("own_app",), ok=(200, App)),
    Route("PATCH", "/v1/apps/{app_id}", patch_app, "Set an app's limits (quotas, ingest "
          "rate)", "apps", auth=("admin",), body=AppPatch, ok=(200, App),
          description="Fields left out stay as they are; null means no ingest rate limit, "
          "or the operator's default for a quota (GATEWAY_MAX_*)."),
    Route("DELETE", "/v1/apps/{app_id}", delete_app, "Delete an app and everything it owns",
          "apps", auth=("admin",), ok=(204, None),
          description="At once: its keys and user tokens are refused, it is no longer "
          "listed, its pending deliveries and push fan-outs stop and its dashboard sessions "
          "end. Its rows (events, deliveries, attempts, endpoints, devices, credentials...) "
          "are then removed in the background, in batches."),
    Route("POST", "/v1/apps/{app_id}/keys/rotate", rotate_app_key,
          "Give the app a new API key", "apps", auth=("own_app",), body=AppKeyRotate,
          body_required=False, ok=(200, RotatedAppKey),
          description="The key it replaces keeps working for grace_s seconds (default "
          "86400; 0 ends it now). One previous key is kept: rotating again ends the older "
          "one now."),
]
