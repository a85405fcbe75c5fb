"""What the gateway's ingest costs per request in its own process, without the network.

    .venv/bin/python bench/ingest_overhead.py [--requests 20000] [--rounds 3] [--profile]

Both servers run in this process on one event loop (uvloop), against a fresh embedded
PostgreSQL: the gateway as ``gateway serve`` builds it (its app, its middlewares, the
request line at INFO through the server's buffered handler, into memory) and the minimal
durable server of `bench/minimal_server.py` (the same batching, no auth, no validation,
no logging). Requests do not cross a socket: each of ``--connections`` connections is a
transport in memory that hands aiohttp's protocol the bytes of ``POST /v1/events`` and
sends the next request when the answer is written. So what is measured is the server's
own CPU per request (``time.process_time``: the event loop, aiohttp, the handler and
asyncpg's client side), with no system calls for the network and no load generator on
the same cores; PostgreSQL runs in its own processes and is not counted.

Rounds alternate the two servers. Each prints its CPU a request, its rate, and its group
commit: the events a commit held and the statement's round trip (from sending it to its
answer, PostgreSQL's work and the commit's WAL flush). ``--without PART`` (repeatable)
runs the gateway with one part of its request path replaced by the least that stands in
for it, to say what that part costs in place: ``request-line`` (the request's log line
not written), ``auth`` (the first request's caller reused), ``strict-json`` (the body read
with ``json.loads``, no duplicate-key, depth or storability checks), ``answer`` (a fixed
202 body). ``--profile`` runs one more gateway round under cProfile and prints the
functions that take the most of it. Beside `bench/run.py`'s ingest (over loopback, with
wrk) it says where the gateway's CPU per request goes, reproducibly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import asyncpg
import uvloop
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Postgres
from minimal_server import SCHEMA, Batcher, make_app
from run import EVENT_BODY

from gateway.serve import GC_THRESHOLD_OBJECTS

ADMIN_KEY = "gwadmin_bench_" + "k" * 24
T = TypeVar("T")


class Commits:
    """The group commit's statements of one server: events each held, and its round trip."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.seconds: list[float] = []

    async def timed(self, size: int, statement: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await statement
        finally:
            self.seconds.append(time.perf_counter() - started)
            self.sizes.append(size)

    def since(self, mark: int) -> str:
        sizes, seconds = self.sizes[mark:], self.seconds[mark:]
        if not sizes:
            return "no commits"
        return (f"{statistics.mean(sizes):.1f} events a commit, statement round trip "
                f"{1000 * statistics.median(seconds):.2f} ms (median)")


COMMITS = {"gateway": Commits(), "minimal": Commits()}


class MemoryTransport(asyncio.Transport):
    """One keep-alive connection in memory: it counts the answers aiohttp writes (each
    starts with a status line) and calls ``answered`` after each."""

    def __init__(self, answered: Callable[[bytes], None]) -> None:
        super().__init__()
        self.answered = answered
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._seen(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self._seen(b"".join(bytes(d) for d in list_of_data))

    def _seen(self, data: bytes) -> None:
        if data.startswith(b"HTTP/1.1 "):
            self.answered(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default)

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


def http_request(method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1:8080",
            f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def load(server: web.Server, request: bytes, total: int, connections: int,
               ) -> tuple[float, float, dict[int, int]]:
    """``total`` requests over ``connections`` connections; (CPU s, wall s, statuses)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    sent = 0
    answered = 0
    statuses: dict[int, int] = {}

    def connect() -> None:
        nonlocal sent
        protocol: RequestHandler = server()

        def on_answer(data: bytes) -> None:
            nonlocal sent, answered
            status = int(data[9:12])
            statuses[status] = statuses.get(status, 0) + 1
            answered += 1
            if answered == total and not done.done():
                done.set_result(None)
            elif sent < total:
                sent += 1
                loop.call_soon(protocol.data_received, request)

        transport = MemoryTransport(on_answer)
        protocol.connection_made(transport)
        sent += 1
        protocol.data_received(request)

    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(min(connections, total)):
        connect()
    await done
    return time.process_time() - cpu, time.perf_counter() - wall, statuses


async def one(server: web.Server, request: bytes) -> tuple[int, dict[str, Any]]:
    """One request's status and JSON answer."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()
    protocol: RequestHandler = server()
    chunks: list[bytes] = []

    class Collect(MemoryTransport):
        def _seen(self, data: bytes) -> None:
            chunks.append(data)
            text = b"".join(chunks)
            head, _, body = text.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if len(body) >= length and not got.done():
                got.set_result(text)

    protocol.connection_made(Collect(lambda data: None))
    protocol.data_received(request)
    text = await got
    head, _, body = text.partition(b"\r\n\r\n")
    return int(head[9:12]), json.loads(body)


async def gateway_server(dsn: str, workdir: Path,
                         patches: contextlib.ExitStack) -> tuple[web.AppRunner, bytes]:
    """The gateway's app as ``gateway serve --no-dispatcher`` builds it, an app with one
    endpoint subscribed to everything, and the ingest request with its key. Its
    ``insert_events`` statements are timed for as long as ``patches`` holds."""
    from gateway import logs
    from gateway.app import create_app
    from gateway.config import load_settings
    from gateway.store.database import Database, migrate

    fetch = Database.fetch

    async def timed_fetch(self: Database, name: str, *args: Any) -> Any:
        if name != "insert_events":
            return await fetch(self, name, *args)
        return await COMMITS["gateway"].timed(len(args[0]), fetch(self, name, *args))

    patches.enter_context(mock.patch.object(Database, "fetch", timed_fetch))

    settings = load_settings({"DATABASE_URL": dsn, "GATEWAY_ADMIN_KEY": ADMIN_KEY,
                              "GATEWAY_DATA_DIR": str(workdir / "data"),
                              "GATEWAY_ALLOW_PRIVATE_ENDPOINTS": "true"})
    # As the server logs (cli.main): text at INFO, buffered; here into memory.
    logs.configure(settings.log_format, settings.log_level, stream=_Sink(),
                   secrets=(settings.admin_key, settings.metrics_key), buffered=True)
    await migrate(dsn)
    app = create_app(settings, dsn, serve_api=True, dispatcher=False)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    server = runner.server
    assert server is not None
    admin = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
    status, created = await one(server, http_request(
        "POST", "/v1/apps", b'{"name": "bench"}', admin))
    assert status == 201, created
    key = created["api_key"]
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    status, answer = await one(server, http_request(
        "POST", "/v1/endpoints",
        json.dumps({"url": "http://127.0.0.1:9/hook", "event_types": ["*"]}).encode(), auth))
    assert status == 201, answer
    return runner, http_request("POST", "/v1/events", EVENT_BODY.encode(), auth)


class _Sink(io.StringIO):
    """The log stream: written to as stderr would be, then forgotten."""

    def write(self, text: str) -> int:
        return len(text)


async def minimal_server(dsn: str) -> tuple[web.AppRunner, bytes, asyncpg.Pool]:
    """bench/minimal_server.py's app: its handler and batching."""
    async def no_reset(conn: asyncpg.Connection) -> None:
        return None

    class TimedConnection(asyncpg.Connection):
        async def execute(self, query: str, *args: Any, **options: Any) -> str:
            if not args:
                return await super().execute(query, **options)
            return await COMMITS["minimal"].timed(
                len(args[0]), super().execute(query, *args, **options))

    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4, reset=no_reset,
                                     connection_class=TimedConnection)
    async with pool.acquire() as conn:
        await conn.execute(SCHEMA)
    app = make_app(Batcher(pool))
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    request = http_request("POST", "/v1/events", EVENT_BODY.encode(),
                           {"Content-Type": "application/json"})
    return runner, request, pool


def without(parts: list[str], patches: contextlib.ExitStack) -> None:
    """Replace each named part of the gateway's request path by the least that stands in
    for it (module doc), for as long as ``patches`` holds."""
    from gateway import logs
    from gateway.api import events, routing

    def replace(module: Any, name: str, stand_in: Any) -> None:
        patches.enter_context(mock.patch.object(module, name, stand_in))

    if "request-line" in parts:
        replace(logs, "emit", lambda *args, **kwargs: None)
    if "auth" in parts:
        authenticate = routing.authenticate
        first: list[Any] = []

        async def reused(request: web.Request, header: str | None = None) -> Any:
            if not first:
                first.append(await authenticate(request, header))
            return first[0]

        replace(routing, "authenticate", reused)
    if "strict-json" in parts:
        async def read_body(request: web.Request, limits: Any = None) -> Any:
            body = await request.read()
            data = json.loads(body)
            return body, data, {"payload": json.dumps(data["payload"])}

        replace(events, "read_body", read_body)
    if "answer" in parts:
        answer = b'{"id": "evt_0", "type": "order.created", "created_at": "2026-01-01T00:00:00Z"}'
        replace(events, "accepted_answer", lambda accepted, status: web.Response(
            status=status, body=answer, content_type="application/json"))


async def measure(args: argparse.Namespace, pg: Postgres, workdir: Path) -> None:
    with contextlib.ExitStack() as patches:
        await _measure(args, pg, workdir, patches)


async def _measure(args: argparse.Namespace, pg: Postgres, workdir: Path,
                   patches: contextlib.ExitStack) -> None:
    gw_runner, gw_request = await gateway_server(
        await pg.fresh_database("ingest_overhead_gw"), workdir, patches)
    # After the setup requests (made by the real parts): the load's requests only.
    without(args.without, patches)
    min_runner, min_request, pool = await minimal_server(
        await pg.fresh_database("ingest_overhead_min"))
    gw_server, min_server = gw_runner.server, min_runner.server
    assert gw_server is not None and min_server is not None
    # As `gateway serve` leaves the collector once started (serve._run_app); the minimal
    # server, a process of its own in bench/run.py, keeps Python's default there.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD_OBJECTS)
    # Warm both (caches, prepared statements, the first partitions' plans).
    await load(gw_server, gw_request, 2000, args.connections)
    await load(min_server, min_request, 2000, args.connections)
    per: dict[str, list[float]] = {"gateway": [], "minimal": []}
    rates: dict[str, list[float]] = {"gateway": [], "minimal": []}
    for round_no in range(1, args.rounds + 1):
        for name, server, request in (("minimal", min_server, min_request),
                                      ("gateway", gw_server, gw_request)):
            mark = len(COMMITS[name].sizes)
            cpu, wall, statuses = await load(server, request, args.requests, args.connections)
            us = cpu / args.requests * 1e6
            per[name].append(us)
            rates[name].append(args.requests / wall)
            print(f"round {round_no} {name:8s} {us:6.1f} us CPU a request  "
                  f"{args.requests / wall:6.0f} req/s ({100 * cpu / wall:.0f} % of a core); "
                  f"{COMMITS[name].since(mark)}; statuses {statuses}", flush=True)
    gw, mn = statistics.median(per["gateway"]), statistics.median(per["minimal"])
    ratio = statistics.median(g / m for g, m in zip(rates["gateway"], rates["minimal"],
                                                    strict=True))
    print(f"median: gateway {gw:.1f} us, minimal {mn:.1f} us CPU a request; the gateway's "
          f"own {gw - mn:.1f} us ({gw / mn:.2f}x); rate gateway/minimal {ratio:.2f}"
          + (f" (without {', '.join(args.without)})" if args.without else ""))
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        await load(gw_server, gw_request, args.requests, args.connections)
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
        print(out.getvalue())
    await gw_runner.cleanup()
    await min_runner.cleanup()
    await pool.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--without", action="append", default=[],
                        choices=("request-line", "auth", "strict-json", "answer"))
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ingest-overhead-") as tmp:
        workdir = Path(tmp)
        pg = Postgres(os.environ.get("DATABASE_URL"), workdir)
        pg.start()
        try:
            uvloop.run(measure(args, pg, workdir))
        finally:
            with contextlib.suppress(Exception):
                pg.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
