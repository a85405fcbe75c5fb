from __future__ import annotations

import json

import pytest

from gateway.errors import InvalidJSON, ValidationError
from gateway.jsonbody import MAX_DEPTH, check_depth, parse_object


def test_raw_member_text_keeps_key_order_numbers_and_escapes() -> None:
    text = '{"type": "a", "payload" : {"z": 1.50, "a": 1e3, "s": "\\u0000\\u00e9"} }'
    obj, raw = parse_object(text)
    assert raw["payload"] == '{"z": 1.50, "a": 1e3, "s": "\\u0000\\u00e9"}'
    assert obj["payload"] == json.loads(raw["payload"])
    assert raw["type"] == '"a"'


def test_duplicate_keys_keep_the_last_like_the_standard_parser() -> None:
    obj, raw = parse_object('{"a": 1, "a": [2]}')
    assert obj == {"a": [2]} and raw["a"] == "[2]"


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


def test_depth_limit_allows_the_limit_and_refuses_one_more() -> None:
    ok: object = {}
    for _ in range(MAX_DEPTH - 1):
        ok = {"a": ok}
    check_depth(ok, "payload")
    with pytest.raises(ValidationError):
        check_depth([ok], "payload")
