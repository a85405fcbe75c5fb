"""adapters.http2 against real HTTP/2-over-TLS servers that misbehave like production ones
(tests/h2_support.py): stream limits, GOAWAY, refused and reset streams, flow control,
dead sockets. Every request carries a unique ``x-req-id`` and the servers record what they
processed, so "exactly once" is checked, not assumed."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections import Counter
from collections.abc import Callable, Sequence

import h2.config
import h2.connection
import h2.errors
import h2.exceptions
import pytest

from adapters.http2 import (
    MAX_RESENDS,
    ConnectError,
    ConnectionLost,
    HTTP2Pool,
    RequestTimeout,
    Response,
    StreamReset,
)
from tests.h2_support import TLS, Goaway, H2TestServer, goaway_frame, serving

#: Upper bound for any single wait in this file.
WAIT_S = 10.0


@pytest.fixture(scope="module")
def tls() -> TLS:
    return TLS()


def make_pool(tls: TLS, server: H2TestServer, **options: int | float) -> HTTP2Pool:
    return HTTP2Pool(server.origin, tls.client_context(), **options)  # type: ignore[arg-type]


async def send(
    pool: HTTP2Pool, req_id: str, path: str = "/", body: bytes = b"", timeout_s: float = WAIT_S
) -> Response:
    return await pool.request(
        "POST", path, [("x-req-id", req_id)], body, timeout_s=timeout_s
    )


async def burst(
    pool: HTTP2Pool, ids: Sequence[str], path: str = "/"
) -> list[Response | BaseException]:
    async with asyncio.timeout(WAIT_S * 2):
        return await asyncio.gather(
            *(send(pool, req_id, path) for req_id in ids), return_exceptions=True
        )


def assert_ok(ids: Sequence[str], results: Sequence[Response | BaseException]) -> None:
    for req_id, result in zip(ids, results, strict=True):
        assert isinstance(result, Response), (req_id, result)
        assert result.status == 200
        assert result.headers["x-req-id"] == req_id
        assert result.body == b"ok:" + req_id.encode()


def assert_exactly_once(server: H2TestServer, ids: Sequence[str]) -> None:
    counts = Counter(server.processed_ids())
    assert counts == Counter(ids), {k: v for k, v in counts.items() if v != 1}


async def until(condition: Callable[[], object], what: str) -> None:
    """Wait (bounded) for a server-side effect that follows a client action."""
    for _ in range(int(WAIT_S / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting until {what}")


# -- stream limits ---------------------------------------------------------------------


async def test_burst_never_exceeds_max_concurrent_streams_and_processes_each_once(
    tls: TLS,
) -> None:
    ids = [f"b{i}" for i in range(500)]
    async with (
        serving(tls, max_concurrent_streams=10, response_delay_s=0.005) as server,
        make_pool(tls, server, max_connections=4) as pool,
    ):
        results = await burst(pool, ids)
        assert_ok(ids, results)
        assert_exactly_once(server, ids)
        assert 1 <= len(server.connections) <= 4
        assert all(c.max_open <= 10 for c in server.connections)
        assert max(c.max_open for c in server.connections) == 10  # It did use the limit.
        assert sum(c.violations for c in server.connections) == 0
        assert not server.protocol_errors


async def test_limit_lowered_mid_burst_then_raised_never_stalls_and_is_respected(
    tls: TLS,
) -> None:
    ids = [f"l{i}" for i in range(300)]
    async with (
        serving(
            tls,
            max_concurrent_streams=10,
            response_delay_s=0.01,
            limit_changes=[(40, 2), (120, 10)],
        ) as server,
        make_pool(tls, server, max_connections=1) as pool,
    ):
        results = await burst(pool, ids)
        assert_ok(ids, results)
        assert_exactly_once(server, ids)
        [conn] = server.connections
        # Streams opened while 2 was the acknowledged limit never made more than 2 open...
        assert conn.max_open_by_limit[2] <= 2
        # ...and after the raise the client went back to 10 at once.
        assert conn.max_open_by_limit[10] == 10
        assert conn.violations == 0
        assert not server.protocol_errors


async def test_apns_like_limit_of_one_raised_after_first_answer_keeps_one_connection(
    tls: TLS,
) -> None:
    ids = [f"a{i}" for i in range(300)]
    async with (
        serving(
            tls, max_concurrent_streams=1, raise_after_first=1000, response_delay_s=0.01
        ) as server,
        make_pool(tls, server, max_connections=4) as pool,
    ):
        results = await burst(pool, ids)
        assert_ok(ids, results)
        assert_exactly_once(server, ids)
        assert len(server.connections) == 1
        assert pool.open_connections == 1
        [conn] = server.connections
        assert conn.max_open_by_limit[1] == 1
        assert conn.max_open_by_limit[1000] > 100  # The rest went out together.


async def test_saturated_connections_make_the_pool_open_more_up_to_max_connections(
    tls: TLS,
) -> None:
    ids = [f"m{i}" for i in range(120)]
    async with (
        serving(tls, max_concurrent_streams=5, response_delay_s=0.05) as server,
        make_pool(tls, server, max_connections=3) as pool,
    ):
        results = await burst(pool, ids)
        assert_ok(ids, results)
        assert_exactly_once(server, ids)
        assert len(server.connections) == 3
        assert all(c.max_open <= 5 for c in server.connections)


# -- GOAWAY ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["same_write", "later"])
async def test_goaway_mid_burst_resends_only_unprocessed_streams_on_a_new_connection(
    tls: TLS, mode: str
) -> None:
    ids = [f"g{i}" for i in range(100)]
    goaway = Goaway(after=15, keep=2, mode=mode)  # type: ignore[arg-type]
    async with (
        serving(
            tls, max_concurrent_streams=10, response_delay_s=0.02, goaway=goaway
        ) as server,
        make_pool(tls, server, max_connections=1) as pool,
    ):
        results = await burst(pool, ids)
        assert_ok(ids, results)
        assert_exactly_once(server, ids)
        first = server.connections[0]
        assert first.goaway_last_id is not None
        # Streams above last-stream-id were dropped by the server and re-sent elsewhere...
        assert server.dropped
        where = dict(server.processed)
        assert all(where[req_id] > 0 for req_id in server.dropped)
        # ...while the ones up to it were answered on the GOAWAY'd connection and delivered.
        assert len(first.answered_after_goaway) == 2
        assert all(where[req_id] == 0 for req_id in first.answered_after_goaway)
        # The drained connection was closed by the client; its replacement stays.
        await until(lambda: first.closed.done(), "client closes the GOAWAY'd connection")
        assert first.goaway_received  # With our own GOAWAY(NO_ERROR).
        assert pool.open_connections == 1
        assert not server.protocol_errors


async def test_goaway_then_close_fails_unanswered_streams_with_connection_lost_unresent(
    tls: TLS,
) -> None:
    ids = [f"u{i}" for i in range(60)]
    goaway = Goaway(after=15, keep=4, mode="unanswered_close")
    async with (
        serving(
            tls, max_concurrent_streams=10, response_delay_s=0.02, goaway=goaway
        ) as server,
        make_pool(tls, server, max_connections=1) as pool,
    ):
        results = await burst(pool, ids)
        lost = {
            req_id
            for req_id, result in zip(ids, results, strict=True)
            if isinstance(result, ConnectionLost)
        }
        assert len(server.unanswered) == 2
        assert lost == set(server.unanswered)
        delivered = [i for i in ids if i not in lost]
        assert_ok(delivered, [r for i, r in zip(ids, results, strict=True) if i not in lost])
        # The lost ones were processed once and not re-sent; the dropped ones re-sent once.
        assert_exactly_once(server, ids)
        assert server.dropped
        assert server.connections[0].answered_after_goaway  # Some <= last-stream-id made it.


async def test_h2_alone_rejects_frames_after_goaway_hence_the_frame_splitting() -> None:
    """Why adapters.http2 keeps GOAWAY frames away from h2 (see its module docstring)."""
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server.initiate_connection()
    client.initiate_connection()
    for _ in range(2):
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
    request = [(":method", "GET"), (":scheme", "https"), (":authority", "x"), (":path", "/")]
    client.send_headers(1, request, end_stream=True)
    client.send_headers(3, request, end_stream=True)
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(":status", "200")], end_stream=True)
    with pytest.raises(h2.exceptions.ProtocolError, match="RECV_HEADERS in state"):
        client.receive_data(goaway_frame(1, 0) + server.data_to_send())


# -- resets ----------------------------------------------------------------------------


async def test_refused_streams_are_resent_and_processed_exactly_once(tls: TLS) -> None:
    ids = [f"r{i}" for i in range(100)]
    refuse = ids[::5]
    async with (
        serving(
            tls, max_concurrent_streams=10, response_delay_s=0.005, refuse=refuse
        ) as server,
        make_pool(tls, server) as pool,
    ):
        results = await burst(pool, ids)
        assert_ok(ids, results)
        assert_exactly_once(server, ids)
        assert sorted(server.refused) == sorted(refuse)


async def test_always_refused_request_gives_up_with_stream_reset_after_bounded_resends(
    tls: TLS,
) -> None:
    async with (
        serving(tls, refuse_always={"never"}) as server,
        make_pool(tls, server) as pool,
    ):
        with pytest.raises(StreamReset) as caught:
            await send(pool, "never")
        assert caught.value.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
        assert server.refused == ["never"] * (MAX_RESENDS + 1)
        assert server.processed == []
        assert_ok(["fine"], [await send(pool, "fine")])


async def test_other_stream_resets_reach_the_caller_and_are_not_resent(tls: TLS) -> None:
    internal = h2.errors.ErrorCodes.INTERNAL_ERROR
    async with (
        serving(tls, reset={"boom": internal}) as server,
        make_pool(tls, server) as pool,
    ):
        with pytest.raises(StreamReset) as caught:
            await send(pool, "boom")
        assert caught.value.error_code == internal
        assert_ok(["after"], [await send(pool, "after")])
        assert_exactly_once(server, ["boom", "after"])
        assert len(server.connections) == 1


# -- timeouts and cancellation ---------------------------------------------------------


async def test_timeout_resets_the_stream_and_frees_the_slot(tls: TLS) -> None:
    async with (
        serving(tls, max_concurrent_streams=1) as server,
        make_pool(tls, server, max_connections=1) as pool,
    ):
        with pytest.raises(RequestTimeout) as caught:
            await send(pool, "slow", "/hang", timeout_s=0.2)
        assert caught.value.request_sent
        ids = [f"t{i}" for i in range(5)]
        assert_ok(ids, await burst(pool, ids))
        await until(lambda: server.resets_received, "RST_STREAM reaches the server")
        assert server.resets_received == [("slow", h2.errors.ErrorCodes.CANCEL)]
        assert len(server.connections) == 1


async def test_timeout_while_waiting_for_a_slot_reports_nothing_sent(tls: TLS) -> None:
    async with (
        serving(tls, max_concurrent_streams=1) as server,
        make_pool(tls, server, max_connections=1) as pool,
    ):
        hanging = asyncio.create_task(send(pool, "hang", "/hang"))
        await until(lambda: server.connections and server.connections[0].pending, "hang sent")
        with pytest.raises(RequestTimeout) as caught:
            await send(pool, "queued", timeout_s=0.1)
        assert not caught.value.request_sent
        hanging.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hanging
        assert_ok(["next"], [await send(pool, "next")])
        assert_exactly_once(server, ["next"])


async def test_cancellation_frees_the_slot_and_leaves_no_waiter_behind(tls: TLS) -> None:
    async with (
        serving(tls, max_concurrent_streams=1) as server,
        make_pool(tls, server, max_connections=1) as pool,
    ):
        hanging = asyncio.create_task(send(pool, "hang", "/hang"))
        await until(lambda: server.connections and server.connections[0].pending, "hang sent")
        waiting = asyncio.create_task(send(pool, "waits"))
        abandoned = asyncio.create_task(send(pool, "abandoned"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        abandoned.cancel()
        hanging.cancel()
        assert_ok(["waits"], [await asyncio.wait_for(waiting, WAIT_S)])
        for task in (hanging, abandoned):
            with pytest.raises(asyncio.CancelledError):
                await task
        await until(lambda: server.resets_received, "RST_STREAM reaches the server")
        assert server.resets_received == [("hang", h2.errors.ErrorCodes.CANCEL)]
        assert_exactly_once(server, ["waits"])  # The cancelled waiter never went out.
        assert_ok(["last"], [await send(pool, "last")])


# -- flow control ----------------------------------------------------------------------


@pytest.mark.parametrize("stream_window", [1000, 1_000_000])
async def test_request_bodies_larger_than_the_peer_windows_complete(
    tls: TLS, stream_window: int
) -> None:
    """256 kB bodies against the 65,535-byte connection window, with a stream window
    smaller than that (stream WINDOW_UPDATEs unblock) or larger (only the connection's do)."""
    bodies = [bytes([i]) * 1000 + bytes(range(256)) * 1000 for i in range(3)]
    async with (
        serving(tls, initial_window_size=stream_window) as server,
        make_pool(tls, server) as pool,
    ):
        async with asyncio.timeout(WAIT_S):
            responses = await asyncio.gather(
                *(send(pool, f"up{i}", body=body) for i, body in enumerate(bodies))
            )
        for response, body in zip(responses, bodies, strict=True):
            assert response.status == 200
            assert response.headers["x-body-len"] == str(len(body))
            assert response.headers["x-body-sha256"] == hashlib.sha256(body).hexdigest()
        assert not server.protocol_errors


async def test_request_body_waits_for_a_settings_raise_of_the_initial_window(
    tls: TLS,
) -> None:
    """h2 reports an INITIAL_WINDOW_SIZE change as RemoteSettingsChanged, not as
    WindowUpdated: blocked bodies must resume on it too."""
    body = b"x" * 10_000
    async with (
        serving(tls, initial_window_size=0, window_after_headers=65_535) as server,
        make_pool(tls, server) as pool,
    ):
        response = await send(pool, "zero-window", body=body)
        assert response.headers["x-body-len"] == str(len(body))
        assert not server.protocol_errors


async def test_large_response_bodies_complete(tls: TLS) -> None:
    size = 6_000_000  # Each beyond our 4 MiB stream window, together beyond 16 MiB.
    async with (
        serving(tls) as server,
        make_pool(tls, server) as pool,
    ):
        results = await burst(pool, ["big1", "big2", "big3"], path=f"/big/{size}")
        expected = (bytes(range(256)) * (size // 256 + 1))[:size]
        for result in results:
            assert isinstance(result, Response), result
            assert result.body == expected
        assert not server.protocol_errors


# -- connection lifetime ---------------------------------------------------------------


async def test_dead_connection_fails_open_streams_and_next_request_reconnects(
    tls: TLS,
) -> None:
    ids = [f"d{i}" for i in range(5)]
    async with (
        serving(tls, response_delay_s=1.0, die_after=5) as server,
        make_pool(tls, server) as pool,
    ):
        results = await burst(pool, ids)
        assert all(isinstance(r, ConnectionLost) for r in results), results
        assert_exactly_once(server, ids)  # Processed before the socket died; not re-sent.
        assert pool.open_connections == 0
        server.response_delay_s = 0.0
        assert_ok(["again"], [await send(pool, "again")])
        assert len(server.connections) == 2
        assert pool.open_connections == 1


async def test_connection_is_reused_and_answers_pings(tls: TLS) -> None:
    async with (
        serving(tls) as server,
        make_pool(tls, server) as pool,
    ):
        for i in range(20):
            assert_ok([f"s{i}"], [await send(pool, f"s{i}", path=f"/unique/{i}")])
        assert len(server.connections) == 1
        async with asyncio.timeout(WAIT_S):
            await server.connections[0].ping()
        # Per-request paths stay out of the HPACK table; the repeating headers are in it.
        table = pool._conns[0].h2.encoder.header_table.dynamic_entries
        assert not any(name == b":path" for name, _ in table)
        assert any(name == b"x-req-id" for name, _ in table)


async def test_invalid_headers_are_rejected_before_anything_is_sent(tls: TLS) -> None:
    async with (
        serving(tls) as server,
        make_pool(tls, server) as pool,
    ):
        # What HTTP/2 forbids in a request's fields (RFC 9113 8.2): the pool checks
        # these itself (h2's own outbound checks are off, see adapters/http2.py).
        for bad in [(":path", "/x"), (":other", "x"), ("x-injected", "a\r\nb: c"),
                    ("x-nul", "a\0b"), ("", "v"), ("x name", "v"), ("x:colon", "v"),
                    ("te", "gzip"), ("host", "elsewhere.example")]:
            with pytest.raises(ValueError, match="invalid request header"):
                await pool.request("POST", "/", [bad], b"", timeout_s=WAIT_S)
        with pytest.raises(ValueError, match="invalid request path"):
            await pool.request("POST", "no-slash", [], b"", timeout_s=WAIT_S)
        assert_ok(["fine"], [await send(pool, "fine")])
        assert_exactly_once(server, ["fine"])
        assert len(server.connections) == 1


async def test_unusual_headers_are_sent_as_h2_would_normalize_them(tls: TLS) -> None:
    """Names in upper case, values with surrounding whitespace and connection-specific
    fields are sent lower-cased, stripped and dropped, as h2's own outbound passes sent
    them before the pool took over its checks: a value an app stored with a trailing
    space still reaches the server."""
    async with (
        serving(tls) as server,
        make_pool(tls, server) as pool,
    ):
        response = await pool.request(
            "POST", "/", [("X-Req-Id", " padded\t"), ("connection", "close"),
                          ("te", "Trailers"), ("host", pool.authority)], b"",
            timeout_s=WAIT_S)
        assert response.status == 200
        assert_exactly_once(server, ["padded"])


async def test_credentials_are_never_indexed_and_allowed_fields_reach_the_server(
        tls: TLS) -> None:
    """A request's ``authorization`` stays out of the HPACK table (a never-indexed
    literal, RFC 7541 7.1.3), as h2's own normalizing would have sent it; ``te:
    trailers`` and empty values pass the pool's checks and the server's."""
    async with (
        serving(tls) as server,
        make_pool(tls, server) as pool,
    ):
        for i in range(3):
            response = await pool.request(
                "POST", "/", [("x-req-id", f"a{i}"), ("authorization", "bearer secret"),
                              ("te", "trailers"), ("x-empty", "")], b"", timeout_s=WAIT_S)
            assert response.status == 200
        assert_exactly_once(server, ["a0", "a1", "a2"])
        table = pool._conns[0].h2.encoder.header_table.dynamic_entries
        assert not any(name == b"authorization" for name, _ in table)
        assert any(name == b"te" for name, _ in table)


async def test_close_sends_goaway_fails_in_flight_and_waiting_requests(tls: TLS) -> None:
    async with serving(tls, max_concurrent_streams=1) as server:
        pool = make_pool(tls, server, max_connections=1)
        in_flight = asyncio.create_task(send(pool, "hang", "/hang"))
        await until(lambda: server.connections and server.connections[0].pending, "hang sent")
        waiting = asyncio.create_task(send(pool, "waits"))
        await asyncio.sleep(0.02)
        await pool.close()
        with pytest.raises(ConnectionLost):
            await in_flight
        with pytest.raises(ConnectError):
            await waiting
        with pytest.raises(ConnectError):
            await send(pool, "after-close")
        await until(lambda: server.connections[0].closed.done(), "socket closed")
        assert server.connections[0].goaway_received
        assert pool.open_connections == 0


async def test_connect_failures_raise_connect_error(tls: TLS) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    async with HTTP2Pool(f"https://127.0.0.1:{port}", tls.client_context()) as pool:
        with pytest.raises(ConnectError):
            await send(pool, "refused")
    async with serving(tls, alpn=("http/1.1",)) as server, make_pool(tls, server) as pool:
        with pytest.raises(ConnectError):
            await send(pool, "no-h2")
    async with (
        serving(tls) as server,
        HTTP2Pool(
            server.origin, tls.client_context(), server_hostname="other.example"
        ) as pool,
    ):
        with pytest.raises(ConnectError):
            await send(pool, "wrong-name")
        assert server.processed == []
