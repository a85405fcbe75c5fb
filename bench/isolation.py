"""Tenant isolation under load: while app A misbehaves, what does app B see?

A real ``gateway serve`` (default 15 s delivery timeout) on an embedded PostgreSQL. App A
has three endpoints that accept connections and never answer, with 3,000 deliveries due
to them, and sends a steady stream of bodies that once broke batched writes for everyone
(NUL, lone surrogates, 1e999, duplicate keys). App B emits events at a steady rate to a
healthy receiver. The same B load runs first alone (the baseline), then beside A.

Printed per phase: B's share of 202 answers, B's ingest-to-receipt latency p50/p99 (the
time from issuing the POST to its webhook arriving), what A got for its bad bodies, and
the CPU seconds of each process. Bounded: each phase lasts ``--duration`` seconds and
every wait has a limit; every process started is stopped.

    .venv/bin/python bench/isolation.py [--duration 15] [--rate 200] [--poison-rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from common import ROOT, Postgres, Procs, own_cpu, tree_cpu

ADMIN_KEY = "bench-admin-key"
POISON = [
    b'{"type": "t", "payload": {}, "user_ids": ["u"], "notification": {"title": "a\\u0000b"}}',
    b'{"type": "t", "payload": {}, "user_ids": ["u"], "notification": {"title": "\\ud800"}}',
    b'{"type": "t", "payload": {"n": 1e999}}',
    b'{"type": "t", "payload": {"a": 1, "a": 2}}',
]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Phase:
    name: str
    b_sent: int = 0
    b_accepted: int = 0
    b_latency_s: list[float] = field(default_factory=list)
    a_statuses: dict[int, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)


class Servers:
    """The healthy receiver (records each webhook's arrival) and the hanging endpoints,
    in this process."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.hanging = 0
        self.news = asyncio.Event()

    async def receive(self, request: web.Request) -> web.Response:
        await request.read()
        self.arrived.setdefault(request.headers.get("webhook-id", ""), time.time())
        self.news.set()
        return web.Response(status=204)

    async def wait_for(self, ids: set[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ids <= set(self.arrived) and time.monotonic() < deadline:
            self.news.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.news.wait(), 0.5)

    async def hang(self, request: web.Request) -> web.Response:
        self.hanging += 1
        try:
            await asyncio.sleep(3600)
        finally:
            self.hanging -= 1
        return web.Response()

    async def start(self) -> tuple[web.AppRunner, int, int]:
        app = web.Application()
        app.router.add_post("/hook", self.receive)
        app.router.add_post("/hang/{n}", self.hang)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        sites = [web.TCPSite(runner, "127.0.0.1", 0) for _ in range(2)]
        ports = []
        for site in sites:
            await site.start()
            server = site._server
            assert server is not None
            ports.append(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        return runner, ports[0], ports[1]


async def call(session: aiohttp.ClientSession, base: str, method: str, path: str,
               key: str, body: Any = None) -> Any:
    async with session.request(method, base + path, json=body,
                               headers={"Authorization": f"Bearer {key}"}) as resp:
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {await resp.text()}")
        return await resp.json()


async def emit(session: aiohttp.ClientSession, base: str, key: str, n: int,
               sem: asyncio.Semaphore) -> None:
    async with sem:
        await call(session, base, "POST", "/v1/events", key, {"type": "t", "payload": {"n": n}})


async def b_load(session: aiohttp.ClientSession, base: str, key: str, rate: float,
                 duration_s: float, phase: Phase, sent_at: dict[str, float]) -> None:
    async def one(issued: float) -> None:
        async with session.post(base + "/v1/events", json={
                "type": "order.created", "payload": {"at": issued}},
                headers={"Authorization": f"Bearer {key}"}) as resp:
            body = await resp.json()
            if resp.status == 202:
                phase.b_accepted += 1
                sent_at[body["id"]] = issued

    tasks = []
    start = time.monotonic()
    for i in range(int(rate * duration_s)):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(time.time())))
        phase.b_sent += 1
    await asyncio.gather(*tasks, return_exceptions=True)


async def a_poison(session: aiohttp.ClientSession, base: str, key: str, rate: float,
                   duration_s: float, phase: Phase) -> None:
    async def one(n: int) -> None:
        async with session.post(base + "/v1/events", data=POISON[n % len(POISON)], headers={
                "Authorization": f"Bearer {key}", "Content-Type": "application/json"}) as resp:
            phase.a_statuses[resp.status] = phase.a_statuses.get(resp.status, 0) + 1

    tasks = []
    start = time.monotonic()
    for i in range(int(rate * duration_s)):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks, return_exceptions=True)


async def scenario(args: argparse.Namespace, procs: Procs, pg: Postgres) -> list[Phase]:
    servers = Servers()
    runner, receiver_port, hang_port = await servers.start()
    dsn = await pg.fresh_database("bench_isolation")
    port = _free_port()
    gateway = procs.start("gateway", [sys.executable, "-m", "gateway", "serve", "--port",
                                      str(port)], env={
        **os.environ, "DATABASE_URL": dsn, "GATEWAY_ADMIN_KEY": ADMIN_KEY,
        "GATEWAY_ALLOW_PRIVATE_ENDPOINTS": "true", "GATEWAY_LOG_LEVEL": "WARNING"})
    base = f"http://127.0.0.1:{port}"
    phases: list[Phase] = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
            await _ready(session, base)
            a = await call(session, base, "POST", "/v1/apps", ADMIN_KEY, {"name": "a"})
            b = await call(session, base, "POST", "/v1/apps", ADMIN_KEY, {"name": "b"})
            await call(session, base, "POST", "/v1/endpoints", b["api_key"],
                       {"url": f"http://127.0.0.1:{receiver_port}/hook"})
            sem = asyncio.Semaphore(64)
            for name in ("baseline: B alone", "B while A misbehaves"):
                phase = Phase(name)
                if phases:  # A's hanging endpoints and their 3,000 due deliveries
                    for n in range(3):
                        await call(session, base, "POST", "/v1/endpoints", a["api_key"],
                                   {"url": f"http://127.0.0.1:{hang_port}/hang/{n}"})
                    await asyncio.gather(*[emit(session, base, a["api_key"], n, sem)
                                           for n in range(1000)])
                sent_at: dict[str, float] = {}
                before = _cpu(gateway.pid, pg)
                loads = [b_load(session, base, b["api_key"], args.rate, args.duration,
                                phase, sent_at)]
                if phases:
                    loads.append(a_poison(session, base, a["api_key"], args.poison_rate,
                                          args.duration, phase))
                await asyncio.gather(*loads)
                await servers.wait_for(set(sent_at), timeout_s=20)
                after = _cpu(gateway.pid, pg)
                phase.cpu = {k: round(after[k] - before[k], 1) for k in after}
                phase.b_latency_s = [servers.arrived[e] - t for e, t in sent_at.items()
                                     if e in servers.arrived]
                phases.append(phase)
            print(f"A's endpoints held {servers.hanging} connections open at the end")
    finally:
        procs.stop(gateway)
        await runner.cleanup()
        await pg.drop_database("bench_isolation")
    return phases


def _cpu(gateway_pid: int, pg: Postgres) -> dict[str, float]:
    return {"gateway": tree_cpu(gateway_pid) or 0.0, "postgres": pg.cpu() or 0.0,
            "bench (load and servers)": own_cpu(os.getpid()) or 0.0}


async def _ready(session: aiohttp.ClientSession, base: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            async with session.get(base + "/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("the gateway did not get ready")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def report(phases: list[Phase]) -> None:
    for p in phases:
        ok = 100.0 * p.b_accepted / p.b_sent if p.b_sent else 0.0
        p50, p99 = percentile(p.b_latency_s, 0.5), percentile(p.b_latency_s, 0.99)
        delivered = len(p.b_latency_s)
        print(f"\n{p.name}")
        print(f"  B: {p.b_sent} events, {ok:.2f}% answered 202, {delivered} delivered; "
              f"ingest-to-receipt p50 {_ms(p50)}, p99 {_ms(p99)}")
        if p.a_statuses:
            print(f"  A's bad bodies answered: {json.dumps(p.a_statuses)}")
        print("  CPU seconds: " + ", ".join(f"{k} {v}" for k, v in p.cpu.items()))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per phase")
    parser.add_argument("--rate", type=float, default=200.0, help="B's events per second")
    parser.add_argument("--poison-rate", type=float, default=200.0,
                        help="A's bad bodies per second")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gw-bench-isolation-"))
    procs = Procs(work / "logs")
    pg = Postgres(os.environ.get("DATABASE_URL"), work)
    pg.start()
    try:
        phases = asyncio.run(scenario(args, procs, pg))
    finally:
        procs.stop_all()
        pg.stop()
    report(phases)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
