"""Strict JSON request bodies that keep the raw text of each top-level member.

The event payload must reach receivers exactly as the backend wrote it (key order,
number spelling, escapes), so ingest keeps the payload's source text instead of
re-serialising a parsed copy. Parsing happens once: the top-level object is walked
here and each member value is parsed by the standard decoder in place.

What the database or a JSON reader cannot take is refused here, with the field's path,
before anything is written (a value that broke a batched write would fail everyone's
requests in the batch): duplicate object keys (the body hashed and stored would not be
the body read), numbers beyond float range (``1e999`` would come back as ``Infinity``),
``NaN``/``Infinity``, nesting deeper than :data:`MAX_DEPTH`, lone surrogate escapes
(I-JSON, RFC 7493: no receiver's UTF-8 could carry them) and, outside the raw payload,
``\u0000`` (PostgreSQL text cannot hold NUL).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from gateway.errors import InvalidJSON, ValidationError

MAX_DEPTH = 64
#: Top-level members kept as raw text and stored as such: ``\u0000`` is storable there
#: (it stays an escape in the text).
RAW_MEMBERS = frozenset({"payload"})
_WS = re.compile(r"[ \t\n\r]*")


class _Refused(ValueError):
    """A JSON value the gateway refuses (raised inside the decoder, mapped to a 422)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Refused(f"the number {text[:40]} is beyond the range of a double")
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"the key {key[:40]!r} appears twice in one object")
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite,
                            object_pairs_hook=_unique)
_scanstring: Any = getattr(json.decoder, "scanstring")  # noqa: B009 - untyped in typeshed


def _skip(text: str, idx: int) -> int:
    match = _WS.match(text, idx)
    assert match is not None
    return match.end()


def parse_object(text: str, limits: Mapping[str, int] | None = None,
                 ) -> tuple[dict[str, Any], dict[str, str]]:
    """Parse a JSON object; returns it and the raw source text of each member's value.

    Raises :class:`InvalidJSON` for text that is not JSON and :class:`ValidationError`
    for JSON the gateway refuses (not an object, too deep, a duplicate key, a number
    beyond float range, text the database cannot hold outside the payload, a member
    whose text is longer than its entry in ``limits``).

    The checks after parsing read the member's source text with regular expressions,
    not the parsed values node by node: a body of tens of thousands of tiny containers
    costs about what the C decoder spends on it, never seconds of the event loop.
    """
    try:
        obj: dict[str, Any] = {}
        raw: dict[str, str] = {}
        for key, value, source in _plain_members(text) or _members(text):
            if key in obj:
                raise _Refused(f"the key {key[:40]!r} appears twice in one object", key)
            obj[key] = value
            raw[key] = source
    except RecursionError:
        raise _too_deep_error() from None
    except _Refused as exc:
        raise ValidationError(f"Invalid field '{exc.path}': {exc.message}." if exc.path
                              else f"Invalid body: {exc.message}.",
                              details=[{"path": exc.path, "message": exc.message}]) from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise InvalidJSON(f"The body is not valid JSON: {exc}") from None
    for key, value in obj.items():
        limit = (limits or {}).get(key)
        if limit is not None and len(raw[key]) > limit:
            message = f"is larger than {limit} characters of JSON"
            raise ValidationError(f"Invalid field '{key}': {message}.",
                                  details=[{"path": key, "message": message}])
        if _too_deep(raw[key]):
            raise _too_deep_error(key)
        if not storable_json(raw[key], nul=key in RAW_MEMBERS):
            raise _unstorable(_unstorable_path(value, key, raw[key]))
    return obj, raw


#: A key spelt without escapes or control characters, and its colon, with the whitespace
#: around them; then what follows a value: a comma or the closing brace.
_PLAIN_KEY = re.compile(r'[ \t\n\r]*"([^"\\\x00-\x1f]*)"[ \t\n\r]*:[ \t\n\r]*')
_AFTER_VALUE = re.compile(r"[ \t\n\r]*([,}])")
_OPEN = re.compile(r"[ \t\n\r]*\{")
_END = re.compile(r"[ \t\n\r]*\Z")


def _plain_members(text: str) -> list[tuple[str, Any, str]] | None:
    """What :func:`_members` returns, for the usual body: a non-empty object whose keys
    have no escapes, read with two regular expressions per member instead of a scan
    step by step. None for any other text, and for any value that does not parse:
    :func:`_members` then reads it again and says what is wrong, as it always did."""
    opened = _OPEN.match(text)
    if opened is None:
        return None
    members: list[tuple[str, Any, str]] = []
    idx = opened.end()
    while True:
        key = _PLAIN_KEY.match(text, idx)
        if key is None:
            return None
        start = key.end()
        try:
            value, end = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):
            return None
        members.append((key[1], value, text[start:end]))
        after = _AFTER_VALUE.match(text, end)
        if after is None:
            return None
        idx = after.end()
        if after[1] == "}":
            return members if _END.match(text, idx) else None


def _members(text: str) -> list[tuple[str, Any, str]]:
    idx = _skip(text, 0)
    if idx >= len(text) or text[idx] != "{":
        _DECODER.decode(text)  # raises for non-JSON; otherwise it is JSON of another kind
        raise ValidationError(
            "The body must be a JSON object.",
            details=[{"path": "", "message": "expected a JSON object"}],
        )
    members: list[tuple[str, Any, str]] = []
    idx = _skip(text, idx + 1)
    if text.startswith("}", idx):
        idx += 1
    else:
        while True:
            if not text.startswith('"', idx):
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes",
                                           text, idx)
            key, idx = _scanstring(text, idx + 1)
            idx = _skip(text, idx)
            if not text.startswith(":", idx):
                raise json.JSONDecodeError("Expecting ':' delimiter", text, idx)
            start = _skip(text, idx + 1)
            try:
                value, end = _DECODER.raw_decode(text, start)
            except _Refused as exc:
                raise _Refused(exc.message, key) from None
            except RecursionError:
                raise _too_deep_error(key) from None
            members.append((key, value, text[start:end]))
            idx = _skip(text, end)
            if text.startswith(",", idx):
                idx = _skip(text, idx + 1)
                continue
            if text.startswith("}", idx):
                idx += 1
                break
            raise json.JSONDecodeError("Expecting ',' delimiter", text, idx)
    if _skip(text, idx) != len(text):
        raise json.JSONDecodeError("Extra data", text, idx)
    return members


def storable(value: str) -> bool:
    """PostgreSQL text and jsonb hold neither NUL nor lone surrogates."""
    return "\x00" not in value and _encodable(value)


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"\[\]|\{\}")
_ESCAPED_BACKSLASH = re.compile(r"\\\\")
_SURROGATE_PAIR = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_UNSTORABLE_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
#: Beyond this much source text, an unstorable member is reported by its name alone
#: (finding the exact path walks every node).
_PATH_SEARCH_LIMIT = 16_384


def _too_deep(source: str, limit: int = MAX_DEPTH) -> bool:
    """Whether valid JSON ``source`` nests containers deeper than ``limit``: strings
    dropped, then innermost ``[]``/``{}`` pairs peeled off once per level."""
    if source.count("[") + source.count("{") <= limit:
        return False  # not enough openers, in strings or not, to nest that deep
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", source))
    for _ in range(limit):
        if not brackets:
            return False
        brackets = _INNERMOST.sub("", brackets)
    return bool(brackets)


def storable_json(source: str, *, nul: bool = False) -> bool:
    """Whether valid JSON ``source`` (decoded from UTF-8, so NUL and lone surrogates can
    only be escapes) holds no lone surrogate escape and, unless ``nul``, no ``\\u0000``.
    """
    if "\\u" not in source:
        return True
    escapes = _SURROGATE_PAIR.sub("", _ESCAPED_BACKSLASH.sub("", source))
    return (_SURROGATE_ESCAPE if nul else _UNSTORABLE_ESCAPE).search(escapes) is None


def _unstorable_path(value: Any, key: str, source: str) -> str:
    if len(source) > _PATH_SEARCH_LIMIT:
        return key
    try:
        check_storable(value, key, nul=key in RAW_MEMBERS)
    except ValidationError as exc:
        return str(exc.details[0]["path"]) if exc.details else key
    return key


def check_storable(value: Any, path: str, *, nul: bool = False) -> None:
    """Refuse lone surrogates and, unless ``nul``, NUL in any key or string below
    ``value``."""
    fits = _encodable if nul else storable
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if not fits(item):
                raise _unstorable(where)
        elif isinstance(item, dict):
            for key, child in item.items():
                if not fits(key):
                    raise _unstorable(where)
                stack.append((child, f"{where}.{key}" if where else key))
        elif isinstance(item, list):
            stack.extend((child, f"{where}.{i}") for i, child in enumerate(item))


def _unstorable(path: str) -> ValidationError:
    message = "holds a NUL character or a lone surrogate, which cannot be stored"
    return ValidationError(f"Invalid field '{path}': {message}.",
                           details=[{"path": path, "message": message}])


def _too_deep_error(path: str = "", limit: int = MAX_DEPTH) -> ValidationError:
    return ValidationError(
        f"JSON nested deeper than {limit} levels is refused.",
        details=[{"path": path, "message": f"nested deeper than {limit} levels"}],
    )
