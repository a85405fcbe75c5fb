"""W3C Trace Context carried from ingest to every delivery, and spans when asked for.

A ``traceparent`` header on ``POST /v1/events`` (with its ``tracestate``) is checked
against W3C Trace Context level 1, written as version 00 and stored with the event. An
invalid one is ignored, never refused: the specification says a bad header must not fail
the request. Each attempt to deliver the event is then a child of it: a webhook request
carries a ``traceparent`` with the event's trace id and a parent id of its own (a new
one per attempt, as an HTTP client span would have), and the ``tracestate`` unchanged.

Spans are OpenTelemetry's business, behind :class:`Spans`; the one implementation,
:mod:`gateway.otel`, and OpenTelemetry with it, is imported only when the standard
variables ask for spans and the ``[otel]`` extra is installed (:mod:`gateway.spans`).
Otherwise there are none and whatever would make a span skips it with one ``if``.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDictProxy

from adapters.base import DeliveryJob, Outcome

log = logging.getLogger("gateway.tracing")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: A tracestate holds at most 32 list members (level 1).
MAX_TRACESTATE_MEMBERS = 32
#: What every participant must carry of a tracestate, and what is kept of a longer one.
MAX_TRACESTATE_CHARS = 512
#: When a tracestate must be cut, members longer than this go first (level 1's order).
LONG_MEMBER_CHARS = 128

#: version-trace_id-parent_id-flags, lowercase hex only. A later version may add fields
#: after these four, each behind a dash.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_MEMBER = re.compile(
    r"(?:[a-z][a-z0-9_*/-]{0,255}|[a-z0-9][a-z0-9_*/-]{0,240}@[a-z][a-z0-9_*/-]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_SAMPLED = 0x01


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A place in a trace: a version 00 ``traceparent`` and the ``tracestate`` with it."""

    traceparent: str
    tracestate: str | None = None

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]

    @property
    def parent_id(self) -> str:
        return self.traceparent[36:52]

    @property
    def flags(self) -> int:
        return int(self.traceparent[53:55], 16)


def parse_traceparent(value: str) -> str | None:
    """``value`` as a version 00 ``traceparent``, or None when it is not one by level 1.

    Version 00 is exactly its four fields. A later version (not ``ff``) is read by its
    first four, as level 1 asks, and carried on as version 00, the one understood here;
    of the flags only ``sampled`` is kept, since the others are undefined in version 00.
    Uppercase hex, and an all-zero trace id or parent id, are invalid.
    """
    value = value.strip(" \t")
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, parent_id, flags = match.groups()
    if version == "ff" or (version == "00" and len(value) != 55):
        return None
    if len(value) > 55 and value[55] != "-":
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return f"00-{trace_id}-{parent_id}-{int(flags, 16) & _SAMPLED:02x}"


def parse_tracestate(values: Iterable[str]) -> str | None:
    """The ``tracestate`` headers (several are one comma-separated list), or None.

    Every list member must be well formed and every key appear once, at most 32 of them;
    otherwise the whole tracestate is dropped, as the specification's test suite expects
    (the traceparent still counts). Empty members are skipped. Past 512 characters,
    members over 128 characters go first, then members from the end, until it fits.
    """
    members = [m.strip(" \t") for value in values for m in value.split(",")]
    members = [m for m in members if m]
    if not members or len(members) > MAX_TRACESTATE_MEMBERS:
        return None
    keys: set[str] = set()
    for member in members:
        key = member.partition("=")[0]
        if key in keys or _MEMBER.fullmatch(member) is None:
            return None
        keys.add(key)
    text = ",".join(members)
    if len(text) <= MAX_TRACESTATE_CHARS:
        return text
    members = [m for m in members if len(m) <= LONG_MEMBER_CHARS]
    while members and len(",".join(members)) > MAX_TRACESTATE_CHARS:
        members.pop()
    return ",".join(members) or None


def incoming(headers: CIMultiDictProxy[str]) -> TraceContext | None:
    """The trace context a request comes in, or None: absent, given twice or invalid
    (ignored, with a DEBUG line)."""
    parents = headers.getall(TRACEPARENT, ())
    if not parents:
        return None
    traceparent = parse_traceparent(parents[0]) if len(parents) == 1 else None
    if traceparent is None:
        log.debug("traceparent ignored: not W3C Trace Context level 1")
        return None
    states = headers.getall(TRACESTATE, ())
    tracestate = parse_tracestate(states)
    if states and tracestate is None:
        log.debug("tracestate ignored: not W3C Trace Context level 1")
    return TraceContext(traceparent, tracestate)


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a version 00 ``traceparent`` (for log lines), or None."""
    return traceparent[3:35] if traceparent is not None else None


def new_span_id() -> str:
    """A span id: 16 random lowercase hex digits, never all zero."""
    while True:
        span_id = secrets.token_hex(8)
        if span_id != _ZERO_SPAN:
            return span_id


def child(traceparent: str) -> str:
    """A child of a version 00 ``traceparent``: same trace and flags, a new parent id."""
    return f"{traceparent[:36]}{new_span_id()}{traceparent[52:]}"


# --- spans -----------------------------------------------------------------------------

class IngestSpan(Protocol):
    """The span of one ``POST /v1/events`` while it runs."""

    @property
    def context(self) -> TraceContext:
        """What the event stores: the span's own place in the trace."""
        ...

    def accepted(self, app_id: str, event_id: str, event_type: str, status: int) -> None:
        """The event was written (or an idempotent replay answered) with ``status``."""
        ...


class AttemptSpan(Protocol):
    """The span of one delivery attempt while it runs."""

    @property
    def traceparent(self) -> str:
        """What the attempt's request carries: the span itself as the parent."""
        ...

    def finished(self, outcome: Outcome) -> None:
        """What the adapter answered."""
        ...


class Spans(Protocol):
    """Spans for ingest and every delivery attempt, exported somewhere."""

    def ingest(self, request: web.Request,
               parent: TraceContext | None) -> AbstractContextManager[IngestSpan]:
        """A SERVER span for this request, a child of the caller's trace context."""
        ...

    def attempt(self, job: DeliveryJob) -> AbstractContextManager[AttemptSpan]:
        """A CLIENT span for this attempt, a child of the event's trace context."""
        ...

    def shutdown(self) -> None:
        """Export what is left and stop (blocks: call it off the event loop)."""
        ...
