"""Trace context through the real ``gateway`` process: the traceparent reaches the webhook
with or without OpenTelemetry; spans go over OTLP to the endpoint the standard variables
name; spans asked for in a way the gateway cannot export stop the start with the reason;
and when spans are not asked for (or OpenTelemetry is not installed) nothing from
OpenTelemetry is ever imported."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.support import Api, GatewayProcess, Receiver, eventually, serve_on_loopback

pytestmark = pytest.mark.e2e

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
TRACESTATE = "congo=t61rcWkgMzE"
#: Runs the gateway as ``python -m gateway`` would, and on the way out prints which
#: OpenTelemetry modules it imported. With BLOCK_OTEL=1, OpenTelemetry cannot be imported,
#: as if the [otel] extra were not installed.
LAUNCHER = """
import atexit, importlib.abc, os, runpy, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

if os.environ.get("BLOCK_OTEL") == "1":
    sys.meta_path.insert(0, NotInstalled())
atexit.register(lambda: print("opentelemetry modules:", sorted(
    m for m in sys.modules if m.split(".")[0] == "opentelemetry"), flush=True))
runpy.run_module("gateway", run_name="__main__")
"""
#: Nothing in the environment the tests inherit asks for spans.
NO_OTEL = {"OTEL_SDK_DISABLED": "", "OTEL_TRACES_EXPORTER": "",
           "OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "",
           "NO_PROXY": "127.0.0.1,localhost"}
#: An OTLP endpoint nothing listens on (the discard port): asked, but never reached.
NOWHERE = "http://127.0.0.1:9"


async def delivered(api: Api, key: str, event_id: str) -> bool:
    _, body = await api.call("GET", f"/v1/events/{event_id}", key)
    return bool(body["deliveries"]) and all(
        d["status"] == "succeeded" for d in body["deliveries"])


async def emit_traced_event(gw: GatewayProcess, receiver: Receiver) -> None:
    async with aiohttp.ClientSession() as http:
        api = Api(http, gw.base)
        key = await api.new_app()
        await api.new_endpoint(key, receiver.url("/hook"))
        event = await api.emit(key, headers={"traceparent": TRACEPARENT,
                                             "tracestate": TRACESTATE})
        await eventually(lambda: delivered(api, key, event["id"]))


@pytest.mark.parametrize("env", [
    pytest.param({}, id="not-asked"),
    pytest.param({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": NOWHERE},
                 id="disabled"),
    pytest.param({"OTEL_EXPORTER_OTLP_ENDPOINT": NOWHERE, "BLOCK_OTEL": "1"},
                 id="not-installed"),
])
async def test_without_spans_the_trace_is_carried_and_nothing_from_opentelemetry_imported(
    dsn: str, procs: list[GatewayProcess], receiver: Receiver, env: dict[str, str]
) -> None:
    gw = GatewayProcess(dsn, env={**NO_OTEL, **env}, launcher=("-c", LAUNCHER)).start()
    procs.append(gw)
    await gw.wait_ready()
    await emit_traced_event(gw, receiver)
    assert gw.terminate() == 0
    sent = receiver.on("/hook")[0].headers
    version, trace_id, parent_id, flags = sent["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01") and parent_id != PARENT_ID
    assert sent["tracestate"] == TRACESTATE
    log = gw.log()
    assert "opentelemetry modules: []" in log, log[-3000:]
    assert ("OpenTelemetry is not installed" in log) is ("BLOCK_OTEL" in env)


@pytest.mark.parametrize(("env", "reason"), [
    pytest.param({"OTEL_TRACES_EXPORTER": "zipkin"},
                 "OTEL_TRACES_EXPORTER: 'zipkin' is not one of otlp, console, none",
                 id="unknown-exporter"),
    pytest.param({"OTEL_EXPORTER_OTLP_ENDPOINT": NOWHERE, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
                 "OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' is not supported; the gateway exports "
                 "OTLP as http/protobuf", id="grpc"),
])
async def test_spans_asked_for_in_a_way_the_gateway_cannot_export_stop_the_start(
    dsn: str, procs: list[GatewayProcess], env: dict[str, str], reason: str
) -> None:
    gw = GatewayProcess(dsn, env={**NO_OTEL, **env}).start()
    procs.append(gw)
    assert gw.proc is not None
    assert await asyncio.to_thread(gw.proc.wait, 60) == 1
    assert f"gateway: {reason}" in gw.log(), gw.log()[-3000:]


def attributes(span: Span) -> dict[str, object]:
    return {kv.key: _value(kv) for kv in span.attributes}


def _value(kv: KeyValue) -> object:
    which = kv.value.WhichOneof("value")
    return getattr(kv.value, which) if which else None


async def test_the_server_exports_its_spans_over_otlp_where_the_variables_say(
    dsn: str, procs: list[GatewayProcess], receiver: Receiver
) -> None:
    bodies: list[bytes] = []

    async def collector(request: web.Request) -> web.Response:
        if request.path == "/v1/traces":
            bodies.append(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    runner, port = await serve_on_loopback(collector)
    try:
        gw = GatewayProcess(dsn, env={
            **NO_OTEL, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_SERVICE_NAME": "gateway-e2e"}).start()
        procs.append(gw)
        await gw.wait_ready()
        await emit_traced_event(gw, receiver)
        # A clean stop exports what is left (the collector answers meanwhile).
        assert await asyncio.to_thread(gw.terminate) == 0
    finally:
        await runner.cleanup()

    spans: list[Span] = []
    services = set()
    for body in bodies:
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            services |= {kv.value.string_value for kv in resource_spans.resource.attributes
                         if kv.key == "service.name"}
            for scope_spans in resource_spans.scope_spans:
                spans.extend(scope_spans.spans)
    assert services == {"gateway-e2e"}
    [ingest] = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    [attempt] = [s for s in spans if s.kind == Span.SPAN_KIND_CLIENT]
    assert ingest.trace_id.hex() == attempt.trace_id.hex() == TRACE_ID
    assert ingest.parent_span_id.hex() == PARENT_ID
    assert attempt.parent_span_id == ingest.span_id
    sent = receiver.on("/hook")[0].headers
    assert sent["traceparent"] == f"00-{TRACE_ID}-{attempt.span_id.hex()}-01"
    assert sent["tracestate"] == TRACESTATE
    assert attributes(ingest)["http.response.status_code"] == 202
    assert attributes(attempt)["gateway.attempt.outcome"] == "delivered"
    assert attributes(attempt)["url.full"] == f"http://127.0.0.1:{receiver.port}"
