"""Apps: created and listed by the operator; each is a tenant with its own API key."""

from __future__ import annotations

from aiohttp import web

from gateway import appkeys
from gateway.api.http import PAGE, answer, page_answer, page_args, read
from gateway.api.models import AppCreate
from gateway.api.routing import Route
from gateway_client.models import AppCreated, AppPage


async def create_app(request: web.Request) -> web.Response:
    body = await read(request, AppCreate)
    return answer(AppCreated, await request.app[appkeys.STORE].create_app(body.name), 201)


async def list_apps(request: web.Request) -> web.Response:
    cursor, limit = page_args(request)
    return page_answer(AppPage, await request.app[appkeys.STORE].list_apps(cursor, limit))


ROUTES = [
    Route("POST", "/v1/apps", create_app, "Create an app and its API key", "apps",
          auth=("admin",), body=AppCreate, ok=(201, AppCreated)),
    Route("GET", "/v1/apps", list_apps, "List apps", "apps", auth=("admin",), ok=(200, AppPage),
          query=PAGE),
]
