"""A small asyncio HTTP/2-over-TLS client pool on the ``h2`` state machine, for APNs.

Why not httpx/httpcore: when a server ends a connection with GOAWAY (Apple does on
maintenance or idle, hypercorn after 1,000 requests) httpcore re-sends streams the server
had already processed, so pushes arrive twice; and when a server lowers
SETTINGS_MAX_CONCURRENT_STREAMS mid-connection httpcore waits for a stream slot while
holding its read lock, so the responses that would free a slot are never read and pushes
stop for good. This module keeps the two concerns apart:

* Each connection is an :class:`asyncio.Protocol`; ``data_received`` is its reader. It
  feeds ``h2``, resolves one future per stream and never waits for anything, so reading
  can never be blocked by a request waiting for a slot.
* Requests that find no free stream slot queue in one FIFO per pool; a freed slot (a
  response read, a stream reset, a SETTINGS raise, a new connection) is handed to the
  oldest waiter directly. Waiting holds nothing the reader needs.
* What happened to a request is decided from what the server guarantees: REFUSED_STREAM
  and streams above a GOAWAY's last-stream-id were not processed and are re-sent
  transparently (a bounded number of times); anything else that dies after the request
  went out raises :class:`ConnectionLost` (outcome unknown) and is never re-sent here.

Why GOAWAY frames never reach ``h2`` (checked in h2 4.4.1, ``h2/connection.py``):
``H2Connection._receive_goaway_frame`` feeds ``RECV_GOAWAY`` to the connection state
machine, which moves to ``ConnectionState.CLOSED`` and clears the outbound buffer. The
transition table has no ``(CLOSED, RECV_HEADERS | RECV_DATA | RECV_WINDOW_UPDATE |
RECV_RST_STREAM | ...)`` entries, so any frame after the GOAWAY raises
``ProtocolError("Invalid input ConnectionInputs.RECV_HEADERS in state
ConnectionState.CLOSED")``; ``receive_data`` then queues its own GOAWAY(PROTOCOL_ERROR)
and discards every event it had already parsed from the same read, including the
``ConnectionTerminated`` itself. Sending is refused in that state too (``SEND_RST_STREAM``,
``SEND_WINDOW_UPDATE``). But RFC 9113 6.8 lets the server finish streams up to
last-stream-id after its GOAWAY, and servers commonly write the GOAWAY and those responses
in one TCP segment. So :class:`_Connection` splits incoming bytes into frames itself
(9-byte header: 24-bit length, 8-bit type, 8-bit flags, 31-bit stream id), hands every
run of non-GOAWAY frames to ``h2`` and handles GOAWAY frames (type 0x7; payload:
last-stream-id, error code, debug data) itself: ``h2`` stays open and keeps accepting the
responses, the connection just stops opening streams.

CPU (some 100k pushes a run): one ``transport.write`` per connection per loop iteration,
futures rather than tasks per request, and three measured adjustments to h2's defaults (see
``_PlainEncoder``, ``_H2Connection`` and :meth:`HTTP2Pool.request`): no Huffman coding of
header literals, request paths kept out of the HPACK table, the open-stream count taken
from our own books, and a request's headers checked once by :func:`check_headers` instead
of by h2's generic normalizing and validating passes.

Imports only the standard library, ``h2`` and its ``hpack``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import re
import ssl
import urllib.parse
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.utilities
import hpack

__all__ = [
    "ConnectError",
    "ConnectionLost",
    "HTTP2Error",
    "HTTP2Pool",
    "RequestTimeout",
    "Response",
    "StreamReset",
]

#: Re-sends of one request the server guaranteed it did not process (REFUSED_STREAM or
#: above a GOAWAY's last-stream-id) before giving up.
MAX_RESENDS = 3
#: How long a new connection that has not answered a request yet may stay at its first
#: SETTINGS_MAX_CONCURRENT_STREAMS before a saturated pool opens another connection
#: (APNs starts at 1 and raises the limit once a request with a valid token went through).
WARMUP_S = 1.0
#: After a failed connect, how long to serve waiters with the connections there are before
#: trying to add one again.
RECONNECT_BACKOFF_S = 1.0
#: Our receive windows: large, so the server rarely waits for a WINDOW_UPDATE and we
#: rarely send one.
STREAM_WINDOW = 1 << 22
CONNECTION_WINDOW = 1 << 24
#: How long close() waits for TLS close_notify exchanges before aborting sockets.
CLOSE_GRACE_S = 2.0
#: h2's own walk over its streams (which also forgets closed ones) runs once per this many
#: new streams; the count in between is ours.
PRUNE_EVERY = 128

_FRAME_HEADER_LEN = 9
_GOAWAY = 0x7
_DEFAULT_WINDOW = 65535
_REFUSED_STREAM = h2.errors.ErrorCodes.REFUSED_STREAM
_CANCEL = h2.errors.ErrorCodes.CANCEL
#: Fields HPACK must never index (RFC 7541 7.1.3), as h2's own normalizing marks them:
#: credentials, open to guessing through the compression context.
_SENSITIVE = frozenset({b"authorization", b"proxy-authorization"})
#: A field name as HTTP/2 sends it: an RFC 9110 token in lower case (RFC 9113 8.2.1).
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
#: Fields h2's outbound passes treat specially: connection-specific ones (dropped; RFC
#: 9113 8.2.2), ``te`` (only ``trailers``), ``host`` (must agree with ``:authority``) and
#: ``cookie`` (a short one never indexed). A request naming one goes through those passes.
_SPECIAL_FIELDS = frozenset({"connection", "proxy-connection", "keep-alive",
                             "transfer-encoding", "upgrade", "te", "host", "cookie"})


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    #: Lower-case names (HTTP/2 requires them); a repeated name keeps its last value.
    headers: dict[str, str]
    body: bytes


class HTTP2Error(Exception):
    """Root of this module's errors."""


class ConnectError(HTTP2Error):
    """The request never reached a server that could process it: connect, TLS or ALPN
    failed, the pool is closed, or every connection tried went away (GOAWAY) before taking
    it. Safe to retry.

    ``tls_alert`` names the TLS alert the server ended the handshake with, as OpenSSL
    spells it (``TLSV1_ALERT_UNKNOWN_CA``, ``SSLV3_ALERT_CERTIFICATE_EXPIRED``...), when
    that is why: the server refused something of ours, such as a client certificate, and
    the caller may judge that retrying will not help."""

    def __init__(self, message: str, *, tls_alert: str | None = None) -> None:
        self.tls_alert = tls_alert
        super().__init__(message)


class StreamReset(HTTP2Error):
    """The server reset the stream (RST_STREAM). ``error_code`` is an
    :class:`h2.errors.ErrorCodes` value; REFUSED_STREAM (not processed, safe to retry) only
    reaches the caller once the transparent re-sends are exhausted."""

    def __init__(self, error_code: int) -> None:
        self.error_code = error_code
        super().__init__(f"stream reset by the server: {_code_name(error_code)}")


class ConnectionLost(HTTP2Error):
    """The connection died after the request was (possibly) processed: the outcome is
    unknown and the request was not re-sent; the caller decides."""


class RequestTimeout(HTTP2Error):
    """No response within ``timeout_s``. ``request_sent`` False means nothing of the
    request reached a server that could have processed it (safe to retry); True means the
    outcome is unknown. The stream was reset with CANCEL and its slot freed."""

    def __init__(self, message: str, *, request_sent: bool) -> None:
        self.request_sent = request_sent
        super().__init__(message)


class _Unprocessed(Exception):
    """The server guarantees it did not process this attempt: re-send it."""

    def __init__(self, refused: bool) -> None:
        self.refused = refused
        super().__init__("refused" if refused else "above GOAWAY last-stream-id")

    def give_up(self) -> HTTP2Error:
        if self.refused:
            return StreamReset(_REFUSED_STREAM)
        return ConnectError("every connection tried went away (GOAWAY) before taking the request")


def _code_name(code: int) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


def _tls_alert(exc: BaseException | None) -> str | None:
    """The TLS alert a server sent, if ``exc`` (or what caused it) is OpenSSL reporting one.
    With TLS 1.3 a client certificate is judged after the client finished its handshake,
    so the alert arrives as the connection's first read fails; with TLS 1.2, during it."""
    while exc is not None:
        if isinstance(exc, ConnectError) and exc.tls_alert:
            return exc.tls_alert
        reason = getattr(exc, "reason", None)
        if isinstance(exc, ssl.SSLError) and isinstance(reason, str) and "_ALERT_" in reason:
            return reason
        exc = exc.__cause__
    return None


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _text(value: bytes | str) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def check_headers(method: str, authority: str, path: str,
                  headers: Sequence[tuple[str, str]]) -> Sequence[tuple[str, str]]:
    """The headers to send (besides the pseudo-headers, which the pool adds), as h2's own
    outbound passes would send them; ValueError for what HTTP/2 forbids (RFC 9113 8.2). A
    server answers a malformed request with a stream or connection error, which may take
    every stream in flight down with it. h2 is told not to check (``_H2Connection``): the
    common request (lower-case token names, no field HTTP/2 treats specially, values
    without surrounding whitespace) is returned as it is, after one look at each header;
    anything else goes through h2's passes here (:func:`_normalized`)."""
    if path[:1] != "/":
        raise ValueError(f"invalid request path {path!r}")
    plain = True
    for name, value in headers:
        if not name or name[:1] == ":" or "\n" in value or "\r" in value or "\0" in value:
            raise ValueError(f"invalid request header {name!r}: {value!r}")
        if plain and (not _FIELD_NAME.fullmatch(name) or name in _SPECIAL_FIELDS
                      or value != value.strip()):
            plain = False
    return headers if plain else _normalized(method, authority, path, headers)


def _normalized(method: str, authority: str, path: str,
                headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """What h2's outbound passes make of ``headers``: names lower-cased, names and values
    stripped, connection-specific fields dropped; then a ``te`` other than ``trailers``, a
    ``host`` other than the authority or a pseudo-header among them refused, as is a name
    that is no token (h2 would have sent it, and the server refused the stream)."""
    flags = h2.utilities.HeaderValidationFlags(
        is_client=True, is_trailer=False, is_response_header=False, is_push_promise=False)
    request = [(":method", method), (":scheme", "https"), (":authority", authority),
               (":path", path), *headers]
    try:
        sent = list(h2.utilities.validate_outbound_headers(
            h2.utilities.normalize_outbound_headers(
                h2.utilities.utf8_encode_headers(request), flags), flags))
    except h2.exceptions.ProtocolError as exc:
        raise ValueError(f"invalid request header: {exc}") from None
    kept = [(_text(name), _text(value)) for name, value in sent[4:]]
    for name, value in kept:
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"invalid request header {name!r}: {value!r}")
    return kept


class _PlainEncoder(hpack.Encoder):
    """HPACK tuned for CPU. h2 always asks for Huffman-coded literals, and hpack's
    pure-Python coder costs about 70 us per long value: most of the client's CPU on an APNs
    request (a ~200-byte provider token that h2 never indexes, a 74-byte device path, the
    apns-id). Plain literals cost some 30% more header bytes on the wire instead. And hpack
    searches its dynamic table linearly for every header sent, so values that never repeat
    (``unique`` names) are sent as never-indexed literals instead of filling that table."""

    def __init__(self, unique: frozenset[bytes]) -> None:
        super().__init__()
        self._unique = unique | _SENSITIVE

    def encode(
        self,
        headers: Iterable[
            hpack.HeaderTuple
            | tuple[bytes | str, bytes | str]
            | tuple[bytes | str, bytes | str, bool | None]
        ]
        | dict[bytes | str, bytes | str],
        huffman: bool = True,
    ) -> bytes:
        if not isinstance(headers, dict):
            unique = self._unique
            headers = [
                hpack.NeverIndexedHeaderTuple(h[0], h[1])
                if h[0] in unique or (h[0] == b"cookie" and len(h[1]) < 20) else h
                for h in headers
            ]
        return super().encode(headers, huffman=False)


class _H2Connection(h2.connection.H2Connection):
    """``send_headers`` checks the peer's stream limit with ``open_outbound_streams``,
    which walks every stream h2 holds: O(open streams) per request, about 0.2 ms at
    APNs' 1,000. Our own count (``_Connection.streams``) is the same number while the
    connection may open streams, and the pool never opens one beyond the limit, so it is
    answered from that; h2's walk still runs every :data:`PRUNE_EVERY` streams to forget
    closed streams."""

    def __init__(self, owner: _Connection) -> None:
        # h2's outbound passes (lower-casing, stripping, marking credentials never-indexed,
        # then rejecting what HTTP/2 forbids: eight generators over every header of every
        # request) cost an APNs push more than the HPACK coding itself. A request's headers
        # are checked once, in HTTP2Pool.request (check_headers), and credentials are
        # kept out of the HPACK table by _PlainEncoder. Responses are still validated.
        super().__init__(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        self.encoder = _PlainEncoder(owner.unique_headers)
        self._owner = owner
        self._until_prune = PRUNE_EVERY

    @property
    def open_outbound_streams(self) -> int:
        self._until_prune -= 1
        if self._until_prune > 0:
            return len(self._owner.streams)
        self._until_prune = PRUNE_EVERY
        return super().open_outbound_streams


class _Stream:
    """One attempt of a request on one connection."""

    __slots__ = ("body", "chunks", "future", "headers", "offset", "status", "stream_id")

    def __init__(self, stream_id: int, future: asyncio.Future[Response], body: bytes) -> None:
        self.stream_id = stream_id
        self.future = future
        self.body = body
        #: How much of ``body`` h2 has taken; less than ``len(body)`` while flow control
        #: holds the rest back.
        self.offset = 0
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []


class _Connection(asyncio.Protocol):
    """One TLS connection. Everything runs in event-loop callbacks: nothing here awaits.
    Writes do not wait for ``pause_writing`` either: what can pile up is bounded by the
    peer's stream limit and flow-control windows."""

    def __init__(self, pool: HTTP2Pool, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._loop = loop
        self.unique_headers = pool.unique_headers
        self.h2 = _H2Connection(self)
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: (
                    h2.connection.H2Connection.DEFAULT_MAX_HEADER_LIST_SIZE
                ),
            },
        )
        self.transport: asyncio.Transport | None = None
        #: Our open streams; the same set h2 counts in ``open_outbound_streams`` (except,
        #: after a GOAWAY, streams above last-stream-id, which we drop at once).
        self.streams: dict[int, _Stream] = {}
        #: Streams whose request body waits for the peer to open a flow-control window.
        self.blocked: dict[int, _Stream] = {}
        #: Slots handed to waiters that have not opened their stream yet.
        self.reserved = 0
        #: The peer's SETTINGS_MAX_CONCURRENT_STREAMS (unlimited until it says otherwise).
        self.limit = 2**31
        #: Resolved by the server's first SETTINGS frame: only then is ``limit`` known.
        self.ready: asyncio.Future[None] = loop.create_future()
        self.ready.add_done_callback(_retrieve)  # Its failure may find nobody waiting.
        #: Resolved by ``connection_lost``.
        self.closed: asyncio.Future[None] = loop.create_future()
        self.ready_at = math.inf
        #: A response (or reset) came back: the server's limits have settled.
        self.warm = False
        #: No new streams: GOAWAY received, closing, failed or stream ids exhausted.
        self.draining = False
        self.lost = False
        self.goaway_last_id: int | None = None
        self.warmup_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._rbuf = b""
        self._flush_scheduled = False

    # -- pool interface ----------------------------------------------------------------

    def free(self) -> int:
        return self.limit - len(self.streams) - self.reserved

    def start(
        self, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> _Stream | None:
        """Open a stream now (the caller holds a free slot); None if this connection can
        take no new stream after all (stream ids exhausted)."""
        conn = self.h2
        try:
            stream_id = conn.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            self._retire()
            return None
        request_headers = [
            (":method", method),
            (":scheme", "https"),
            (":authority", self._pool.authority),
            (":path", path),
            *headers,
        ]
        try:
            conn.send_headers(stream_id, request_headers, end_stream=not body)
        except h2.exceptions.ProtocolError as exc:
            # h2 validates after marking the stream open, so its stream count now includes
            # a stream the server never heard of: retire the connection. (request() rejects
            # the headers known to do this before they get here.)
            self._retire()
            raise ValueError(f"invalid request headers: {exc}") from exc
        stream = _Stream(stream_id, self._loop.create_future(), body)
        self.streams[stream_id] = stream
        if body:
            self._pump(stream)
        self._schedule_flush()
        return stream

    def abandon(self, stream: _Stream) -> None:
        """The request stopped waiting (timeout, cancellation, error): free its slot and,
        if the stream is still open, reset it with CANCEL."""
        future = stream.future
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()  # Retrieved: no "exception never retrieved" noise.
        if self.streams.get(stream.stream_id) is not stream:
            return
        del self.streams[stream.stream_id]
        self.blocked.pop(stream.stream_id, None)
        if not self.lost:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.reset_stream(stream.stream_id, _CANCEL)
            self._schedule_flush()
        if self.draining and not self.streams:
            self.close()
        self._pool._dispatch()

    def close(self) -> None:
        """GOAWAY(NO_ERROR), then close the socket once TLS flushed it."""
        self.draining = True
        if self._closing:
            return
        self._closing = True
        self._cancel_warmup()
        if self.transport is None or self.lost:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection()
        self._flush()
        self.transport.close()

    async def discard(self) -> None:
        """Abort, and wait until asyncio closed the socket (no unclosed-socket warnings)."""
        self.abort()
        await asyncio.wait([self.closed], timeout=CLOSE_GRACE_S)

    def abort(self) -> None:
        self.draining = True
        self._closing = True
        self._cancel_warmup()
        if self.transport is not None and not self.lost:
            self.transport.abort()

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport has the Transport methods without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            self.ready.set_exception(ConnectError("the server did not negotiate h2 (ALPN)"))
            self.abort()
            return
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self._rbuf:
            data = self._rbuf + data
            self._rbuf = b""
        size = len(data)
        start = pos = 0
        max_frame = self.h2.max_inbound_frame_size
        while size - pos >= _FRAME_HEADER_LEN:
            length = int.from_bytes(data[pos : pos + 3], "big")
            if length > max_frame:
                # Let h2 reject it (FRAME_SIZE_ERROR) rather than buffer it.
                pos = size
                break
            end = pos + _FRAME_HEADER_LEN + length
            if end > size:
                break
            if data[pos + 3] == _GOAWAY:
                if start < pos and not self._feed(data[start:pos]):
                    return
                self._on_goaway(data[pos + _FRAME_HEADER_LEN : end])
                start = end
            pos = end
        if start < pos and not self._feed(data if start == 0 and pos == size else data[start:pos]):
            return
        if pos < size:
            self._rbuf = data[pos:]
        self._flush()
        if self.draining and not self.streams:
            self.close()
        self._pool._dispatch()

    def eof_received(self) -> bool | None:
        return None  # Close our side too; connection_lost follows.

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.draining = True
        self._cancel_warmup()
        if not self.ready.done():
            self.ready.set_exception(
                ConnectError(f"connection closed during HTTP/2 setup: {exc or 'EOF'}",
                             tls_alert=_tls_alert(exc))
            )
        streams, self.streams = self.streams, {}
        self.blocked.clear()
        for stream in streams.values():
            if not stream.future.done():
                stream.future.set_exception(
                    ConnectionLost(
                        f"connection lost before the response completed (stream "
                        f"{stream.stream_id}; outcome unknown): {exc or 'closed'}"
                    )
                )
        if not self.closed.done():
            self.closed.set_result(None)
        self._pool._connection_lost(self)

    # -- reading -----------------------------------------------------------------------

    def _feed(self, data: bytes) -> bool:
        """Hand whole non-GOAWAY frames to h2 and act on its events; False if the
        connection is now dead."""
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            # h2 queued a GOAWAY describing the error; the streams fail in connection_lost.
            self.draining = True
            self._closing = True
            self._flush()
            if self.transport is not None:
                self.transport.close()
            return False
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                self._on_response(event)
            elif isinstance(event, h2.events.DataReceived):
                self._on_data(event)
            elif isinstance(event, h2.events.StreamEnded):
                self._on_end(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self._on_reset(event.stream_id, int(event.error_code))
            elif isinstance(event, h2.events.WindowUpdated):
                self._on_window(event.stream_id)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self._on_settings(event)
        return True

    def _on_response(self, event: h2.events.ResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        headers = stream.headers
        for name, value in event.headers:
            if name == b":status":
                stream.status = int(value)
            elif name[:1] not in (b":", ":"):
                headers[_text(name)] = _text(value)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        if event.flow_controlled_length:
            # Always, even for streams we dropped: the connection window is shared.
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        stream = self.streams.get(event.stream_id)
        if stream is not None and event.data:
            stream.chunks.append(event.data)

    def _on_end(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        self.warm = True
        if stream.offset < len(stream.body):
            # A complete response before the whole request went out: stop sending (and
            # let h2 close the stream, so its stream count matches ours).
            self.blocked.pop(stream_id, None)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.reset_stream(stream_id, _CANCEL)
        if stream.future.done():
            return
        if stream.status is None:
            stream.future.set_exception(HTTP2Error("stream ended without response headers"))
        else:
            body = stream.chunks[0] if len(stream.chunks) == 1 else b"".join(stream.chunks)
            stream.future.set_result(Response(stream.status, stream.headers, body))

    def _on_reset(self, stream_id: int, error_code: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        self.warm = True
        self.blocked.pop(stream_id, None)
        if not stream.future.done():
            stream.future.set_exception(
                _Unprocessed(refused=True)
                if error_code == _REFUSED_STREAM
                else StreamReset(error_code)
            )

    def _on_window(self, stream_id: int) -> None:
        if not self.blocked:
            return
        if stream_id == 0:
            for stream in list(self.blocked.values()):
                self._pump(stream)
        else:
            blocked = self.blocked.get(stream_id)
            if blocked is not None:
                self._pump(blocked)

    def _on_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        self.limit = self.h2.remote_settings.max_concurrent_streams
        if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._on_window(0)
        if not self.ready.done():
            self.ready.set_result(None)

    def _on_goaway(self, payload: bytes) -> None:
        if len(payload) < 8:  # A malformed GOAWAY: nothing to trust, drop the connection.
            self.abort()
            return
        last_id = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        error_code = int.from_bytes(payload[4:8], "big")
        if self.goaway_last_id is not None:
            last_id = min(last_id, self.goaway_last_id)
        self.goaway_last_id = last_id
        self.draining = True
        if not self.ready.done():
            self.ready.set_exception(
                ConnectError(f"server sent GOAWAY ({_code_name(error_code)}) during setup")
            )
        for stream_id in [s for s in self.streams if s > last_id]:
            stream = self.streams.pop(stream_id)
            self.blocked.pop(stream_id, None)
            if not stream.future.done():
                stream.future.set_exception(_Unprocessed(refused=False))

    # -- writing -----------------------------------------------------------------------

    def _pump(self, stream: _Stream) -> None:
        """Give h2 as much of the request body as the peer's windows and frame size
        allow; the rest waits in ``blocked`` for a WINDOW_UPDATE or SETTINGS change."""
        conn = self.h2
        stream_id = stream.stream_id
        body = stream.body
        size = len(body)
        offset = stream.offset
        while offset < size:
            chunk = min(
                conn.local_flow_control_window(stream_id),
                conn.max_outbound_frame_size,
                size - offset,
            )
            if chunk <= 0:
                break
            end = offset + chunk
            data = body if chunk == size else memoryview(body)[offset:end]
            conn.send_data(stream_id, data, end_stream=end == size)
            offset = end
        stream.offset = offset
        if offset < size:
            self.blocked[stream_id] = stream
        else:
            self.blocked.pop(stream_id, None)

    def _schedule_flush(self) -> None:
        """One write per event-loop iteration, however many streams were opened in it."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -- lifetime ----------------------------------------------------------------------

    def _retire(self) -> None:
        self.draining = True
        if not self.streams:
            self.close()

    def _cancel_warmup(self) -> None:
        if self.warmup_timer is not None:
            self.warmup_timer.cancel()
            self.warmup_timer = None


class HTTP2Pool:
    """Long-lived HTTP/2 connections to one origin, shared by concurrent requests.

    When to open another connection (at most ``max_connections`` that still take new
    streams, one connect at a time): only while requests are waiting for a slot and every
    such connection is full, i.e. its open streams reached the server's
    SETTINGS_MAX_CONCURRENT_STREAMS, and warm: it has answered (or reset) a request, or it
    has been up for :data:`WARMUP_S`. A connection's first limit may be a placeholder (APNs
    allows 1 stream until a request with a valid token went through, then ~1000), so a
    new connection gets one round trip to raise it before the pool judges it saturated.
    The decision is taken after each whole read, so a SETTINGS frame arriving together with
    the response that freed a slot is seen first. A connection that went away (GOAWAY,
    socket closed) is dropped and replaced on demand; after a failed connect the pool makes
    do with the connections it has for :data:`RECONNECT_BACKOFF_S`, and if it has none,
    the waiting requests fail with :class:`ConnectError`.

    The pool sets ALPN ``h2`` on ``ssl_context``; ``server_hostname`` overrides the
    origin's host for SNI and certificate verification. ``unique_headers`` names headers
    whose values rarely repeat (for APNs also ``apns-id`` and ``apns-expiration``): they are
    kept out of the HPACK table, which is only CPU-cheap while it holds repeating values.
    """

    def __init__(
        self,
        origin: str,
        ssl_context: ssl.SSLContext,
        *,
        max_connections: int = 4,
        connect_timeout_s: float = 10.0,
        server_hostname: str | None = None,
        unique_headers: Collection[str] = (":path",),
    ) -> None:
        parts = urllib.parse.urlsplit(origin)
        if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"origin must look like https://host[:port], not {origin!r}")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.origin = origin
        self.unique_headers = frozenset(name.encode() for name in unique_headers)
        self.authority = parts.netloc
        self._host = parts.hostname
        self._port = parts.port or 443
        self._server_hostname = server_hostname or parts.hostname
        ssl_context.set_alpn_protocols(["h2"])
        self._ssl_context = ssl_context
        self._max_connections = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._conns: list[_Connection] = []
        self._waiters: collections.deque[asyncio.Future[_Connection]] = collections.deque()
        self._connect_task: asyncio.Task[None] | None = None
        self._connect_failed_at = -math.inf
        self._closed = False

    async def __aenter__(self) -> HTTP2Pool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def open_connections(self) -> int:
        """Connections whose socket is open, including ones draining after a GOAWAY."""
        return len(self._conns)

    async def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        *,
        timeout_s: float,
    ) -> Response:
        """Send one request and return its response. ``timeout_s`` covers everything:
        waiting for a slot or a connection, transparent re-sends, the response.
        Pseudo-headers are added here (h2 lower-cases the names given)."""
        headers = check_headers(method, self.authority, path, headers)
        sent = False
        try:
            async with asyncio.timeout(timeout_s):
                resends = 0
                while True:
                    if self._closed:
                        raise ConnectError("the pool is closed")
                    conn = None if self._waiters else self._pick()
                    if conn is None:
                        conn = await self._wait_for_slot()
                    stream = conn.start(method, path, headers, body)
                    if stream is None:
                        continue
                    sent = True
                    try:
                        return await stream.future
                    except _Unprocessed as exc:
                        sent = False
                        resends += 1
                        if resends > MAX_RESENDS:
                            raise exc.give_up() from None
                    except BaseException:
                        conn.abandon(stream)
                        raise
        except TimeoutError:
            raise RequestTimeout(
                f"no response from {self.origin} within {timeout_s} s", request_sent=sent
            ) from None

    async def close(self) -> None:
        """GOAWAY(NO_ERROR) on every connection, close the sockets; requests still waiting
        for a slot fail with :class:`ConnectError`, streams in flight with
        :class:`ConnectionLost`."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectError("the pool is closed"))
        task = self._connect_task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conns = list(self._conns)
        for conn in conns:
            conn.close()
        if conns:
            await asyncio.wait([c.closed for c in conns], timeout=CLOSE_GRACE_S)
            for conn in conns:
                if not conn.closed.done():
                    conn.abort()
            await asyncio.gather(*(c.closed for c in conns))

    # -- slots -------------------------------------------------------------------------

    def _pick(self) -> _Connection | None:
        for conn in self._conns:
            if not conn.draining and conn.free() > 0:
                return conn
        return None

    async def _wait_for_slot(self) -> _Connection:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_Connection] = loop.create_future()
        self._waiters.append(waiter)
        while True:
            self._dispatch()
            try:
                conn = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    # Handed a slot just as we stopped waiting: pass it on.
                    waiter.result().reserved -= 1
                    self._dispatch()
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
            conn.reserved -= 1
            if not conn.draining and conn.free() > 0:
                return conn
            if self._closed:
                raise ConnectError("the pool is closed")
            # The connection went away or lowered its limit since: wait again, first in line.
            waiter = loop.create_future()
            self._waiters.appendleft(waiter)

    def _dispatch(self) -> None:
        """Hand free slots to waiters, oldest first; open a connection if the rule in the
        class docstring says so."""
        if self._closed:
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters[0]
            if waiter.done():
                waiters.popleft()
                continue
            conn = self._pick()
            if conn is None:
                break
            waiters.popleft()
            conn.reserved += 1
            waiter.set_result(conn)
        if waiters:
            self._maybe_connect()

    def _maybe_connect(self) -> None:
        if self._connect_task is not None:
            return
        usable = [c for c in self._conns if not c.draining]
        if len(usable) >= self._max_connections:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if usable:
            if now < self._connect_failed_at + RECONNECT_BACKOFF_S:
                return
            if any(not c.warm and now < c.ready_at + WARMUP_S for c in usable):
                return
        self._connect_task = loop.create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, loop),
                    self._host,
                    self._port,
                    ssl=self._ssl_context,
                    server_hostname=self._server_hostname,
                )
                await conn.ready
            if conn.lost or conn.draining:
                raise ConnectError("the connection went away during HTTP/2 setup")
        except Exception as exc:  # OSError, TimeoutError, ConnectError, or a bug: report it.
            if conn is not None:
                await conn.discard()
            self._connect_task = None
            self._connect_failed(exc)
        except BaseException:
            if conn is not None:
                await conn.discard()
            self._connect_task = None
            raise
        else:
            self._connect_task = None
            conn.ready_at = loop.time()
            self._conns.append(conn)
            if not conn.warm:
                conn.warmup_timer = loop.call_later(WARMUP_S, self._dispatch)
        self._dispatch()

    def _connect_failed(self, exc: BaseException) -> None:
        self._connect_failed_at = asyncio.get_running_loop().time()
        if any(not c.draining for c in self._conns):
            return  # The waiters keep waiting for the connections there are.
        if isinstance(exc, ConnectError):
            message = f"could not connect to {self.origin}: {exc}"
        elif isinstance(exc, TimeoutError):
            message = f"could not connect to {self.origin} within {self._connect_timeout_s} s"
        else:
            message = f"could not connect to {self.origin}: {exc!r}"
        alert = _tls_alert(exc)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectError(message, tls_alert=alert))

    def _connection_lost(self, conn: _Connection) -> None:
        with contextlib.suppress(ValueError):
            self._conns.remove(conn)
        self._dispatch()
