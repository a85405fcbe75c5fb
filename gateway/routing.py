"""Every HTTP route is declared once, as a :class:`Route`: the application is wired from
these, and the OpenAPI document is generated from the same declarations (with the
pydantic models the handlers validate with), so the two cannot drift."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Auth = Literal["none", "admin", "app", "user", "dashboard"]


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


def wire(app: web.Application, routes: Sequence[Route]) -> None:
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
