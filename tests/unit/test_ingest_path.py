"""The shortcuts on the ingest path (POST /v1/events) give what the general code gives."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway import jsonbody
from gateway.api.events import accepted_answer
from gateway.api.http import answer
from gateway.errors import GatewayError
from gateway.ids import new_ids
from gateway.metrics import EVENT_TYPE_LIMIT, Metrics
from gateway.store.postgres import Accepted
from gateway_client.models import EventAccepted
from tests.support import Folding


@pytest.mark.parametrize(("status", "created_at", "event_type"), [
    (202, datetime(2026, 12, 4, 10, 0, 0, 123456, tzinfo=UTC), "order.created_v2-x"),
    # no fraction: none is written
    (202, datetime(2026, 12, 4, 10, 0, 0, tzinfo=UTC), "order.created_v2-x"),
    (200, datetime(2026, 1, 31, 23, 30, 0, 5, tzinfo=timezone(timedelta(hours=-5))),
     "order.created_v2-x"),
    # Whatever a type holds, it is escaped as the model's JSON escapes it.
    (202, datetime(2026, 12, 4, 10, 0, 0, tzinfo=UTC), 'a"b\\c\u00e9\U0001f600\n'),
])
def test_the_accepted_answer_is_byte_for_byte_what_its_model_renders(
        status: int, created_at: datetime, event_type: str) -> None:
    accepted = Accepted("evt_0192a0b1c2d3e4f5a6b7c8d9e0f1a2b3", event_type, created_at,
                        created=status == 202)
    fast, general = accepted_answer(accepted, status), answer(EventAccepted, accepted, status)
    assert fast.body == general.body
    assert fast.status == general.status
    assert dict(fast.headers) == dict(general.headers)


def test_events_of_one_batch_share_a_created_at_text_however_its_time_is_spelt() -> None:
    first = datetime(2026, 12, 4, 10, 0, 0, 250000, tzinfo=UTC)
    same = first.astimezone(timezone(timedelta(hours=2)))
    later = first + timedelta(microseconds=1)
    folded = datetime(2026, 10, 25, 2, 30, tzinfo=Folding())
    for when in (first, same, later, first, folded, folded.replace(fold=1)):
        accepted = Accepted("evt_0192a0b1c2d3e4f5a6b7c8d9e0f1a2b3", "a", when, created=True)
        assert accepted_answer(accepted, 202).body == answer(EventAccepted, accepted, 202).body


#: Bodies the regular-expression reader takes, and bodies it hands to the careful reader
#: (escaped keys, odd spacing, broken or refused JSON of every kind).
BODIES = [
    '{"type":"a","payload":{"x":1}}',
    ' \n{ "type" : "a" ,\t"payload" : { "z": 1.50, "a": 1e3, "s": "\\u0000\\u00e9" } }\r\n',
    '{"type": "a", "payload": {"x": [1, 2, {"y": null}]}, "user_ids": ["u"], '
    '"topics": [], "notification": {"title": "t"}}',
    '{"payload": "\\ud83d\\ude00", "type": "é"}',
    '{"ty\\u0070e": "a", "payload": {}}',
    '{"type": "a", "type": "b"}',
    '{"type": "a", "payload": {"k": 1, "k": 2}}',
    '{"type\t": "a"}',
    '{"type": "a", "payload": {"x": NaN}}',
    '{"type": "a", "payload": {"x": 1e999}}',
    '{"type": "a", "payload": ' + "[" * 100 + "]" * 100 + "}",
    '{"type": "a", "payload": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"type": "\\u0000"}',
    '{"payload": "\\ud800"}',
    '{"notification": "' + "x" * 20 + '"}',
    '{"type": "a",}', '{"type": "a"} x', '{"type": "a" "payload": 1}', '{"type" "a"}',
    '{"type": "a"', '{"type": }', "{}", " { } ", "[]", "1", "", "{", "nope", "{'a': 1}",
    '{"a": 1}\n\n', '{"a": ' + "9" * 5000 + "}",
]


def _outcome(text: str) -> tuple[Any, ...]:
    try:
        return ("parsed", *jsonbody.parse_object(text, {"notification": 10}))
    except GatewayError as exc:
        return ("refused", type(exc), exc.status, exc.message, exc.details)


@pytest.mark.parametrize("text", BODIES)
def test_reading_plain_keys_by_pattern_gives_what_the_careful_reader_gives(
        text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _outcome(text)
    monkeypatch.setattr(jsonbody, "_plain_members", lambda _text: None)
    assert fast == _outcome(text)


def test_the_pattern_reader_takes_the_usual_bodies_itself() -> None:
    assert jsonbody._plain_members(BODIES[0]) == [("type", "a", '"a"'),
                                                  ("payload", {"x": 1}, '{"x":1}')]
    assert jsonbody._plain_members(BODIES[1]) is not None
    assert jsonbody._plain_members('{"ty\\u0070e": "a"}') is None


def test_ids_made_at_once_are_distinct_and_shaped_like_every_id() -> None:
    made = new_ids("evt", 500)
    assert len(set(made)) == 500
    assert all(re.fullmatch(r"evt_[0-9a-f]{32}", i) for i in made)
    assert new_ids("evt", 0) == []


def _ingested(metrics: Metrics) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    return {s.labels["type"]: s.value for f in text_string_to_metric_families(text)
            if f.name == "gateway_events_ingested" for s in f.samples
            if s.name.endswith("_total")}


def test_each_ingested_event_is_counted_once_under_its_type_or_other() -> None:
    metrics = Metrics()
    for n in range(EVENT_TYPE_LIMIT + 5):
        metrics.event_ingested(f"type.{n}")
        metrics.event_ingested(f"type.{n}")
    counts = _ingested(metrics)
    assert counts["type.0"] == 2 and counts[f"type.{EVENT_TYPE_LIMIT - 1}"] == 2
    assert counts["other"] == 10
    assert len(metrics._ingested) == EVENT_TYPE_LIMIT  # the "other" ones are not kept

