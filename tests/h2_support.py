"""Real HTTP/2-over-TLS test servers (``h2`` on asyncio, certificates from ``trustme``)
that misbehave the ways production servers do, for the client in ``adapters.http2``.

A server answers every request after ``response_delay_s`` (so concurrency is observable)
with ``200``, ``x-req-id`` echoed and the request body's length and SHA-256; ``/big/<n>``
answers ``n`` bytes, ``/hang`` never answers. It can advertise a small
SETTINGS_MAX_CONCURRENT_STREAMS and change it after some answers, refuse or reset
chosen requests, send GOAWAY mid-burst (see :class:`Goaway`) or drop the socket.

What a test asserts on: :attr:`H2TestServer.processed` records every request the server
*processed* (by ``x-req-id``, with the connection's index), so exactly-once delivery is a
``Counter``; each :class:`ServerConnection` measures how many streams were open when a new
one arrived, against the limit the client had acknowledged.

GOAWAY frames are written raw, next to h2's output, not through
``H2Connection.close_connection``: h2 moves to CLOSED after sending a GOAWAY and then
rejects every frame the client may still legitimately send (WINDOW_UPDATE, RST_STREAM,
DATA for streams up to last-stream-id).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import struct
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trustme

_CLOSE_GRACE_S = 2.0
_MAX_CONCURRENT = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS


class TLS:
    """A throwaway CA and a certificate for 127.0.0.1/localhost."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert("127.0.0.1", "localhost")

    def server_context(self, alpn: Sequence[str] = ("h2",)) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(context)
        context.set_alpn_protocols(list(alpn))
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@dataclass(frozen=True)
class Goaway:
    """On the first connection, once ``after`` requests arrived complete: send GOAWAY with
    last-stream-id = the ``keep``-th lowest stream still unanswered. Streams above it are
    dropped unprocessed (as are later ones). Streams up to it are:

    * ``same_write``: answered at once, in the same write as the GOAWAY (GOAWAY first);
    * ``later``: answered after their normal delay, in later writes;
    * ``unanswered_close``: the lower half answered in the same write as the GOAWAY, the
      rest processed but never answered, then the socket is closed.
    """

    after: int
    keep: int
    mode: Literal["same_write", "later", "unanswered_close"]
    error_code: int = h2.errors.ErrorCodes.NO_ERROR


@dataclass
class _Request:
    req_id: str
    path: str
    body: bytearray = field(default_factory=bytearray)


def goaway_frame(last_stream_id: int, error_code: int) -> bytes:
    """9-byte frame header (length 8, type 0x7, no flags, stream 0) + payload."""
    return struct.pack(">I", 8)[1:] + b"\x07\x00" + struct.pack(
        ">III", 0, last_stream_id, error_code
    )


class ServerConnection(asyncio.Protocol):
    def __init__(self, server: H2TestServer, index: int) -> None:
        self.server = server
        self.index = index
        self.loop = asyncio.get_running_loop()
        self.h2 = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        initial: dict[h2.settings.SettingCodes, int] = {
            _MAX_CONCURRENT: server.max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: (
                h2.connection.H2Connection.DEFAULT_MAX_HEADER_LIST_SIZE
            ),
        }
        if server.initial_window_size is not None:
            initial[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = server.initial_window_size
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values=initial)
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = self.loop.create_future()
        #: Headers received, body still arriving.
        self.partial: dict[int, _Request] = {}
        #: Complete requests not answered yet.
        self.pending: dict[int, _Request] = {}
        self.timers: dict[int, asyncio.TimerHandle] = {}
        self.blocked_bodies: dict[int, memoryview] = {}
        self.received = 0
        self.answered = 0
        #: The limit the client acknowledged (h2 applies local settings on ACK too).
        self.limit_in_force = server.max_concurrent_streams
        #: The most streams open when a new one arrived, per limit in force.
        self.max_open_by_limit: dict[int, int] = {}
        self.violations = 0
        self.goaway_last_id: int | None = None
        #: Stream ids answered after this connection sent GOAWAY.
        self.answered_after_goaway: list[str] = []
        self.goaway_received = False
        self.pings: dict[bytes, asyncio.Future[None]] = {}

    @property
    def max_open(self) -> int:
        return max(self.max_open_by_limit.values(), default=0)

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass.
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            transport.close()
            return
        self.h2.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.server.protocol_errors.append(repr(exc))
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            self.on_event(event)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        for ping in self.pings.values():
            if not ping.done():
                ping.cancel()
        if not self.closed.done():
            self.closed.set_result(None)

    # -- events ------------------------------------------------------------------------

    def on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.on_request(event)
        elif isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            request = self.partial.get(event.stream_id)
            if request is not None:
                request.body += event.data
        elif isinstance(event, h2.events.StreamEnded):
            self.on_request_complete(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            request = (
                self.partial.pop(event.stream_id, None)
                or self.pending.pop(event.stream_id, None)
            )
            timer = self.timers.pop(event.stream_id, None)
            if timer is not None:
                timer.cancel()
            self.blocked_bodies.pop(event.stream_id, None)
            if request is not None:
                self.server.resets_received.append((request.req_id, int(event.error_code)))
        elif isinstance(event, h2.events.WindowUpdated):
            for stream_id in list(self.blocked_bodies):
                self.send_body(stream_id, self.blocked_bodies.pop(stream_id))
        elif isinstance(event, h2.events.SettingsAcknowledged):
            self.limit_in_force = self.h2.local_settings.max_concurrent_streams
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway_received = True
        elif isinstance(event, h2.events.PingAckReceived):
            ping = self.pings.pop(bytes(event.ping_data), None)
            if ping is not None and not ping.done():
                ping.set_result(None)

    def on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        headers = {str(k): str(v) for k, v in event.headers}
        request = _Request(headers.get("x-req-id", ""), headers.get(":path", "/"))
        open_now = self.h2.open_inbound_streams
        limit = self.limit_in_force
        self.max_open_by_limit[limit] = max(self.max_open_by_limit.get(limit, 0), open_now)
        if open_now > limit:
            self.violations += 1
        if self.goaway_last_id is not None and stream_id > self.goaway_last_id:
            self.server.dropped.append(request.req_id)
            return  # The client should not have opened it: ignore it as RFC 9113 says.
        server = self.server
        refusals = server.refused.count(request.req_id)
        if request.req_id in server.refuse_always or (
            request.req_id in server.refuse and refusals == 0
        ):
            server.refused.append(request.req_id)
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        self.partial[stream_id] = request
        if server.window_after_headers is not None:
            self.h2.update_settings(
                {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: server.window_after_headers}
            )

    def on_request_complete(self, stream_id: int) -> None:
        request = self.partial.pop(stream_id, None)
        if request is None:
            return
        self.pending[stream_id] = request
        self.received += 1
        server = self.server
        if self.index == 0 and server.die_after == self.received:
            for pending in self.pending.values():
                server.processed.append((pending.req_id, self.index))
            self.pending.clear()
            assert self.transport is not None
            self.transport.abort()
            return
        goaway = server.goaway
        if (
            goaway is not None
            and self.index == 0
            and self.goaway_last_id is None
            and self.received == goaway.after
        ):
            self.send_goaway(goaway)
            return
        self.schedule(stream_id)

    def schedule(self, stream_id: int) -> None:
        if self.pending[stream_id].path == "/hang":
            return
        if self.server.response_delay_s > 0:
            self.timers[stream_id] = self.loop.call_later(
                self.server.response_delay_s, self.answer_later, stream_id
            )
        else:
            self.answer(stream_id)

    def answer_later(self, stream_id: int) -> None:
        self.timers.pop(stream_id, None)
        self.answer(stream_id)
        self.flush()

    def answer(self, stream_id: int) -> None:
        request = self.pending.pop(stream_id, None)
        if request is None:
            return
        server = self.server
        server.processed.append((request.req_id, self.index))
        self.answered += 1
        if self.goaway_last_id is not None:
            self.answered_after_goaway.append(request.req_id)
        reset_code = server.reset.get(request.req_id)
        if reset_code is not None:
            self.h2.reset_stream(stream_id, reset_code)
            return
        body = request.body
        if request.path.startswith("/big/"):
            answer = bytes(range(256)) * (int(request.path[5:]) // 256 + 1)
            answer = answer[: int(request.path[5:])]
        else:
            answer = b"ok:" + request.req_id.encode()
        headers = [
            (":status", "200"),
            ("x-req-id", request.req_id),
            ("x-body-len", str(len(body))),
            ("x-body-sha256", hashlib.sha256(body).hexdigest()),
        ]
        self.h2.send_headers(stream_id, headers)
        self.send_body(stream_id, memoryview(answer))
        for after, limit in server.limit_changes:
            if self.answered == after:
                self.h2.update_settings({_MAX_CONCURRENT: limit})
        if server.raise_after_first is not None and self.answered == 1:
            self.h2.update_settings({_MAX_CONCURRENT: server.raise_after_first})

    def send_body(self, stream_id: int, body: memoryview) -> None:
        while True:
            size = min(
                self.h2.local_flow_control_window(stream_id),
                self.h2.max_outbound_frame_size,
                len(body),
            )
            if size < len(body) and size <= 0:
                self.blocked_bodies[stream_id] = body
                return
            self.h2.send_data(stream_id, body[:size], end_stream=size == len(body))
            body = body[size:]
            if not body:
                return

    def send_goaway(self, goaway: Goaway) -> None:
        ids = sorted(self.pending)
        last_id = ids[min(goaway.keep, len(ids)) - 1]
        self.goaway_last_id = last_id
        for stream_id in [i for i in ids if i > last_id]:
            self.server.dropped.append(self.pending.pop(stream_id).req_id)
            timer = self.timers.pop(stream_id, None)
            if timer is not None:
                timer.cancel()
        for stream_id in [i for i in self.partial if i > last_id]:
            self.server.dropped.append(self.partial.pop(stream_id).req_id)
        below = [i for i in ids if i <= last_id]
        before = self.h2.data_to_send()
        frame = goaway_frame(last_id, goaway.error_code)
        assert self.transport is not None
        if goaway.mode == "later":
            for stream_id in below:
                if stream_id not in self.timers:
                    self.schedule(stream_id)
            self.transport.write(before + frame)
            return
        answered = below if goaway.mode == "same_write" else below[: len(below) // 2]
        for stream_id in answered:
            timer = self.timers.pop(stream_id, None)
            if timer is not None:
                timer.cancel()
            self.answer(stream_id)
        self.transport.write(before + frame + self.h2.data_to_send())
        if goaway.mode == "unanswered_close":
            for stream_id in below[len(answered) :]:
                timer = self.timers.pop(stream_id, None)
                if timer is not None:
                    timer.cancel()
                request = self.pending.pop(stream_id)
                self.server.processed.append((request.req_id, self.index))
                self.server.unanswered.append(request.req_id)
            self.transport.close()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def ping(self) -> None:
        payload = b"%08d" % len(self.pings)
        future: asyncio.Future[None] = self.loop.create_future()
        self.pings[payload] = future
        self.h2.ping(payload)
        self.flush()
        await future


class H2TestServer:
    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        max_concurrent_streams: int = 10,
        initial_window_size: int | None = None,
        response_delay_s: float = 0.0,
        limit_changes: Sequence[tuple[int, int]] = (),
        raise_after_first: int | None = None,
        goaway: Goaway | None = None,
        refuse: Collection[str] = (),
        refuse_always: Collection[str] = (),
        reset: Mapping[str, int] | None = None,
        die_after: int | None = None,
        window_after_headers: int | None = None,
    ) -> None:
        """``limit_changes``: (after this many answers on a connection, new
        MAX_CONCURRENT_STREAMS). ``raise_after_first``: APNs-like, the limit to announce
        right after a connection's first answer. ``refuse``: request ids answered with
        RST_STREAM(REFUSED_STREAM) unprocessed the first time (``refuse_always``: every
        time). ``reset``: request ids processed, then reset with this error code.
        ``die_after``: abort the first connection once this many requests arrived (they
        count as processed). ``window_after_headers``: announce this INITIAL_WINDOW_SIZE
        whenever request headers arrive (start at ``initial_window_size=0`` to make the
        client wait for the SETTINGS alone)."""
        self.ssl_context = ssl_context
        self.max_concurrent_streams = max_concurrent_streams
        self.initial_window_size = initial_window_size
        self.response_delay_s = response_delay_s
        self.limit_changes = list(limit_changes)
        self.raise_after_first = raise_after_first
        self.goaway = goaway
        self.refuse = set(refuse)
        self.refuse_always = set(refuse_always)
        self.reset = dict(reset or {})
        self.die_after = die_after
        self.window_after_headers = window_after_headers
        self.connections: list[ServerConnection] = []
        #: (x-req-id, connection index) of every request processed, in order.
        self.processed: list[tuple[str, int]] = []
        self.refused: list[str] = []
        #: Requests ignored because they were above a GOAWAY's last-stream-id.
        self.dropped: list[str] = []
        #: Requests processed whose answer the client never got (unanswered_close).
        self.unanswered: list[str] = []
        self.resets_received: list[tuple[str, int]] = []
        self.protocol_errors: list[str] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def processed_ids(self) -> list[str]:
        return [req_id for req_id, _ in self.processed]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_connection, "127.0.0.1", 0, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def _new_connection(self) -> ServerConnection:
        conn = ServerConnection(self, len(self.connections))
        self.connections.append(conn)
        return conn

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        live = [c for c in self.connections if c.transport is not None]
        for conn in live:
            assert conn.transport is not None
            conn.transport.close()
        if live:
            await asyncio.wait([c.closed for c in live], timeout=_CLOSE_GRACE_S)
            for conn in live:
                if not conn.closed.done():
                    assert conn.transport is not None
                    conn.transport.abort()
            await asyncio.gather(*(c.closed for c in live))
        await self._server.wait_closed()
        self._server = None


@contextlib.asynccontextmanager
async def serving(
    tls: TLS, alpn: Sequence[str] = ("h2",), **options: Any
) -> AsyncIterator[H2TestServer]:
    """A started :class:`H2TestServer` (``options`` are its keyword arguments)."""
    server = H2TestServer(tls.server_context(alpn), **options)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
