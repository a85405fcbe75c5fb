"""Every HTTP route is declared once, as a :class:`Route`: who may call it, what it reads
and what it answers. The application is wired from these declarations, which is also
where the caller's key is checked against the route's :attr:`Route.auth` (no handler
checks it again), and the OpenAPI document is generated from the same declarations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel

from gateway import appkeys
from gateway.auth import PRINCIPAL, Principal
from gateway.errors import Forbidden, RateLimited, Unauthorized
from gateway.logs import annotate

#: ``none``: anyone; ``admin``: the operator key; ``app``: an app key, acting inside its
#: app; ``user``: a user token, on its user's devices; ``own_app``: the operator key or
#: the key of the app named in the path; ``dashboard``: the dashboard's own session.
Auth = Literal["none", "admin", "app", "user", "own_app", "dashboard"]


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False
    where: Literal["query", "header", "path"] = "query"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    #: Who may call it (any of these credentials).
    auth: Sequence[Auth] = ("app",)
    #: The JSON body, validated with this model.
    body: type[BaseModel] | None = None
    #: False when the body may be left out (its fields all have defaults).
    body_required: bool = True
    #: Success status and the model of its JSON answer (None: no body).
    ok: tuple[int, type[BaseModel] | None] = (200, None)
    #: Other success answers (e.g. 200 on an idempotent replay).
    also: Sequence[tuple[int, type[BaseModel] | None, str]] = ()
    query: Sequence[Param] = ()
    headers: Sequence[Param] = ()
    #: Error codes this route can answer, beyond the ones every route can.
    errors: Sequence[int] = ()
    #: What the success answer is when it is not JSON.
    media_type: str = "application/json"
    #: Left out of the OpenAPI document (the dashboard's HTML pages, the docs themselves).
    internal: bool = False
    description: str = ""


#: What a caller holding the wrong kind of key is told, by what the route takes.
_REFUSALS: dict[tuple[Auth, ...], str] = {
    ("app",): "This route takes an app API key, not the operator key.",
    ("admin",): "This route takes the operator key (GATEWAY_ADMIN_KEY).",
    ("app", "user"): "This route takes an app API key or a user token.",
    ("own_app",): "Only the operator key or this app's own key may do this.",
}


def principal(request: web.Request) -> Principal:
    """Who is calling (the route's guard put it there)."""
    return request[PRINCIPAL]


async def authenticate(request: web.Request,
                       header: str | None = None) -> Principal:
    """Who sent ``request`` (its Authorization header, or ``header``); failures count
    against its address, and are counted in the metrics."""
    metrics = request.app[appkeys.METRICS]
    try:
        return await request.app[appkeys.AUTH].authenticate(
            header if header is not None else request.headers.get("Authorization"),
            request.remote)
    except Unauthorized:
        metrics.auth_failed()
        raise
    except RateLimited:
        metrics.auth_refused()
        raise


def guarded(route: Route) -> Handler:
    """The route's handler behind the check its :attr:`Route.auth` declares."""
    allowed = tuple(route.auth)
    if allowed in (("none",), ("dashboard",)):
        return route.handler
    refusal = _REFUSALS[allowed]
    handler = route.handler

    async def guard(request: web.Request) -> web.StreamResponse:
        found = await authenticate(request)
        request[PRINCIPAL] = found
        annotate(request, app=found.app_id)
        if allowed == ("own_app",):
            target = request.match_info["app_id"]
            if found.kind == "user" or (found.kind == "app" and found.app_id != target):
                raise Forbidden(refusal)
            if found.kind == "admin":
                await request.app[appkeys.STORE].get_app(target)  # 404 for an unknown app
        elif found.kind not in allowed:
            raise Forbidden(refusal)
        return await handler(request)

    return guard


def wire(app: web.Application, routes: Sequence[Route]) -> None:
    for route in routes:
        app.router.add_route(route.method, route.path, guarded(route))
