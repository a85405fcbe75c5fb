"""Deliveries: list and inspect them with every attempt, retry failed ones, and follow
outcomes live (``GET /v1/deliveries/stream``, server-sent events)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from typing import Any

from aiohttp import web

from gateway import appkeys
from gateway.api.http import PAGE, answer, app_id, choice, page_answer, page_args
from gateway.api.models import EVENT_TYPE_RE
from gateway.api.routing import Param, Route
from gateway.errors import ValidationError
from gateway_client.models import AttemptList, Delivery, DeliveryPage, DeliveryStatus

STATUSES = tuple(s.value for s in DeliveryStatus)
#: How often a waiting stream checks that its client is still there.
CLIENT_CHECK_S = 1.0
#: How long a new subscriber waits for the LISTEN connection before its stream opens.
LISTEN_WAIT_S = 5.0
_EVENT_TYPE = re.compile(EVENT_TYPE_RE)


async def list_deliveries(request: web.Request) -> web.Response:
    cursor, limit = page_args(request)
    status = choice(request, "status", STATUSES, f"'status' must be one of "
                    f"{', '.join(STATUSES)}.", "unknown status")
    page = await request.app[appkeys.STORE].list_deliveries(
        app_id(request), status=DeliveryStatus(status) if status else None,
        endpoint_id=request.query.get("endpoint_id") or None,
        event_id=request.query.get("event_id") or None, cursor=cursor, limit=limit,
    )
    return page_answer(DeliveryPage, page)


async def get_delivery(request: web.Request) -> web.Response:
    return answer(Delivery, await request.app[appkeys.STORE].get_delivery(
        app_id(request), request.match_info["delivery_id"]))


async def list_attempts(request: web.Request) -> web.Response:
    attempts = await request.app[appkeys.STORE].list_attempts(
        app_id(request), request.match_info["delivery_id"])
    return answer(AttemptList, {"data": attempts})


async def retry_delivery(request: web.Request) -> web.Response:
    return answer(Delivery, await request.app[appkeys.STORE].retry_delivery(
        app_id(request), request.match_info["delivery_id"]), 202)


# --- the live tail ---------------------------------------------------------------------

def sse(event: str, data: Any, event_id: str | None = None) -> bytes:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


def _filters(request: web.Request) -> tuple[str | None, str | None]:
    endpoint_id = request.query.get("endpoint_id") or None
    event_type = request.query.get("event_type") or None
    if event_type is not None and event_type != "*":
        base = event_type[:-2] if event_type.endswith(".*") else event_type
        if not _EVENT_TYPE.match(base):
            raise ValidationError(
                "'event_type' must be an event type, 'prefix.*' or '*'.",
                details=[{"path": "event_type", "message": "not an event type pattern"}])
    return endpoint_id, event_type


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def stream_deliveries(request: web.Request) -> web.StreamResponse:
    endpoint_id, event_type = _filters(request)
    stream = request.app[appkeys.OUTCOMES]
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no"})
    app = app_id(request)
    with stream.subscribe(app, endpoint_id=endpoint_id, event_type=event_type) as sub:
        # Open the stream only once outcomes can reach it (this process listens, and the
        # queue knows the app is watched), so a client that sees the answer's headers
        # knows it misses nothing from then on.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LISTEN_WAIT_S):
                await stream.listening.wait()
                await stream.watched(app)
        await response.prepare(request)
        try:
            await response.write(b": connected\n\n")
            last_write = time.monotonic()
            while True:
                try:
                    outcome = await asyncio.wait_for(sub.queue.get(), CLIENT_CHECK_S)
                except TimeoutError:
                    if _gone(request):
                        break
                    if time.monotonic() - last_write >= stream.heartbeat_s:
                        await response.write(b": heartbeat\n\n")
                        last_write = time.monotonic()
                    continue
                if outcome is None:
                    break
                if sub.dropped:
                    await response.write(sse("dropped", {"dropped": sub.dropped}))
                    sub.dropped = 0
                await response.write(sse(
                    "delivery", outcome, f"{outcome.get('delivery_id')}:{outcome.get('attempt')}"))
                last_write = time.monotonic()
        except ConnectionError:
            pass  # the client went away
    return response


ROUTES = [
    # Before /v1/deliveries/{delivery_id}, which would take this fixed path.
    Route("GET", "/v1/deliveries/stream", stream_deliveries,
          "Stream delivery outcomes as they happen (server-sent events)", "deliveries",
          ok=(200, None), media_type="text/event-stream",
          query=(Param("endpoint_id", "Only this endpoint's deliveries."),
                 Param("event_type", "Only this event type: exact, 'prefix.*' or '*'.")),
          description=(
              "Every attempt outcome of this app's deliveries, live, as `event: delivery` "
              "with `id: <delivery_id>:<attempt>` and `data:` a JSON object {delivery_id, "
              "event_id, event_type, endpoint_id, kind, app_id, status, outcome, "
              "status_code, attempt, at}: never a payload, secret or token. A comment line "
              "arrives every 15 s. A client that reads too slowly loses outcomes and gets "
              "`event: dropped` with `{\"dropped\": n}` before the next one. Outcomes from "
              "before the stream opened are not replayed: list them with "
              "GET /v1/deliveries. One process serves an app at most "
              "GATEWAY_MAX_STREAMS_PER_APP streams (429 past it).")),
    Route("GET", "/v1/deliveries", list_deliveries, "List deliveries", "deliveries",
          ok=(200, DeliveryPage), query=(
              Param("status", "pending, succeeded or failed.",
                    {"type": "string", "enum": list(STATUSES)}),
              Param("endpoint_id", "Only this endpoint's."),
              Param("event_id", "Only this event's."), *PAGE)),
    Route("GET", "/v1/deliveries/{delivery_id}", get_delivery, "A delivery", "deliveries",
          ok=(200, Delivery)),
    Route("GET", "/v1/deliveries/{delivery_id}/attempts", list_attempts,
          "Every attempt of a delivery", "deliveries", ok=(200, AttemptList)),
    Route("POST", "/v1/deliveries/{delivery_id}/retry", retry_delivery,
          "Requeue a failed delivery now", "deliveries", ok=(202, Delivery), errors=(409,)),
]
