"""The HTTP API, one module per resource. Each declares its routes (:class:`Route`), who
may call each one and what it reads and answers; :data:`ROUTES` is the whole table the
application is wired from and the OpenAPI document generated from."""

from __future__ import annotations

from gateway.api import (
    apps,
    deliveries,
    devices,
    endpoints,
    event_types,
    events,
    health,
    operational,
    push,
    sandbox,
    tasks,
)
from gateway.api.routing import Route

#: Routes every process serves (the dispatcher alone too, on its health port).
HEALTH_ROUTES: list[Route] = health.ROUTES
#: The API proper.
ROUTES: list[Route] = [
    *apps.ROUTES, *events.ROUTES, *event_types.ROUTES, *endpoints.ROUTES,
    *deliveries.ROUTES, *devices.ROUTES, *push.ROUTES, *sandbox.ROUTES, *operational.ROUTES,
    *tasks.ROUTES,
]
