"""Endpoint payload filters: what is refused, and what matches (gateway/filters.py). The
same cases run against the SQL function in tests/integration/test_endpoint_options.py."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import filters

#: (filter, payload as JSON text, matches?): shared with the SQL twin's test.
CASES: list[tuple[dict[str, Any], str, bool]] = [
    ({"a": 1}, '{"a": 1}', True),
    ({"a": 1}, '{"a": 1.0}', True),
    ({"a": 1.0}, '{"a": 1}', True),
    ({"a": 1}, '{"a": 1e0}', True),
    ({"a": 100}, '{"a": 1E2}', True),
    ({"a": 0.1}, '{"a": 0.10}', True),
    ({"a": 1}, '{"a": 1.5}', False),
    ({"a": 12345678901234567890}, '{"a": 12345678901234567890}', True),
    ({"a": 12345678901234567890}, '{"a": 12345678901234567891}', False),
    ({"a": 1}, '{"a": "1"}', False),
    ({"a": "1"}, '{"a": 1}', False),
    ({"a": True}, '{"a": 1}', False),
    ({"a": 1}, '{"a": true}', False),
    ({"a": False}, '{"a": 0}', False),
    ({"a": True}, '{"a": true}', True),
    ({"a": False}, '{"a": false}', True),
    ({"a": None}, '{"a": null}', True),
    ({"a": None}, "{}", False),
    ({"a": None}, '{"a": false}', False),
    ({"a": ""}, '{"a": null}', False),
    ({"a": "x"}, "{}", False),
    ({"a.b": "x"}, '{"a": {"b": "x"}}', True),
    ({"a.b": "x"}, '{"a": "x"}', False),
    ({"a.b": "x"}, '{"a": {"b": {"c": "x"}}}', False),
    ({"a": "x"}, '{"a": {"b": "x"}}', False),
    ({"a.b.c.d": 4}, '{"a": {"b": {"c": {"d": 4}}}}', True),
    ({"region": ["eu", "us"]}, '{"region": "us"}', True),
    ({"region": ["eu", "us"]}, '{"region": "asia"}', False),
    ({"n": [1, "1", None]}, '{"n": null}', True),
    ({"n": [1, "1"]}, '{"n": 1.0}', True),
    ({"tags": "vip"}, '{"tags": ["new", "vip"]}', True),
    ({"tags": "vip"}, '{"tags": []}', False),
    ({"tags": "vip"}, '{"tags": [["vip"]]}', True),
    ({"tags": ["a", "b"]}, '{"tags": ["c", "b"]}', True),
    ({"items.sku": "A1"}, '{"items": [{"sku": "B2"}, {"sku": "A1"}]}', True),
    ({"items.sku": "C3"}, '{"items": [{"sku": "B2"}, {"sku": "A1"}]}', False),
    ({"items.0.sku": "A1"}, '{"items": [{"sku": "A1"}, {"sku": "B2"}]}', True),
    ({"items.1.sku": "A1"}, '{"items": [{"sku": "A1"}, {"sku": "B2"}]}', False),
    ({"items.2.sku": "A1"}, '{"items": [{"sku": "A1"}, {"sku": "B2"}]}', False),
    ({"items.0": "x"}, '{"items": {"0": "x"}}', True),
    ({"items.01": "x"}, '{"items": ["y", "x"]}', False),
    ({"a.b.c": 1}, '{"a": [{"b": [{"c": 2}, {"c": 1}]}]}', True),
    ({"a.b": 1}, '{"a": [[{"b": 1}]]}', True),
    ({"a.b": 1}, '{"a": [1, "b", null, {"b": 1}]}', True),
    ({"a": 1}, '{"a": [{"x": 1}]}', False),
    ({"a": "x\u00e9"}, '{"a": "x\\u00e9"}', True),
    ({"a": "x"}, '{"a": "x\\u0000"}', False),
    ({"b": "ok"}, '{"a": "x\\u0000y", "b": "ok"}', True),
    ({"b": "ok"}, '{"a\\u0000": 1, "b": "ok"}', True),
    ({"a": "\\u0000"}, '{"a": "\\\\u0000"}', True),
    ({"a": 1, "b": 2}, '{"a": 1, "b": 2}', True),
    ({"a": 1, "b": 2}, '{"a": 1, "b": 3}', False),
    ({"k.with": 1}, '{"k.with": 1}', False),
]


@pytest.mark.parametrize(("filter_", "payload", "expected"), CASES)
def test_a_payload_matches_when_every_entry_does(filter_: dict[str, Any], payload: str,
                                                 expected: bool) -> None:
    assert filters.check(filter_) == filter_
    assert filters.matches(filter_, payload) is expected


def test_no_filter_and_an_empty_one_let_every_event_through() -> None:
    assert filters.check(None) is None
    assert filters.check({}) is None
    assert filters.matches(None, '{"a": 1}') and filters.matches({}, "{}")


@pytest.mark.parametrize(("filter_", "path", "needle"), [
    ([1], "", "object"),
    ("a", "", "object"),
    ({"": 1}, "", "empty"),
    ({".a": 1}, ".a", "segments"),
    ({"a.": 1}, "a.", "segments"),
    ({"a..b": 1}, "a..b", "segments"),
    ({"a": {"b": 1}}, "a", "objects are matched by a dotted path"),
    ({"a": [[1]]}, "a", "no lists in a list"),
    ({"a": [{"b": 1}]}, "a", "strings, numbers"),
    ({"a": []}, "a", "1 to 100"),
    ({"a": list(range(101))}, "a", "1 to 100"),
    ({f"k{i}": i for i in range(21)}, "", "at most 20"),
    ({".".join("abcdefghijk"): 1}, ".".join("abcdefghijk"), "at most 10 segments"),
    ({"a" * 257: 1}, "a" * 257, "256 characters"),
    ({"a": "x" * 1025}, "a", "1024 characters"),
    ({"a\x00": 1}, "a\x00", "NUL"),
    ({"a": "x\uffff"}, "a", "NUL, U+FFFF"),
    ({"a": "\ud800"}, "a", "surrogate"),
])
def test_malformed_filters_are_refused_naming_the_entry(filter_: Any, path: str,
                                                        needle: str) -> None:
    with pytest.raises(filters.FilterError) as caught:
        filters.check(filter_)
    assert caught.value.path == path
    assert needle in caught.value.message


def test_the_bounds_themselves_are_accepted() -> None:
    largest = {f"{'.'.join(['s'] * 10)}{i}": list(range(100)) for i in range(20)}
    assert filters.check(largest) == largest
    assert filters.check({"a" * 256: "x" * 1024}) is not None
