"""Events: ingest (one durable write per batch of concurrent requests, through the group
commit) and reading them back with their deliveries."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from datetime import UTC, datetime

from aiohttp import web

from gateway import appkeys, logs, tracing
from gateway.api.http import (
    PAGE,
    acting_app,
    answer,
    app_id,
    page_answer,
    page_args,
    read_body,
    validate,
)
from gateway.api.models import EventCreate
from gateway.api.routing import Param, Route
from gateway.errors import RateLimited, ValidationError
from gateway.store.postgres import Accepted, EventDraft
from gateway_client.models import EventAccepted, EventPage, EventWithDeliveries, iso

MAX_IDEMPOTENCY_KEY = 255
#: APNs and FCM take 4 KiB payloads; a notification's JSON (text, data, overrides) is
#: bounded before anything walks it.
MAX_NOTIFICATION_CHARS = 16_384
_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()


async def create_event(request: web.Request) -> web.Response:
    trace = tracing.incoming(request.headers)
    gateway = request.app
    spans = gateway.get(appkeys.SPANS)
    # One frame, with or without spans: every frame costs each request's awaits.
    with spans.ingest(request, trace) if spans is not None else _NO_SPAN as span:
        if span is not None:
            # The event stores the span's context, so its deliveries are the span's children.
            trace = span.context
        _, data, raw = await read_body(request, {"notification": MAX_NOTIFICATION_CHARS})
        body = validate(EventCreate, data)
        key = request.headers.get("Idempotency-Key")
        body_hash = None
        if key is not None:
            if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable():
                raise ValidationError(
                    f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters.",
                    details=[{"path": "Idempotency-Key", "message": "invalid header"}],
                )
            # The same JSON however it is spelt (key order, spacing) is the same request.
            canonical = json.dumps(data, sort_keys=True, separators=(",", ":"),
                                   ensure_ascii=False)
            body_hash = hashlib.sha256(canonical.encode()).digest()
        push = None
        if body.notification is not None:
            push = json.dumps({"user_ids": body.user_ids or [], "topics": body.topics or [],
                               "notification": body.notification.model_dump(exclude_none=True)})
        app = acting_app(request)
        schemas = gateway[appkeys.SCHEMAS]
        schema = await schemas.schema(app.id, body.type)
        if schema is not None:
            await schemas.check(app.id, schema, body.payload)
        draft = EventDraft(app.id, body.type, raw["payload"], key, body_hash, push,
                           app.rate_limit, trace.traceparent if trace is not None else None,
                           trace.tracestate if trace is not None else None)
        try:
            accepted = await gateway[appkeys.INGEST].submit(draft)
        except RateLimited:
            gateway[appkeys.METRICS].ingest_rate_limited.inc()
            raise
        logs.annotate(request, event=accepted.id,
                      trace=trace.trace_id if trace is not None else None)
        metrics = gateway.get(appkeys.METRICS)
        if metrics is not None and accepted.created:
            metrics.event_ingested(body.type)
        status = 202 if accepted.created else 200
        if span is not None:
            span.accepted(app.id, accepted.id, body.type, status)
        return accepted_answer(accepted, status)


def accepted_answer(accepted: Accepted, status: int) -> web.Response:
    """The :class:`EventAccepted` answer, the same bytes :func:`answer` renders (and
    ``web.json_response`` would: ``json.dumps``' spacing, ASCII escapes), without the
    model's validation and dump or a JSON encoder's pass over a dict: each value is
    escaped as a JSON string alone (the hottest answer there is)."""
    return web.Response(
        text=f'{{"id": {_quoted(accepted.id)}, "type": {_quoted(accepted.type)}, '
             f'"created_at": {_quoted(_time_text(accepted.created_at))}}}',
        status=status, content_type="application/json")


#: A str as a JSON string, as ``json.dumps`` writes it (the C encoder where there is one).
_quoted = json.encoder.encode_basestring_ascii


def _time_text(when: datetime) -> str:
    """:func:`iso`, made once for every event of a batch (they share one created_at)."""
    return _iso_utc(when if when.tzinfo is UTC else when.astimezone(UTC))


@functools.lru_cache(maxsize=8)
def _iso_utc(when: datetime) -> str:
    # Keyed by a UTC time: two local times an hour apart across a DST fold are equal as
    # keys (they differ only in fold), their UTC times are not.
    return iso(when)


async def list_events(request: web.Request) -> web.Response:
    cursor, limit = page_args(request)
    event_type = request.query.get("type") or None
    page = await request.app[appkeys.STORE].list_events(app_id(request), event_type, cursor,
                                                        limit)
    return page_answer(EventPage, page)


async def get_event(request: web.Request) -> web.Response:
    store = request.app[appkeys.STORE]
    acting = app_id(request)
    event = await store.get_event(acting, request.match_info["event_id"])
    return answer(EventWithDeliveries, {
        "id": event.id, "type": event.type, "created_at": event.created_at,
        "payload": event.payload, "deliveries": await store.deliveries_of(acting, event)})


IDEMPOTENCY = Param("Idempotency-Key", "Same key and body within 24 h: 200 with the first "
                    "event; another body: 409.", where="header")
TRACEPARENT = Param("traceparent", "W3C Trace Context: every delivery of the event joins "
                    "this trace (invalid: ignored).", where="header")
TRACESTATE = Param("tracestate", "W3C Trace Context, carried with the traceparent.",
                   where="header")

ROUTES = [
    Route("POST", "/v1/events", create_event, "Emit an event", "events", body=EventCreate,
          ok=(202, EventAccepted), also=((200, EventAccepted, "Idempotent replay"),),
          headers=(IDEMPOTENCY, TRACEPARENT, TRACESTATE), errors=(409,)),
    Route("GET", "/v1/events", list_events, "List events", "events", ok=(200, EventPage),
          query=(Param("type", "Only this event type."), *PAGE)),
    Route("GET", "/v1/events/{event_id}", get_event, "An event with its deliveries", "events",
          ok=(200, EventWithDeliveries)),
]
