"""Apps: created and listed by the operator; each is a tenant with its own API key."""

from __future__ import annotations

from aiohttp import web

from gateway import appkeys
from gateway.api.http import PAGE, answer, page_answer, page_args, read
from gateway.api.models import AppCreate, AppPatch
from gateway.api.routing import Route
from gateway_client.models import App, AppCreated, AppPage


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
]
