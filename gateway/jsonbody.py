"""Strict JSON request bodies that keep the raw text of each top-level member.

The event payload must reach receivers exactly as the backend wrote it (key order,
number spelling, escapes), so ingest keeps the payload's source text instead of
re-serialising a parsed copy. Parsing happens once: the top-level object is walked
here and each member value is parsed by the standard decoder in place.
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.errors import InvalidJSON, ValidationError

MAX_DEPTH = 64
_WS = re.compile(r"[ \t\n\r]*")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constants)
_scanstring: Any = getattr(json.decoder, "scanstring")  # noqa: B009 - untyped in typeshed


def _skip(text: str, idx: int) -> int:
    match = _WS.match(text, idx)
    assert match is not None
    return match.end()


def parse_object(text: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Parse a JSON object; returns it and the raw source text of each member's value.

    Raises :class:`InvalidJSON` for text that is not JSON and :class:`ValidationError`
    for JSON that is not an object or is nested deeper than :data:`MAX_DEPTH`.
    """
    try:
        return _parse_object(text)
    except RecursionError:
        raise _too_deep() from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise InvalidJSON(f"The body is not valid JSON: {exc}") from None


def _parse_object(text: str) -> tuple[dict[str, Any], dict[str, str]]:
    idx = _skip(text, 0)
    if idx >= len(text) or text[idx] != "{":
        _DECODER.decode(text)  # raises for non-JSON; otherwise it is JSON of another kind
        raise ValidationError(
            "The body must be a JSON object.",
            details=[{"path": "", "message": "expected a JSON object"}],
        )
    obj: dict[str, Any] = {}
    raw: dict[str, str] = {}
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
            value, end = _DECODER.raw_decode(text, start)
            obj[key] = value
            raw[key] = text[start:end]
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
    return obj, raw


def check_depth(value: Any, path: str, limit: int = MAX_DEPTH) -> None:
    """Refuse values nested deeper than ``limit`` (receivers' parsers choke on them)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            raise _too_deep(path, limit)
        stack.extend((child, depth + 1) for child in children)


def _too_deep(path: str = "", limit: int = MAX_DEPTH) -> ValidationError:
    return ValidationError(
        f"JSON nested deeper than {limit} levels is refused.",
        details=[{"path": path, "message": f"nested deeper than {limit} levels"}],
    )
