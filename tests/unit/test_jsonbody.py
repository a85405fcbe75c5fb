from __future__ import annotations

import collections
import gc
import json
import sys
import types

import pytest

from gateway.errors import InvalidJSON, ValidationError
from gateway.jsonbody import MAX_DEPTH, parse_object


def test_raw_member_text_keeps_key_order_numbers_and_escapes() -> None:
    text = '{"type": "a", "payload" : {"z": 1.50, "a": 1e3, "s": "\\u0000\\u00e9"} }'
    obj, raw = parse_object(text)
    assert raw["payload"] == '{"z": 1.50, "a": 1e3, "s": "\\u0000\\u00e9"}'
    assert obj["payload"] == json.loads(raw["payload"])
    assert raw["type"] == '"a"'


@pytest.mark.parametrize("text", ['{"a": 1, "a": [2]}', '{"payload": {"x": 1, "x": 2}}',
                                  '{"n": {"deep": [{"k": 1, "k": 1}]}}'])
def test_duplicate_keys_are_refused_at_any_depth(text: str) -> None:
    with pytest.raises(ValidationError, match="appears twice"):
        parse_object(text)


def test_empty_object_parses() -> None:
    assert parse_object(" {} ") == ({}, {})


@pytest.mark.parametrize("text", ["", "{", '{"a" 1}', '{"a": 1,}', '{"a": 1} x', "nope",
                                  '{"a": NaN}', '{"a": Infinity}', "{'a': 1}", '{"a": 1 "b": 2}'])
def test_text_that_is_not_json_is_invalid_json(text: str) -> None:
    with pytest.raises(InvalidJSON):
        parse_object(text)


@pytest.mark.parametrize("text", ["[]", "1", '"s"', "null"])
def test_json_that_is_not_an_object_is_a_validation_error(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_object(text)


def test_pathologically_deep_nesting_is_refused_not_crashed() -> None:
    with pytest.raises(ValidationError):
        parse_object('{"p": ' + "[" * 100_000 + "]" * 100_000 + "}")


@pytest.mark.parametrize("member", ["payload", "notification"])
def test_depth_limit_allows_the_limit_and_refuses_one_more(member: str) -> None:
    ok: object = {"s": "[[[[{{{{ brackets in strings do not count \\\" ]]]"}  # depth 1
    for _ in range(MAX_DEPTH - 1):
        ok = {"a": ok, "b": [1]}
    parse_object(json.dumps({member: ok}))
    with pytest.raises(ValidationError) as refused:
        parse_object(json.dumps({member: [ok]}))
    assert refused.value.details[0]["path"] == member


def test_wide_bodies_of_tiny_containers_are_checked_without_a_python_walk() -> None:
    wide = ",".join(["[]", "{}"] * 20_000)
    text = f'{{"payload": [{wide}], "other": [{wide}, "\\\\u0000"]}}'
    calls: collections.Counter[str] = collections.Counter()

    def count(frame: types.FrameType, event: str, arg: object) -> None:
        if event == "call":
            calls[frame.f_code.co_name] += 1

    # Garbage an earlier test left (its finalizers and weakref callbacks) is collected
    # before, not while the calls are counted.
    gc.collect()
    gc.disable()
    sys.setprofile(count)
    try:
        parse_object(text)
    finally:
        sys.setprofile(None)
        gc.enable()
    # The C decoder calls the duplicate-key hook once per object; nothing else in Python
    # runs per node (a node-by-node walk costs ten times the decoder on such bodies).
    per_node = {name: n for name, n in calls.items() if n > 100 and name != "_unique"}
    assert per_node == {}
    assert calls["_unique"] == 40_000


@pytest.mark.parametrize(("text", "path"), [
    ('{"payload": {"n": 1e999}}', "payload"),
    ('{"payload": [-1E400]}', "payload"),
    ('{"notification": {"badge": 1e309}}', "notification"),
])
def test_numbers_beyond_float_range_are_refused_with_their_field(text: str, path: str) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_object(text)
    assert refused.value.details[0]["path"] == path


@pytest.mark.parametrize(("text", "path"), [
    ('{"notification": {"title": "a\\u0000b"}}', "notification.title"),
    ('{"notification": {"title": "a\\u0000B\\\\"}}', "notification.title"),
    ('{"notification": {"title": "\\ud83d\\ude00\\udfff"}}', "notification.title"),
    ('{"payload": {"x": ["\\uDBFF"]}}', "payload.x.0"),
    ('{"payload": {"\\udfff": 1}}', "payload"),
    ('{"notification": {"data": {"k\\ud800": "v"}}}', "notification.data"),
    ('{"user_ids": ["ok", "\\udfff"]}', "user_ids.1"),
    ('{"type": "\\u0000"}', "type"),
])
def test_text_the_database_cannot_hold_is_refused_outside_the_payload(text: str,
                                                                       path: str) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_object(text)
    assert refused.value.details[0]["path"] == path


def test_the_raw_payload_keeps_nul_and_surrogate_pair_escapes_byte_for_byte() -> None:
    _, raw = parse_object('{"payload": {"s": "\\u0000\\ud83d\\ude00\\\\ud800"}}')
    assert raw["payload"] == '{"s": "\\u0000\\ud83d\\ude00\\\\ud800"}'


@pytest.mark.parametrize("text", [
    '{"t": "\\\\u0000"}',  # an escaped backslash, then the letters u0000
    '{"t": "\\uD83D\\uDE00"}',
    '{"t": "\\u00e9\\u0001"}',
])
def test_escapes_that_only_look_unstorable_are_kept(text: str) -> None:
    parse_object(text)


def test_members_longer_than_their_limit_are_refused_by_name() -> None:
    parse_object('{"notification": {"title": "abc"}}', limits={"notification": 16})
    with pytest.raises(ValidationError) as refused:
        parse_object('{"notification": {"title": "abcd"}}', limits={"notification": 16})
    assert refused.value.details[0]["path"] == "notification"


def test_deep_nesting_outside_the_payload_is_refused_too() -> None:
    with pytest.raises(ValidationError):
        parse_object('{"notification": {"apns": ' + '{"a": ' * 70 + "1" + "}" * 70 + "}}")
