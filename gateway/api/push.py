"""Push credentials: each app's FCM service account and APNs key, checked on upload and
only ever shown masked."""

from __future__ import annotations

from aiohttp import web

from gateway import appkeys, credentials
from gateway.api.http import answer, read
from gateway.api.models import APNsCredentials, FCMCredentials
from gateway.api.routing import Route
from gateway_client.models import (
    APNsCredentialsShown,
    FCMCredentialsShown,
    Provider,
    PushCredentials,
)


async def put_fcm_credentials(request: web.Request) -> web.Response:
    body = await read(request, FCMCredentials)
    config = await credentials.check_fcm(body.service_account,
                                         request.app[appkeys.SETTINGS].fcm_token_url)
    stored = await request.app[appkeys.STORE].put_credentials(
        request.match_info["app_id"], Provider.FCM, config)
    return answer(FCMCredentialsShown, credentials.masked(stored.provider, stored.config),
                  exclude_unset=True)


async def put_apns_credentials(request: web.Request) -> web.Response:
    body = await read(request, APNsCredentials)
    config = await credentials.check_apns(body.model_dump())
    stored = await request.app[appkeys.STORE].put_credentials(
        request.match_info["app_id"], Provider.APNS, config)
    return answer(APNsCredentialsShown, credentials.masked(stored.provider, stored.config),
                  exclude_unset=True)


async def get_push_credentials(request: web.Request) -> web.Response:
    found = await request.app[appkeys.STORE].list_credentials(request.match_info["app_id"])
    return answer(PushCredentials, {
        c.provider.value: {**credentials.masked(c.provider, c.config),
                           "updated_at": c.updated_at}
        for c in found}, exclude_unset=True)


ROUTES = [
    Route("PUT", "/v1/apps/{app_id}/push/fcm", put_fcm_credentials,
          "Set the app's FCM service account", "push", auth=("own_app",),
          body=FCMCredentials, ok=(200, FCMCredentialsShown)),
    Route("PUT", "/v1/apps/{app_id}/push/apns", put_apns_credentials,
          "Set the app's APNs token key", "push", auth=("own_app",), body=APNsCredentials,
          ok=(200, APNsCredentialsShown)),
    Route("GET", "/v1/apps/{app_id}/push", get_push_credentials,
          "The app's push credentials, masked", "push", auth=("own_app",),
          ok=(200, PushCredentials)),
]
