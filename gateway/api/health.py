"""Liveness, readiness and Prometheus metrics: the routes machines poll."""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from gateway import appkeys
from gateway.api.routing import Route
from gateway.errors import DatabaseUnavailable, DispatcherStalled, Unauthorized
from gateway_client.models import Health, Ready


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 only when ingest would succeed and, where one runs here, the dispatcher moves."""
    checks: dict[str, str] = {}
    try:
        await request.app[appkeys.STORE].ping()
        checks["database"] = "ok"
    except DatabaseUnavailable:
        checks["database"] = "unavailable"
    dispatcher = request.app.get(appkeys.DISPATCHER)
    if dispatcher is not None:
        checks["dispatcher"] = "ok" if dispatcher.healthy() else "stalled"
    if all(v == "ok" for v in checks.values()):
        return web.json_response({"status": "ready", "checks": checks})
    details = [{"check": k, "status": v} for k, v in checks.items()]
    if checks["database"] != "ok":
        raise DatabaseUnavailable("Not ready: the database is unreachable.", details=details)
    raise DispatcherStalled("Not ready: the dispatcher has stalled.", details=details)


def _loopback(remote: str | None) -> bool:
    if not remote:  # a Unix socket's peer is on this host
        return True
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format. With GATEWAY_METRICS_KEY set, it takes that key as Bearer;
    without it, it answers loopback clients only (the metrics name every app's event
    types, which are not another tenant's business)."""
    expected = request.app[appkeys.SETTINGS].metrics_key
    if expected:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
            raise Unauthorized("This route takes 'Authorization: Bearer <GATEWAY_METRICS_KEY>'.")
    elif not _loopback(request.remote):
        raise Unauthorized("Set GATEWAY_METRICS_KEY to scrape /metrics from another host; "
                           "without it, only loopback clients may.")
    store = request.app.get(appkeys.STORE)
    body = await request.app[appkeys.METRICS].render(
        store.backlog if store is not None else None, request.app.get(appkeys.DISPATCHER))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


ROUTES = [
    Route("GET", "/healthz", healthz, "The process is up", "health", auth=("none",),
          ok=(200, Health)),
    Route("GET", "/readyz", readyz, "Ingest would succeed and the dispatcher moves", "health",
          auth=("none",), ok=(200, Ready), errors=(503,)),
    Route("GET", "/metrics", metrics, "Prometheus metrics", "health", auth=("none",),
          media_type="text/plain", errors=(401,),
          description="Prometheus text format. With GATEWAY_METRICS_KEY set, it takes "
          "'Authorization: Bearer <GATEWAY_METRICS_KEY>'; unset, it answers loopback "
          "clients only."),
]
