"""Custom headers an endpoint's webhooks carry (``"headers": {"name": "value"}``).

Names are RFC 9110 tokens, compared without regard to case. The gateway refuses the
headers it writes itself or that shape the connection: the Standard Webhooks ones
(``webhook-*``), the body's description (``content-*``), ``host``, ``user-agent``, the
trace context, ``expect``, and the hop-by-hop headers (RFC 9110 section 7.6.1:
``connection``, ``keep-alive``, ``proxy-*``, ``te``, ``trailer``, ``transfer-encoding``,
``upgrade``). Values are visible ASCII, spaces and tabs: no CR, LF, NUL or other control
character can split a request. Values are sealed at rest like the signing secret, since
they often carry a receiver's credentials.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from gateway.crypto import Sealer

MAX_HEADERS = 32
MAX_NAME_CHARS = 256
MAX_VALUE_CHARS = 4096

#: RFC 9110 section 5.6.2: token = 1*tchar.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Visible ASCII, space and horizontal tab (RFC 9110 field-value, without obs-text).
_VALUE = re.compile(r"[\t\x20-\x7e]*")

FORBIDDEN_NAMES = frozenset({
    "host", "user-agent", "traceparent", "tracestate", "expect",
    "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
})
FORBIDDEN_PREFIXES = ("webhook-", "proxy-", "content-")


class HeaderError(ValueError):
    """A header the gateway refuses; ``name`` is the offending header's name."""

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.name = name


def check(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The headers as stored (``null`` means none); raises :class:`HeaderError`."""
    if not headers:
        return {}
    if len(headers) > MAX_HEADERS:
        raise HeaderError(f"an endpoint takes at most {MAX_HEADERS} headers")
    seen: set[str] = set()
    for name, value in headers.items():
        lowered = name.lower()
        if not _TOKEN.fullmatch(name) or len(name) > MAX_NAME_CHARS:
            raise HeaderError(f"a header name is an RFC 9110 token of 1 to {MAX_NAME_CHARS} "
                              "letters, digits and !#$%&'*+-.^_`|~", name)
        if lowered in FORBIDDEN_NAMES or lowered.startswith(FORBIDDEN_PREFIXES):
            raise HeaderError("the gateway sets this header itself, or it is hop-by-hop "
                              "(refused: webhook-*, content-*, host, user-agent, traceparent, "
                              "tracestate, expect, connection, keep-alive, proxy-*, te, "
                              "trailer, transfer-encoding, upgrade)", name)
        if lowered in seen:
            raise HeaderError("the same header is named twice (names ignore case)", name)
        seen.add(lowered)
        if not isinstance(value, str) or not _VALUE.fullmatch(value):
            raise HeaderError("a header value is text of visible ASCII characters, spaces "
                              "and tabs (no CR, LF, NUL or other control characters)", name)
        if len(value) > MAX_VALUE_CHARS:
            raise HeaderError(f"a header value takes at most {MAX_VALUE_CHARS} characters",
                              name)
    return dict(headers)


def sealing_context(endpoint_id: str, name: str) -> str:
    """What a header's sealed value is bound to: its endpoint and its (lowercased) name,
    so a value copied to another header or endpoint does not open."""
    return f"endpoint:{endpoint_id}:header:{name.lower()}"


def seal_headers(sealer: Sealer, endpoint_id: str, headers: Mapping[str, str]) -> str:
    """The headers as stored: JSON text of names to sealed values."""
    return json.dumps({name: sealer.seal(value, sealing_context(endpoint_id, name))
                       for name, value in headers.items()})


def open_headers(sealer: Sealer, endpoint_id: str,
                 stored: str | Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """The stored headers opened, as (name, value) pairs in their order; raises
    :class:`~gateway.crypto.SecretUnreadable` when a value does not open."""
    if not stored:
        return ()
    found = json.loads(stored) if isinstance(stored, str) else stored
    return tuple((name, sealer.open(value, sealing_context(endpoint_id, name)))
                 for name, value in found.items())
