"""Gateway benchmark: ingest, delivery drain and end-to-end latency against raw aiohttp.

One run measures, with the same load generator for both sides of each ratio:

(a) ingest     raw aiohttp no-op POST server (faster of asyncio/uvloop) vs
               ``gateway serve --no-dispatcher`` (durable: 202 after commit);
(b) drain      raw aiohttp client -> raw receiver (64 in flight) vs ``gateway dispatch``
               draining N pending deliveries into the same receiver;
(c) latency    ingest -> receipt at a steady rate against ``gateway serve``.

CPU seconds are reported per process for every measured window: on 2 cores the server,
PostgreSQL, the load generator and the receiver compete, and the CPU figures tell which
one was the limit.  Usage: ``python bench/run.py [--quick]``; see ``--help``.

The same file also holds the helper processes it starts (``role-*`` sub-commands).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import json
import math
import os
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import psutil  # type: ignore[import-untyped, unused-ignore]
from aiohttp import web
from common import Postgres, Procs, TreeWaiting, own_cpu, tree_cpu, waited

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "results" / "latest.json"
WRK = Path("/usr/bin/wrk")
HOST = "127.0.0.1"

TARGET_INGEST_RATIO = 0.5     # of the raw no-op aiohttp server
TARGET_MINIMAL_RATIO = 0.8    # of bench/minimal_server.py (the durable work alone)
TARGET_PG_RATIO = 1.5         # PostgreSQL CPU per event, gateway / minimal durable server
TARGET_DRAIN_RATIO = 0.5
TARGET_P99_MS = 50.0
#: Latency targets by rate (events/s): p99 under this many ms.
TARGET_P99_BY_RATE = {500.0: 50.0, 2000.0: 100.0}

EVENT_BODY = json.dumps(
    {
        "type": "order.created",
        "payload": {
            "order_id": "ord_1234567890", "amount_cents": 4999, "currency": "EUR",
            "customer": {"id": "cus_42", "email": "buyer@example.com"},
            "items": [{"sku": "sku_1", "qty": 2}, {"sku": "sku_7", "qty": 1}],
        },
    },
    separators=(",", ":"),
)
#: What the raw client sends: the shape and size of a gateway webhook body.
WEBHOOK_BODY = (
    '{"id": "evt_raw", "type": "order.created", "timestamp": "2024-01-01T00:00:00.000Z", '
    '"data": ' + json.dumps(json.loads(EVENT_BODY)["payload"], separators=(",", ":")) + "}"
).encode()

BENCH_TAG = "BENCHJSON "


# ======================================================================================
# small helpers
# ======================================================================================

def run_loop(coro: Coroutine[Any, Any, T], loop: str) -> T:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def emit(payload: dict[str, Any]) -> None:
    """How helper processes hand their result to the orchestrator (one stdout line)."""
    print(BENCH_TAG + json.dumps(payload), flush=True)


def parse_emitted(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        if line.startswith(BENCH_TAG):
            found: dict[str, Any] = json.loads(line[len(BENCH_TAG):])
            return found
    raise BenchError(f"helper printed no result; its output ends with:\n{text[-2000:]}")


def r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


class BenchError(RuntimeError):
    pass


def _summed(values: list[float | None]) -> float | None:
    return None if None in values else sum(v or 0.0 for v in values)


def sum_cpu(pids: list[int]) -> float | None:
    return _summed([own_cpu(pid) for pid in pids])


def sum_waited(pids: list[int]) -> float | None:
    """Seconds these processes spent ready to run with no core free (common.waited)."""
    return _summed([waited(pid) for pid in pids])


def worker_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of each live child of ``pid`` (the workers under the
    supervisor), by process id."""
    out = {}
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            t = child.cpu_times()
            out[child.pid] = float(t.user + t.system)
    return out


def worker_cpu_since(pid: int, before: dict[int, float]) -> list[float]:
    """CPU seconds of each worker since ``before`` (worker_cpu at the window's start): a
    worker started within the window counts from its start."""
    return [round(cpu - before.get(child, 0.0), 2)
            for child, cpu in sorted(worker_cpu(pid).items())]


async def serve_until_signal(app: web.Application, port: int,
                             reuse_port: bool = False) -> None:
    """Serve ``app`` on 127.0.0.1:port until SIGTERM/SIGINT (as ``gateway serve`` does)."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port, backlog=1024, reuse_port=reuse_port or None)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with asyncio.timeout(3600):  # bounded even if nobody stops us
            await stop.wait()
    except TimeoutError:
        pass
    finally:
        await runner.cleanup()


async def readyz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


# ======================================================================================
# helper processes (role-* sub-commands)
# ======================================================================================

def raw_server_app() -> web.Application:
    """The ingest ceiling: answer the JSON POST with 202 and a small, pre-encoded JSON
    body, and do nothing else (aiohttp still receives and parses the request)."""
    answer = json.dumps({"id": "evt_raw", "status": "accepted"}).encode()

    async def accept(request: web.Request) -> web.Response:
        return web.Response(status=202, body=answer, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/events", accept)
    app.router.add_get("/readyz", readyz)
    return app


@dataclass
class Arrivals:
    first: dict[str, float] = field(default_factory=dict)
    total: int = 0
    t_first: float | None = None
    t_last: float | None = None

    def stats(self) -> dict[str, Any]:
        return {"total": self.total, "unique": len(self.first),
                "t_first": self.t_first, "t_last": self.t_last}


def receiver_app() -> web.Application:
    """Counts webhook POSTs and remembers when each webhook-id first arrived (wall clock)."""
    state = Arrivals()

    async def hook(request: web.Request) -> web.Response:
        now = time.time()
        await request.read()
        state.total += 1
        wid = request.headers.get("webhook-id", "")
        if wid not in state.first:
            state.first[wid] = now
        if state.t_first is None:
            state.t_first = now
        state.t_last = now
        return web.Response(status=200)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(state.stats())

    async def arrivals(request: web.Request) -> web.Response:
        return web.json_response(state.first)

    async def reset(request: web.Request) -> web.Response:
        nonlocal state
        state = Arrivals()
        return web.json_response({"status": "reset"})

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/stats", stats)
    app.router.add_get("/arrivals", arrivals)
    app.router.add_post("/reset", reset)
    app.router.add_get("/readyz", readyz)
    return app


def webhook_headers(i: int) -> dict[str, str]:
    """The headers of the raw clients' ``i``-th webhook, shaped as the gateway's."""
    return {
        "content-type": "application/json", "webhook-id": f"msg_{i}",
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
    }


async def raw_client(url: str, n: int, concurrency: int, client: str = "aiohttp"
                     ) -> dict[str, Any]:
    """The delivery ceiling: ``n`` webhook-shaped POSTs, ``concurrency`` in flight, over
    one pooled aiohttp session (``client`` "aiohttp") or the gateway's own webhook client
    (``http1``: adapters.http1.HTTP1Pool, which the webhook adapter sends with)."""
    if client == "http1":
        return await raw_http1_client(url, n, concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    counts: Counter[str] = Counter()
    todo = iter(range(n))
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=15), auto_decompress=False,
        skip_auto_headers=("Accept-Encoding",),
    ) as session:

        async def worker() -> None:
            for i in todo:
                headers = webhook_headers(i)
                try:
                    async with session.post(url, data=WEBHOOK_BODY, headers=headers) as resp:
                        await resp.read()
                        counts["ok" if 200 <= resp.status < 300 else "non_2xx"] += 1
                except (aiohttp.ClientError, TimeoutError):
                    counts["errors"] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"requests": n, "elapsed_s": elapsed, **counts}


async def raw_http1_client(url: str, n: int, concurrency: int) -> dict[str, Any]:
    """:func:`raw_client` over the gateway's own HTTP/1.1 client, bare."""
    from adapters.http1 import HTTP1Pool, ProtocolError

    pool = HTTP1Pool(max_connections=concurrency)
    counts: Counter[str] = Counter()
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            headers = webhook_headers(i)
            try:
                answer = await pool.post(url, headers, WEBHOOK_BODY, timeout_s=15)
                counts["ok" if 200 <= answer.status < 300 else "non_2xx"] += 1
            except (OSError, ProtocolError, TimeoutError):
                counts["errors"] += 1

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await pool.close()
    return {"requests": n, "elapsed_s": elapsed, **counts}


async def python_loadgen(url: str, connections: int, duration_s: float,
                         headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The wrk fallback: ``connections`` keep-alive connections, closed loop, for a time."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0)
    counts: Counter[str] = Counter()
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        started = time.perf_counter()
        deadline = started + duration_s

        async def worker() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        ok = resp.status < 400
                except (aiohttp.ClientError, TimeoutError):
                    counts["errors"] += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                counts["requests"] += 1
                if not ok:
                    counts["status_errors"] += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return {
        "requests": counts["requests"], "duration_s": elapsed,
        "status_errors": counts["status_errors"], "socket_errors": counts["errors"],
        "p50_ms": (percentile(latencies, 50) or 0) * 1000,
        "p99_ms": (percentile(latencies, 99) or 0) * 1000,
        "max_ms": max(latencies, default=0) * 1000,
    }


def run_role(args: argparse.Namespace) -> int:
    if args.role == "role-raw-server":
        run_loop(serve_until_signal(raw_server_app(), args.port, args.reuse_port), args.loop)
    elif args.role == "role-receiver":
        run_loop(serve_until_signal(receiver_app(), args.port), args.loop)
    elif args.role == "role-raw-client":
        emit(run_loop(raw_client(args.url, args.n, args.concurrency, args.client),
                      args.loop))
    elif args.role == "role-loadgen":
        headers = {"Content-Type": "application/json"}
        if args.auth:
            headers["Authorization"] = f"Bearer {args.auth}"
        emit(run_loop(python_loadgen(args.url, args.connections, args.duration, headers,
                                     EVENT_BODY.encode()), args.loop))
    return 0


# ======================================================================================
# orchestration: processes, CPU accounting, PostgreSQL
# ======================================================================================

CpuSource = Callable[[], float | None]


def machine_cpu() -> tuple[float, float, float]:
    """Busy, interrupt and stolen CPU seconds of the whole machine so far (all cores).
    Interrupt time (irq and softirq: the loopback traffic and the WAL's disk writes of the
    run itself) is charged to no process, so it is counted apart from "other"."""
    t = psutil.cpu_times()
    irq = getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return float(t.user + t.nice + t.system), float(irq), float(getattr(t, "steal", 0.0))


class CpuMeter:
    """CPU seconds each named process used between ``start()`` and ``stop()``, plus what
    the rest of the machine used meanwhile ("other": processes this benchmark did not
    start, e.g. a test suite running alongside, which makes the figures unreliable)."""

    #: (other CPU s, wall s) of every window measured in this process.
    windows: ClassVar[list[tuple[float, float]]] = []

    def __init__(self, sources: dict[str, CpuSource],
                 waits: dict[str, CpuSource] | None = None) -> None:
        self.sources = sources
        #: Per process, seconds spent ready to run but waiting for a core (common.waited):
        #: CPU it wanted beyond what it got.
        self.waits = waits or {}
        self.before: dict[str, float | None] = {}
        self.waits_before: dict[str, float | None] = {}
        self.t0 = 0.0
        self.machine0 = (0.0, 0.0, 0.0)
        self.self0: float | None = None

    def start(self) -> None:
        self.before = {name: fn() for name, fn in self.sources.items()}
        self.waits_before = {name: fn() for name, fn in self.waits.items()}
        self.self0 = own_cpu(os.getpid())
        self.machine0 = machine_cpu()
        self.t0 = time.monotonic()

    def stop(self, extra: dict[str, float] | None = None) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        busy, irq, steal = machine_cpu()
        cpu: dict[str, float | None] = {}
        for name, fn in self.sources.items():
            after, before = fn(), self.before.get(name)
            cpu[name] = None if after is None or before is None else round(after - before, 2)
        for name, value in (extra or {}).items():
            cpu[name] = round(value, 2)
        waiting: dict[str, float] = {}
        for name, fn in self.waits.items():
            after, before = fn(), self.waits_before.get(name)
            if after is not None and before is not None:
                waiting[name] = round(max(0.0, after - before), 2)
        accounted = sum(v for v in cpu.values() if v is not None)
        self_now = own_cpu(os.getpid())
        if "loadgen(bench)" not in cpu and self_now is not None and self.self0 is not None:
            accounted += self_now - self.self0  # the orchestrator's own polling
        # The kernel charges part of the interrupt time to the process it interrupted,
        # so that part is in a process's figure as well, and not in ``busy``'s: "other"
        # is a lower bound (up to the accounted share of ``irq_s`` too low), and comes
        # out below zero when nothing else ran. Printed clamped at 0; the raw figure kept.
        other_raw = busy - self.machine0[0] - accounted
        other = max(0.0, other_raw)
        CpuMeter.windows.append((other, wall))
        return {"wall_s": round(wall, 2), "cpu_s": cpu, "waiting_s": waiting,
                "other_cpu_s": round(other, 2),
                "other_raw_cpu_s": round(other_raw, 2),
                "irq_s": round(irq - self.machine0[1], 2),
                "steal_s": round(steal - self.machine0[2], 2)}


# ======================================================================================
# the benchmark
# ======================================================================================

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
{auth}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "{tag}{{\\"requests\\":%d,\\"duration_s\\":%.6f,\\"status_errors\\":%d," ..
    "\\"socket_errors\\":%d,\\"p50_ms\\":%.3f,\\"p99_ms\\":%.3f,\\"max_ms\\":%.3f}}\\n",
    summary.requests, summary.duration / 1e6, e.status,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"""


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    procs: Procs
    pg: Postgres
    loadgen: str
    admin_key: str = field(default_factory=lambda: "gwadmin_" + secrets.token_urlsafe(24))
    results: dict[str, Any] = field(default_factory=dict)

    # --- plumbing ---------------------------------------------------------------------

    def py(self, role: str, *extra: str) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), role, *extra]

    def gateway_cmd(self, *extra: str) -> list[str]:
        if self.args.gateway_cmd:
            base = shlex.split(self.args.gateway_cmd)
        else:
            script = Path(sys.executable).parent / "gateway"
            base = [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]
        return [*base, *extra]

    def gateway_env(self, dsn: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "DATABASE_URL": dsn,
            "GATEWAY_DATA_DIR": str(self.work / "data"),
            "GATEWAY_ADMIN_KEY": self.admin_key,
            "GATEWAY_ALLOW_PRIVATE_ENDPOINTS": "true",
            "GATEWAY_HOST": HOST,
        })
        return env

    async def wait_ready(self, url: str, proc: subprocess.Popen[bytes],
                         timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise BenchError(f"{url}: process exited with {proc.returncode}:\n"
                                     f"{self.procs.log_tail(proc)}")
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise BenchError(f"{url} not ready after {timeout_s:.0f} s:\n{self.procs.log_tail(proc)}")

    async def start_gateway(self, name: str, dsn: str, *extra: str,
                            port: int | None = None) -> subprocess.Popen[bytes]:
        args = list(extra) + (["--port", str(port)] if port is not None else [])
        proc = self.procs.start(name, self.gateway_cmd(*args), env=self.gateway_env(dsn))
        if port is not None:
            await self.wait_ready(f"http://{HOST}:{port}/readyz", proc)
        return proc

    async def stop_proc(self, proc: subprocess.Popen[bytes]) -> None:
        await asyncio.to_thread(self.procs.stop, proc)

    async def create_app_and_endpoint(self, base: str, hook_url: str) -> str:
        """An app and one endpoint subscribed to everything; returns the app's API key."""
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/v1/apps", json={"name": "bench"},
                                    headers={"Authorization": f"Bearer {self.admin_key}"}) as resp:
                body = await resp.json()
                if resp.status != 201:
                    raise BenchError(f"POST /v1/apps answered {resp.status}: {body}")
                key: str = body["api_key"]
            async with session.post(f"{base}/v1/endpoints",
                                    json={"url": hook_url, "event_types": ["*"]},
                                    headers={"Authorization": f"Bearer {key}"}) as resp:
                if resp.status != 201:
                    raise BenchError(f"POST /v1/endpoints answered {resp.status}: "
                                     f"{await resp.text()}")
        return key

    def profile_start(self, name: str, pid: int, seconds: float) -> subprocess.Popen[bytes] | None:
        """``--profile``: sample the gateway with py-spy for the measured window."""
        if not self.args.profile:
            return None
        spy = Path(sys.executable).parent / "py-spy"
        if not spy.exists():
            print("  (py-spy not installed: no profile)", flush=True)
            return None
        out = self.args.output.parent / f"profile-{name}.txt"
        cmd = [str(spy), "record", "--pid", str(pid), "--rate", "500", "--format", "raw",
               "--nonblocking", "--duration", str(max(1, math.ceil(seconds))),
               "--output", str(out)]
        return self.procs.start(f"py-spy-{name}", cmd)

    async def profile_finish(self, name: str, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.wait, 30)
        await self.stop_proc(proc)
        out = self.args.output.parent / f"profile-{name}.txt"
        if out.exists():
            self.results.setdefault("profiles", {})[name] = summarize_profile(out)

    # --- load generation --------------------------------------------------------------

    async def load(self, name: str, url: str, duration_s: float,
                   auth: str | None) -> dict[str, Any]:
        """Closed-loop POST load with ``--connections`` connections; wrk or the fallback."""
        conns = self.args.connections
        if self.loadgen == "wrk":
            script = self.work / f"{name}.lua"
            auth_line = f'wrk.headers["Authorization"] = "Bearer {auth}"' if auth else ""
            script.write_text(WRK_SCRIPT.format(body=EVENT_BODY, auth=auth_line, tag=BENCH_TAG))
            cmd = [str(WRK), "-t", str(self.args.wrk_threads), "-c", str(conns),
                   "-d", f"{max(1, round(duration_s))}s", "--timeout", "10s",
                   "-s", str(script), url]
        else:
            cmd = self.py("role-loadgen", "--url", url, "--connections", str(conns),
                          "--duration", str(duration_s), "--loop", "uvloop",
                          *(["--auth", auth] if auth else []))
        text, code, cpu = await asyncio.to_thread(
            self.procs.run_measured, f"loadgen-{name}", cmd, duration_s + 60)
        if code != 0:
            raise BenchError(f"load generator exited with {code}:\n{text[-2000:]}")
        out = parse_emitted(text)
        if out["status_errors"] or out.get("socket_errors"):
            out["error_sample"] = await sample_answer(url, auth)
        good = out["requests"] - out["status_errors"]
        out["ok_rps"] = good / out["duration_s"] if out["duration_s"] > 0 else 0.0
        out["loadgen_cpu_s"] = cpu
        return out

    # --- (a) ingest -------------------------------------------------------------------

    async def measure(self, name: str, url: str, auth: str | None,
                      sources: dict[str, CpuSource], *, profile_pid: int | None = None,
                      dsn: str | None = None, waits: dict[str, CpuSource] | None = None,
                      supervisor: int | None = None) -> dict[str, Any]:
        """Warm up, then load ``url`` for ``--duration`` with CPU measured per process
        (with ``dsn``: also PostgreSQL's CPU by role and the WAL it wrote; with
        ``supervisor``, a pid: each of its workers' CPU over the window)."""
        a = self.args
        await self.load(f"{name}-warmup", url, a.warmup, auth)
        meter = CpuMeter(sources, waits)
        spy = self.profile_start(name, profile_pid, a.duration) if profile_pid else None
        counters0 = counters1 = None
        if dsn:
            counters0 = await pg_counters(dsn)
        roles0 = self.pg.cpu_by_role() if dsn else {}
        workers0 = worker_cpu(supervisor) if supervisor is not None else {}
        meter.start()
        out = await self.load(name, url, a.duration, auth)
        window = meter.stop({"loadgen": out.pop("loadgen_cpu_s")})
        if supervisor is not None:
            out["per_worker_cpu_s"] = worker_cpu_since(supervisor, workers0)
        roles1 = self.pg.cpu_by_role() if dsn else {}
        if dsn:
            counters1 = await pg_counters(dsn)  # the run's own, nothing after
        await self.profile_finish(name, spy)
        loadgen_cpu = window["cpu_s"].get("loadgen")
        if loadgen_cpu is not None and loadgen_cpu >= LOADGEN_BOUND * window["wall_s"]:
            # The load generator is single-threaded: at a full core it, not the server,
            # set this rate, and a ceiling measured so is no ceiling.
            LOADGEN_SATURATED.append(name)
            print(f"  WARNING: {name}: the load generator ({self.loadgen}) used "
                  f"{loadgen_cpu / window['wall_s']:.0%} of a core: this rate is its limit, "
                  "not the server's" + ("; install wrk (apt-get install wrk)"
                                       if self.loadgen == "python" else ""), flush=True)
        if out["status_errors"]:
            print(f"  WARNING: {name}: {out['status_errors']} error answers, e.g. "
                  f"{out['error_sample']}", flush=True)
        good = max(1, out["requests"] - out["status_errors"])
        per = {k: round(v * 1e6 / good, 1) for k, v in window["cpu_s"].items()
               if v is not None and k != "loadgen"}
        extra: dict[str, Any] = {}
        if roles0 and roles1:
            extra["pg_us_per_request_by_role"] = {
                role: round((roles1[role] - roles0.get(role, 0.0)) * 1e6 / good, 1)
                for role in sorted(roles1) if roles1[role] - roles0.get(role, 0.0) > 0}
        if counters0 is not None and counters1 is not None:
            extra["wal_bytes_per_request"] = round((counters1[0] - counters0[0]) / good)
            writes = counters1[1] - counters0[1]
            extra["requests_per_write"] = round(good / writes, 1) if writes > 0 else None
        return {**out, **window, "cpu_us_per_request": per, **extra}

    async def raw_servers(self, loop: str, count: int) -> dict[str, Any]:
        """``count`` raw aiohttp processes sharing one port (SO_REUSEPORT)."""
        port = free_port()
        procs = [self.procs.start(f"raw-server-{loop}-{count}-{k}",
                                  self.py("role-raw-server", "--port", str(port),
                                          "--loop", loop, "--reuse-port"))
                 for k in range(count)]
        try:
            for proc in procs:
                await self.wait_ready(f"http://{HOST}:{port}/readyz", proc)
            await asyncio.sleep(0.5)  # every process listening before the load starts
            sources: dict[str, CpuSource] = {
                "server": functools.partial(sum_cpu, [p.pid for p in procs])}
            return await self.measure(f"raw-{loop}-x{count}", f"http://{HOST}:{port}/v1/events",
                                      None, sources, waits={"server": functools.partial(
                                          sum_waited, [p.pid for p in procs])})
        finally:
            for proc in procs:
                await self.stop_proc(proc)

    async def minimal_durable(self) -> dict[str, Any]:
        """bench/minimal_server.py: the durable work alone (no auth, no validation)."""
        db = "bench_minimal"
        dsn = await self.pg.fresh_database(db)
        port = free_port()
        proc = self.procs.start("minimal-durable", [
            sys.executable, str(HERE / "minimal_server.py"), dsn, str(port), "--loop", "uvloop"])
        try:
            await self.wait_ready(f"http://{HOST}:{port}/readyz", proc)
            return await self.measure(
                "minimal-durable", f"http://{HOST}:{port}/v1/events", None,
                {"server": lambda: own_cpu(proc.pid), "postgres": self.pg.cpu}, dsn=dsn,
                waits={"server": lambda: waited(proc.pid), "postgres": self.pg.waited})
        finally:
            await self.stop_proc(proc)
            await self.pg.drop_database(db)

    async def gateway_ingest(self, workers: int, profile: bool = True) -> dict[str, Any]:
        """``gateway serve --no-dispatcher --workers N``, one endpoint subscribed (every
        event also writes its pending delivery; no dispatcher runs, nothing is sent)."""
        db = f"bench_ingest_{workers}"
        dsn = await self.pg.fresh_database(db, self.args.days_back)
        port = free_port()
        gw = await self.start_gateway(f"gateway-ingest-x{workers}", dsn, "serve",
                                      "--no-dispatcher", "--workers", str(workers), port=port)
        try:
            if workers > 1:
                await self.wait_workers(gw.pid, workers, port)
            base = f"http://{HOST}:{port}"
            key = await self.create_app_and_endpoint(base, f"http://{HOST}:{free_port()}/x")
            out = await self.measure(
                f"ingest-x{workers}", f"{base}/v1/events", key,
                {"gateway": lambda: tree_cpu(gw.pid), "postgres": self.pg.cpu},
                profile_pid=gw.pid if workers == 1 and profile else None, dsn=dsn,
                waits={"gateway": TreeWaiting(gw.pid), "postgres": self.pg.waited},
                supervisor=gw.pid if workers > 1 else None)
        finally:
            await self.stop_proc(gw)
            await self.pg.drop_database(db)
        return out

    async def wait_workers(self, pid: int, count: int, port: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(psutil.Process(pid).children()) >= count:
                await asyncio.sleep(3.0)  # each worker migrates and binds; then serves
                return
            await asyncio.sleep(0.1)
        raise BenchError(f"gateway --workers {count} did not start its workers")

    async def phase_ingest(self) -> None:
        a = self.args
        print(f"\n(a) ingest: {a.connections} connections, {a.duration:g} s per run "
              f"(+{a.warmup:g} s warm-up), load generator: {self.loadgen}", flush=True)
        raw: dict[str, Any] = {}
        for loop in ("asyncio", "uvloop"):
            raw[loop] = await self.raw_servers(loop, 1)
            print(f"  raw aiohttp ({loop:7})   {raw[loop]['ok_rps']:9.0f} req/s  "
                  f"p99 {raw[loop]['p99_ms']:.1f} ms  {fmt_cpu(raw[loop])}", flush=True)
        best = max(raw, key=lambda k: float(raw[k]["ok_rps"]))
        raw2 = await self.raw_servers(best, 2)
        print(f"  raw aiohttp ({best}) x2 {raw2['ok_rps']:9.0f} req/s  "
              f"p99 {raw2['p99_ms']:.1f} ms  {fmt_cpu(raw2)}", flush=True)
        # The minimal server and the gateway take turns (--pairs): this VM's speed drifts
        # within minutes, so each pair's ratios compare neighbours, and the medians of the
        # pairs' ratios are the result.
        pairs: list[dict[str, Any]] = []
        for turn in range(a.pairs):
            minimal = await self.minimal_durable()
            print(f"  minimal durable        {minimal['ok_rps']:9.0f} req/s  "
                  f"p99 {minimal['p99_ms']:.1f} ms  {fmt_cpu(minimal)}", flush=True)
            one = await self.gateway_ingest(1, profile=turn == 0)  # --profile: pair 1
            print(f"  gateway --workers 1   {one['ok_rps']:9.0f} req/s  "
                  f"p99 {one['p99_ms']:.1f} ms  non-2xx {one['status_errors']}  "
                  f"{fmt_cpu(one)}", flush=True)
            pair = pair_ratios(one, minimal, raw[best])
            # More workers in the same turn: "2 never slower than 1" compares neighbours,
            # not runs minutes apart on a VM whose speed drifts by more than the gap.
            more: dict[int, dict[str, Any]] = {}
            for workers in sorted(set(a.workers) - {1}):
                more[workers] = out = await self.gateway_ingest(workers)
                print(f"  gateway --workers {workers}   {out['ok_rps']:9.0f} req/s  "
                      f"p99 {out['p99_ms']:.1f} ms  non-2xx {out['status_errors']}  "
                      f"{fmt_cpu(out)}", flush=True)
                if "per_worker_cpu_s" in out:
                    print(f"    CPU per worker: {out['per_worker_cpu_s']}", flush=True)
            pairs.append({"minimal": minimal, "gateway": one, "more": more, **pair,
                          "workers_ratio": {str(w): out["ok_rps"] / one["ok_rps"]
                                            for w, out in more.items()}})
            if a.pairs > 1:
                print(f"    pair {turn + 1}: gateway/minimal {pair['ratio_minimal']:.2f}, "
                      f"PostgreSQL {pair['pg_ratio'] and round(pair['pg_ratio'], 2)}x"
                      + "".join(f", --workers {w}/1 {r:.2f}"
                                for w, r in pairs[-1]["workers_ratio"].items()),
                      flush=True)
        # The pair whose PostgreSQL ratio is the median (the upper one of an even count),
        # for the detail printed below; the ratios are each the median of the pairs'.
        ranked = sorted((q for q in pairs if q["pg_ratio"] is not None),
                        key=lambda q: float(q["pg_ratio"])) or pairs
        middle = ranked[len(ranked) // 2]
        one, minimal = middle["gateway"], middle["minimal"]
        gws = {1: one, **middle["more"]}
        workers_ratio: dict[str, dict[str, Any]] = {}
        for w in middle["workers_ratio"]:
            turns = [q["workers_ratio"][w] for q in pairs]
            workers_ratio[w] = wr = {
                "median": round(statistics.median(turns), 3), "min": round(min(turns), 3),
                "pairs": [round(x, 3) for x in turns]}
            print(f"  --workers {w} over --workers 1, run by run: {wr['pairs']} (median "
                  f"{wr['median']:.2f}, lowest {wr['min']:.2f})", flush=True)
        ratio = statistics.median(q["ratio"] for q in pairs)
        ratio_min = statistics.median(q["ratio_minimal"] for q in pairs)
        pg_gw = one["cpu_us_per_request"].get("postgres")
        pg_min = minimal["cpu_us_per_request"].get("postgres")
        pg_ratio = middle["pg_ratio"]
        if a.pairs > 1:
            print(f"  ratios: medians of {a.pairs} pairs; rates and the detail below: the "
                  "pair with the median PostgreSQL ratio", flush=True)
        print(f"  ratio gateway/raw({best}) = {ratio:.2f} (target >= {TARGET_INGEST_RATIO}); "
              f"gateway/minimal durable = {ratio_min:.2f} (target >= {TARGET_MINIMAL_RATIO})",
              flush=True)
        for label, out in (("minimal", minimal), ("gateway", one)):
            roles = out.get("pg_us_per_request_by_role")
            if roles:
                print(f"  PostgreSQL per event, {label}: "
                      + ", ".join(f"{r} {us} us" for r, us in roles.items())
                      + f"; WAL {out.get('wal_bytes_per_request')} bytes; "
                      f"{out.get('requests_per_write')} events per write transaction", flush=True)
        print(f"  CPU per event: PostgreSQL {pg_gw} us (gateway) vs {pg_min} us (minimal) "
              f"= {pg_ratio and round(pg_ratio, 2)}x (target <= {TARGET_PG_RATIO}); "
              f"gateway {one['cpu_us_per_request'].get('gateway')} us per request, "
              f"raw server {raw[best]['cpu_us_per_request'].get('server')} us, "
              f"minimal server {minimal['cpu_us_per_request'].get('server')} us", flush=True)
        self.results["ingest"] = {
            "raw": raw, "raw_best_loop": best, "raw_rps": round(raw[best]["ok_rps"]),
            "raw_x2": raw2, "minimal_durable": minimal,
            "gateway": one, "gateway_rps": round(one["ok_rps"]),
            "gateway_workers": {str(k): v for k, v in gws.items()},
            "workers_over_one": workers_ratio,
            "pairs": [{k: v for k, v in q.items() if k not in ("gateway", "minimal", "more")}
                      | {"gateway_rps": round(q["gateway"]["ok_rps"]),
                         "minimal_rps": round(q["minimal"]["ok_rps"]),
                         "workers_rps": {str(w): round(o["ok_rps"])
                                         for w, o in q["more"].items()}} for q in pairs],
            "ratio": round(ratio, 3), "target": TARGET_INGEST_RATIO,
            "ratio_minimal": round(ratio_min, 3), "target_minimal": TARGET_MINIMAL_RATIO,
            "pg_us_per_event": {"gateway": pg_gw, "minimal": pg_min,
                                "ratio": pg_ratio and round(pg_ratio, 2),
                                "target": TARGET_PG_RATIO},
            "pass": ratio >= TARGET_INGEST_RATIO and ratio_min >= TARGET_MINIMAL_RATIO
            and pg_ratio is not None and pg_ratio <= TARGET_PG_RATIO,
        }

    # --- (b) drain --------------------------------------------------------------------

    async def receiver_stats(self, session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
        async with session.get(f"{base}/stats") as resp:
            found: dict[str, Any] = await resp.json()
            return found

    async def phase_drain(self, recv_base: str, recv_pid: int) -> None:
        a = self.args
        n = a.drain_events
        print(f"\n(b) delivery drain: {n} deliveries, 64 in flight, receiver in its own "
              f"process; raw client: best of {a.raw_client_runs} run(s) per client and "
              "loop (aiohttp's, and the gateway's own HTTP/1.1 client bare)", flush=True)
        hook = f"{recv_base}/hook"
        raw: dict[str, Any] = {}
        async with aiohttp.ClientSession() as session:
            runs = [(f"{client}/{loop}", client, loop, k)
                    for k in range(max(1, a.raw_client_runs))
                    for client in ("aiohttp", "http1") for loop in ("asyncio", "uvloop")]
            for name, client, loop, k in runs:
                await session.post(f"{recv_base}/reset")
                meter = CpuMeter({"receiver": lambda: own_cpu(recv_pid)})
                meter.start()
                text, code, cpu = await asyncio.to_thread(
                    self.procs.run_measured, f"raw-client-{client}-{loop}",
                    self.py("role-raw-client", "--url", hook, "--n", str(n),
                            "--concurrency", "64", "--loop", loop, "--client", client),
                    120 + n / 500)
                window = meter.stop({"client": cpu})
                if code != 0:
                    raise BenchError(f"raw client exited with {code}:\n{text[-2000:]}")
                out = parse_emitted(text)
                st = await self.receiver_stats(session, recv_base)
                span = (st["t_last"] or 0) - (st["t_first"] or 0)
                rate = st["unique"] / span if span > 0 else 0.0
                if name not in raw or rate > raw[name]["rate"]:
                    raw[name] = {**out, "received": st["unique"], "rate": rate, **window}
                print(f"  raw client ({name:15}) #{k + 1} {rate:6.0f} deliveries/s  "
                      f"(client's own clock {n / out['elapsed_s']:.0f}/s)  {fmt_cpu(window)}",
                      flush=True)
        best = max(raw, key=lambda k: float(raw[k]["rate"]))

        db = "bench_drain"
        dsn = await self.pg.fresh_database(db, self.args.days_back)
        gw_result: dict[str, Any] = {}
        try:
            port = free_port()
            api = await self.start_gateway("gateway-drain-api", dsn, "serve", "--no-dispatcher",
                                           port=port)
            try:
                base = f"http://{HOST}:{port}"
                key = await self.create_app_and_endpoint(base, hook)
                meter = CpuMeter({"gateway": lambda: own_cpu(api.pid), "postgres": self.pg.cpu,
                                  "loadgen(bench)": lambda: own_cpu(os.getpid())})
                meter.start()
                accepted, elapsed = await ingest_n(f"{base}/v1/events", key, n, 64)
                ingest_window = meter.stop()
                pending = await count_pending(base, key)
            finally:
                await self.stop_proc(api)
            print(f"  ingested {accepted} events in {elapsed:.1f} s ({accepted / elapsed:.0f}/s, "
                  f"bench's Python client); pending deliveries via API: {pending}", flush=True)
            if pending != n:
                raise BenchError(f"expected {n} pending deliveries, the API lists {pending}")
            gw_result = await self.drain(dsn, recv_base, recv_pid, n)
            gw_result.update({"ingest_rate": accepted / elapsed, "ingest": ingest_window,
                              "pending_before": pending})
        finally:
            await self.pg.drop_database(db)
        ratio = gw_result["rate"] / raw[best]["rate"]
        print(f"  gateway dispatch x{gw_result['dispatchers']} {gw_result['rate']:8.0f} "
              "deliveries/s  "
              f"(first->last arrival {gw_result['span_s']:.2f} s; from process start "
              f"{gw_result['from_spawn_s']:.2f} s; all recorded in DB after "
              f"{gw_result['recorded_after_spawn_s']:.2f} s)  {fmt_cpu(gw_result)}", flush=True)
        print(f"  ratio gateway/raw client({best}) = {ratio:.2f}  (target >= "
              f"{TARGET_DRAIN_RATIO}); duplicates at receiver: {gw_result['duplicates']}",
              flush=True)
        self.results["drain"] = {
            "events": n, "raw": raw, "raw_best_loop": best, "raw_rate": round(raw[best]["rate"]),
            "gateway": gw_result, "gateway_rate": round(gw_result["rate"]),
            "ratio": round(ratio, 3), "target": TARGET_DRAIN_RATIO,
            "pass": ratio >= TARGET_DRAIN_RATIO,
        }

    async def drain(self, dsn: str, recv_base: str, recv_pid: int, n: int) -> dict[str, Any]:
        """Start ``gateway dispatch`` (``--dispatchers`` of them) and time until the
        receiver has all ``n``."""
        count = self.args.dispatchers
        async with aiohttp.ClientSession() as session:
            await session.post(f"{recv_base}/reset")
            spawned = time.time()
            disps: list[subprocess.Popen[bytes]] = []
            spy: subprocess.Popen[bytes] | None = None
            try:
                for i in range(count):
                    disps.append(self.procs.start(f"gateway-dispatch-{i}",
                                                  self.gateway_cmd("dispatch"),
                                                  env=self.gateway_env(dsn)))

                def gateway_cpu() -> float | None:
                    return sum_cpu([p.pid for p in disps])

                meter = CpuMeter({"gateway": gateway_cpu, "postgres": self.pg.cpu,
                                  "receiver": lambda: own_cpu(recv_pid)},
                                 {"gateway": lambda: sum_waited([p.pid for p in disps]),
                                  "postgres": self.pg.waited,
                                  "receiver": lambda: waited(recv_pid)})
                startup_cpu = None
                deadline = time.monotonic() + max(60.0, n / 100)
                st: dict[str, Any] = {"unique": 0, "total": 0}
                while time.monotonic() < deadline:
                    for disp in disps:
                        if disp.poll() is not None:
                            raise BenchError(f"gateway dispatch exited:\n"
                                             f"{self.procs.log_tail(disp)}")
                    st = await self.receiver_stats(session, recv_base)
                    if startup_cpu is None and st["total"] > 0:
                        startup_cpu = gateway_cpu()
                        meter.start()  # the window starts at the first delivery
                        spy = self.profile_start("drain", disps[0].pid,
                                                 n / max(1.0, self.args.expect_drain_rate))
                    if st["unique"] >= n:
                        break
                    await asyncio.sleep(0.02)
                else:
                    raise BenchError(f"drain incomplete: receiver has {st['unique']} of {n}")
                window = meter.stop()
                recorded_at = await wait_no_pending(dsn, timeout_s=60)
                await self.profile_finish("drain", spy)
            finally:
                for disp in disps:
                    await self.stop_proc(disp)
        span = st["t_last"] - st["t_first"]
        return {
            "dispatchers": count, "rate": n / span if span > 0 else 0.0, "span_s": span,
            "from_spawn_s": st["t_last"] - spawned,
            "first_delivery_after_spawn_s": st["t_first"] - spawned,
            "recorded_after_spawn_s": recorded_at - spawned,
            "received": st["unique"], "duplicates": st["total"] - st["unique"],
            "startup_cpu_s": startup_cpu, **window,
        }

    # --- (c) latency ------------------------------------------------------------------

    async def phase_latency(self, recv_base: str, recv_pid: int, rate: float,
                            workers: int = 1) -> None:
        a = self.args
        target_ms = TARGET_P99_BY_RATE.get(rate, TARGET_P99_MS)
        print(f"\n(c) end-to-end latency: {rate:g} events/s for "
              f"{a.latency_duration:g} s against gateway serve --workers {workers} "
              "(API + dispatcher in each)", flush=True)
        db = f"bench_latency_{rate:g}_x{workers}"
        dsn = await self.pg.fresh_database(db, self.args.days_back)
        port = free_port()
        gw = await self.start_gateway(f"gateway-latency-x{workers}", dsn, "serve",
                                      "--workers", str(workers), port=port)
        try:
            if workers > 1:
                await self.wait_workers(gw.pid, workers, port)
            base = f"http://{HOST}:{port}"
            key = await self.create_app_and_endpoint(base, f"{recv_base}/hook")
            url = f"{base}/v1/events"
            async with aiohttp.ClientSession() as control:
                # From zero: the receiver still counts what an earlier phase sent it, and
                # the warm-up's wait must see the warm-up's own arrivals.
                await control.post(f"{recv_base}/reset")
                warm = await paced(url, key, rate, a.warmup)
                await self.wait_received(control, recv_base, len(warm.sent_at))
                await control.post(f"{recv_base}/reset")
                meter = CpuMeter({"gateway": lambda: tree_cpu(gw.pid), "postgres": self.pg.cpu,
                                  "loadgen(bench)": lambda: own_cpu(os.getpid()),
                                  "receiver": lambda: own_cpu(recv_pid)},
                                 {"gateway": TreeWaiting(gw.pid), "postgres": self.pg.waited,
                                  "receiver": lambda: waited(recv_pid)})
                if a.profile and workers > 1:
                    print("  (--profile: one worker's phase only)", flush=True)
                spy = (self.profile_start("latency", gw.pid, a.latency_duration)
                       if workers == 1 else None)
                workers0 = worker_cpu(gw.pid) if workers > 1 else {}
                meter.start()
                sent = await paced(url, key, rate, a.latency_duration)
                await self.wait_received(control, recv_base, len(sent.sent_at))
                window = meter.stop()
                per_worker = worker_cpu_since(gw.pid, workers0) if workers > 1 else None
                await self.profile_finish("latency", spy)
                # The receiver's count can reach the window's before its last event
                # arrives (a warm-up event delivered again after the reset counts too):
                # wait for each of the window's own, then say what else came.
                arrivals = await self.wait_arrivals(control, recv_base, set(sent.sent_at))
                counts = await self.receiver_stats(control, recv_base)
        finally:
            await self.stop_proc(gw)
            await self.pg.drop_database(db)
        e2e = [(arrivals[i] - t) * 1000 for i, t in sent.sent_at.items() if i in arrivals]
        inner = [(arrivals[i] - t) * 1000 for i, t in sent.created_at.items() if i in arrivals]
        acks = [x * 1000 for x in sent.ack_s]
        res = {
            "rate": rate, "workers": workers, "duration_s": a.latency_duration,
            "sent": sent.issued, "accepted": len(sent.sent_at), "failed": sent.failed,
            "received": len(e2e), "achieved_rate": sent.issued / sent.elapsed_s,
            "p50_ms": r(percentile(e2e, 50), 2), "p90_ms": r(percentile(e2e, 90), 2),
            "p99_ms": r(percentile(e2e, 99), 2), "max_ms": r(max(e2e, default=0.0), 2),
            "ack_p50_ms": r(percentile(acks, 50), 2), "ack_p99_ms": r(percentile(acks, 99), 2),
            "created_to_arrival_p50_ms": r(percentile(inner, 50), 2),
            "created_to_arrival_p99_ms": r(percentile(inner, 99), 2),
            "target_p99_ms": target_ms,
            "duplicates": counts["total"] - counts["unique"],
            "strays": sorted(set(arrivals) - set(sent.sent_at)), **window,
        }
        res["pass"] = res["p99_ms"] is not None and res["p99_ms"] < target_ms \
            and res["received"] == res["accepted"] and sent.failed == 0
        if per_worker is not None:
            res["per_worker_cpu_s"] = per_worker
        label = f"{rate:g}" if workers == 1 else f"{rate:g}x{workers}"
        self.results.setdefault("latency", {})[label] = res
        print(f"  sent {sent.issued} ({res['achieved_rate']:.0f}/s), accepted {res['accepted']}, "
              f"received {res['received']}; duplicates at receiver {res['duplicates']}, "
              f"arrivals of events not sent in the window {len(res['strays'])}", flush=True)
        print(f"  ingest->receipt p50 {res['p50_ms']} ms  p90 {res['p90_ms']} ms  "
              f"p99 {res['p99_ms']} ms  max {res['max_ms']} ms  (target p99 < {target_ms:g})",
              flush=True)
        print(f"  202 ack p50 {res['ack_p50_ms']} ms p99 {res['ack_p99_ms']} ms; "
              f"created_at->receipt p50 {res['created_to_arrival_p50_ms']} ms "
              f"p99 {res['created_to_arrival_p99_ms']} ms  {fmt_cpu(window)}", flush=True)

    async def wait_received(self, session: aiohttp.ClientSession, base: str, n: int,
                            timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (await self.receiver_stats(session, base))["unique"] >= n:
                return
            await asyncio.sleep(0.05)
        raise BenchError(f"receiver did not get {n} deliveries within {timeout_s:.0f} s")

    async def wait_arrivals(self, session: aiohttp.ClientSession, base: str,
                            wanted: set[str], timeout_s: float = 30.0) -> dict[str, float]:
        """The receiver's first arrivals, once every id in ``wanted`` is among them (or
        ``timeout_s`` passed: those missing then count as not received)."""
        deadline = time.monotonic() + timeout_s
        while True:
            async with session.get(f"{base}/arrivals") as resp:
                arrivals: dict[str, float] = await resp.json()
            if wanted <= arrivals.keys() or time.monotonic() >= deadline:
                return arrivals
            await asyncio.sleep(0.2)

    # --- all --------------------------------------------------------------------------

    async def run(self) -> None:
        a = self.args
        phases = set(a.phases.split(","))
        if "ingest" in phases:
            await self.phase_ingest()
        if phases & {"drain", "latency"}:
            port = free_port()
            recv = self.procs.start("receiver", self.py("role-receiver", "--port", str(port),
                                                        "--loop", "uvloop"))
            base = f"http://{HOST}:{port}"
            try:
                await self.wait_ready(f"{base}/readyz", recv)
                if "drain" in phases:
                    await self.phase_drain(base, recv.pid)
                if "latency" in phases:
                    for workers in a.latency_workers:
                        for rate in a.latency_rates:
                            await self.phase_latency(base, recv.pid, rate, workers)
            finally:
                await self.stop_proc(recv)


@dataclass
class Sent:
    sent_at: dict[str, float] = field(default_factory=dict)
    created_at: dict[str, float] = field(default_factory=dict)
    ack_s: list[float] = field(default_factory=list)
    issued: int = 0
    failed: int = 0
    elapsed_s: float = 0.0


class _Answers(asyncio.Protocol):
    """One keep-alive connection of :func:`paced`: one request at a time, each answer read
    as the gateway writes it (a status line, headers with ``Content-Length``, the body)."""

    def __init__(self, pool: _Paced) -> None:
        self.pool = pool
        self.transport: asyncio.WriteTransport | None = None
        self.buffer = b""
        #: When the request this connection carries was issued, if it carries one.
        self.issued: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, so no isinstance.)
        self.transport = cast(asyncio.WriteTransport, transport)
        self.pool.ready(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        lines = self.buffer[:head_end].split(b"\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in lines[1:]
                       if line.lower().startswith(b"content-length:")), None)
        try:
            status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            status = 0
        if length is None or status == 0:  # not an answer this client reads: a failure
            self.buffer = b""
            self._answered(0, b"")
            return
        end = head_end + 4 + length
        if len(self.buffer) < end:
            return
        body, self.buffer = self.buffer[head_end + 4:end], self.buffer[end:]
        self._answered(status, body)

    def _answered(self, status: int, body: bytes) -> None:
        issued, self.issued = self.issued, None
        if issued is not None:
            self.pool.answered(status, body, issued)
        self.pool.ready(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.lost(self)


class _Paced:
    """The connections of :func:`paced` and the requests waiting for one."""

    def __init__(self, request: bytes, out: Sent) -> None:
        self.request = request
        self.out = out
        self.idle: list[_Answers] = []
        self.waiting: collections.deque[float] = collections.deque()
        self.unanswered = 0
        self.settled = asyncio.Event()

    def issue(self, issued: float) -> None:
        self.unanswered += 1
        self.settled.clear()
        self.waiting.append(issued)
        self._send()

    def ready(self, conn: _Answers) -> None:
        self.idle.append(conn)
        self._send()

    def _send(self) -> None:
        while self.idle and self.waiting:
            conn = self.idle.pop()
            assert conn.transport is not None
            conn.issued = self.waiting.popleft()
            conn.transport.write(self.request)

    def answered(self, status: int, body: bytes, issued: float) -> None:
        if status in (200, 202):
            try:
                data = json.loads(body)
                created = datetime.fromisoformat(data["created_at"].replace("Z", "+00:00"))
            except (ValueError, KeyError, TypeError):
                self.out.failed += 1
            else:
                self.out.ack_s.append(time.time() - issued)
                self.out.sent_at[data["id"]] = issued
                self.out.created_at[data["id"]] = created.astimezone(UTC).timestamp()
        else:
            self.out.failed += 1
        self._settle()

    def lost(self, conn: _Answers) -> None:
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.issued is not None:
            conn.issued = None
            self.out.failed += 1
            self._settle()

    def _settle(self) -> None:
        self.unanswered -= 1
        if self.unanswered == 0:
            self.settled.set()


async def paced(url: str, key: str, rate: float, duration_s: float,
                connections: int = 64) -> Sent:
    """Open loop: POST an event every 1/rate s whatever the answers do; the send time is
    taken when the POST is issued, and matched later by the returned event id. A request
    waits for a free one of ``connections`` keep-alive connections, as a pooled client's
    would.

    Written on asyncio's protocols, not aiohttp's client: at 2,000 events/s aiohttp's used
    0.39 of a core in the bench's process, a fifth of the machine the gateway is measured
    on; this uses about 0.09 (bench/README.md, "Without HTTP", "Looked at")."""
    out = Sent()
    n = int(rate * duration_s)
    parts = urlsplit(url)
    body = EVENT_BODY.encode()
    request = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
               f"Content-Type: application/json\r\nAuthorization: Bearer {key}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    pool = _Paced(request, out)
    loop = asyncio.get_running_loop()
    host, port = parts.hostname or HOST, parts.port or 80
    opened = [await loop.create_connection(lambda: _Answers(pool), host, port)
              for _ in range(connections)]
    try:
        start = time.monotonic()
        for i in range(n):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            pool.issue(time.time())
            out.issued += 1
        out.elapsed_s = max(time.monotonic() - start, 1e-9)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                await pool.settled.wait()
        out.failed += pool.unanswered  # never answered within the minute
    finally:
        for transport, _ in opened:
            transport.close()
    return out


async def sample_answer(url: str, auth: str | None) -> dict[str, Any]:
    """One request like the load's, to show what an error answer was."""
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = f"Bearer {auth}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.post(url, data=EVENT_BODY.encode(), headers=headers) as resp,
        ):
            return {"status": resp.status, "body": (await resp.text())[:500]}
    except (aiohttp.ClientError, TimeoutError) as exc:
        return {"error": repr(exc)}


async def ingest_n(url: str, key: str, n: int, concurrency: int) -> tuple[int, float]:
    """POST ``n`` events with ``concurrency`` in flight; returns accepted count and time."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    body = EVENT_BODY.encode()
    todo = iter(range(n))
    accepted = 0
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def worker() -> None:
            nonlocal accepted
            for _ in todo:
                for _attempt in range(3):
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        if resp.status == 202:
                            accepted += 1
                            break

        started = time.perf_counter()
        async with asyncio.timeout(60 + n / 100):
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return accepted, elapsed


async def count_pending(base: str, key: str) -> int:
    """Count pending deliveries through the API (cursor pagination, 250 a page)."""
    total = 0
    cursor: str | None = None
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        for _ in range(10_000):
            params = {"status": "pending", "limit": "250"}
            if cursor:
                params["cursor"] = cursor
            async with session.get(f"{base}/v1/deliveries", params=params) as resp:
                page = await resp.json()
                if resp.status != 200:
                    raise BenchError(f"GET /v1/deliveries answered {resp.status}: {page}")
            total += len(page["data"])
            cursor = page["next_cursor"]
            if not cursor:
                break
    return total


async def wait_no_pending(dsn: str, timeout_s: float) -> float:
    """When the database no longer holds a pending delivery (the dispatcher recorded
    every attempt); polled every 50 ms."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            left = await conn.fetchval(
                "SELECT count(*) FROM deliveries WHERE status = 'pending'")
            if left == 0:
                return time.time()
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise BenchError("deliveries still pending in the database after the drain")


async def pg_counters(dsn: str) -> tuple[int, int]:
    """Where the server's WAL stands (bytes), and the next transaction id: the write
    transactions since, of the whole server (only the measured server writes in a window).

    Not ``pg_stat_database.xact_commit``: it also counts the transaction every LISTENing
    backend of the database runs to read each notification (PostgreSQL wakes them all on
    every NOTIFY, whatever their channels), and a backend reports it up to ten seconds
    late once idle. Until 2026-12-05 the bench read it, and printed about a third of the
    gateway's true events per commit."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT pg_current_wal_lsn() - '0/0' AS wal, "
            "pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next_xid")
        assert row is not None
        return int(row["wal"]), int(row["next_xid"])
    finally:
        await conn.close()


def pair_ratios(gateway: dict[str, Any], minimal: dict[str, Any],
                raw: dict[str, Any]) -> dict[str, Any]:
    """One ingest pair's ratios: the gateway's rate over the raw server's and over the
    minimal durable server's, and its PostgreSQL CPU per event over the minimal's."""
    pg_gw = gateway["cpu_us_per_request"].get("postgres")
    pg_min = minimal["cpu_us_per_request"].get("postgres")
    return {"ratio": gateway["ok_rps"] / raw["ok_rps"],
            "ratio_minimal": gateway["ok_rps"] / minimal["ok_rps"],
            "pg_ratio": pg_gw / pg_min if pg_gw and pg_min else None}


def fmt_cpu(window: dict[str, Any]) -> str:
    wall = float(window.get("wall_s") or 0)
    parts = []
    for name, sec in window.get("cpu_s", {}).items():
        if sec is None:
            parts.append(f"{name} n/a")
        else:
            pct = f" ({100 * sec / wall:.0f}%)" if wall > 0 else ""
            parts.append(f"{name} {sec:.1f}s{pct}")
    irq = window.get("irq_s")
    if irq is not None:
        parts.append(f"irq {irq:.1f}s")
    other = window.get("other_cpu_s")
    if other is not None:
        parts.append(f"other {other:.1f}s" + (" (BUSY MACHINE)" if other > 0.15 * wall else ""))
    text = f"[CPU over {wall:.1f} s: " + ", ".join(parts) + "]"
    waiting = window.get("waiting_s") or {}
    if waiting and wall > 0:
        text += (" [waiting for a core: "
                 + ", ".join(f"{name} {sec:.1f}s ({100 * sec / wall:.0f}%)"
                             for name, sec in waiting.items()) + "]")
    return text


#: Areas of the gateway's work, by the text of a frame (``function (file:line)``) that
#: names one: a sample counts in the area of its innermost frame that does (the frames
#: that start the process and its loop name none). asyncpg's frames and the store's are
#: split by the call below them on the stack: a claim, a settlement, ingest's insert.
PROFILE_AREAS = (
    ("request line and attempt line", "gateway/logs.py"),
    ("metrics", "gateway/metrics.py"), ("metrics", "prometheus_client/"),
    ("aiohttp", "aiohttp/"),
    ("asyncpg", "asyncpg/"),
    ("store", "gateway/store/"),
    ("webhook adapter", "adapters/webhook.py"),
    ("push adapters", "adapters/"),
    ("JSON", "json/"),
    ("dispatcher", "gateway/dispatcher.py"),
    ("group commit", "gateway/batching.py"),
    ("API handlers and middleware", "gateway/api/"),
    ("gateway, other", "gateway/"),
)
_ENTRY = ("gateway/serve.py", "gateway/cli.py", "(gateway:", "asyncio/runners.py",
          "uvloop/__init__.py")
_UNDER = (("PostgresQueue.claim", "the claim"), ("PostgresQueue.complete", "the settlement"),
          ("Store._write_events", "ingest's insert"))


def _area(frames: list[str]) -> str:
    for frame in reversed(frames):
        if any(entry in frame for entry in _ENTRY):
            continue
        for name, marker in PROFILE_AREAS:
            if marker in frame:
                if name in ("asyncpg", "store"):
                    below = " ".join(frames)
                    for where, call in _UNDER:
                        if where in below:
                            return f"{name}, under {call}"
                return name
    # No frame names an area: the event loop's own work, in C (uvloop, the protocols'
    # callbacks), where py-spy sees no Python frame but the loop's.
    return "event loop (C)" if frames[-1].startswith("Runner.run") else "other"


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks -> the heaviest leaf frames and gateway frames, and
    the gateway's main thread's samples by area (:data:`PROFILE_AREAS`)."""
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in path.read_text("utf-8", "replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        leaf[frames[-1]] += samples
        for frame in set(frames):
            if "gateway/" in frame or "adapters/" in frame:
                inclusive[frame] += samples
        if any("gateway/serve.py" in frame for frame in frames):  # the main thread
            areas[_area(frames)] += samples
    if not total:
        return {"samples": 0}

    def pct(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * c / total, 1)) for name, c in counter.most_common(top)]

    main = sum(areas.values())
    return {"samples": total, "file": str(path), "self_pct": pct(leaf),
            "gateway_inclusive_pct": pct(inclusive),
            "main_thread_areas_pct": [(name, round(100 * c / main, 1))
                                      for name, c in areas.most_common()] if main else []}


#: A load generator at this share of a core (or more) is the limit of what it measures.
LOADGEN_BOUND = 0.9
#: The measured windows whose load generator was at that limit.
LOADGEN_SATURATED: list[str] = []


def busy_windows() -> tuple[int, int]:
    """How many measured windows had other work using > 15% of a core, of how many."""
    busy = sum(1 for other, wall in CpuMeter.windows if wall > 0 and other > 0.15 * wall)
    return busy, len(CpuMeter.windows)


def print_summary(results: dict[str, Any]) -> None:
    print("\n=== summary ===")
    busy, total = busy_windows()
    if busy:
        print(f"NOT VALID: other work used the CPU in {busy} of {total} measured windows "
              "(see 'other' above); rerun on an idle machine (--wait-idle)")
    if LOADGEN_SATURATED:
        print("NOT VALID: the load generator was the limit in "
              f"{', '.join(LOADGEN_SATURATED)} (see the warnings above): those rates, and "
              "the ratios against them, measure the load generator")
    ing, dr, lat = results.get("ingest"), results.get("drain"), results.get("latency")
    if ing:
        pg = ing["pg_us_per_event"]
        print(f"ingest   gateway {ing['gateway_rps']} req/s vs raw ({ing['raw_best_loop']}) "
              f"{ing['raw_rps']} req/s: ratio {ing['ratio']:.2f} (>= {ing['target']}); vs "
              f"minimal durable {round(ing['minimal_durable']['ok_rps'])} req/s: ratio "
              f"{ing['ratio_minimal']:.2f} (>= {ing['target_minimal']}); PostgreSQL "
              f"{pg['gateway']} vs {pg['minimal']} us/event = {pg['ratio']}x "
              f"(<= {pg['target']}) {'PASS' if ing['pass'] else 'FAIL'}")
        for workers, out in ing.get("gateway_workers", {}).items():
            over = ing.get("workers_over_one", {}).get(workers)
            print(f"         --workers {workers}: {round(out['ok_rps'])} req/s"
                  + (f"; over --workers 1 in each turn {over['pairs']}" if over else ""))
    if dr:
        print(f"drain    gateway {dr['gateway_rate']} deliveries/s vs raw client "
              f"({dr['raw_best_loop']}) {dr['raw_rate']}/s: ratio {dr['ratio']:.2f} "
              f"(>= {dr['target']}) {'PASS' if dr['pass'] else 'FAIL'}")
    for res in (lat or {}).values():
        print(f"latency  p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, max {res['max_ms']} ms "
              f"at {res['rate']:g}/s, --workers {res.get('workers', 1)} "
              f"(p99 < {res['target_p99_ms']:g}) "
              f"{'PASS' if res['pass'] else 'FAIL'}")


def git_state() -> dict[str, Any]:
    """Which code was measured: HEAD and how many files differ from it."""
    root = HERE.parent

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                  text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip()

    changed = [line for line in git("status", "--porcelain").splitlines()
               if not line[3:].startswith("bench/")]
    return {"head": git("rev-parse", "--short", "HEAD"), "changed_files": len(changed)}


def machine_idle_check(seconds: float = 1.0) -> dict[str, float]:
    busy0, irq0, steal0 = machine_cpu()
    time.sleep(seconds)
    busy1, irq1, steal1 = machine_cpu()
    return {"busy_pct": 100 * (busy1 + irq1 - busy0 - irq0) / seconds,
            "steal_pct": 100 * (steal1 - steal0) / seconds}


def prepare(args: argparse.Namespace, prog: str,
            ) -> tuple[str, Path, Procs, Postgres, str | None] | None:
    """What one run needs, for ``bench/run.py`` and ``bench/soak.py`` alike: the load
    generator, a work folder, the process table (stopped on SIGTERM/SIGINT) and
    PostgreSQL (``DATABASE_URL``, else a fresh embedded one); None when wrk was asked for
    and is missing."""
    auto = "wrk" if WRK.exists() else "python"
    loadgen: str = auto if args.loadgen == "auto" else args.loadgen
    if loadgen == "wrk" and not WRK.exists():
        print(f"{prog}: --loadgen wrk but /usr/bin/wrk is missing", file=sys.stderr)
        return None
    args.output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"gw{prog}-"))
    procs = Procs(work / "logs")

    def on_signal(signum: int, frame: Any) -> None:
        procs.abort.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    user_dsn = os.environ.get("DATABASE_URL") or None
    return loadgen, work, procs, Postgres(user_dsn, work / "data"), user_dsn


def orchestrate(args: argparse.Namespace) -> int:
    args.workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    if args.pairs < 1:
        raise SystemExit("--pairs must be at least 1")
    args.latency_rates = [float(x) for x in str(args.latency_rate).split(",") if x.strip()]
    args.latency_workers = [int(x) for x in str(args.latency_workers).split(",") if x.strip()]
    if not args.latency_workers or min(args.latency_workers) < 1:
        raise SystemExit("--latency-workers: counts of 1 or more, e.g. 1,2")
    if args.quick:
        args.duration, args.warmup = 2.0, 1.0
        args.latency_duration = 2.0
        args.drain_events = min(args.drain_events, 5000)
    prepared = prepare(args, "bench")
    if prepared is None:
        return 2
    loadgen, work, procs, pg, user_dsn = prepared
    bench = Bench(args, work, procs, pg, loadgen)
    started = time.time()
    idle_check: dict[str, float] = {}
    code = 1
    try:
        print(f"bench: work dir {work}; PostgreSQL: "
              f"{'DATABASE_URL from the environment' if user_dsn else 'fresh embedded'}; "
              f"load generator: {loadgen}"
              f"{f' ({args.wrk_threads} thread(s))' if loadgen == 'wrk' else ' (Python/aiohttp)'}"
              f"; {os.cpu_count()} CPUs", flush=True)
        idle_check = machine_idle_check()
        waited = 0.0
        while idle_check["busy_pct"] > 15 and waited < args.wait_idle:
            if waited == 0:
                print(f"  machine busy ({idle_check['busy_pct']:.0f}%); waiting up to "
                      f"{args.wait_idle:g} s for it to go idle", flush=True)
            time.sleep(4.0)
            waited += 5.0
            idle_check = machine_idle_check()
        print(f"  machine before start: {idle_check['busy_pct']:.0f}% of one core busy"
              + ("  WARNING: other work is running; figures will be low and noisy"
                 if idle_check["busy_pct"] > 15 else ""), flush=True)
        pg.start()
        if user_dsn:
            print("  note: with DATABASE_URL every phase shares that database", flush=True)
        run_loop(bench.run(), "uvloop")
        code = 0
    except BenchError as exc:
        print(f"\nbench: FAILED: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
        code = 130
    finally:
        procs.stop_all()
        pg.stop()
        if args.keep_work:
            print(f"bench: logs and data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results = {
        "meta": {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
            "elapsed_s": round(time.time() - started, 1), "cpus": os.cpu_count(),
            "python": sys.version.split()[0], "loadgen": loadgen,
            "wrk_threads": args.wrk_threads if loadgen == "wrk" else None,
            "connections": args.connections, "duration_s": args.duration,
            "warmup_s": args.warmup, "quick": args.quick, "profile": args.profile,
            "database": "DATABASE_URL" if user_dsn else "embedded (fresh)",
            "gateway_cmd": args.gateway_cmd,
            "complete": code == 0, "machine_busy_before_start": idle_check,
            "git": git_state(),
            "busy_windows": dict(zip(("busy", "total"), busy_windows(), strict=True)),
            "loadgen_saturated": LOADGEN_SATURATED,
            "valid": code == 0 and busy_windows()[0] == 0 and not LOADGEN_SATURATED,
        },
        **bench.results,
    }
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if code == 0:
        print_summary(bench.results)
    print(f"\nresults written to {args.output}")
    return code


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Benchmark the gateway against raw aiohttp: ingest, drain, latency.")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 s per load run, 1 s warm-up, 5000-event drain")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per ingest run")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each run")
    p.add_argument("--connections", type=int, default=64, help="ingest connections")
    p.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                   help="ingest load generator (auto: wrk when /usr/bin/wrk exists)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads")
    p.add_argument("--drain-events", type=int, default=20_000, help="deliveries to drain")
    p.add_argument("--raw-client-runs", type=int, default=2,
                   help="raw client runs per event loop in (b); the best counts (default 2)")
    p.add_argument("--dispatchers", type=int, default=1,
                   help="'gateway dispatch' processes sharing the drain (default 1)")
    p.add_argument("--pairs", type=int, default=1,
                   help="(a): the minimal durable server and the gateway take turns this "
                        "many times; the ratios are the medians of the pairs' (default 1)")
    p.add_argument("--workers", default="2",
                   help="gateway --workers counts to measure in (a) besides 1 (comma list)")
    p.add_argument("--latency-rate", default="500,2000", help="events/s in (c), comma list")
    p.add_argument("--latency-duration", type=float, default=10.0, help="seconds in (c)")
    p.add_argument("--latency-workers", default="1",
                   help="gateway serve --workers counts in (c), comma list (each dispatches)")
    p.add_argument("--phases", default="ingest,drain,latency",
                   help="comma-separated subset of ingest,drain,latency")
    p.add_argument("--days-back", type=int, default=0,
                   help="give the gateway's databases day partitions this many days back, "
                        "as a gateway that has run that long has (30: the default "
                        "retention); default 0: a new database's 9")
    p.add_argument("--profile", action="store_true",
                   help="sample the gateway with py-spy during each measured window "
                        "(perturbs the figures; summaries go into the JSON)")
    p.add_argument("--expect-drain-rate", type=float, default=2000.0, help=argparse.SUPPRESS)
    p.add_argument("--gateway-cmd",
                   help="command that runs the gateway CLI (default: the 'gateway' script "
                        "next to this Python), e.g. a wrapper that tries a patch")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON path")
    p.add_argument("--wait-idle", type=float, default=0.0,
                   help="wait up to this many seconds for other work on the machine to stop "
                        "before starting (default 0: only warn)")
    p.add_argument("--keep-work", action="store_true",
                   help="keep the temporary data and process logs")
    sub = p.add_subparsers(dest="role", metavar="[role-*]",
                           help="internal: helper processes the benchmark starts")
    for name in ("role-raw-server", "role-receiver"):
        s = sub.add_parser(name)
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
        s.add_argument("--reuse-port", action="store_true")
    s = sub.add_parser("role-raw-client")
    s.add_argument("--url", required=True)
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--concurrency", type=int, default=64)
    s.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    s.add_argument("--client", choices=("aiohttp", "http1"), default="aiohttp")
    s = sub.add_parser("role-loadgen")
    s.add_argument("--url", required=True)
    s.add_argument("--connections", type=int, default=64)
    s.add_argument("--duration", type=float, required=True)
    s.add_argument("--auth")
    s.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.role:
        with contextlib.suppress(KeyboardInterrupt):
            return run_role(args)
        return 130
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
