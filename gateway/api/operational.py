"""The app's operational webhook: the one URL the gateway tells about the app's own
resources (:mod:`gateway.operational`)."""

from __future__ import annotations

from aiohttp import web

from gateway import appkeys
from gateway.api.endpoints import check_endpoint_url
from gateway.api.http import answer, app_id, read
from gateway.api.models import OperationalWebhookPut
from gateway.api.routing import Route
from gateway_client.models import OperationalWebhook, OperationalWebhookSet


async def put_operational_webhook(request: web.Request) -> web.Response:
    body = await read(request, OperationalWebhookPut)
    await check_endpoint_url(request, body.url)
    stored = await request.app[appkeys.STORE].operational.put(app_id(request), body.url,
                                                              body.event_types)
    return answer(OperationalWebhookSet, stored)


async def get_operational_webhook(request: web.Request) -> web.Response:
    return answer(OperationalWebhook,
                  await request.app[appkeys.STORE].operational.get(app_id(request)))


async def delete_operational_webhook(request: web.Request) -> web.Response:
    await request.app[appkeys.STORE].operational.delete(app_id(request))
    return web.Response(status=204)


ROUTES = [
    Route("PUT", "/v1/operational-webhook", put_operational_webhook,
          "Set the app's operational webhook", "operational-webhook",
          body=OperationalWebhookPut, ok=(200, OperationalWebhookSet),
          description="Where the gateway sends the app's operational events "
          "(endpoint.disabled, endpoint.enabled, delivery.exhausted, device.invalidated, "
          "push.credentials_rejected), signed per Standard Webhooks with the secret in the "
          "answer. Setting it again changes url and event_types and keeps the secret."),
    Route("GET", "/v1/operational-webhook", get_operational_webhook,
          "The app's operational webhook (without its secret)", "operational-webhook",
          ok=(200, OperationalWebhook)),
    Route("DELETE", "/v1/operational-webhook", delete_operational_webhook,
          "Remove the app's operational webhook", "operational-webhook", ok=(204, None)),
]
