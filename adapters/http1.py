"""A keep-alive HTTP/1.1 client for the webhooks: a POST of a small body, and at most the
first bytes of the answer kept.

Why not aiohttp's client, which the adapter used until 2026-12-07: it is general (cookies,
redirects, proxies, tracing, streaming, a request and a response object of many fields
each), and that costs CPU on every request. Against the same raw aiohttp server, 64
requests in flight, its ``ClientSession.post`` took 159 µs of the client's CPU a request
and this client 36-39 µs (bench/README.md, "A webhook client of its own"); a dispatcher
sending webhooks is bound by its own CPU, so that is most of a delivery's cost.

What it does: connections per origin (scheme, host, port), reused while the server
keeps them open and for at most :attr:`HTTP1Pool.idle_s` idle; at most
``max_connections`` in use at once; names resolved through the given resolver (the
gateway's :class:`~adapters.addresses.GuardedResolver` refuses non-public addresses)
and cached for ``dns_ttl_s``, IP literals (in any form a browser reads as one:
:func:`~adapters.addresses.ipv4_any_form`) used as the address they are; TLS with the
system's trust store, checking the URL's host name (an address as an address, with no
SNI name); an answer framed by ``Content-Length``, chunked,
or ending with the connection, informational (1xx) answers skipped. It never follows a
redirect, sends no cookie and reads no proxy settings. A request whose head would hold a
line break or a NUL is refused before anything is sent.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import functools
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import aiohappyeyeballs
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver
from yarl import URL

from adapters.addresses import ForbiddenAddress, ip_literal

#: The longest answer head (or chunk trailer) read; a server sending more is not
#: answering as HTTP does.
MAX_HEAD = 32_768
#: The longest chunk-size line.
MAX_CHUNK_LINE = 1024
#: How long one address may take to connect before the next is tried alongside (RFC 8305
#: "Happy Eyeballs", as aiohttp connects).
HAPPY_EYEBALLS_DELAY_S = 0.25
_STATUS = re.compile(r"HTTP/1\.([01]) ([0-9]{3})(?: .*)?", re.DOTALL)
_DIGITS = re.compile(r"[0-9]{1,18}")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")
#: How much of an answer's body is read to keep its connection (the rest of a longer
#: one is not read: the connection is closed instead).
MAX_DRAINED = 65_536


class ProtocolError(Exception):
    """The server's answer was not HTTP/1.1 as this client reads it, or the connection
    ended before the answer did."""


class ConnectError(OSError):
    """No connection could be made to any address of the host."""

    def __init__(self, host: str, port: int, tls: bool, cause: OSError) -> None:
        super().__init__(f"Cannot connect to host {host}:{port} "
                         f"ssl:{'default' if tls else 'False'} [{cause.strerror or cause}]")
        self.os_error = cause


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    #: Lower-case names; a name sent twice keeps its last value.
    headers: Mapping[str, str]
    #: The body's first bytes (at most what :meth:`HTTP1Pool.post` was told to keep).
    body: bytes


@dataclass(frozen=True, slots=True)
class _Target:
    """What a URL gives a request: where to connect, the request line's target and the
    ``Host`` header (and ``Authorization`` for user info in the URL, as aiohttp sent)."""

    origin: tuple[str, str, int]
    host: str
    port: int
    tls: bool
    #: The address when the host is an IP literal (in any form: ipv4_any_form), else None.
    literal: str | None
    head: str
    #: ``Basic ...`` for user info in the URL (unless the request sets its own).
    authorization: str | None


@functools.lru_cache(maxsize=4096)
def _target(url: str) -> _Target:
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise ValueError(f"not an http(s) URL with a host: {url!r}")
    host, port = parsed.raw_host, parsed.port or (443 if parsed.scheme == "https" else 80)
    head = (f"POST {parsed.raw_path_qs or '/'} HTTP/1.1\r\n"
            f"host: {parsed.host_port_subcomponent}\r\n")
    authorization = None
    if parsed.raw_user is not None or parsed.raw_password is not None:
        # As aiohttp encoded it: latin-1 (a name outside it cannot be sent this way).
        credentials = f"{parsed.user or ''}:{parsed.password or ''}".encode("latin-1")
        authorization = "Basic " + base64.b64encode(credentials).decode("ascii")
    literal = ip_literal(host)
    return _Target((parsed.scheme, host, port), host, port, parsed.scheme == "https",
                   None if literal is None else str(literal), head, authorization)


class _Connection(asyncio.Protocol):
    """One connection: one request at a time, its answer parsed as it arrives."""

    def __init__(self, origin: tuple[str, str, int]) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._buffer = bytearray()
        #: How much of the buffer was searched for a line's end without finding it.
        self._scanned = 0
        self._waiter: asyncio.Future[Answer] | None = None
        self._keep = 0
        # The answer being read: its head once parsed, then the body's framing.
        self._status = 0
        self._headers: dict[str, str] = {}
        self._reusable = True
        self._length: int | None = None  # bytes of body left (Content-Length framing)
        self._chunked = False
        self._chunk_left = -1  # -1: a chunk-size line comes next; -2: the trailers
        self._to_close = False  # the body ends with the connection
        self._body = bytearray()
        self._read = 0

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # nothing was asked: a server talking out of turn
            return
        self._buffer += data
        try:
            self._parse()
        except (ProtocolError, ValueError) as exc:
            self._fail(exc if isinstance(exc, ProtocolError) else ProtocolError(str(exc)))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._status and self._to_close:
            self._answer(reusable=False)
            return
        self._fail(ProtocolError("the server closed the connection before its answer ended"
                                 + (f" ({exc})" if exc else "")))

    # --- requests ---------------------------------------------------------------------

    def send(self, request: bytes, keep: int) -> asyncio.Future[Answer]:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ProtocolError("the connection closed before the request was sent")
        self._waiter = asyncio.get_running_loop().create_future()
        self._keep = keep
        self._status = 0
        self._headers = {}
        self._body = bytearray()
        self._read = 0
        self._scanned = 0
        self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        self.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def _answer(self, reusable: bool) -> None:
        # Not kept: bytes after the answer (nothing this client asked for), or a request
        # still being written when the answer came (what is left of it would go out
        # ahead of the next request).
        if (not reusable or self._buffer or self.transport is None
                or self.transport.get_write_buffer_size()):
            self.close()
        assert self._waiter is not None
        if not self._waiter.done():
            self._waiter.set_result(Answer(self._status, self._headers, bytes(self._body)))

    # --- parsing ----------------------------------------------------------------------

    def _line_end(self, marker: bytes, limit: int, what: str) -> int:
        """Where ``marker`` starts in the buffer, or -1 (searching only bytes not searched
        before, so a server sending a byte at a time costs no more than one sending all);
        a line longer than ``limit`` is a protocol error however it arrived."""
        end = self._buffer.find(marker, max(0, self._scanned - len(marker) + 1))
        self._scanned = len(self._buffer) if end < 0 else 0
        if (len(self._buffer) if end < 0 else end) > limit:
            raise ProtocolError(f"{what} is too long")
        return end

    def _parse(self) -> None:
        while self._status == 0:
            end = self._line_end(b"\r\n\r\n", MAX_HEAD, "the answer's head")
            if end < 0:
                return
            head = bytes(self._buffer[:end]).decode("latin-1")
            del self._buffer[:end + 4]
            self._head(head)
        self._body_bytes()

    def _head(self, head: str) -> None:
        status_line, *lines = head.split("\r\n")
        matched = _STATUS.fullmatch(status_line)
        if matched is None:
            raise ProtocolError(f"not an HTTP/1 status line: {status_line[:80]!r}")
        minor, code = matched.groups()
        headers: dict[str, str] = {}
        lengths: set[str] = set()
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise ProtocolError(f"not a header line: {line[:80]!r}")
            name = name.lower()
            headers[name] = value = value.strip(" \t")
            if name == "content-length":
                lengths.add(value)
        status = int(code)
        if 100 <= status < 200:
            return  # informational: the answer follows
        self._status, self._headers = status, headers
        connection = headers.get("connection", "").lower()
        self._reusable = ("close" not in connection if minor == "1"
                          else "keep-alive" in connection)
        encoding = headers.get("transfer-encoding", "").lower()
        self._chunked, self._to_close, self._length = False, False, None
        if len(lengths) > 1:
            raise ProtocolError(f"Content-Length given as {sorted(lengths)}")
        if status in (204, 304):
            self._length = 0
        elif encoding:
            self._reusable = self._reusable and not lengths  # both: read, never trusted
            if encoding.rsplit(",", 1)[-1].strip() != "chunked":
                self._to_close = True
            else:
                self._chunked, self._chunk_left = True, -1
        elif lengths:
            (length,) = lengths
            if not _DIGITS.fullmatch(length):
                raise ProtocolError(f"not a Content-Length: {length[:40]!r}")
            self._length = int(length)
        else:
            self._to_close = True

    def _take(self, data: bytes | bytearray) -> None:
        """Count body bytes read, keeping the first ``keep``."""
        room = self._keep - len(self._body)
        if room > 0:
            self._body += data[:room]
        self._read += len(data)

    def _body_bytes(self) -> None:
        if self._length is not None:
            piece = self._buffer[:self._length]
            del self._buffer[:self._length]
            self._take(piece)
            self._length -= len(piece)
            if self._length == 0:
                self._answer(self._reusable)
            elif self._read > MAX_DRAINED:
                self._answer(reusable=False)
            return
        if self._to_close:
            self._take(self._buffer)
            self._buffer.clear()
            if self._read > MAX_DRAINED:
                self._answer(reusable=False)
            return
        while True:  # chunked
            if self._read > MAX_DRAINED:
                self._answer(reusable=False)
                return
            if self._chunk_left == -1:
                end = self._line_end(b"\r\n", MAX_CHUNK_LINE, "a chunk-size line")
                if end < 0:
                    return
                size = bytes(self._buffer[:end]).split(b";", 1)[0].strip(b" \t")
                del self._buffer[:end + 2]
                if not _CHUNK_SIZE.fullmatch(size):
                    raise ProtocolError(f"not a chunk size: {size[:20]!r}")
                self._chunk_left = int(size, 16) or -2
            elif self._chunk_left == -2:  # trailers, up to an empty line
                end = self._line_end(b"\r\n", MAX_HEAD, "a trailer")
                if end < 0:
                    return
                del self._buffer[:end + 2]
                self._read += end + 2  # (bounded with the body)
                if end == 0:
                    self._answer(self._reusable)
                    return
            elif len(self._buffer) < self._chunk_left + 2:
                piece = self._buffer[:self._chunk_left]
                del self._buffer[:len(piece)]
                self._take(piece)
                self._chunk_left -= len(piece)
                if self._read > MAX_DRAINED:
                    self._answer(reusable=False)
                return
            else:
                if self._buffer[self._chunk_left:self._chunk_left + 2] != b"\r\n":
                    raise ProtocolError("a chunk does not end with CRLF")
                self._take(self._buffer[:self._chunk_left])
                del self._buffer[:self._chunk_left + 2]
                self._chunk_left = -1


class HTTP1Pool:
    """Keep-alive HTTP/1.1 connections shared by every request (see the module)."""

    #: How long a connection may sit idle and still be reused (aiohttp's default too): a
    #: server that closes idle connections sooner is most often heard closing first.
    idle_s = 15.0

    def __init__(self, *, max_connections: int = 256,
                 resolver: AbstractResolver | None = None,
                 forbidden: Callable[[str], bool] | None = None,
                 ssl_context: ssl.SSLContext | None = None, dns_ttl_s: float = 10.0) -> None:
        """``forbidden``: addresses never to connect to, whatever gave them (the URL as
        an IP literal, however spelt, or the resolver), checked again on the connected
        socket's peer."""
        self.max_connections = max_connections
        self._resolver = resolver or DefaultResolver()
        self._forbidden = forbidden
        self._ssl = ssl_context
        self._dns_ttl_s = dns_ttl_s
        self._dns: dict[tuple[str, int], tuple[float, list[tuple[str, int]]]] = {}
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._in_use = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._pruning: asyncio.TimerHandle | None = None
        self._closed = False

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, *,
                   timeout_s: float, keep: int = 1024) -> Answer:
        """POST ``body`` with ``headers`` (besides ``host`` and ``content-length``, which
        this adds, and ``authorization`` from user info in the URL unless given) and wait
        for the answer for at most ``timeout_s`` in all; the answer's body is cut to
        ``keep`` bytes. Raises ValueError for a request it cannot send as it is,
        ForbiddenAddress, ConnectError (or the resolver's OSError), ProtocolError,
        OSError or TimeoutError."""
        target = _target(url)
        fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        if not (fields.count("\n") == fields.count("\r") == len(headers)) or "\0" in fields:
            raise ValueError("a request header holds a line break or a NUL")
        if target.authorization is not None and not any(
                name.lower() == "authorization" for name in headers):
            fields += f"authorization: {target.authorization}\r\n"
        request = (f"{target.head}content-length: {len(body)}\r\n{fields}\r\n"
                   ).encode() + body
        if self._closed:
            raise ProtocolError("the client is closed")
        async with asyncio.timeout(timeout_s):
            await self._room()
            connection = None
            try:
                if self._closed:  # (closed while waiting for room)
                    raise ProtocolError("the client is closed")
                connection = await self._connection(target)
                answer = await connection.send(request, keep)
            except BaseException:
                if connection is not None:
                    connection.close()  # its answer may be half read
                self._done(connection)
                raise
        self._done(connection)
        return answer

    async def close(self) -> None:
        self._closed = True
        for connection in list(self._all):
            connection.close()
        self._all.clear()
        self._idle.clear()
        if self._pruning is not None:
            self._pruning.cancel()
        for waiter in self._waiting:
            if not waiter.done():
                waiter.set_exception(ProtocolError("the client is closed"))
        await self._resolver.close()

    # --- connections ------------------------------------------------------------------

    async def _room(self) -> None:
        """Take one of ``max_connections``: at once, or handed over by :meth:`_done` in
        the order asked for."""
        if self._in_use < self.max_connections and not self._waiting:
            self._in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._free()  # handed over, then cancelled: pass it on
            raise

    def _free(self) -> None:
        """Hand the slot to the first still waiting, else give it back."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._in_use -= 1

    def _done(self, connection: _Connection | None) -> None:
        if connection is not None and not connection.closed and not self._closed:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(connection.origin, []).append(connection)
            if self._pruning is None:
                self._pruning = asyncio.get_running_loop().call_later(self.idle_s,
                                                                      self._prune)
        elif connection is not None:
            connection.close()
            self._all.discard(connection)
        self._free()

    def _prune(self) -> None:
        """Close what has been idle too long, or was closed by its server, everywhere
        (an origin no longer posted to keeps nothing open); again while any is idle."""
        self._pruning = None
        now = time.monotonic()
        for origin, idle in list(self._idle.items()):
            for connection in [c for c in idle
                               if c.closed or now - c.idle_since >= self.idle_s]:
                idle.remove(connection)
                connection.close()
                self._all.discard(connection)
            if not idle:
                del self._idle[origin]
        if self._idle and not self._closed:
            self._pruning = asyncio.get_running_loop().call_later(self.idle_s, self._prune)

    async def _connection(self, target: _Target) -> _Connection:
        idle = self._idle.get(target.origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self.idle_s:
                return connection
            connection.close()
            self._all.discard(connection)
        return await self._connect(target)

    def _refuse(self, host: str, address: str) -> None:
        if self._forbidden is not None and self._forbidden(address):
            raise ForbiddenAddress(f"{host} is {address}, not a public address"
                                   if host != address else f"{host} is not a public address")

    async def _connect(self, target: _Target) -> _Connection:
        loop = asyncio.get_running_loop()
        infos: Sequence[aiohappyeyeballs.AddrInfoType]
        if target.literal is not None:
            self._refuse(target.host, target.literal)
            infos = await loop.getaddrinfo(target.literal, target.port,
                                           type=socket.SOCK_STREAM,
                                           flags=socket.AI_NUMERICHOST)
        else:
            infos = [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                      (address, target.port) if family != socket.AF_INET6
                      else (address, target.port, 0, 0))
                     for address, family in await self._resolve(target.host, target.port)]
            for info in infos:
                self._refuse(target.host, str(info[4][0]))
        context = (self._ssl or _default_context()) if target.tls else None
        try:
            sock = await aiohappyeyeballs.start_connection(
                infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY_S, interleave=1)
        except OSError as exc:
            raise ConnectError(target.host, target.port, target.tls, exc) from None
        try:
            self._refuse(target.host, str(sock.getpeername()[0]))
            _, connection = await loop.create_connection(
                functools.partial(_Connection, target.origin), sock=sock, ssl=context,
                # An address is checked as one and sent no SNI name (RFC 6066).
                server_hostname=(None if not target.tls else target.literal
                                 or target.host.rstrip(".")))
        except OSError as exc:  # (ssl.SSLError is one; so is ForbiddenAddress)
            sock.close()
            if isinstance(exc, ForbiddenAddress):
                raise
            raise ConnectError(target.host, target.port, target.tls, exc) from None
        if self._closed:
            connection.close()
            raise ProtocolError("the client is closed")
        self._all.add(connection)
        return connection

    async def _resolve(self, host: str, port: int) -> list[tuple[str, int]]:
        now = time.monotonic()
        cached = self._dns.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        found = await self._resolver.resolve(host, port, family=socket.AF_UNSPEC)
        addresses = [(r["host"], r["family"]) for r in found]
        if len(self._dns) >= 4096:
            self._dns = {k: v for k, v in self._dns.items() if v[0] > now}
            if len(self._dns) >= 4096:
                self._dns.clear()
        self._dns[(host, port)] = (now + self._dns_ttl_s, addresses)
        return addresses


@functools.cache
def _default_context() -> ssl.SSLContext:
    """The system's trust store, verifying the host name (what aiohttp used)."""
    return ssl.create_default_context()


__all__ = ["Answer", "ConnectError", "HTTP1Pool", "ProtocolError"]
