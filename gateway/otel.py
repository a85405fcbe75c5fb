"""OpenTelemetry spans (the ``[otel]`` extra): a SERVER span for each ``POST /v1/events``
and a CLIENT span for each delivery attempt, both in the trace the event was emitted in.

The only module that imports OpenTelemetry, and only :func:`gateway.spans.setup`
imports it, when the standard variables ask for spans. The SDK reads the rest of them
itself: ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``,
``OTEL_BSP_*``, and the OTLP exporter's ``OTEL_EXPORTER_OTLP_*`` (endpoint, headers,
timeout, compression, certificates).

A span carries ids, types, kinds and results: never a payload, secret, key or device
token, and an endpoint's URL only as its origin (paths and query strings carry secrets).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit

from aiohttp import web
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from adapters.base import DeliveryJob, Outcome, Verdict
from gateway.errors import ConfigError, GatewayError
from gateway.logs import scrub
from gateway.metrics import OTHER, error_code
from gateway.tracing import TraceContext
from gateway_client.models import DeliveryKind
from gateway_client.version import __version__

#: ``service.name`` unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name one.
SERVICE_NAME = "event-gateway"
INGEST_ROUTE = "/v1/events"
#: OTLP over HTTP with protobuf bodies: the ``[otel]`` extra's exporter.
HTTP_PROTOBUF = "http/protobuf"


def _exporter(name: str) -> SpanExporter:
    """The exporter OTEL_TRACES_EXPORTER names: ``otlp`` (http/protobuf) or ``console``."""
    if name == "console":
        return ConsoleSpanExporter(out=sys.stdout)
    if name != "otlp":
        raise ConfigError(f"OTEL_TRACES_EXPORTER: {name!r} is not one of otlp, console, none")
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or HTTP_PROTOBUF)
    if protocol.strip().lower() != HTTP_PROTOBUF:
        raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported; the "
                          f"gateway exports OTLP as {HTTP_PROTOBUF} (port 4318)")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _parent(trace: TraceContext | None) -> Context | None:
    """A trace context stored or received as the parent of a new span."""
    if trace is None:
        return None
    state = TraceState.from_header([trace.tracestate]) if trace.tracestate else TraceState()
    remote = SpanContext(int(trace.trace_id, 16), int(trace.parent_id, 16), is_remote=True,
                         trace_flags=TraceFlags(trace.flags), trace_state=state)
    return set_span_in_context(NonRecordingSpan(remote))


def _traceparent(span: Span) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags & 0x01:02x}"


def _origin(url: str) -> tuple[str, dict[str, str | int]]:
    """``url.full`` cut to the origin, with ``server.address`` and ``server.port``."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}",
            {"server.address": parts.hostname or "", "server.port": port})


class _Ingest:
    def __init__(self, span: Span, parent: TraceContext | None) -> None:
        self._span = span
        self.context = TraceContext(_traceparent(span),
                                    parent.tracestate if parent is not None else None)

    def accepted(self, app_id: str, event_id: str, event_type: str, status: int) -> None:
        self._span.set_attributes({
            "gateway.app.id": app_id, "gateway.event.id": event_id,
            "gateway.event.type": event_type, "http.response.status_code": status})


class _Attempt:
    def __init__(self, span: Span) -> None:
        self._span = span
        self.traceparent = _traceparent(span)

    def finished(self, outcome: Outcome) -> None:
        span = self._span
        span.set_attribute("gateway.attempt.outcome", outcome.verdict.value)
        if outcome.status_code is not None:
            span.set_attribute("http.response.status_code", outcome.status_code)
        if outcome.verdict is not Verdict.DELIVERED:
            # The metrics' code, with a bare status code as HTTP's conventions write it.
            code = error_code(outcome.error, outcome.status_code)
            span.set_attribute("error.type", code.removeprefix("http_") if code != OTHER
                               else "_OTHER")
            span.set_status(Status(StatusCode.ERROR,
                                   scrub(outcome.error)[:200] if outcome.error else None))


class OtelSpans:
    """:class:`gateway.tracing.Spans` on the OpenTelemetry SDK, with a tracer provider of
    its own (the global one is left alone)."""

    def __init__(self, processors: Sequence[SpanProcessor]) -> None:
        resource = Resource.create({"service.version": __version__})
        named = str(resource.attributes.get("service.name", ""))
        if not named or named.startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
        self.provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        for processor in processors:
            self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer("event-gateway", __version__)

    @classmethod
    def from_environment(cls) -> OtelSpans:
        """Batched export to each exporter OTEL_TRACES_EXPORTER names (default otlp)."""
        names = (os.environ.get("OTEL_TRACES_EXPORTER") or "otlp").lower().split(",")
        return cls([BatchSpanProcessor(_exporter(name.strip()))
                    for name in names if name.strip() not in ("", "none")])

    @classmethod
    def exporting_to(cls, exporter: SpanExporter) -> OtelSpans:
        """Every span handed to ``exporter`` as it ends."""
        return cls([SimpleSpanProcessor(exporter)])

    @contextlib.contextmanager
    def ingest(self, request: web.Request, parent: TraceContext | None) -> Iterator[_Ingest]:
        span = self._tracer.start_span(
            f"POST {INGEST_ROUTE}", context=_parent(parent), kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "http.route": INGEST_ROUTE,
                        "url.path": INGEST_ROUTE, "url.scheme": request.scheme})
        try:
            yield _Ingest(span, parent)
        except BaseException as exc:
            # Answers below 500 are the caller's mistake, not the server's (HTTP
            # semantic conventions).
            status = exc.status if isinstance(exc, GatewayError | web.HTTPException) else 500
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_attribute("error.type", str(status))
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()

    @contextlib.contextmanager
    def attempt(self, job: DeliveryJob) -> Iterator[_Attempt]:
        event = job.event
        attributes: dict[str, str | int] = {
            "gateway.app.id": job.app_id, "gateway.event.id": event.id,
            "gateway.event.type": event.type, "gateway.delivery.id": job.delivery_id,
            "gateway.delivery.kind": job.kind, "gateway.delivery.attempt": job.attempt,
            "http.request.method": "POST"}
        if job.endpoint is not None:
            attributes["gateway.endpoint.id"] = job.endpoint.id
            attributes["url.full"], server = _origin(job.endpoint.url)
            attributes.update(server)
        if job.device is not None:
            attributes["gateway.device.id"] = job.device.id
        parent = (TraceContext(event.traceparent, event.tracestate)
                  if event.traceparent is not None else None)
        name = "POST" if job.kind == DeliveryKind.WEBHOOK else f"POST {job.kind}"
        span = self._tracer.start_span(name, context=_parent(parent), kind=SpanKind.CLIENT,
                                       attributes=attributes)
        try:
            yield _Attempt(span)
        except BaseException as exc:  # cancelled at shutdown
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()

    def shutdown(self) -> None:
        self.provider.shutdown()
