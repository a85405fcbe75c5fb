"""Whether this process makes spans, and the one place that loads OpenTelemetry
(:mod:`gateway.otel`) for them: only when the standard ``OTEL_*`` variables ask for spans
(or a test hands an exporter), so without them nothing from OpenTelemetry is imported and
nothing costs. The spans' interface is :class:`gateway.tracing.Spans`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.tracing import Spans

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("gateway.tracing")


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the standard OpenTelemetry variables ask for spans.

    Not when ``OTEL_SDK_DISABLED`` is true. Otherwise when ``OTEL_TRACES_EXPORTER`` names
    an exporter (anything but ``none``) or, without it, when an OTLP endpoint is set
    (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``).
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup(exporter: SpanExporter | None = None) -> Spans | None:
    """This process's spans, or None: nothing from OpenTelemetry is imported unless the
    environment asks for spans (:func:`wanted`) or an ``exporter`` is given.

    ``exporter`` takes every span as it ends, synchronously (tests pass OpenTelemetry's
    in-memory one); without it the exporters are the ones the variables name. Asked for
    spans without the ``[otel]`` extra installed, the gateway says so and runs without.
    """
    if exporter is None and not wanted(os.environ):
        return None
    try:
        from gateway import otel
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("opentelemetry"):
            raise
        log.warning("OTEL_* variables ask for traces, but OpenTelemetry is not installed "
                    "(pip install 'event-gateway[otel]'): no spans are exported")
        return None
    if exporter is not None:
        return otel.OtelSpans.exporting_to(exporter)
    return otel.OtelSpans.from_environment()
