"""Shared test machinery: databases, a recording webhook receiver, the gateway process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
from aiohttp import web

from gateway.store import embedded

ADMIN_KEY = "test-admin-key"
ROOT = Path(__file__).resolve().parent.parent
#: Every table of the schema by name (partitions come with their parents), but the record of
#: the migrations applied.
TABLES_QUERY = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND c.relname <> 'schema_migrations'
ORDER BY c.relname
"""


def with_database(dsn: str, name: str) -> str:
    """The same server URL, pointing at database ``name``."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


@contextlib.contextmanager
def embedded_server() -> Iterator[Any]:
    """A throwaway embedded PostgreSQL, deleted afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="gw-test-pg-"))
    server = embedded.server(folder, cleanup_mode="delete")
    try:
        yield server
    finally:
        server.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def create_database(server_dsn: str, name: str) -> str:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(server_dsn, name)


async def drop_database(server_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def empty_all(dsn: str) -> None:
    """Every row of every table gone, the migrations still applied: the database as a fresh
    one would be. One DELETE statement over every table, so the foreign keys are checked at
    its end, when the rows that refer to others are gone too. A test leaves a few rows,
    which go in a millisecond, where a TRUNCATE makes new files for every partition and
    index (0.2-0.8 s a test on two cores)."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = [row["relname"] for row in await conn.fetch(TABLES_QUERY)]
        *first, last = tables
        deletes = ", ".join(f'gone_{n} AS (DELETE FROM "{table}")'
                            for n, table in enumerate(first))
        await conn.execute(f'WITH {deletes} DELETE FROM "{last}"')
    finally:
        await conn.close()


async def serve_on_loopback(handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                            port: int = 0, *, shutdown_timeout_s: float = 60.0
                            ) -> tuple[web.AppRunner, int]:
    """A real HTTP server on 127.0.0.1 sending every path and method to ``handler``;
    returns its runner (to clean up) and the port it got. Its cleanup waits up to
    ``shutdown_timeout_s`` for handlers still running, then cancels them."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    server = site._server
    assert server is not None
    bound: int = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, bound


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A real HTTP server on loopback that records webhooks and answers as told."""

    port: int = 0
    requests: list[Received] = field(default_factory=list)
    #: path -> list of (status, headers) answers used in turn; the last one repeats.
    answers: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    delay_s: float = 0.0
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set while stopping: answers held back by ``delay_s`` go at once, so stopping does
    #: not wait them out (a test's teardown would wait up to ``delay_s`` for nothing).
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(Received(request.path, dict(request.headers), body, time.time()))
        self._arrived.set()
        if self.delay_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.delay_s)
        queue = self.answers.get(request.path)
        answer: tuple[int, dict[str, str]] = (200, {})
        if queue:
            answer = queue.pop(0) if len(queue) > 1 else queue[0]
        status, headers = answer
        return web.Response(status=status, headers=headers, text="ok" if status < 300 else "no")

    async def start(self) -> Receiver:
        self._stopping.clear()
        self._runner, self.port = await serve_on_loopback(self._handle, self.port)
        return self

    def release_held(self) -> None:
        """Answers held back by ``delay_s`` go now, and later ones are not held."""
        self._stopping.set()

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def on(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def wait_for(self, count: int, path: str | None = None, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            got = len(self.on(path)) if path else len(self.requests)
            if got >= count:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"expected {count} webhooks, got {got}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(left, 0.2))


async def eventually(check: Any, timeout_s: float = 10.0, interval_s: float = 0.05) -> Any:
    """Poll an async ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s (last: {result!r})")
        await asyncio.sleep(interval_s)


class GatewayProcess:
    """The real gateway as a subprocess, started as a user would start it."""

    def __init__(self, dsn: str, *args: str, env: dict[str, str] | None = None,
                 log_dir: Path | None = None,
                 launcher: tuple[str, ...] = ("-m", "gateway")) -> None:
        self.dsn = dsn
        self.args = args or ("serve",)
        #: What the interpreter runs, before the command's arguments.
        self.launcher = launcher
        self.port = free_port()
        self.extra_env = env or {}
        folder = log_dir or Path(tempfile.mkdtemp(prefix="gw-proc-"))
        self.log_path = folder / f"gateway-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayProcess:
        env = {
            **os.environ,
            "DATABASE_URL": self.dsn,
            "GATEWAY_ADMIN_KEY": ADMIN_KEY,
            "GATEWAY_ALLOW_PRIVATE_ENDPOINTS": "true",
            "GATEWAY_RETRY_SCHEDULE": "0.2,0.5,1",
            "GATEWAY_RETRY_JITTER": "0",
            "GATEWAY_POLL_INTERVAL_S": "0.5",
            "GATEWAY_LOG_LEVEL": "INFO",
            **self.extra_env,
        }
        args = list(self.args)
        if args[0] == "serve":
            args += ["--port", str(self.port)]
        elif args[0] == "dispatch":
            args += ["--health-port", str(self.port)]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, *self.launcher, *args], env=env, stdout=log,
            stderr=subprocess.STDOUT, cwd=ROOT,
        )
        log.close()
        return self

    async def wait_ready(self, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"gateway exited {self.proc.returncode}:\n{self.log()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(self.base + "/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise AssertionError(f"gateway not ready in {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        """Tidy up whatever state it is in (for fixtures' finally)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


class Api:
    """A tiny JSON client for tests, over a real socket or aiohttp's test client."""

    def __init__(self, session: Any, base: str = "") -> None:
        self.session = session
        self.base = base

    async def call(self, method: str, path: str, key: str | None = None,
                   json_body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        async with self.session.request(method, self.base + path, json=json_body,
                                        headers=headers, **kwargs) as resp:
            text = await resp.text()
            data = None
            if text:
                import json

                data = json.loads(text)
            return resp.status, data

    async def new_app(self, name: str = "shop") -> str:
        status, body = await self.call("POST", "/v1/apps", ADMIN_KEY, {"name": name})
        assert status == 201, body
        key: str = body["api_key"]
        return key

    async def new_endpoint(self, key: str, url: str, **fields: Any) -> dict[str, Any]:
        status, body = await self.call("POST", "/v1/endpoints", key, {"url": url, **fields})
        assert status == 201, body
        result: dict[str, Any] = body
        return result

    async def emit(self, key: str, event_type: str = "order.created",
                   payload: Any = None, **kwargs: Any) -> dict[str, Any]:
        status, body = await self.call(
            "POST", "/v1/events", key,
            {"type": event_type, "payload": payload if payload is not None else {"n": 1}},
            **kwargs,
        )
        assert status in (200, 202), body
        result: dict[str, Any] = body
        return result


class Folding(tzinfo):
    """A zone in the hour its clocks go back: a local time there happens twice, UTC+2 the
    first time (``fold=0``) and UTC+1 the second (``fold=1``). Two such times compare and
    hash equal (fold is ignored within one zone) although they are an hour apart."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=1 if dt is not None and dt.fold else 2)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=0 if dt is not None and dt.fold else 1)

    def tzname(self, dt: datetime | None) -> str:
        return "CET" if dt is not None and dt.fold else "CEST"
