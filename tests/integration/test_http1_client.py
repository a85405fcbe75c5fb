"""The webhooks' HTTP/1.1 client (adapters/http1.py) against servers on loopback that
answer byte for byte as told: framing (Content-Length, chunked, to the connection's
end), informational answers, keep-alive and its limits, refusals before sending, time
limits, TLS and IPv6."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from adapters.addresses import ForbiddenAddress, GuardedResolver, address_forbidden
from adapters.http1 import MAX_HEAD, Answer, ConnectError, HTTP1Pool, ProtocolError
from tests.h2_support import TLS
from tests.support import serve_on_loopback


class Fixed(AbstractResolver):
    """Resolves every name to one IPv4 address."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [{"hostname": host, "host": self.address, "port": port,
                 "family": socket.AF_INET, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        return None


class RawServer:
    """Answers each request it reads whole (by Content-Length) with ``answer(n)`` for the
    n-th request (``None``: no answer), and records requests and connections."""

    def __init__(self, answer: Callable[[int], bytes | None], *,
                 close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.handlers: set[asyncio.Task[Any]] = set()

    async def start(self, host: str = "127.0.0.1",
                    ssl_context: ssl.SSLContext | None = None) -> int:
        self.server = await asyncio.start_server(self._serve, host, 0, ssl=ssl_context)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self.handlers.add(handler)
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                answer = self.answer(len(self.requests))
                if answer is None:
                    continue
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def stop(self) -> None:
        """Stop listening, close every connection and wait for their handlers to end
        (Python 3.11's wait_closed does not wait for them)."""
        assert self.server is not None
        self.server.close()
        await asyncio.sleep(0.05)  # a connection accepted just now starts its handler
        for writer in self.writers:
            writer.close()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()


@pytest.fixture
async def pool() -> AsyncIterator[HTTP1Pool]:
    made = HTTP1Pool(max_connections=8)
    yield made
    await made.close()


async def serving(answer: Callable[[int], bytes | None], **options: Any
                  ) -> tuple[RawServer, int]:
    server = RawServer(answer, **options)
    return server, await server.start()


def always(answer: bytes) -> Callable[[int], bytes]:
    return lambda _n: answer


async def test_a_post_sends_its_head_and_body_and_reads_a_content_length_answer(
        pool: HTTP1Pool) -> None:
    server, port = await serving(always(
        b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nRetry-After: 3\r\n\r\nhello"))
    try:
        answer = await pool.post(f"http://127.0.0.1:{port}/hook?x=1",
                                 {"content-type": "application/json"}, b'{"a": 1}',
                                 timeout_s=5)
    finally:
        await server.stop()
    assert (answer.status, answer.body, answer.headers["retry-after"]) == (201, b"hello", "3")
    (request,) = server.requests
    assert request.startswith(b"POST /hook?x=1 HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{port}\r\n".encode() in request
    assert b"content-length: 8\r\n" in request and b"content-type: application/json\r\n" in request
    assert request.endswith(b'\r\n\r\n{"a": 1}')


async def test_one_connection_carries_request_after_request(pool: HTTP1Pool) -> None:
    server, port = await serving(always(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    try:
        for _ in range(5):
            answer = await pool.post(f"http://127.0.0.1:{port}/", {}, b"x", timeout_s=5)
            assert answer.status == 200
    finally:
        await server.stop()
    assert server.connections == 1 and len(server.requests) == 5


@pytest.mark.parametrize(("answer", "body"), [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n", b"abcdefg"),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"
     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok"),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
], ids=["chunked with an extension and a trailer", "informational answers first",
        "no content"])
async def test_answers_framed_each_way_are_read_whole_and_the_connection_kept(
        pool: HTTP1Pool, answer: bytes, body: bytes) -> None:
    server, port = await serving(always(answer))
    try:
        for _ in range(2):
            got = await pool.post(f"http://127.0.0.1:{port}/", {}, b"x", timeout_s=5)
            assert (got.status, got.body) == (int(answer.split(b"\r\n\r\n")[-2][9:12])
                                              if b"100 Continue" in answer else
                                              int(answer[9:12]), body)
    finally:
        await server.stop()
    assert server.connections == 1


async def test_an_answer_that_ends_with_its_connection_is_read_to_the_end(
        pool: HTTP1Pool) -> None:
    server, port = await serving(always(b"HTTP/1.1 500 Oops\r\n\r\nit broke"), close_after=True)
    try:
        for _ in range(2):
            got = await pool.post(f"http://127.0.0.1:{port}/", {}, b"x", timeout_s=5)
            assert (got.status, got.body) == (500, b"it broke")
    finally:
        await server.stop()
    assert server.connections == 2


async def test_connection_close_and_http_1_0_answers_are_not_reused(pool: HTTP1Pool) -> None:
    answers = [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
               b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"]
    server, port = await serving(lambda n: answers[(n - 1) % 2])
    try:
        for _ in range(4):
            assert (await pool.post(f"http://127.0.0.1:{port}/", {}, b"x",
                                    timeout_s=5)).status == 200
    finally:
        await server.stop()
    assert server.connections == 4


async def test_only_the_first_bytes_are_kept_and_a_long_body_is_not_read_to_its_end(
        pool: HTTP1Pool) -> None:
    big = 1_000_000
    server, port = await serving(always(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % big + b"a" * big))
    try:
        got = await pool.post(f"http://127.0.0.1:{port}/", {}, b"x", timeout_s=5, keep=10)
        assert (got.status, got.body) == (200, b"a" * 10)
        again = await pool.post(f"http://127.0.0.1:{port}/", {}, b"x", timeout_s=5, keep=10)
        assert again.status == 200
    finally:
        await server.stop()
    assert server.connections == 2  # the first one was closed, not drained


@pytest.mark.parametrize("answer", [
    b"SSH-2.0-OpenSSH\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\n no-name\r\n\r\n",
], ids=["not http", "bad content-length", "bad chunk size", "folded header"])
async def test_what_is_not_an_http_answer_is_a_protocol_error(
        pool: HTTP1Pool, answer: bytes) -> None:
    server, port = await serving(always(answer))
    try:
        with pytest.raises(ProtocolError):
            await pool.post(f"http://127.0.0.1:{port}/", {}, b"x", timeout_s=5)
    finally:
        await server.stop()


async def test_an_answer_head_over_the_bound_is_a_protocol_error_even_in_one_read(
        pool: HTTP1Pool) -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"a" * MAX_HEAD + b"\r\n\r\n"
    server, port = await serving(always(head))
    try:
        with pytest.raises(ProtocolError, match="too long"):
            await pool.post(f"http://127.0.0.1:{port}/", {}, b"x", timeout_s=5)
    finally:
        await server.stop()


async def test_a_connection_closed_before_the_answer_is_a_protocol_error(
        pool: HTTP1Pool) -> None:
    server, port = await serving(lambda _n: b"", close_after=True)
    try:
        with pytest.raises(ProtocolError, match="closed"):
            await pool.post(f"http://127.0.0.1:{port}/", {}, b"x", timeout_s=5)
    finally:
        await server.stop()


async def test_a_connection_its_server_closed_while_idle_is_not_reused(
        pool: HTTP1Pool) -> None:
    server, port = await serving(always(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    try:
        await pool.post(f"http://127.0.0.1:{port}/", {}, b"x", timeout_s=5)
        for writer in server.writers:
            writer.close()
        await asyncio.sleep(0.1)  # the close reaches the client
        assert (await pool.post(f"http://127.0.0.1:{port}/", {}, b"x",
                                timeout_s=5)).status == 200
    finally:
        await server.stop()
    assert server.connections == 2


async def test_a_connection_idle_too_long_is_closed_not_reused(pool: HTTP1Pool) -> None:
    pool.idle_s = 0.05
    server, port = await serving(always(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    try:
        await pool.post(f"http://127.0.0.1:{port}/", {}, b"x", timeout_s=5)
        await asyncio.sleep(0.1)
        await pool.post(f"http://127.0.0.1:{port}/", {}, b"x", timeout_s=5)
    finally:
        await server.stop()
    assert server.connections == 2


async def test_a_header_that_would_split_the_request_is_refused_unsent(
        pool: HTTP1Pool) -> None:
    server, port = await serving(always(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    try:
        for value in ("a\r\nx-evil: 1", "a\nb", "a\rb", "a\0b"):
            with pytest.raises(ValueError, match="line break or a NUL"):
                await pool.post(f"http://127.0.0.1:{port}/", {"x-h": value}, b"x",
                                timeout_s=5)
    finally:
        await server.stop()
    assert server.requests == []


async def test_the_time_limit_covers_the_answer_and_its_connection_is_dropped(
        pool: HTTP1Pool) -> None:
    server, port = await serving(lambda n: None if n == 1 else
                                 b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    try:
        with pytest.raises(TimeoutError):
            await pool.post(f"http://127.0.0.1:{port}/", {}, b"x", timeout_s=0.2)
        assert (await pool.post(f"http://127.0.0.1:{port}/", {}, b"x",
                                timeout_s=5)).status == 200
    finally:
        await server.stop()
    assert server.connections == 2


async def test_no_more_connections_than_allowed_are_in_use_at_once() -> None:
    pool = HTTP1Pool(max_connections=2)
    gate = asyncio.Event()
    in_flight = 0
    peak = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await gate.wait()
        in_flight -= 1
        return web.Response(text="ok")

    runner, port = await serve_on_loopback(slow)
    try:
        posts = [asyncio.create_task(pool.post(f"http://127.0.0.1:{port}/", {}, b"x",
                                               timeout_s=5)) for _ in range(6)]
        await asyncio.sleep(0.2)
        assert in_flight == 2
        gate.set()
        answers = await asyncio.gather(*posts)
    finally:
        await pool.close()
        await runner.cleanup()
    assert [a.status for a in answers] == [200] * 6 and peak == 2


async def test_a_refused_connection_is_a_connect_error_naming_the_host(pool: HTTP1Pool) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectError, match=f"Cannot connect to host 127.0.0.1:{port}"):
        await pool.post(f"http://127.0.0.1:{port}/", {}, b"x", timeout_s=5)


async def test_https_verifies_the_servers_certificate_for_the_urls_host() -> None:
    tls = TLS()
    server = RawServer(always(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    port = await server.start(ssl_context=tls.server_context(alpn=("http/1.1",)))
    trusting = HTTP1Pool(ssl_context=tls.client_context())
    untrusting = HTTP1Pool()
    try:
        answer = await trusting.post(f"https://localhost:{port}/", {}, b"x", timeout_s=5)
        assert (answer.status, answer.body) == (200, b"ok")
        with pytest.raises(ConnectError) as refused:
            await untrusting.post(f"https://localhost:{port}/", {}, b"x", timeout_s=5)
        assert isinstance(refused.value.os_error, ssl.SSLCertVerificationError)
    finally:
        await trusting.close()
        await untrusting.close()
        await server.stop()


async def test_an_ipv6_literal_and_user_info_in_the_url_are_sent_as_aiohttp_sent_them(
        pool: HTTP1Pool) -> None:
    server = RawServer(always(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    port = await server.start("::1")
    try:
        await pool.post(f"http://user:p%40ss@[::1]:{port}/h", {}, b"x", timeout_s=5)
        await pool.post(f"http://user:pw@[::1]:{port}/h", {"Authorization": "Bearer t"},
                        b"x", timeout_s=5)
    finally:
        await server.stop()
    first, second = server.requests
    assert f"host: [::1]:{port}\r\n".encode() in first
    expected = base64.b64encode(b"user:p@ss")
    assert b"authorization: Basic " + expected + b"\r\n" in first
    assert b"Authorization: Bearer t\r\n" in second and b"Basic" not in second


async def test_a_chunked_body_of_whole_chunks_is_not_read_past_the_drain_bound(
        pool: HTTP1Pool) -> None:
    chunk = b"a" * 10_000
    server, port = await serving(always(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % len(chunk) + chunk + b"\r\n" * 1 + (b"%x\r\n" % len(chunk) + chunk
                                                         + b"\r\n") * 20))
    try:
        got = await pool.post(f"http://127.0.0.1:{port}/", {}, b"x", timeout_s=5, keep=4)
    finally:
        await server.stop()
    assert (got.status, got.body) == (200, b"aaaa")


@pytest.mark.parametrize("length", ["\u00b2", "1" * 5000, "+5", "5, 6"])
async def test_a_content_length_that_is_no_plain_number_is_a_protocol_error(
        pool: HTTP1Pool, length: str) -> None:
    server, port = await serving(always(
        f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n".encode("latin-1", "replace")
        if length.isascii() or length == "\u00b2" else b""))
    try:
        with pytest.raises(ProtocolError):
            await pool.post(f"http://127.0.0.1:{port}/", {}, b"x", timeout_s=5)
    finally:
        await server.stop()


async def post_over_tls(host: str, resolver: Fixed | None = None
                        ) -> tuple[Answer, bytes, int]:
    """One POST to ``https://{host}:{port}/``, a server on 127.0.0.1 whose certificate
    is for 127.0.0.1 and localhost: the answer, the request as it arrived, the port."""
    tls = TLS()
    server = RawServer(always(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    port = await server.start(ssl_context=tls.server_context(alpn=("http/1.1",)))
    client = HTTP1Pool(ssl_context=tls.client_context(), resolver=resolver)
    try:
        answer = await client.post(f"https://{host}:{port}/", {}, b"x", timeout_s=5)
    finally:
        await client.close()
        await server.stop()
    return answer, server.requests[0], port


async def test_a_trailing_dot_in_an_https_host_still_verifies_its_name() -> None:
    answer, _, _ = await post_over_tls("localhost.", Fixed("127.0.0.1"))
    assert answer.status == 200


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1"])
async def test_an_ipv4_address_in_short_or_numeric_form_is_an_address_for_tls_too(
        host: str) -> None:
    """As browsers and curl read such a URL (WHATWG's IPv4 parser): the address
    127.0.0.1, whose certificate is checked for that address and which is sent no SNI
    name, not a host named "127.1" (whose check then failed against any certificate)."""
    answer, request, port = await post_over_tls(host)
    assert answer.status == 200
    assert f"host: {host}:{port}\r\n".encode() in request


@pytest.mark.parametrize("host", [
    "127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "2130706433", "0177.0.0.1", "127.1",
    "\uff11\uff12\uff17.\uff10.\uff10.\uff11",  # fullwidth digits
    "\U0001fbf1\U0001fbf2\U0001fbf7.\U0001fbf0.\U0001fbf0.\U0001fbf1",  # segmented digits
    "localhost",
])
async def test_no_spelling_of_a_forbidden_address_reaches_it(host: str) -> None:
    """Whatever the URL spells (a literal in any form, a name that yarl's IDNA mapping
    turns into one, a name that resolves to one), nothing connects to a forbidden
    address: it is refused before connecting, and the connected peer is checked too."""
    server = RawServer(always(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret"))
    port = await server.start()
    guarded = HTTP1Pool(resolver=GuardedResolver(), forbidden=address_forbidden)
    try:
        with pytest.raises((ForbiddenAddress, ConnectError)) as refused:
            await guarded.post(f"http://{host}:{port}/", {}, b"x", timeout_s=5)
    finally:
        await guarded.close()
        await server.stop()
    if isinstance(refused.value, ConnectError):  # nothing listens on ::1 here, say
        assert isinstance(refused.value.os_error, ForbiddenAddress) or "::" in host
    assert server.requests == [] and server.connections == 0


async def test_the_connected_peer_is_checked_whatever_resolved_the_name() -> None:
    """A resolver that lets a forbidden address through (as a name rebound between the
    check and the connection would): the peer is refused after connecting, unsent."""
    server = RawServer(always(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    port = await server.start()

    refusing = {"calls": 0}

    def forbidden(address: str) -> bool:
        refusing["calls"] += 1
        return refusing["calls"] > 1  # lets the resolved address through once

    pool = HTTP1Pool(resolver=Fixed("127.0.0.1"), forbidden=forbidden)
    try:
        with pytest.raises(ForbiddenAddress):
            await pool.post(f"http://example.test:{port}/", {}, b"x", timeout_s=5)
    finally:
        await pool.close()
        await server.stop()
    assert server.requests == []


async def test_closing_the_pool_refuses_new_posts_and_keeps_nothing_open() -> None:
    server, port = await serving(always(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    pool = HTTP1Pool()
    try:
        await pool.post(f"http://127.0.0.1:{port}/", {}, b"x", timeout_s=5)
        await pool.close()
        with pytest.raises(ProtocolError, match="closed"):
            await pool.post(f"http://127.0.0.1:{port}/", {}, b"x", timeout_s=5)
        await asyncio.sleep(0.1)
        assert all(w.is_closing() for w in server.writers)
    finally:
        await server.stop()
