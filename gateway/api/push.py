"""Push credentials: each app's FCM service account and APNs key or certificate, checked
on upload and only ever shown masked."""

from __future__ import annotations

from aiohttp import web

from gateway import appkeys, credentials
from gateway.api.http import answer, read, read_body, validate
from gateway.api.models import (
    APNsCertificateCredentials,
    APNsCredentials,
    APNsCredentialsBody,
    FCMCredentials,
)
from gateway.api.routing import Route
from gateway.errors import ValidationError
from gateway_client.models import (
    APNsCredentialsAnswer,
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
    _, data, _ = await read_body(request)
    if "certificate_pem" in data:
        if "key_p8" in data:
            raise ValidationError(
                "Give key_p8 (token auth) or certificate_pem (certificate auth), not both.",
                details=[{"path": "certificate_pem",
                          "message": "cannot go with key_p8: one form of credentials"}])
        certificate = validate(APNsCertificateCredentials, data)
        config = await credentials.check_apns_certificate(certificate.model_dump())
    else:
        config = await credentials.check_apns(validate(APNsCredentials, data).model_dump())
    stored = await request.app[appkeys.STORE].put_credentials(
        request.match_info["app_id"], Provider.APNS, config)
    return answer(APNsCredentialsAnswer, credentials.masked(stored.provider, stored.config),
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
          "Set the app's APNs token key or push certificate", "push", auth=("own_app",),
          body=APNsCredentialsBody, ok=(200, APNsCredentialsAnswer),
          description="Token auth: key_p8, key_id, team_id, topic, environment. "
          "Certificate auth: certificate_pem (the certificate and its private key), topic "
          "(default: the certificate's bundle id), environment."),
    Route("GET", "/v1/apps/{app_id}/push", get_push_credentials,
          "The app's push credentials, masked", "push", auth=("own_app",),
          ok=(200, PushCredentials)),
]
