"""Endpoint payload filters: ``{"dotted.path": value}`` or ``{"dotted.path": [values]}``.

An event is delivered to an endpoint with a filter only when its payload matches every
entry: the value at the path equals the entry's value, or one of its values when it is a
list. Paths walk the payload like MongoDB's dotted paths:

* an object is entered by member name (a name holding a dot cannot be named);
* an array is indexed by a segment of digits (``items.0.sku``), and otherwise looked
  into: ``items.sku`` matches when any element's ``sku`` does, and a path ending at an
  array matches when any element (at any depth) does;
* a missing member or index, or a path through a string, number, boolean or null,
  matches nothing (so ``{"a": null}`` needs ``a`` present and null);
* values are JSON scalars, equal only to the same kind of scalar: ``1`` equals ``1.0``,
  never ``"1"`` or ``true``.

The database decides at ingest (``gateway_filter_matches`` in migration 0009, used by
``insert_events`` only for endpoints with a filter); :func:`matches` here is its
pure-Python twin, and the tests hold the two to the same answers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

#: Bounds that keep a filter cheap to evaluate for every event of the app.
MAX_ENTRIES = 20
MAX_SEGMENTS = 10
MAX_PATH_CHARS = 256
MAX_VALUES = 100
MAX_STRING_CHARS = 1024
#: Characters no path or value may hold: NUL (jsonb cannot hold it) and U+FFFF, which the
#: database puts in its place in payloads (``gateway_payload_jsonb``).
_FORBIDDEN = ("\x00", "\uffff")
_INDEX = re.compile(r"0|[1-9][0-9]{0,8}")

Scalar = str | int | float | bool | None


class FilterError(ValueError):
    """A filter the gateway refuses; ``path`` names the offending entry."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def check(filter_: Any) -> dict[str, Any] | None:
    """The filter as stored, or None for "every event" (``null`` or ``{}``); raises
    :class:`FilterError` for a malformed one."""
    if filter_ is None:
        return None
    if not isinstance(filter_, dict):
        raise FilterError("must be an object of dotted paths to a value or a list of values")
    if len(filter_) > MAX_ENTRIES:
        raise FilterError(f"takes at most {MAX_ENTRIES} entries")
    for path, wanted in filter_.items():
        _check_path(path)
        if isinstance(wanted, list):
            if not 1 <= len(wanted) <= MAX_VALUES:
                raise FilterError(f"a list of values takes 1 to {MAX_VALUES} values", path)
            for value in wanted:
                _check_value(value, path, listed=True)
        else:
            _check_value(wanted, path, listed=False)
    return dict(filter_) or None


def _check_path(path: str) -> None:
    if not path:
        raise FilterError("a path must not be empty", path)
    if len(path) > MAX_PATH_CHARS:
        raise FilterError(f"a path takes at most {MAX_PATH_CHARS} characters", path)
    segments = path.split(".")
    if any(not s for s in segments):
        raise FilterError("a path's segments (between dots) must not be empty", path)
    if len(segments) > MAX_SEGMENTS:
        raise FilterError(f"a path takes at most {MAX_SEGMENTS} segments", path)
    if any(c in path for c in _FORBIDDEN) or not _encodable(path):
        raise FilterError("a path must not hold NUL, U+FFFF or a lone surrogate", path)


def _check_value(value: Any, path: str, *, listed: bool) -> None:
    if isinstance(value, dict | list):
        raise FilterError("values are strings, numbers, booleans or null"
                          + (" (no lists in a list)" if listed and isinstance(value, list)
                             else " (objects are matched by a dotted path to each member)"),
                          path)
    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            raise FilterError(f"a string value takes at most {MAX_STRING_CHARS} characters",
                              path)
        if any(c in value for c in _FORBIDDEN) or not _encodable(value):
            raise FilterError("a value must not hold NUL, U+FFFF or a lone surrogate", path)
    elif not isinstance(value, int | float) and value is not None:
        raise FilterError("values are strings, numbers, booleans or null", path)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- matching: the twin of gateway_filter_matches ------------------------------------

def matches(filter_: Mapping[str, Any] | None, payload: str | Any) -> bool:
    """Whether ``payload`` (JSON text, or already parsed) passes ``filter_``."""
    if not filter_:
        return True
    document = _exact(payload if isinstance(payload, str) else json.dumps(payload))
    for path, wanted in _exact(json.dumps(dict(filter_))).items():
        values = wanted if isinstance(wanted, list) else [wanted]
        if not _reaches(document, path.split("."), values):
            return False
    return True


def _exact(text: str) -> Any:
    """JSON with numbers as Decimal, compared by value as PostgreSQL's numeric does."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def _reaches(node: Any, path: list[str], wanted: list[Any]) -> bool:
    i = 0
    while True:
        if isinstance(node, list):
            if i < len(path) and _INDEX.fullmatch(path[i]):
                index = int(path[i])
                if index >= len(node):
                    return False
                node, i = node[index], i + 1
                continue
            return any(_reaches(element, path[i:], wanted) for element in node)
        if i >= len(path):
            return not isinstance(node, dict) and any(_equal(node, w) for w in wanted)
        if not isinstance(node, dict) or path[i] not in node:
            return False
        node, i = node[path[i]], i + 1


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, Decimal) else "string"


def _equal(a: Any, b: Any) -> bool:
    return _kind(a) == _kind(b) and a == b
