"""The sandbox inbox: what the in-process fake providers received for this app."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from gateway import appkeys
from gateway.api.http import answer, app_id
from gateway.api.routing import Route
from gateway.errors import NotFound
from gateway_client.models import SandboxPushes

#: The newest pushes an inbox shows.
INBOX_SIZE = 500


async def sandbox_pushes(request: web.Request) -> web.Response:
    """What the sandbox's fake FCM and APNs received from this app (each app pushes to
    them with credentials of its own, so no app sees another's pushes)."""
    sandbox = request.app.get(appkeys.SANDBOX)
    if sandbox is None:
        raise NotFound("The sandbox is off; start the gateway with 'gateway serve --sandbox'.")
    return answer(SandboxPushes, {"data": [
        {"provider": p.provider, "token": p.token, "payload": p.payload,
         "headers": {k: v for k, v in p.headers.items() if k != "authorization"},
         "received_at": datetime.fromtimestamp(p.received_at, UTC)}
        for p in sandbox.received(app_id(request))[-INBOX_SIZE:]]})


ROUTES = [
    Route("GET", "/v1/sandbox/pushes", sandbox_pushes,
          "What the sandbox's fake providers received", "push", ok=(200, SandboxPushes)),
]
