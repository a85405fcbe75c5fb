"""W3C Trace Context level 1 as the gateway reads it (gateway/tracing.py), and when the
standard OpenTelemetry variables ask for spans."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from adapters.base import DeliveryJob, EventView, Outcome, Verdict
from gateway import tracing
from gateway.errors import ConfigError
from gateway.spans import setup as otel_setup
from gateway.spans import wanted as otel_wanted
from gateway.tracing import TraceContext, parse_traceparent, parse_tracestate

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{PARENT_ID}-01"


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_a_valid_version_00_traceparent_is_kept_as_it_is() -> None:
    assert parse_traceparent(VALID) == VALID
    assert parse_traceparent(f" {VALID}\t") == VALID
    assert parse_traceparent(f"00-{TRACE_ID}-{PARENT_ID}-00") == f"00-{TRACE_ID}-{PARENT_ID}-00"


@pytest.mark.parametrize("value", [
    "",
    "garbage",
    f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",  # uppercase hex
    f"00-{TRACE_ID}-{PARENT_ID.upper()}-01",
    f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id
    f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
    f"ff-{TRACE_ID}-{PARENT_ID}-01",  # the forbidden version
    f"00-{TRACE_ID}-{PARENT_ID}-01-extra",  # version 00 has exactly four fields
    f"00-{TRACE_ID}-{PARENT_ID}-1",
    f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",
    f"00-{TRACE_ID}-{PARENT_ID}0-01",
    f"00_{TRACE_ID}_{PARENT_ID}_01",
    f"0g-{TRACE_ID}-{PARENT_ID}-01",
    f"cc-{TRACE_ID}-{PARENT_ID}-01extra",  # a later version's fifth field needs its dash
    f"00-{TRACE_ID}-{PARENT_ID}-0x",
])
def test_an_invalid_traceparent_reads_as_none(value: str) -> None:
    assert parse_traceparent(value) is None


def test_a_later_version_is_read_by_its_first_four_fields_and_carried_as_version_00() -> None:
    assert parse_traceparent(f"cc-{TRACE_ID}-{PARENT_ID}-01") == VALID
    assert parse_traceparent(f"cc-{TRACE_ID}-{PARENT_ID}-01-what-the-future-holds") == VALID


def test_flags_other_than_sampled_are_not_carried() -> None:
    assert parse_traceparent(f"00-{TRACE_ID}-{PARENT_ID}-ff") == VALID
    assert parse_traceparent(f"00-{TRACE_ID}-{PARENT_ID}-02") == f"00-{TRACE_ID}-{PARENT_ID}-00"


def test_a_tracestate_is_carried_without_empty_members_or_spaces_around_them() -> None:
    assert parse_tracestate(["congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"]) == \
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    assert parse_tracestate(["congo=t61rcWkgMzE,,", " ", "tenant@vendor=a b"]) == \
        "congo=t61rcWkgMzE,tenant@vendor=a b"
    assert parse_tracestate([]) is None
    assert parse_tracestate([" , "]) is None


@pytest.mark.parametrize("value", [
    "Congo=1",  # keys are lowercase
    "congo=1,congo=2",  # a key twice
    "congo",  # no value
    "congo=",  # an empty value
    "congo=a\tb",  # a value is printable ASCII
    "congo=caf\u00e9",
    "congo=a=b",  # '=' is not allowed in a value
    "1congo=1",  # a simple key starts with a letter
    "tenant@Vendor=1",
    "k" * 257 + "=1",  # a key of more than 256 characters
    "congo=" + "v" * 257,  # a value of more than 256 characters
    ",".join(f"k{i}=v" for i in range(33)),  # more than 32 members
])
def test_a_malformed_tracestate_is_dropped_whole(value: str) -> None:
    assert parse_tracestate([value]) is None


def test_a_long_tracestate_loses_its_long_members_first_then_members_from_the_end() -> None:
    long = "big=" + "x" * 200
    members = [f"k{i:02d}=" + "v" * 40 for i in range(20)]  # 44 characters each
    kept = parse_tracestate([",".join([members[0], long, *members[1:]])])
    assert kept is not None and len(kept) <= tracing.MAX_TRACESTATE_CHARS
    assert "big=" not in kept
    assert kept == ",".join(members[:11])  # 11 * 44 + 10 commas = 494


def test_a_request_traceparent_is_read_with_its_tracestate() -> None:
    got = tracing.incoming(headers(("traceparent", VALID), ("tracestate", "a=1"),
                                   ("tracestate", "b=2")))
    assert got == TraceContext(VALID, "a=1,b=2")
    assert (got.trace_id, got.parent_id, got.flags) == (TRACE_ID, PARENT_ID, 1)


def test_a_request_without_a_valid_single_traceparent_has_no_trace_context() -> None:
    assert tracing.incoming(headers()) is None
    assert tracing.incoming(headers(("tracestate", "a=1"))) is None
    assert tracing.incoming(headers(("traceparent", "nonsense"), ("tracestate", "a=1"))) is None
    assert tracing.incoming(headers(("traceparent", VALID), ("traceparent", VALID))) is None


def test_an_invalid_tracestate_leaves_the_traceparent_standing() -> None:
    got = tracing.incoming(headers(("traceparent", VALID), ("tracestate", "BAD")))
    assert got == TraceContext(VALID, None)


def test_a_child_keeps_trace_and_flags_with_a_new_parent_id_each_time() -> None:
    children = {tracing.child(VALID) for _ in range(50)}
    assert len(children) == 50
    for value in children:
        assert parse_traceparent(value) == value
        version, trace_id, parent_id, flags = value.split("-")
        assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
        assert parent_id != PARENT_ID


@pytest.mark.parametrize(("environ", "wanted"), [
    ({}, False),
    ({"OTEL_SERVICE_NAME": "gw"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
    ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
    ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "console"}, False),
    ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "console"}, True),
])
def test_spans_are_wanted_only_when_the_standard_variables_ask(
    environ: dict[str, str], wanted: bool
) -> None:
    assert otel_wanted(environ) is wanted


def test_without_the_variables_setup_makes_no_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert otel_setup() is None


def test_an_exporter_or_protocol_the_gateway_lacks_stops_the_start_with_its_reason(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ConfigError, match="zipkin"):
        otel_setup()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ConfigError, match="http/protobuf"):
        otel_setup()


def test_the_console_exporter_prints_each_span_when_the_process_stops(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    spans = otel_setup()
    assert spans is not None
    job = DeliveryJob("dlv_1", "app_1", "fcm",
                      EventView("evt_1", "order.created", "{}", datetime.now(UTC), VALID))
    with spans.attempt(job) as span:
        assert span.traceparent.startswith(f"00-{TRACE_ID}-")
        span.finished(Outcome(Verdict.GONE, status_code=404, error="UNREGISTERED: gone"))
    spans.shutdown()
    printed = json.loads(capsys.readouterr().out)
    assert printed["name"] == "POST fcm" and printed["kind"] == "SpanKind.CLIENT"
    assert printed["parent_id"] == f"0x{PARENT_ID}"
    assert printed["attributes"]["error.type"] == "UNREGISTERED"
    assert printed["attributes"]["gateway.attempt.outcome"] == "gone"
    assert printed["resource"]["attributes"]["service.name"] == "event-gateway"
