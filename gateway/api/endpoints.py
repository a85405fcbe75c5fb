"""Webhook endpoints: subscribe, change, disable, delete, and their signing secrets; each
with an optional send rate limit, custom headers and a payload filter."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from yarl import URL

from adapters.addresses import resolve_forbidden
from gateway import appkeys, endpoint_headers, filters
from gateway.api.http import PAGE, answer, app_id, page_answer, page_args, read
from gateway.api.models import EndpointCreate, EndpointPatch
from gateway.api.routing import Route
from gateway.errors import EndpointURLForbidden, ValidationError
from gateway_client.models import (
    Endpoint,
    EndpointCreated,
    EndpointPage,
    RotatedSecret,
    Secret,
)


async def check_endpoint_url(request: web.Request, url: str, path: str = "url") -> None:
    scheme: str | None = None
    hostname: str | None = None
    try:
        parts = urlsplit(url)
        scheme, hostname, _ = parts.scheme, parts.hostname, parts.port
        if hostname and "[" in parts.netloc:
            ipaddress.IPv6Address(hostname)  # not "[v1.x]" (IPvFuture) nor a name
        if hostname:
            # The host as the webhook client reads the URL and connects (yarl maps
            # Unicode through IDNA, where digits of other scripts may become an address).
            hostname = URL(url).raw_host or None
    except ValueError:  # "https://[::1/", a port out of range
        hostname = None
    if scheme not in {"http", "https"} or not hostname or not url.isprintable() \
            or any(c.isspace() for c in url):
        raise ValidationError(
            "The endpoint URL must be an absolute http:// or https:// URL.",
            details=[{"path": path, "message": "must be an http(s) URL with a host"}],
        )
    if request.app[appkeys.SETTINGS].allow_private_endpoints:
        if "%" in hostname and ":" in hostname:  # an IPv6 literal's zone
            # RFC 6874: a link of the gateway's own host, which no resolver or Host
            # header takes (without private endpoints it is refused as link-local).
            raise ValidationError(
                "The endpoint URL names an IPv6 zone (%); give the address without it.",
                details=[{"path": path, "message": "must not name an IPv6 zone"}])
        return
    forbidden = await resolve_forbidden(hostname)
    if forbidden:
        raise EndpointURLForbidden(
            f"{hostname} resolves to a loopback, private, link-local or metadata "
            "address; set GATEWAY_ALLOW_PRIVATE_ENDPOINTS=true to allow it.",
            details=[{"path": path, "addresses": list(forbidden)}],
        )


def checked_headers(headers: dict[str, str] | None) -> dict[str, str]:
    """``headers`` as stored, or a 422 naming the header (``headers.<name>``)."""
    try:
        return endpoint_headers.check(headers)
    except endpoint_headers.HeaderError as exc:
        path = f"headers.{exc.name}" if exc.name else "headers"
        raise ValidationError(f"Invalid field '{path}': {exc.message}.",
                              details=[{"path": path, "message": exc.message}]) from None


def checked_filter(filter_: dict[str, Any] | None) -> dict[str, Any] | None:
    """``filter_`` as stored (None: every event), or a 422 naming the entry
    (``filter.<path>``)."""
    try:
        return filters.check(filter_)
    except filters.FilterError as exc:
        path = f"filter.{exc.path}" if exc.path else "filter"
        raise ValidationError(f"Invalid field '{path}': {exc.message}.",
                              details=[{"path": path, "message": exc.message}]) from None


async def create_endpoint(request: web.Request) -> web.Response:
    body = await read(request, EndpointCreate)
    headers, filter_ = checked_headers(body.headers), checked_filter(body.filter)
    await check_endpoint_url(request, body.url)
    created = await request.app[appkeys.STORE].create_endpoint(
        app_id(request), body.url, body.description, body.event_types,
        rate_limit=body.rate_limit, headers=headers, filter_=filter_)
    return answer(EndpointCreated, created, 201)


async def list_endpoints(request: web.Request) -> web.Response:
    cursor, limit = page_args(request)
    page = await request.app[appkeys.STORE].list_endpoints(app_id(request), cursor, limit)
    return page_answer(EndpointPage, page)


async def get_endpoint(request: web.Request) -> web.Response:
    return answer(Endpoint, await request.app[appkeys.STORE].get_endpoint(
        app_id(request), request.match_info["endpoint_id"]))


async def patch_endpoint(request: web.Request) -> web.Response:
    body = await read(request, EndpointPatch)
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    for name in ("url", "description", "status"):
        if name in changes and changes[name] is None:
            raise ValidationError(f"'{name}' cannot be null.",
                                  details=[{"path": name, "message": "must not be null"}])
    if "headers" in changes:
        changes["headers"] = checked_headers(changes["headers"])
    if "filter" in changes:
        changes["filter"] = checked_filter(changes["filter"])
    if "url" in changes:
        await check_endpoint_url(request, changes["url"])
    return answer(Endpoint, await request.app[appkeys.STORE].update_endpoint(
        app_id(request), request.match_info["endpoint_id"], changes))


async def delete_endpoint(request: web.Request) -> web.Response:
    await request.app[appkeys.STORE].delete_endpoint(app_id(request),
                                                     request.match_info["endpoint_id"])
    return web.Response(status=204)


async def get_endpoint_secret(request: web.Request) -> web.Response:
    return answer(Secret, await request.app[appkeys.STORE].get_endpoint_secret(
        app_id(request), request.match_info["endpoint_id"]))


async def rotate_endpoint_secret(request: web.Request) -> web.Response:
    return answer(RotatedSecret, await request.app[appkeys.STORE].rotate_secret(
        app_id(request), request.match_info["endpoint_id"]))


ROUTES = [
    Route("POST", "/v1/endpoints", create_endpoint, "Subscribe a webhook endpoint",
          "endpoints", body=EndpointCreate, ok=(201, EndpointCreated)),
    Route("GET", "/v1/endpoints", list_endpoints, "List endpoints", "endpoints",
          ok=(200, EndpointPage), query=PAGE),
    Route("GET", "/v1/endpoints/{endpoint_id}", get_endpoint, "An endpoint", "endpoints",
          ok=(200, Endpoint)),
    Route("PATCH", "/v1/endpoints/{endpoint_id}", patch_endpoint,
          "Change an endpoint; disable or enable it", "endpoints", body=EndpointPatch,
          ok=(200, Endpoint)),
    Route("DELETE", "/v1/endpoints/{endpoint_id}", delete_endpoint, "Delete an endpoint",
          "endpoints", ok=(204, None)),
    Route("GET", "/v1/endpoints/{endpoint_id}/secret", get_endpoint_secret,
          "An endpoint's signing secret", "endpoints", ok=(200, Secret)),
    Route("POST", "/v1/endpoints/{endpoint_id}/secret/rotate", rotate_endpoint_secret,
          "Rotate the signing secret (the old one signs too for 24 h)", "endpoints",
          ok=(200, RotatedSecret)),
]
