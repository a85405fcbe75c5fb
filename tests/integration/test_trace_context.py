"""Trace context through the running gateway: a W3C ``traceparent`` on ``POST /v1/events``
reaches every webhook attempt of that event, and with OpenTelemetry the ingest and every
attempt are spans of that trace."""

from __future__ import annotations

import io
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.app import create_app
from gateway.config import Settings
from gateway.spans import setup as otel_setup
from tests.support import Api, Receiver, eventually

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
PAYLOAD_MARK = "payload-must-not-reach-a-span"


async def delivered(api: Api, key: str, event_id: str) -> bool:
    _, body = await api.call("GET", f"/v1/events/{event_id}", key)
    return bool(body["deliveries"]) and all(
        d["status"] == "succeeded" for d in body["deliveries"])


def fields(traceparent: str) -> tuple[str, str, str, str]:
    version, trace_id, parent_id, flags = traceparent.split("-")
    return version, trace_id, parent_id, flags


async def test_every_attempt_carries_the_events_trace_with_a_parent_id_of_its_own(
    api: Api, receiver: Receiver
) -> None:
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url("/hook"))
    receiver.answers["/hook"] = [(500, {}), (503, {}), (200, {})]
    await api.emit(key, headers={"traceparent": TRACEPARENT, "tracestate": TRACESTATE})
    await receiver.wait_for(3, "/hook")
    parents = []
    for request in receiver.on("/hook"):
        version, trace_id, parent_id, flags = fields(request.headers["traceparent"])
        assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
        assert request.headers["tracestate"] == TRACESTATE
        parents.append(parent_id)
    assert len(set(parents)) == 3 and PARENT_ID not in parents


async def test_the_ingest_and_attempt_log_lines_name_the_trace(
    api: Api, receiver: Receiver, captured: io.StringIO
) -> None:
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url("/hook"))
    event = await api.emit(key, headers={"traceparent": TRACEPARENT})
    await eventually(lambda: delivered(api, key, event["id"]))
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    ingest = [x for x in lines if x.get("route") == "/v1/events" and x.get("method") == "POST"]
    attempts = [x for x in lines if x["logger"] == "gateway.dispatcher"
                and x.get("event") == event["id"]]
    assert [x["trace"] for x in ingest + attempts] == [TRACE_ID, TRACE_ID]


async def test_an_invalid_traceparent_is_ignored_and_the_event_delivered_without_one(
    api: Api, receiver: Receiver
) -> None:
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url("/hook"))
    invalid = [f"00-{TRACE_ID.upper()}-{PARENT_ID}-01", f"00-{'0' * 32}-{PARENT_ID}-01",
               f"ff-{TRACE_ID}-{PARENT_ID}-01", f"00-{TRACE_ID}-{PARENT_ID}-01-x", "nonsense"]
    for value in invalid:
        status, _ = await api.call("POST", "/v1/events", key,
                                   {"type": "order.created", "payload": {}},
                                   headers={"traceparent": value, "tracestate": TRACESTATE})
        assert status == 202
    await api.emit(key)  # and one without any
    await receiver.wait_for(len(invalid) + 1, "/hook")
    for request in receiver.on("/hook"):
        assert "traceparent" not in request.headers
        assert "tracestate" not in request.headers


async def test_a_later_version_arrives_as_version_00_and_a_bad_tracestate_is_dropped(
    api: Api, receiver: Receiver
) -> None:
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url("/hook"))
    await api.emit(key, headers={"traceparent": f"cc-{TRACE_ID}-{PARENT_ID}-01-future",
                                 "tracestate": "Not=Valid"})
    await receiver.wait_for(1, "/hook")
    sent = receiver.on("/hook")[0].headers
    assert fields(sent["traceparent"])[:2] == ("00", TRACE_ID)
    assert "tracestate" not in sent


async def test_an_idempotent_replay_keeps_the_trace_of_the_first_request(
    api: Api, receiver: Receiver
) -> None:
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url("/hook"))
    first = await api.emit(key, headers={"traceparent": TRACEPARENT, "Idempotency-Key": "k1"})
    other = f"00-{'a' * 32}-{PARENT_ID}-01"
    again = await api.emit(key, headers={"traceparent": other, "Idempotency-Key": "k1"})
    assert again["id"] == first["id"]
    await eventually(lambda: delivered(api, key, first["id"]))
    [request] = receiver.on("/hook")
    assert fields(request.headers["traceparent"])[1] == TRACE_ID


# --- with OpenTelemetry ------------------------------------------------------------------

@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def traced(aiohttp_client: Any, dsn: str, settings: Settings,
                 exporter: InMemorySpanExporter) -> Api:
    """The gateway in this process with spans going to ``exporter``."""
    client: TestClient[aiohttp.web.Request, aiohttp.web.Application] = await aiohttp_client(
        create_app(settings, dsn, spans=otel_setup(exporter)))
    return Api(client)


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_ingest_and_each_attempt_are_spans_of_the_callers_trace(
    traced: Api, receiver: Receiver, exporter: InMemorySpanExporter
) -> None:
    key = await traced.new_app()
    endpoint = await traced.new_endpoint(key, receiver.url("/hook?token=secret"))
    receiver.answers["/hook"] = [(500, {}), (200, {})]
    event = await traced.emit(key, payload={"mark": PAYLOAD_MARK},
                              headers={"traceparent": TRACEPARENT, "tracestate": TRACESTATE})
    await eventually(lambda: delivered(traced, key, event["id"]))

    spans = exporter.get_finished_spans()
    [ingest] = [s for s in spans if s.kind is SpanKind.SERVER]
    attempts = sorted((s for s in spans if s.kind is SpanKind.CLIENT),
                      key=lambda s: attributes(s)["gateway.delivery.attempt"])
    assert len(attempts) == 2
    assert ingest.name == "POST /v1/events"
    assert ingest.resource.attributes["service.name"] == "event-gateway"
    assert ingest.parent is not None and ingest.parent.is_remote
    assert f"{ingest.parent.trace_id:032x}" == TRACE_ID
    assert f"{ingest.parent.span_id:016x}" == PARENT_ID
    assert ingest.context is not None
    assert ingest.context.trace_state.to_header() == TRACESTATE
    assert {k: v for k, v in attributes(ingest).items() if k.startswith("gateway.")} == {
        "gateway.app.id": attributes(attempts[0])["gateway.app.id"],
        "gateway.event.id": event["id"], "gateway.event.type": "order.created"}
    assert attributes(ingest)["http.response.status_code"] == 202

    requests = receiver.on("/hook")
    for attempt, request, number, status in zip(attempts, requests, (1, 2), (500, 200),
                                                strict=True):
        assert attempt.name == "POST"
        assert attempt.context is not None and attempt.parent is not None
        assert f"{attempt.context.trace_id:032x}" == TRACE_ID
        assert attempt.parent.span_id == ingest.context.span_id  # a child of the ingest
        # The webhook request names the attempt's own span as its parent.
        assert fields(request.headers["traceparent"])[2] == f"{attempt.context.span_id:016x}"
        assert request.headers["tracestate"] == TRACESTATE
        seen = attributes(attempt)
        assert seen["gateway.delivery.attempt"] == number
        assert seen["http.response.status_code"] == status
        assert seen["gateway.event.id"] == event["id"]
        assert seen["gateway.event.type"] == "order.created"
        assert seen["gateway.endpoint.id"] == endpoint["id"]
        assert seen["gateway.delivery.kind"] == "webhook"
        assert seen["gateway.delivery.id"].startswith("dlv_")
        assert seen["http.request.method"] == "POST"
        assert seen["url.full"] == f"http://127.0.0.1:{receiver.port}"  # the origin only
        assert (seen["server.address"], seen["server.port"]) == ("127.0.0.1", receiver.port)
    assert attributes(attempts[0])["gateway.attempt.outcome"] == "retry"
    assert attributes(attempts[0])["error.type"] == "500"
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert attributes(attempts[1])["gateway.attempt.outcome"] == "delivered"
    assert attempts[1].status.status_code is StatusCode.UNSET
    for span in spans:
        text = repr(attributes(span)) + repr(span.status.description)
        assert PAYLOAD_MARK not in text and "secret" not in text and "whsec_" not in text


async def test_with_spans_an_event_without_traceparent_starts_a_trace_its_webhooks_join(
    traced: Api, receiver: Receiver, exporter: InMemorySpanExporter
) -> None:
    key = await traced.new_app()
    await traced.new_endpoint(key, receiver.url("/hook"))
    event = await traced.emit(key)
    await eventually(lambda: delivered(traced, key, event["id"]))
    spans = exporter.get_finished_spans()
    [ingest] = [s for s in spans if s.kind is SpanKind.SERVER]
    [attempt] = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert ingest.parent is None and ingest.context is not None and attempt.context is not None
    assert attempt.parent is not None and attempt.parent.span_id == ingest.context.span_id
    _, trace_id, parent_id, _ = fields(receiver.on("/hook")[0].headers["traceparent"])
    assert trace_id == f"{ingest.context.trace_id:032x}"
    assert parent_id == f"{attempt.context.span_id:016x}"
    assert "tracestate" not in receiver.on("/hook")[0].headers


async def test_a_refused_ingest_is_a_span_with_its_status_and_writes_nothing(
    traced: Api, exporter: InMemorySpanExporter
) -> None:
    key = await traced.new_app()
    status, _ = await traced.call("POST", "/v1/events", key, {"type": ""},
                                  headers={"traceparent": TRACEPARENT})
    assert status == 422
    [ingest] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert attributes(ingest)["http.response.status_code"] == 422
    assert ingest.status.status_code is StatusCode.UNSET  # the caller's error, not ours
    assert "gateway.event.id" not in attributes(ingest)
