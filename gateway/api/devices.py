"""Devices and user tokens: a mobile app registers its device token with a short-lived
user token the backend minted; the backend (app key) sees and manages every device."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from gateway import appkeys, usertokens
from gateway.api.http import (
    PAGE,
    acting_app,
    acting_user,
    answer,
    app_id,
    choice,
    page_answer,
    page_args,
    read,
)
from gateway.api.models import DeviceRegister, DeviceTopics, UserTokenCreate
from gateway.api.routing import Auth, Param, Route
from gateway.errors import Forbidden, ValidationError
from gateway_client.models import Device, DevicePage, DeviceStatus, Platform, UserToken

PLATFORMS = tuple(p.value for p in Platform)
STATUSES = tuple(s.value for s in DeviceStatus)


async def create_user_token(request: web.Request) -> web.Response:
    body = await read(request, UserTokenCreate)
    secret = await request.app[appkeys.AUTH].user_token_secret(app_id(request))
    token, expires_at = usertokens.mint(app_id(request), body.user_id, body.ttl_seconds, secret)
    return answer(UserToken, {"token": token, "user_id": body.user_id,
                              "expires_at": datetime.fromtimestamp(expires_at, UTC)}, 201)


async def register_device(request: web.Request) -> web.Response:
    body = await read(request, DeviceRegister)
    bound = acting_user(request)
    if bound is not None and body.user_id not in (None, bound):
        raise Forbidden("A user token registers devices for its own user only.")
    user_id = bound or body.user_id
    if user_id is None:
        raise ValidationError("'user_id' is required with an app key.",
                              details=[{"path": "user_id", "message": "field required"}])
    device, inserted = await request.app[appkeys.STORE].upsert_device(
        acting_app(request), platform=body.platform, token=body.token, user_id=user_id,
        topics=list(dict.fromkeys(body.topics)), locale=body.locale,
        app_version=body.app_version,
    )
    return answer(Device, device, 201 if inserted else 200)


async def list_devices(request: web.Request) -> web.Response:
    cursor, limit = page_args(request)
    q = request.query
    bound = acting_user(request)
    user_id = q.get("user_id") or None
    if bound is not None:
        if user_id not in (None, bound):
            raise Forbidden("A user token lists its own user's devices only.")
        user_id = bound
    platform = choice(request, "platform", PLATFORMS, "'platform' must be ios or android.",
                      "unknown platform")
    status = choice(request, "status", STATUSES, "'status' must be active or pruned.",
                    "unknown status")
    page = await request.app[appkeys.STORE].list_devices(
        app_id(request), user_id=user_id, topic=q.get("topic") or None, platform=platform,
        status=status, cursor=cursor, limit=limit,
    )
    return page_answer(DevicePage, page)


async def get_device(request: web.Request) -> web.Response:
    return answer(Device, await request.app[appkeys.STORE].get_device(
        app_id(request), request.match_info["token"], acting_user(request)))


async def delete_device(request: web.Request) -> web.Response:
    await request.app[appkeys.STORE].delete_device(
        app_id(request), request.match_info["token"], acting_user(request))
    return web.Response(status=204)


async def put_device_topics(request: web.Request) -> web.Response:
    body = await read(request, DeviceTopics)
    return answer(Device, await request.app[appkeys.STORE].set_device_topics(
        acting_app(request), request.match_info["token"], acting_user(request),
        list(dict.fromkeys(body.topics))))


APP_OR_USER: tuple[Auth, ...] = ("app", "user")

ROUTES = [
    Route("POST", "/v1/user-tokens", create_user_token,
          "Mint a short-lived user token for a mobile app", "devices", body=UserTokenCreate,
          ok=(201, UserToken)),
    Route("POST", "/v1/devices", register_device, "Register (upsert) a device", "devices",
          auth=APP_OR_USER, body=DeviceRegister, ok=(201, Device),
          also=((200, Device, "Updated"),)),
    Route("GET", "/v1/devices", list_devices, "List devices", "devices", auth=APP_OR_USER,
          ok=(200, DevicePage), query=(
              Param("user_id", "Only this user's."), Param("topic", "Only this topic's."),
              Param("platform", "ios or android.",
                    {"type": "string", "enum": list(PLATFORMS)}),
              Param("status", "active or pruned.",
                    {"type": "string", "enum": list(STATUSES)}), *PAGE)),
    Route("GET", "/v1/devices/{token}", get_device, "A device", "devices", auth=APP_OR_USER,
          ok=(200, Device)),
    Route("DELETE", "/v1/devices/{token}", delete_device, "Delete a device", "devices",
          auth=APP_OR_USER, ok=(204, None)),
    Route("PUT", "/v1/devices/{token}/topics", put_device_topics, "Replace a device's topics",
          "devices", auth=APP_OR_USER, body=DeviceTopics, ok=(200, Device)),
]
