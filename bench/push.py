"""Push fan-out benchmark: one event to N devices through the gateway, against the best
bare pooled client loop per provider and pyfcm, all hitting the same fake providers in
the same run.

Processes (so each one's CPU is its own): the fake APNs (TLS + HTTP/2) and the fake FCM,
each in a process of its own (``role-provider``: ``tests.push_support.start_providers``
with the other fake stopped, plus a small control endpoint for arrivals and tokens),
PostgreSQL (embedded), the gateway (``gateway serve``, at its default log level, as
users run it), and one load-generator process per ceiling (``role-bare``,
``role-pyfcm``). The orchestrator (this process) only sets up, samples CPU, polls and
reports.

Phases, in this order:

1. gateway       POST /v1/events once, to N devices (half iOS, half Android, inserted
                 with SQL); time = POST -> the fakes hold all N pushes. Per provider: its
                 count / (its last arrival - POST).
2. gateway-split the same gateway: one event to the iOS half alone, one to the Android
                 half alone (each provider's rate without the other competing).
3. bare-apns     N/2 pre-built requests with one ES256 token, the APNs adapter's
                 connection count (4) and the gateway's in-flight bound per provider (C =
                 GATEWAY_PUSH_CONCURRENCY), through two clients: ``adapters.http2``'s
                 HTTP2Pool (the gateway's own) and httpx (http2=True). The faster is the
                 APNs ceiling.
4. bare-fcm      N/2 pre-built v1 messages (pyfcm's ``parse_payload``, as the gateway
                 builds them) with one access token minted once, C in flight, through
                 ``adapters.http1``'s HTTP1Pool (the gateway's own, since 2026-12-07),
                 aiohttp with the FCM adapter's former pool settings, and httpx. The
                 fastest is the FCM ceiling.
5. bare-both     both ceilings at once in one process (the gateway also sends both at
                 once): the ceiling for the mixed event.
6. pyfcm         ``FCMNotification(service_account_file=...).async_notify_multiple_devices``
                 for a smaller count (it opens one aiohttp session per message).

Every phase reads back from the fakes which device tokens arrived, against the tokens it
meant to reach: duplicates, missing and unexpected pushes. Every rate is printed with the
CPU each process used over that rate's own window (sampled every 0.1 s), as a share of
one core, so a reader can tell what the limit was; a fake near a full core is flagged,
and so is a window in which other processes on the machine took CPU.

Usage: ``python bench/push.py [--quick] [--devices N] [--profile]``; see ``--help``.
Results go to ``bench/results/push-latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import resource
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import httpx
import psutil  # type: ignore[import-untyped, unused-ignore]
from aiohttp import web
from common import Postgres, Procs, TreeWaiting, own_cpu, tree_cpu, waited

T = TypeVar("T")

SCRIPT = str(Path(__file__).resolve())
HERE = Path(SCRIPT).parent
ROOT = HERE.parent
DEFAULT_OUTPUT = HERE / "results" / "push-latest.json"
HOST = "127.0.0.1"
BENCH_TAG = "BENCHJSON "
TARGET_BARE_RATIO = 0.7
#: A fake process at this share of one core or more over a window may have been the
#: limit of that window's rate.
FAKE_LIMIT_CORES = 0.85
#: Other processes' CPU above this share of one core over a window: the machine was busy.
BUSY_OTHER_CORES = 0.15
CPU_SAMPLE_S = 0.1
NOTIFICATION: dict[str, Any] = {"title": "Sale", "body": "Today only"}
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
PROVIDERS = ("apns", "fcm")
#: Offsets so the tokens of different phases never collide.
TOKEN_BASE = {"gateway": 0, "apns": 10_000_000, "fcm": 20_000_000, "pyfcm": 30_000_000}
#: Candidate clients of each bare loop; the faster one is the provider's ceiling.
BARE_CLIENTS = {"apns": ("h2pool", "httpx"), "fcm": ("http1", "aiohttp", "httpx")}


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


def emit(payload: dict[str, Any]) -> None:
    print(BENCH_TAG + json.dumps(payload), flush=True)


def parse_emitted(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        if line.startswith(BENCH_TAG):
            found: dict[str, Any] = json.loads(line[len(BENCH_TAG):])
            return found
    raise BenchError(f"helper printed no result; its output ends with:\n{text[-3000:]}")


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def ratio(num: float | None, den: float | None) -> float | None:
    return None if not num or not den else round(num / den, 3)


def ios_token(n: int) -> str:
    # The same as the SQL in insert_devices: lpad(to_hex(i), 64, '0').
    return f"{n:064x}"


def android_token(n: int) -> str:
    # The same shape as tests.push_support.android_token and the SQL in insert_devices.
    return f"fcm-token-{n:08d}:APA91b" + "x" * 100


def expected_tokens(provider: str, indexes: Iterable[int]) -> set[str]:
    make = ios_token if provider == "apns" else android_token
    return {make(i) for i in indexes}


def exactly_once(received: Sequence[str], expected: set[str]) -> dict[str, Any]:
    """How the pushes that arrived compare with the ones meant: each expected token once,
    nothing else."""
    counts = Counter(received)
    got = set(counts)
    return {
        "expected": len(expected), "received": len(received), "distinct": len(got),
        "duplicates": sum(c - 1 for c in counts.values() if c > 1),
        "missing": len(expected - got), "unexpected": len(got - expected),
        "ok": len(received) == len(expected) == len(got & expected),
    }


class BenchError(RuntimeError):
    pass


def load_info(path: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(Path(path).read_text())
    return info


# ======================================================================================
# role-provider: one fake in a process of its own, with a control endpoint
# ======================================================================================

async def provider_main(folder: Path, kind: str) -> None:
    from tests.push_support import start_providers

    providers = await start_providers(folder)
    # One fake per process, so each one's CPU shows apart: the other one never serves.
    await (providers.fcm.stop() if kind == "apns" else providers.apns.stop())
    apns = providers.apns
    fcm = providers.fcm
    apns_base_conns = 0

    def received() -> Sequence[Any]:
        return apns.received if kind == "apns" else fcm.received

    async def stats(request: web.Request) -> web.Response:
        got = received()
        out: dict[str, Any] = {
            "now": time.time(), "count": len(got),
            "first": got[0].received_at if got else None,
            "last": got[-1].received_at if got else None,
        }
        if kind == "apns":
            out.update(connections_opened=apns.connections_opened - apns_base_conns,
                       open_connections=apns.open_connections,
                       max_concurrent_streams_seen=apns.max_concurrent_streams_seen)
        else:
            out["token_requests"] = fcm.token_requests
        return web.json_response(out)

    async def tokens(request: web.Request) -> web.Response:
        return web.Response(text="\n".join(p.token for p in received()))

    async def clear(request: web.Request) -> web.Response:
        nonlocal apns_base_conns
        if kind == "apns":
            apns.clear()
            apns.max_concurrent_streams_seen = 0
            apns_base_conns = apns.connections_opened
        else:
            fcm.clear()
        return web.json_response({"cleared": True})

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_get("/tokens", tokens)
    app.router.add_post("/clear", clear)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, HOST, port).start()
    info: dict[str, Any] = {"pid": os.getpid(), "control_url": f"http://{HOST}:{port}"}
    if kind == "apns":
        info.update(apns_base=apns.base_url, ca_file=str(providers.ca_file),
                    apns_credentials=providers.apns_credentials)
    else:
        info.update(fcm_base=fcm.base_url, fcm_token_url=fcm.token_url,
                    service_account=providers.service_account)
    tmp = folder / "info.json.tmp"
    tmp.write_text(json.dumps(info))
    tmp.rename(folder / "info.json")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3 * 3600):  # bounded even if nobody stops us
                await stop.wait()
    finally:
        await runner.cleanup()
        await providers.stop()


# ======================================================================================
# role-bare: pooled client loops, the ceilings
# ======================================================================================

async def drive(n: int, concurrency: int, send: Callable[[int], Awaitable[int]],
                ) -> dict[str, Any]:
    """``n`` sends, ``concurrency`` workers each taking the next index; status counts."""
    statuses: Counter[str] = Counter()
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            try:
                statuses[str(await send(i))] += 1
            except Exception as exc:  # a ceiling reports failures, it does not stop
                statuses[type(exc).__name__] += 1

    cpu0, t0 = self_cpu(), time.time()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    t1, cpu1 = time.time(), self_cpu()
    return {"n": n, "t_start": t0, "t_end": t1, "elapsed_s": t1 - t0,
            "statuses": dict(statuses), "cpu_s": cpu1 - cpu0}


def apns_requests(info: dict[str, Any], n: int,
                  ) -> tuple[bytes, list[tuple[str, list[tuple[str, str]]]]]:
    """One ES256 provider token, the gateway's payload, n (path, headers) pairs with the
    headers the APNs adapter sends."""
    import jwt

    from adapters.payloads import apns_headers, encode_apns_payload

    creds = info["apns_credentials"]
    token = jwt.encode({"iss": creds["team_id"], "iat": int(time.time())}, creds["key_p8"],
                       algorithm="ES256", headers={"kid": creds["key_id"]})
    body = encode_apns_payload(NOTIFICATION)
    fixed = list(apns_headers(NOTIFICATION, creds["topic"], time.time()).items())
    base = TOKEN_BASE["apns"]
    requests = [
        (f"/3/device/{ios_token(base + i)}",
         [*fixed, ("apns-id", str(uuid.uuid4())), ("authorization", "bearer " + token)])
        for i in range(n)
    ]
    return body, requests


def fcm_requests(info: dict[str, Any], n: int) -> tuple[str, dict[str, str], list[bytes]]:
    """One access token minted once, n v1 message bodies built like the gateway's."""
    import google.auth.transport.requests
    import requests
    from google.oauth2 import service_account
    from pyfcm import FCMNotification

    from adapters.payloads import fcm_android_config

    data = dict(info["service_account"])
    data["token_uri"] = info["fcm_token_url"]
    creds = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call, unused-ignore]
        data, scopes=[FCM_SCOPE])
    session = requests.Session()
    session.trust_env = False
    creds.refresh(google.auth.transport.requests.Request(session))
    builder = FCMNotification(credentials=creds, project_id=data["project_id"])
    base = TOKEN_BASE["fcm"]
    bodies: list[bytes] = [
        builder.parse_payload(fcm_token=android_token(base + i),
                              notification_title=NOTIFICATION["title"],
                              notification_body=NOTIFICATION["body"],
                              android_config=fcm_android_config(NOTIFICATION))
        for i in range(n)
    ]
    url = f"{info['fcm_base']}/v1/projects/{data['project_id']}/messages:send"
    headers = {"authorization": f"Bearer {creds.token}", "content-type": "application/json"}
    return url, headers, bodies


async def bare_apns(info: dict[str, Any], n: int, concurrency: int, connections: int,
                    client: str) -> dict[str, Any]:
    body, reqs = apns_requests(info, n)
    ctx = ssl.create_default_context(cafile=info["ca_file"])
    if client == "h2pool":
        from adapters.apns import UNIQUE_HEADERS
        from adapters.http2 import HTTP2Pool

        # As the APNs adapter makes its pool (adapters/apns.py, APNsAdapter._pool).
        async with HTTP2Pool(info["apns_base"], ctx, max_connections=connections,
                             connect_timeout_s=15.0, unique_headers=UNIQUE_HEADERS) as pool:

            async def send_h2pool(i: int) -> int:
                path, headers = reqs[i]
                resp = await pool.request("POST", path, headers, body, timeout_s=15.0)
                return resp.status

            result = await drive(n, concurrency, send_h2pool)
        return {"client": f"adapters.http2.HTTP2Pool, max_connections={connections}",
                **result}
    async with httpx.AsyncClient(
        http2=True, verify=ctx, trust_env=False, timeout=15.0,
        limits=httpx.Limits(max_connections=connections,
                            max_keepalive_connections=connections, keepalive_expiry=None),
    ) as http:
        base = info["apns_base"]
        as_dicts = [(base + path, dict(headers)) for path, headers in reqs]

        async def send_httpx(i: int) -> int:
            url, headers = as_dicts[i]
            resp = await http.post(url, content=body, headers=headers)
            return resp.status_code

        result = await drive(n, concurrency, send_httpx)
    return {"client": f"httpx http2, max_connections={connections}", **result}


async def bare_fcm(info: dict[str, Any], n: int, concurrency: int,
                   client: str) -> dict[str, Any]:
    url, headers, bodies = fcm_requests(info, n)
    if client == "http1":
        # The gateway's own client, as the FCM adapter sends with it (FCMAdapter._pushes).
        from adapters.http1 import HTTP1Pool
        pool = HTTP1Pool(max_connections=concurrency)
        try:

            async def send_http1(i: int) -> int:
                return (await pool.post(url, headers, bodies[i], timeout_s=15,
                                        keep=65_536)).status

            result = await drive(n, concurrency, send_http1)
        finally:
            await pool.close()
        return {"client": f"adapters.http1.HTTP1Pool, max_connections={concurrency}",
                **result}
    if client == "aiohttp":
        # As the FCM adapter makes its session (adapters/fcm.py, FCMAdapter._client).
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=15), trust_env=False,
        ) as session:

            async def send_aiohttp(i: int) -> int:
                async with session.post(url, data=bodies[i], headers=headers) as resp:
                    await resp.read()
                    return resp.status

            result = await drive(n, concurrency, send_aiohttp)
        return {"client": f"aiohttp, limit={concurrency}", **result}
    async with httpx.AsyncClient(
        http2=True, trust_env=False, timeout=15.0,
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    ) as http:

        async def send_httpx(i: int) -> int:
            resp = await http.post(url, content=bodies[i], headers=headers)
            return resp.status_code

        result = await drive(n, concurrency, send_httpx)
    return {"client": f"httpx (http2=True; plain-HTTP fake: HTTP/1.1), "
                      f"max_connections={concurrency}", **result}


async def bare_main(args: argparse.Namespace) -> dict[str, Any]:
    info = load_info(args.info)
    if args.target == "apns":
        return {"apns": await bare_apns(info, args.n, args.concurrency, args.apns_connections,
                                        args.apns_client)}
    if args.target == "fcm":
        return {"fcm": await bare_fcm(info, args.n, args.concurrency, args.fcm_client)}
    # both at once, as the gateway sends them
    apns, fcm = await asyncio.gather(
        bare_apns(info, args.n, args.concurrency, args.apns_connections, args.apns_client),
        bare_fcm(info, args.n, args.concurrency, args.fcm_client))
    return {"apns": apns, "fcm": fcm}


# ======================================================================================
# role-pyfcm: pyfcm's own async path
# ======================================================================================

def pyfcm_main(args: argparse.Namespace) -> dict[str, Any]:
    from pyfcm import FCMNotification

    from adapters.payloads import fcm_android_config

    info = load_info(args.info)
    account = dict(info["service_account"])
    account["token_uri"] = info["fcm_token_url"]
    sa_file = Path(args.info).parent / "pyfcm-service-account.json"
    sa_file.write_text(json.dumps(account))
    FCMNotification.FCM_END_POINT_BASE = f"{info['fcm_base']}/v1/projects"
    fcm = FCMNotification(service_account_file=str(sa_file), project_id=account["project_id"])
    base = TOKEN_BASE["pyfcm"]
    params = [{"fcm_token": android_token(base + i), "notification_title": NOTIFICATION["title"],
               "notification_body": NOTIFICATION["body"],
               "android_config": fcm_android_config(NOTIFICATION)} for i in range(args.n)]
    cpu0, t0 = self_cpu(), time.time()
    error = None
    answers: list[Any] = []
    try:
        # builds every payload, mints an access token, then one aiohttp session per message
        answers = list(fcm.async_notify_multiple_devices(params_list=params,
                                                         timeout=args.timeout))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
    t1, cpu1 = time.time(), self_cpu()
    ok = sum(1 for a in answers if isinstance(a, dict) and "name" in a)
    return {"n": args.n, "t_start": t0, "t_end": t1, "elapsed_s": t1 - t0, "ok": ok,
            "error": error, "cpu_s": cpu1 - cpu0, "timeout_s": args.timeout}


def run_role(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT))
    if args.role == "role-provider":
        Path(args.folder).mkdir(parents=True, exist_ok=True)
        run_loop(provider_main(Path(args.folder), args.kind), args.loop)
    elif args.role == "role-bare":
        emit(run_loop(bare_main(args), args.loop))
    elif args.role == "role-pyfcm":
        emit(pyfcm_main(args))
    return 0


# ======================================================================================
# orchestration: processes, CPU accounting, PostgreSQL
# ======================================================================================

def run_to_end(procs: Procs, name: str, cmd: Sequence[str], timeout_s: float,
               env: dict[str, str]) -> tuple[dict[str, Any], float]:
    """Run a helper to completion (blocking: call through a thread); its result and its
    CPU seconds."""
    text, code, cpu = procs.run_measured(name, cmd, timeout_s, env)
    if code != 0:
        raise BenchError(f"{name} exited {code} (killed after {timeout_s:.0f} s if -9):\n"
                         f"{text[-3000:]}")
    return parse_emitted(text), cpu


CpuSource = Callable[[], float | None]


def cpu_of(pid: int) -> CpuSource:
    return lambda: own_cpu(pid)


def wait_of(pid: int) -> CpuSource:
    return lambda: waited(pid)

#: The machine's busy CPU seconds (all cores), sampled beside the processes.
MACHINE = "machine"
#: A sample's key for a process's time waiting for a core: this prefix and its name.
WAITING = "waiting:"


def machine_busy() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0)
                 + getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0))


class CpuSampler:
    """CPU seconds of each named process and of the whole machine, sampled every
    :data:`CPU_SAMPLE_S` while a phase runs, so the CPU of any window inside the phase can
    be read afterwards: each rate gets the CPU of its own window (its start to its last
    arrival), not of the phase around it (set-up, building requests, waiting)."""

    def __init__(self, sources: dict[str, CpuSource],
                 waits: dict[str, CpuSource] | None = None) -> None:
        self.sources = sources
        #: Per process, seconds spent ready to run but waiting for a core (common.waited).
        self.waits = waits or {}
        self.times: list[float] = []
        self.samples: list[dict[str, float | None]] = []
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        values: dict[str, float | None] = {name: fn() for name, fn in self.sources.items()}
        values[MACHINE] = machine_busy()
        values.update({WAITING + name: fn() for name, fn in self.waits.items()})
        self.times.append(time.time())
        self.samples.append(values)

    async def __aenter__(self) -> CpuSampler:
        self.sample()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(CPU_SAMPLE_S)
            self.sample()

    def at(self, name: str, t: float) -> float | None:
        """CPU seconds of ``name`` at time ``t``, interpolated between two samples."""
        times = self.times
        hi = min(max(bisect.bisect_left(times, t), 1), len(times) - 1)
        lo = hi - 1
        a, b = self.samples[lo].get(name), self.samples[hi].get(name)
        if a is None or b is None:
            return None
        span = times[hi] - times[lo]
        frac = min(max((t - times[lo]) / span, 0.0), 1.0) if span > 0 else 1.0
        return a + (b - a) * frac

    def window(self, t0: float, t1: float, extra: dict[str, float] | None = None,
               ) -> dict[str, Any]:
        """CPU per process from ``t0`` to ``t1`` (``extra``: processes measured by
        themselves over the same window), as seconds and as a share of one core; what
        other processes on the machine used; whether a fake was near a full core."""
        wall = max(t1 - t0, 1e-6)
        cpu: dict[str, float | None] = {}
        for name in self.sources:
            a, b = self.at(name, t0), self.at(name, t1)
            cpu[name] = None if a is None or b is None else max(0.0, b - a)
        cpu.update(extra or {})
        busy = (self.at(MACHINE, t1) or 0.0) - (self.at(MACHINE, t0) or 0.0)
        other = max(0.0, busy - sum(v for v in cpu.values() if v is not None))
        cores: dict[str, float | None] = {
            name: None if v is None else round(v / wall, 2) for name, v in cpu.items()}
        cores["other processes"] = round(other / wall, 2)
        waiting: dict[str, float] = {}
        for name in self.waits:
            a, b = self.at(WAITING + name, t0), self.at(WAITING + name, t1)
            if a is not None and b is not None:
                waiting[name] = round(max(0.0, b - a) / wall, 2)
        return {
            "wall_s": round(wall, 3),
            "cpu_s": {name: r(v, 2) for name, v in cpu.items()} | {"other processes":
                                                                   round(other, 2)},
            "cores": cores,
            # Ready to run but not running yet, as a share of the window: CPU each process
            # wanted and waited for (PostgreSQL's summed over its backends, so it can pass
            # 1; a lower bound, see common.TreeWaiting).
            "waiting_for_core": waiting,
            "busy_machine": other / wall > BUSY_OTHER_CORES,
            "fake_near_limit": [name for name in ("fake-apns", "fake-fcm")
                                if (cores.get(name) or 0.0) >= FAKE_LIMIT_CORES],
        }


def summarize_profile(path: Path, top: int = 12) -> dict[str, Any]:
    """py-spy raw stacks -> where the gateway's busy time went: by library (leaf frame's
    package), the heaviest leaf functions, and gateway/adapter functions inclusive."""
    leaf: Counter[str] = Counter()
    by_lib: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text("utf-8", "replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        leaf[frames[-1]] += samples
        by_lib[_library(frames[-1])] += samples
        for frame in set(frames):
            if any(m in frame for m in ("gateway/", "adapters/", "(dispatcher", "(store",
                                        "(fcm.py", "(apns.py", "(batching", "(db.py")):
                inclusive[frame] += samples
    if not total:
        return {"samples": 0}

    def pct(counter: Counter[str], n: int = top) -> list[tuple[str, float]]:
        return [(name, round(100 * c / total, 1)) for name, c in counter.most_common(n)]

    return {"samples": total, "self_by_library_pct": pct(by_lib, 20), "self_pct": pct(leaf, 20),
            "gateway_inclusive_pct": pct(inclusive, 20)}


def _library(frame: str) -> str:
    """The package a py-spy frame ``func (path/file.py:line)`` belongs to."""
    _, _, where = frame.rpartition("(")
    path = where.rstrip(")").split(":")[0]
    parts = path.replace("\\", "/").split("/")
    for marker in ("site-packages", "python3.11", "lib"):
        if marker in parts:
            rest = parts[parts.index(marker) + 1:]
            if rest:
                return rest[0].removesuffix(".py")
    return parts[0].removesuffix(".py") if parts else frame


# ======================================================================================
# the benchmark
# ======================================================================================

#: Which half of the devices each provider serves, and the topic naming that half alone.
PLATFORM = {"apns": "ios", "fcm": "android"}


class Bench:
    #: Set when a phase failed: the process logs are then kept in bench/results/push-logs.
    failed = False

    def __init__(self, args: argparse.Namespace, work: Path, procs: Procs, pg: Postgres) -> None:
        self.args = args
        self.work = work
        self.procs = procs
        self.pg = pg
        #: What the bare loops and pyfcm need: both fakes' addresses and credentials.
        self.info: dict[str, Any] = {}
        self.info_file = work / "info.json"
        self.fakes: dict[str, subprocess.Popen[bytes]] = {}
        self.control: dict[str, str] = {}
        self.http: aiohttp.ClientSession | None = None
        self.child_env = {**os.environ, "PYTHONPATH": str(ROOT)}

    # --- the fakes -----------------------------------------------------------------------

    async def start_providers(self) -> None:
        for kind in PROVIDERS:
            self.fakes[kind] = self.procs.start(
                f"fake-{kind}", [sys.executable, SCRIPT, "role-provider", "--kind", kind,
                                 "--folder", str(self.work / f"fake-{kind}"),
                                 "--loop", self.args.fake_loop],
                env=self.child_env)
        deadline = time.monotonic() + 60
        for kind, proc in self.fakes.items():
            path = self.work / f"fake-{kind}" / "info.json"
            while not path.exists():
                if proc.poll() is not None:
                    raise BenchError(f"fake {kind} exited:\n{self.procs.log_tail(proc)}")
                if time.monotonic() > deadline:
                    raise BenchError(f"fake {kind} not ready in 60 s")
                await asyncio.sleep(0.05)
            got = load_info(str(path))
            self.control[kind] = got.pop("control_url")
            got.pop("pid")
            self.info.update(got)
        self.info_file.write_text(json.dumps(self.info))

    async def stats(self) -> dict[str, Any]:
        """Each fake's arrival count, first and last arrival time."""
        assert self.http is not None
        out: dict[str, Any] = {}
        for kind, url in self.control.items():
            async with self.http.get(url + "/stats") as resp:
                out[kind] = await resp.json()
        return out

    async def tokens(self, kind: str) -> list[str]:
        """The device token of every push the fake accepted since the last clear."""
        assert self.http is not None
        async with self.http.get(self.control[kind] + "/tokens") as resp:
            return (await resp.text()).splitlines()

    async def clear(self) -> None:
        assert self.http is not None
        for url in self.control.values():
            async with self.http.post(url + "/clear") as resp:
                await resp.read()

    def cpu_sources(self) -> dict[str, CpuSource]:
        sources = {f"fake-{kind}": cpu_of(proc.pid) for kind, proc in self.fakes.items()}
        return {**sources, "postgres": self.pg.cpu, "bench": cpu_of(os.getpid())}

    def wait_sources(self) -> dict[str, CpuSource]:
        sources = {f"fake-{kind}": wait_of(proc.pid) for kind, proc in self.fakes.items()}
        return {**sources, "postgres": self.pg.waited}

    # --- the gateway ---------------------------------------------------------------------

    def gateway_env(self, dsn: str, admin_key: str) -> dict[str, str]:
        # No GATEWAY_LOG_LEVEL: the gateway runs at its default (INFO, a line per
        # attempt), as users run it.
        env = {
            **os.environ,
            "DATABASE_URL": dsn,
            "GATEWAY_ADMIN_KEY": admin_key,
            "GATEWAY_FCM_URL": self.info["fcm_base"],
            "GATEWAY_FCM_TOKEN_URL": self.info["fcm_token_url"],
            "GATEWAY_APNS_URL": self.info["apns_base"],
            "GATEWAY_PROVIDER_CA_FILE": self.info["ca_file"],
            "GATEWAY_PUSH_CONCURRENCY": str(self.args.concurrency),
        }
        env.pop("GATEWAY_LOG_LEVEL", None)
        for item in self.args.gateway_env:
            key, _, value = item.partition("=")
            env[key] = value
        return env

    async def wait_workers(self, pid: int) -> None:
        """With --workers N: until the supervisor has N workers, and they have had time
        to start their dispatchers (the API answers as soon as one serves)."""
        if self.args.workers == 1:
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(psutil.Process(pid).children()) >= self.args.workers:
                await asyncio.sleep(3.0)
                return
            await asyncio.sleep(0.1)
        raise BenchError(f"gateway --workers {self.args.workers} did not start its workers")

    async def wait_ready(self, proc: subprocess.Popen[bytes], base: str) -> None:
        assert self.http is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"gateway exited {proc.returncode}:\n"
                                 f"{self.procs.log_tail(proc)}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with self.http.get(base + "/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise BenchError(f"gateway not ready in 60 s:\n{self.procs.log_tail(proc)}")

    async def call(self, method: str, url: str, key: str,
                   body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        assert self.http is not None
        async with self.http.request(method, url, json=body,
                                     headers={"Authorization": f"Bearer {key}"}) as resp:
            data: dict[str, Any] = await resp.json(content_type=None)
            if resp.status >= 300:
                raise BenchError(f"{method} {url} -> {resp.status}: {data}")
            return resp.status, data

    async def gateway_phase(self, split: bool) -> dict[str, Any]:
        """One gateway process and database: the mixed event to every device, then (with
        ``split``) one event to the iOS devices alone and one to the Android devices alone,
        so each provider's rate can also be read without the other competing."""
        n = self.args.devices
        # insert_devices: even i iOS, odd i Android.
        ios = expected_tokens("apns", range(0, n, 2))
        android = expected_tokens("fcm", range(1, n, 2))
        dsn = await self.pg.fresh_database("push_bench", self.args.days_back)
        admin_key = "bench-admin-" + secrets.token_hex(8)
        port = free_port()
        base = f"http://{HOST}:{port}"
        cmd = [*shlex.split(self.args.gateway_cmd), "serve", "--port", str(port),
               "--workers", str(self.args.workers)]
        gw = self.procs.start("gateway", cmd, env=self.gateway_env(dsn, admin_key))
        result: dict[str, Any] = {}
        try:
            await self.wait_ready(gw, base)
            await self.wait_workers(gw.pid)
            _, app = await self.call("POST", base + "/v1/apps", admin_key, {"name": "bench"})
            key = app["api_key"]
            await self.call("PUT", f"{base}/v1/apps/{app['id']}/push/fcm", key,
                            {"service_account": self.info["service_account"]})
            await self.call("PUT", f"{base}/v1/apps/{app['id']}/push/apns", key,
                            self.info["apns_credentials"])
            t_ins = time.monotonic()
            await insert_devices(dsn, app["id"], n)
            print(f"  inserted {n} devices in {time.monotonic() - t_ins:.1f} s", flush=True)
            result = await self.measure_event(gw, dsn, base, key, "all",
                                              {"apns": ios, "fcm": android},
                                              profile=self.args.profile)
            if gw.poll() is not None:
                raise BenchError(f"the gateway exited ({gw.returncode}) during the run; its "
                                 f"log ends with:\n{self.procs.log_tail(gw)}\n"
                                 f"(partial figures: {json.dumps(result)[:1500]})")
            if split:
                print_phase("gateway", result)
                for provider, tokens in (("apns", ios), ("fcm", android)):
                    topic = PLATFORM[provider]
                    print(f"[gateway-{topic}] one event to the {len(tokens)} {topic} devices "
                          "alone", flush=True)
                    expect = {p: tokens if p == provider else set() for p in PROVIDERS}
                    alone = await self.measure_event(gw, dsn, base, key, topic, expect,
                                                     profile=self.args.profile)
                    result[f"{topic}_alone"] = alone
                    print_phase(f"gateway-{topic}", alone)
                    if gw.poll() is not None:
                        result["error"] = (f"the gateway exited ({gw.returncode}); its log "
                                           f"ends with:\n{self.procs.log_tail(gw)}")
                        break
        finally:
            stop_t0 = time.monotonic()
            self.procs.stop(gw, timeout_s=30)
            result["stop_s"] = r(time.monotonic() - stop_t0, 2)
        result["env"] = {k: v for k, v in self.gateway_env(dsn, "").items()
                         if k.startswith("GATEWAY_") and k != "GATEWAY_ADMIN_KEY"}
        return result

    async def measure_event(self, gw: subprocess.Popen[bytes], dsn: str, base: str, key: str,
                            topic: str, expect: dict[str, set[str]],
                            profile: bool) -> dict[str, Any]:
        """POST one event to ``topic``; time until the fakes hold every expected push."""
        await self.clear()
        want = {p: len(expect[p]) for p in PROVIDERS}
        # (With --workers, py-spy would sample the supervisor: no profile.)
        profile = profile and self.args.workers == 1
        profiler = await self.start_profiler(gw.pid, topic) if profile else None
        # The process tree: with --workers, the supervisor and its workers.
        async with CpuSampler({"gateway": lambda: tree_cpu(gw.pid), **self.cpu_sources()},
                              {"gateway": TreeWaiting(gw.pid), **self.wait_sources()}) as cpu:
            t_post = time.time()
            status, accepted = await self.call("POST", base + "/v1/events", key, {
                "type": "promo", "payload": {}, "topics": [topic],
                "notification": NOTIFICATION})
            t_202 = time.time()
            timed_out = await self.wait_arrivals(want, gw)
        profiled = self.stop_profiler(profiler)
        final = await self.stats()
        db = await delivery_summary(dsn, accepted["id"], sum(want.values()),
                                    timeout_s=60 if gw.poll() is None else 0)
        lasts = [final[p]["last"] for p in PROVIDERS if final[p]["last"]]
        firsts = [final[p]["first"] for p in PROVIDERS if final[p]["first"]]
        last = max(lasts, default=None)
        total = sum(final[p]["count"] for p in PROVIDERS)
        result: dict[str, Any] = {
            "topic": topic, "devices": sum(want.values()), "ios": want["apns"],
            "android": want["fcm"], "post_status": status,
            "post_202_ms": r((t_202 - t_post) * 1000), "timed_out": timed_out,
            "first_push_after_post_ms": r((min(firsts) - t_post) * 1000) if firsts else None,
            "elapsed_s": r(last - t_post, 3) if last else None,
            "rate": r(total / (last - t_post)) if last else None,
            "received": total,
            "cpu": cpu.window(t_post, last or time.time()),
            "apns_connections_opened": final["apns"]["connections_opened"],
            "fcm_token_requests": final["fcm"]["token_requests"],
            "db": db,
        }
        for p in PROVIDERS:
            if not want[p]:
                continue
            got = final[p]
            result[p] = {
                **provider_rate(got, t_post),
                "exactly_once": exactly_once(await self.tokens(p), expect[p]),
                "cpu": cpu.window(t_post, got["last"]) if got["last"] else None,
            }
        if profiled is not None:
            result["profile"] = profiled
        return result

    async def wait_arrivals(self, want: dict[str, int], gw: subprocess.Popen[bytes]) -> bool:
        """Poll the fakes until each holds its share; stop on a stall or the deadline."""
        # generous: a stall (no new push for --stall-s) ends the wait sooner
        deadline = time.monotonic() + 120 + sum(want.values()) / 40
        last_total, last_change = -1, time.monotonic()
        while True:
            stats = await self.stats()
            counts = {p: stats[p]["count"] for p in PROVIDERS}
            if all(counts[p] >= want[p] for p in PROVIDERS):
                return False
            now = time.monotonic()
            total = sum(counts.values())
            if total != last_total:
                last_total, last_change = total, now
            if now > deadline or now - last_change > self.args.stall_s or gw.poll() is not None:
                print(f"  gave up waiting: {counts['apns']} APNs, {counts['fcm']} FCM",
                      flush=True)
                return True
            await asyncio.sleep(0.1)

    async def start_profiler(self, pid: int, topic: str) -> tuple[subprocess.Popen[bytes], Path]:
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out = self.work / f"gateway-profile-{topic}.txt"
        proc = self.procs.start("py-spy", [pyspy, "record", "--pid", str(pid), "--format", "raw",
                                           "--rate", str(self.args.profile_rate), "--nolineno",
                                           "--nonblocking", "--output", str(out)])
        await asyncio.sleep(0.5)  # let it attach before the measured window
        return proc, out

    def stop_profiler(self, profiler: tuple[subprocess.Popen[bytes], Path] | None,
                      ) -> dict[str, Any] | None:
        if profiler is None:
            return None
        proc, out = profiler
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        self.procs.forget(proc)
        if not out.exists():
            return {"error": "py-spy wrote nothing: " + self.procs.log_tail(proc, 500)}
        if self.args.profile_keep:
            # The mixed event's stacks as named; each one-platform event's beside them.
            topic = out.stem.removeprefix("gateway-profile-")
            shutil.copy(out, self.args.profile_keep if topic == "all"
                        else f"{self.args.profile_keep}.{topic}")
        return summarize_profile(out)

    # --- the ceilings --------------------------------------------------------------------

    async def bare_phase(self, name: str, target: str, n: int, *, apns_client: str = "h2pool",
                         fcm_client: str = "http1") -> dict[str, Any]:
        await self.clear()
        cmd = [sys.executable, SCRIPT, "role-bare", "--info",
               str(self.info_file), "--target", target, "--n", str(n), "--concurrency",
               str(self.args.concurrency), "--apns-client", apns_client,
               "--fcm-client", fcm_client, "--apns-connections",
               str(self.args.apns_connections), "--loop", self.args.client_loop]
        async with CpuSampler(self.cpu_sources(), self.wait_sources()) as cpu:
            child, whole = await asyncio.to_thread(run_to_end, self.procs, name, cmd,
                                                   120 + n / 20, self.child_env)
        stats = await self.stats()
        out: dict[str, Any] = {"loadgen_whole_process_cpu_s": r(whole, 2)}
        for provider, part in child.items():
            got = stats[provider]
            base = TOKEN_BASE[provider]
            expect = expected_tokens(provider, range(base, base + part["n"]))
            out[provider] = {
                "client": part["client"], "n": part["n"], "statuses": part["statuses"],
                "client_elapsed_s": r(part["elapsed_s"], 3),
                **provider_rate(got, part["t_start"]),
                "exactly_once": exactly_once(await self.tokens(provider), expect),
                # the loadgen measured its own CPU over its sending window
                "cpu": cpu.window(part["t_start"], got["last"] or part["t_end"],
                                  {"bench-loadgen": part["cpu_s"]}),
            }
        if "apns" in child:
            out["apns"]["connections_opened"] = stats["apns"]["connections_opened"]
        if target == "both":
            t_start = min(part["t_start"] for part in child.values())
            last = max(stats[p]["last"] or 0 for p in PROVIDERS)
            total = stats["apns"]["count"] + stats["fcm"]["count"]
            out["rate"] = r(total / (last - t_start)) if last else None
            out["cpu"] = cpu.window(t_start, last or time.time(), {
                "bench-loadgen": max(part["cpu_s"] for part in child.values())})
        return out

    async def pyfcm_phase(self, n: int) -> dict[str, Any]:
        await self.clear()
        cmd = [sys.executable, SCRIPT, "role-pyfcm", "--info",
               str(self.info_file), "--n", str(n), "--timeout", str(self.args.pyfcm_timeout)]
        async with CpuSampler(self.cpu_sources(), self.wait_sources()) as cpu:
            child, whole = await asyncio.to_thread(run_to_end, self.procs, "pyfcm", cmd,
                                                   300 + n / 10, self.child_env)
        got = (await self.stats())["fcm"]
        base = TOKEN_BASE["pyfcm"]
        return {"n": n, "ok_answers": child["ok"], "error": child["error"],
                "timeout_s": child["timeout_s"], "client_elapsed_s": r(child["elapsed_s"], 3),
                **provider_rate(got, child["t_start"]),
                "exactly_once": exactly_once(await self.tokens("fcm"), expected_tokens(
                    "fcm", range(base, base + n))),
                "loadgen_whole_process_cpu_s": r(whole, 2),
                "cpu": cpu.window(child["t_start"], got["last"] or child["t_end"],
                                  {"bench-loadgen": child["cpu_s"]})}

    # --- the run -------------------------------------------------------------------------

    @staticmethod
    async def guarded(phase: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
        """A failed phase is reported and the run goes on to the next one."""
        try:
            return await phase
        except (BenchError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            Bench.failed = True
            return {"error": f"{type(exc).__name__}: {exc}"[:3000]}

    async def bare_phases(self, half: int) -> dict[str, Any]:
        """Each provider's candidate loops, one process each; the faster is its ceiling.
        Then both ceilings at once."""
        args = self.args
        out: dict[str, Any] = {}
        best: dict[str, str] = {}
        for provider in PROVIDERS:
            candidates: dict[str, Any] = {}
            for client in BARE_CLIENTS[provider]:
                # httpx is slow (see bench/README.md, Push): fewer pushes, still a rate
                count = min(half, args.httpx_count) if client == "httpx" else half
                label = f"bare-{provider}/{client}"
                print(f"[{label}] {count} pushes, {args.concurrency} in flight", flush=True)
                got = await self.guarded(self.bare_phase(
                    f"bare-{provider}-{client}", provider, count, **{
                        f"{provider}_client": client}))
                candidates[client] = got
                print_phase(label, got)
            rates = {c: dig(got, provider, "rate") or 0.0 for c, got in candidates.items()}
            best[provider] = max(rates, key=lambda c: rates[c])
            out[f"bare_{provider}"] = {"candidates": candidates, "ceiling": best[provider],
                                       "rate": rates[best[provider]] or None}
            print(f"  {provider.upper()} ceiling: {best[provider]} "
                  f"({rates[best[provider]]} /s)", flush=True)
        print(f"[bare-both] {half} + {half} pushes at once ({best['apns']} + {best['fcm']})",
              flush=True)
        out["bare_both"] = await self.guarded(self.bare_phase(
            "bare-both", "both", half, apns_client=best["apns"], fcm_client=best["fcm"]))
        print_phase("bare-both", out["bare_both"])
        return out

    async def run(self) -> dict[str, Any]:
        args = self.args
        half = args.devices // 2
        results: dict[str, Any] = {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "args": {k: v for k, v in vars(args).items() if k != "func"},
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "code": code_state(),
        }
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            self.http = http
            await self.start_providers()
            await asyncio.to_thread(self.pg.start)
            phases = args.phases.split(",")
            if "gateway" in phases:
                print(f"[gateway] one event to {args.devices} devices", flush=True)
                split = "gateway-split" in phases
                got = await self.guarded(self.gateway_phase(split))
                results["gateway"] = got
                if not split or "error" in got:
                    print_phase("gateway", got)
            if "bare" in phases:
                results.update(await self.bare_phases(half))
            if "pyfcm" in phases:
                print(f"[pyfcm] {args.pyfcm_count} pushes", flush=True)
                results["pyfcm"] = await self.guarded(self.pyfcm_phase(args.pyfcm_count))
                print_phase("pyfcm", results["pyfcm"])
        results["ratios"] = ratios(results)
        results["checks"] = checks(results)
        return results


def code_state() -> dict[str, Any]:
    """The commit and the files that differ from it: the gateway may be mid-change."""
    def git(*argv: str) -> str:
        try:
            done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip()

    return {"head": git("rev-parse", "--short", "HEAD"),
            "modified": git("status", "--short", "--untracked-files=no", "--", "gateway",
                            "adapters", "fakes", "bench").splitlines()}


def provider_rate(got: dict[str, Any], t_start: float) -> dict[str, Any]:
    last = got.get("last")
    return {
        "received": got["count"],
        "elapsed_s": r(last - t_start, 3) if last else None,
        "rate": r(got["count"] / (last - t_start)) if last and last > t_start else None,
    }


async def insert_devices(dsn: str, app_id: str, n: int) -> None:
    """n devices on topic 'all' and on 'ios' or 'android': even i iOS (64 hex chars), odd
    i Android; then ANALYZE."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO devices (id, app_id, platform, token, user_id, topics) "
            "SELECT 'dev_' || lpad(i::text, 9, '0'), $1, "
            "  CASE WHEN i % 2 = 0 THEN 'ios' ELSE 'android' END, "
            "  CASE WHEN i % 2 = 0 THEN lpad(to_hex(i), 64, '0') "
            "       ELSE 'fcm-token-' || lpad(i::text, 8, '0') || ':APA91b' || repeat('x', 100) "
            "  END, "
            "  'user-' || i, "
            "  ARRAY['all', CASE WHEN i % 2 = 0 THEN 'ios' ELSE 'android' END] "
            "FROM generate_series(0, $2 - 1) AS i", app_id, n)
        await conn.execute("ANALYZE devices")
    finally:
        await conn.close()


async def delivery_summary(dsn: str, event_id: str, n: int, timeout_s: float) -> dict[str, Any]:
    """After the pushes arrived: wait (bounded) until every delivery is recorded, then
    when fan-out, sending and recording finished, relative to the event's creation."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        t0 = time.monotonic()
        while True:
            done = await conn.fetchval(
                "SELECT count(*) FROM deliveries WHERE event_id = $1 AND status <> 'pending'",
                event_id)
            if done >= n or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        row = await conn.fetchrow(
            "SELECT count(*) AS deliveries, "
            "  count(*) FILTER (WHERE d.status = 'succeeded') AS succeeded, "
            "  count(*) FILTER (WHERE d.status = 'failed') AS failed, "
            "  count(*) FILTER (WHERE d.attempt_count > 1) AS retried, "
            "  extract(epoch FROM max(d.created_at) - e.created_at) AS fanout_done_s, "
            "  extract(epoch FROM max(d.last_attempt_at) - e.created_at) AS last_attempt_s, "
            "  extract(epoch FROM max(d.updated_at) - e.created_at) AS recorded_s "
            "FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.event_id = $1 "
            "GROUP BY e.created_at", event_id)
        errors = await conn.fetch(
            "SELECT last_error, count(*) FROM deliveries WHERE event_id = $1 "
            "AND last_error IS NOT NULL GROUP BY 1 ORDER BY 2 DESC LIMIT 5", event_id)
    finally:
        await conn.close()
    out: dict[str, Any] = {k: (round(float(v), 3) if v is not None and k.endswith("_s") else v)
                           for k, v in dict(row or {}).items()}
    out["extra_wait_for_records_s"] = round(time.monotonic() - t0, 2)
    out["errors"] = {str(e["last_error"])[:120]: e["count"] for e in errors}
    return out


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Per provider: the gateway's rate over its ceiling (the faster bare loop), for the
    mixed event (both providers at once) and for the event to that platform alone, and
    the mixed event over the bare loops run both at once."""
    out: dict[str, Any] = {}
    for p in PROVIDERS:
        bare = dig(results, f"bare_{p}", "rate")
        both = dig(results, "bare_both", p, "rate")
        mixed = dig(results, "gateway", p, "rate")
        alone = dig(results, "gateway", f"{PLATFORM[p]}_alone", p, "rate")
        out[p] = {
            "ceiling_client": dig(results, f"bare_{p}", "ceiling"),
            "bare_rate": bare, "bare_both_rate": both,
            "gateway_mixed_rate": mixed, "gateway_alone_rate": alone,
            "mixed_over_bare": ratio(mixed, bare),
            "alone_over_bare": ratio(alone, bare),
            "mixed_over_bare_both": ratio(mixed, both),
        }
    out["overall"] = {
        "gateway_rate": dig(results, "gateway", "rate"),
        "bare_both_rate": dig(results, "bare_both", "rate"),
        "gateway_over_bare_both": ratio(dig(results, "gateway", "rate"),
                                        dig(results, "bare_both", "rate")),
    }
    out["gateway_fcm_over_pyfcm"] = ratio(dig(results, "gateway", "fcm", "rate"),
                                          dig(results, "pyfcm", "rate"))
    out["target_vs_bare"] = TARGET_BARE_RATIO
    return out


def measured_windows(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, result) of every rate measured, each with its exactly-once count and CPU."""
    found: list[tuple[str, dict[str, Any]]] = []
    gw = results.get("gateway") or {}
    for label, event in (("gateway", gw), ("gateway-ios", gw.get("ios_alone") or {}),
                         ("gateway-android", gw.get("android_alone") or {})):
        found += [(f"{label} {p}", event[p]) for p in PROVIDERS if isinstance(event.get(p), dict)]
    for p in PROVIDERS:
        for client, got in (dig(results, f"bare_{p}", "candidates") or {}).items():
            if isinstance(got.get(p), dict):
                found.append((f"bare-{p}/{client}", got[p]))
    found += [(f"bare-both {p}", results["bare_both"][p]) for p in PROVIDERS
              if isinstance(dig(results, "bare_both", p), dict)]
    if isinstance(results.get("pyfcm"), dict) and "exactly_once" in results["pyfcm"]:
        found.append(("pyfcm", results["pyfcm"]))
    return found


def checks(results: dict[str, Any]) -> dict[str, Any]:
    """Exactly once everywhere; windows where the machine was busy or a fake near a full
    core (the figure may then say more about the fake or the machine than the client)."""
    windows = measured_windows(results)
    once = {label: got["exactly_once"] for label, got in windows if "exactly_once" in got}
    cpus = [(label, got["cpu"]) for label, got in windows if got.get("cpu")]
    return {
        "exactly_once_everywhere": bool(once) and all(o["ok"] for o in once.values()),
        "duplicates": sum(o["duplicates"] for o in once.values()),
        "missing": sum(o["missing"] for o in once.values()),
        "unexpected": sum(o["unexpected"] for o in once.values()),
        "busy_windows": [label for label, cpu in cpus if cpu["busy_machine"]],
        "fake_near_limit": {label: cpu["fake_near_limit"] for label, cpu in cpus
                            if cpu["fake_near_limit"]},
        "windows": len(cpus),
    }


# ======================================================================================
# output
# ======================================================================================

def fmt_cpu(cpu: dict[str, Any] | None) -> str:
    """One window's CPU per process, as a share of one core."""
    if not cpu:
        return "CPU: no window"
    parts = [f"{name} {value:.2f}" for name, value in cpu["cores"].items()
             if value is not None]
    text = f"CPU (cores over {cpu['wall_s']:.2f} s): " + ", ".join(parts)
    waiting = cpu.get("waiting_for_core") or {}
    if waiting:
        text += "; waiting for a core: " + ", ".join(f"{k} {v:.2f}" for k, v in waiting.items())
    if cpu["busy_machine"]:
        text += "  [BUSY MACHINE]"
    for name in cpu["fake_near_limit"]:
        text += f"  [{name} near a full core: may be the limit]"
    return text


def fmt_once(once: dict[str, Any] | None) -> str:
    if not once:
        return ""
    verdict = "yes" if once["ok"] else "NO"
    return (f"exactly once: {verdict} (duplicates {once['duplicates']}, missing "
            f"{once['missing']}, unexpected {once['unexpected']})")


def dig(data: Any, *keys: str) -> Any:
    """data[k1][k2]... or None when any level is missing."""
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def print_phase(name: str, res: dict[str, Any]) -> None:
    if "error" in res and "cpu" not in res and not any(p in res for p in PROVIDERS):
        print(f"  failed: {res['error'][:1500]}")
        return
    if name.startswith("gateway"):
        print(f"  {res['received']}/{res['devices']} pushes in {res['elapsed_s']} s = "
              f"{res['rate']} /s (202 in {res['post_202_ms']} ms, first push after "
              f"{res['first_push_after_post_ms']} ms)")
        print(f"    {fmt_cpu(res['cpu'])}")
        for p in PROVIDERS:
            if p in res:
                g = res[p]
                print(f"  {p}: {g['received']} in {g['elapsed_s']} s = {g['rate']} /s; "
                      f"{fmt_once(g['exactly_once'])}")
                print(f"    {fmt_cpu(g['cpu'])}")
        db = res["db"]
        print(f"  db: {db.get('succeeded')} succeeded, {db.get('failed')} failed, "
              f"{db.get('retried')} retried; fan-out done at {db.get('fanout_done_s')} s, "
              f"all recorded at {db.get('recorded_s')} s after the event")
        if db.get("errors"):
            print(f"  errors: {db['errors']}")
        prof = res.get("profile")
        if prof and prof.get("samples"):
            print(f"  py-spy ({prof['samples']} samples), self time by library:")
            print("    " + ", ".join(f"{k} {v}%" for k, v in prof["self_by_library_pct"]))
            print("  heaviest functions, self time:")
            for k, v in prof["self_pct"][:12]:
                print(f"    {v:5.1f}%  {k}")
            print("  gateway/adapters functions, inclusive:")
            for k, v in prof["gateway_inclusive_pct"][:14]:
                print(f"    {v:5.1f}%  {k}")
        return
    for p in PROVIDERS:
        if p in res:
            g = res[p]
            print(f"  {p}: {g['received']} in {g['elapsed_s']} s = {g['rate']} /s "
                  f"[{g.get('client', '')}] statuses {g.get('statuses', {})}; "
                  f"{fmt_once(g.get('exactly_once'))}")
            print(f"    {fmt_cpu(g.get('cpu'))}")
    if name == "pyfcm":
        print(f"  pyfcm: {res['received']}/{res['n']} in {res['elapsed_s']} s = {res['rate']} /s"
              f" ({res['ok_answers']} ok answers; error: {res['error']}); "
              f"{fmt_once(res.get('exactly_once'))}")
        print(f"    {fmt_cpu(res.get('cpu'))}")
    if name == "bare-both" and "rate" in res:
        print(f"  both: {res['rate']} /s overall")
        print(f"    {fmt_cpu(res.get('cpu'))}")


def print_summary(results: dict[str, Any]) -> None:
    rt = results["ratios"]
    ck = results["checks"]
    gw = results.get("gateway") or {}
    print("\n=== push summary ===")
    if "error" in gw:
        print(f"gateway phase: {gw['error'][:300]}")
    print(f"{'':5} {'ceiling (bare loop)':>26} {'gateway mixed':>14} {'alone':>8} "
          f"{'mixed/bare':>11} {'alone/bare':>11} {'mixed/both':>11}")

    def mark(value: float | None) -> str:
        if value is None:
            return f"{'-':>11}"
        return f"{value:6.3f} {'ok ' if value >= TARGET_BARE_RATIO else 'LOW'}"

    for p in PROVIDERS:
        row = rt[p]
        ceiling = f"{row['ceiling_client'] or '-'} {row['bare_rate'] or '-'} /s"
        print(f"{p.upper():5} {ceiling:>26} {row['gateway_mixed_rate'] or '-':>12} /s "
              f"{row['gateway_alone_rate'] or '-':>8} {mark(row['mixed_over_bare']):>11} "
              f"{mark(row['alone_over_bare']):>11} {mark(row['mixed_over_bare_both']):>11}")
    overall = rt["overall"]
    print(f"overall: gateway {overall['gateway_rate']} /s, bare loops both at once "
          f"{overall['bare_both_rate']} /s, ratio {overall['gateway_over_bare_both']} "
          f"(target {TARGET_BARE_RATIO} per provider)")
    if dig(results, "pyfcm", "rate") is not None:
        print(f"pyfcm async path {results['pyfcm']['rate']} /s ({results['pyfcm']['n']} "
              f"messages); gateway FCM / pyfcm {rt['gateway_fcm_over_pyfcm']}")
    print(f"every push exactly once: {'yes' if ck['exactly_once_everywhere'] else 'NO'} "
          f"(duplicates {ck['duplicates']}, missing {ck['missing']}, unexpected "
          f"{ck['unexpected']}, over every phase)")
    for label, got in measured_windows(results):
        cpu = got.get("cpu")
        if cpu:
            cores = ", ".join(f"{k} {v:.2f}" for k, v in cpu["cores"].items() if v)
            waiting = ", ".join(f"{k} {v:.2f}" for k, v in
                                (cpu.get("waiting_for_core") or {}).items() if v)
            print(f"  {label:22} {got.get('rate') or '-':>9} /s  cores: {cores}"
                  + (f"; waiting for a core: {waiting}" if waiting else ""))
    if ck["fake_near_limit"]:
        print(f"a fake was near a full core in: {ck['fake_near_limit']}")
    else:
        print(f"no fake reached {FAKE_LIMIT_CORES} of a core in any window")
    if ck["busy_windows"]:
        print(f"BUSY MACHINE: other processes used more than {BUSY_OTHER_CORES} of a core in "
              f"{len(ck['busy_windows'])} of {ck['windows']} windows; the figures are not "
              "clean measurements")


# ======================================================================================
# entry point
# ======================================================================================

async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="push-bench-"))
    procs = Procs(work / "logs")
    pg = Postgres(os.environ.get("DATABASE_URL"), work / "pg")
    bench = Bench(args, work, procs, pg)
    try:
        results = await bench.run()
    finally:
        procs.stop_all()
        await asyncio.to_thread(pg.stop)
        if Bench.failed:
            kept = Path(args.output).parent / "push-logs"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(work / "logs", kept)
            print(f"a phase failed; process logs copied to {kept}")
        if args.keep_work:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = p.add_subparsers(dest="role")
    prov = sub.add_parser("role-provider", help="(internal) one fake provider")
    prov.add_argument("--kind", choices=PROVIDERS, required=True)
    prov.add_argument("--folder", required=True)
    prov.add_argument("--loop", default="uvloop", choices=("asyncio", "uvloop"))
    bare = sub.add_parser("role-bare", help="(internal) a bare pooled client loop")
    bare.add_argument("--info", required=True)
    bare.add_argument("--target", choices=("apns", "fcm", "both"), required=True)
    bare.add_argument("--n", type=int, required=True)
    bare.add_argument("--concurrency", type=int, default=128)
    bare.add_argument("--apns-client", choices=BARE_CLIENTS["apns"], default="h2pool")
    bare.add_argument("--fcm-client", choices=BARE_CLIENTS["fcm"], default="http1")
    bare.add_argument("--apns-connections", type=int, default=4)
    bare.add_argument("--loop", default="uvloop", choices=("asyncio", "uvloop"))
    pyf = sub.add_parser("role-pyfcm", help="(internal) pyfcm's async path")
    pyf.add_argument("--info", required=True)
    pyf.add_argument("--n", type=int, required=True)
    pyf.add_argument("--timeout", type=float, default=60)

    p.add_argument("--quick", action="store_true",
                   help="10,000 devices and 1,000 pyfcm messages")
    p.add_argument("--devices", type=int, default=None, help="devices (default 100,000)")
    p.add_argument("--concurrency", type=int, default=128,
                   help="GATEWAY_PUSH_CONCURRENCY (the dispatcher's in-flight bound per "
                        "provider) and the bare loops' in-flight bound")
    p.add_argument("--workers", type=int, default=1,
                   help="gateway serve --workers N (its CPU is the process tree's)")
    p.add_argument("--apns-connections", type=int, default=4,
                   help="bare APNs loops' HTTP/2 connections (the gateway's APNs adapter "
                        "uses 4)")
    p.add_argument("--pyfcm-count", type=int, default=None,
                   help="messages through pyfcm (default 2,000; 1,000 with --quick)")
    p.add_argument("--httpx-count", type=int, default=5_000,
                   help="most pushes for each httpx candidate loop (it is slow; the ceiling "
                        "is the faster candidate)")
    p.add_argument("--pyfcm-timeout", type=float, default=60,
                   help="pyfcm per-request timeout (its default, 5 s, fails under load)")
    p.add_argument("--phases", default="gateway,gateway-split,bare,pyfcm",
                   help="gateway-split adds one event per platform after the mixed one")
    p.add_argument("--gateway-cmd", default=str(Path(sys.executable).parent / "gateway"),
                   help="how to run the gateway (a wrapper can try a patch)")
    p.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the gateway (repeatable)")
    p.add_argument("--fake-loop", default="uvloop", choices=("asyncio", "uvloop"))
    p.add_argument("--client-loop", default="uvloop", choices=("asyncio", "uvloop"),
                   help="event loop of the bare loops (the gateway runs uvloop)")
    p.add_argument("--stall-s", type=float, default=30,
                   help="give up when no push arrives for this long")
    p.add_argument("--days-back", type=int, default=0,
                   help="give the gateway's database day partitions this many days back, "
                        "as a gateway that has run that long has (30: the default "
                        "retention); default 0: a new database's 9")
    p.add_argument("--profile", action="store_true",
                   help="sample the gateway with py-spy during each gateway event (slows it)")
    p.add_argument("--profile-rate", type=int, default=50)
    p.add_argument("--profile-keep", default=None, help="copy the raw py-spy stacks here")
    p.add_argument("--keep-work", action="store_true", help="keep logs and temp files")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.role:
        return run_role(args)
    if args.devices is None:
        args.devices = 10_000 if args.quick else 100_000
    if args.pyfcm_count is None:
        args.pyfcm_count = 1_000 if args.quick else 2_000
    sys.path.insert(0, str(ROOT))
    results = asyncio.run(orchestrate(args))
    print_summary(results)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
