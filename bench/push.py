"""Push fan-out benchmark: one event to N devices through the gateway, against bare pooled
client loops and pyfcm, all hitting the same fake providers in the same run.

Processes (so each one's CPU is its own): the fake providers (``role-providers``: fake
APNs over TLS + HTTP/2 and fake FCM, started by ``tests.push_support.start_providers``,
with a small control endpoint for arrival counts), PostgreSQL (embedded), the
gateway (``gateway serve``), and one load-generator process per ceiling (``role-bare``,
``role-pyfcm``). The orchestrator (this process) only sets up, polls and reports.

Phases, in this order:

1. gateway    POST /v1/events once, to N devices (half iOS, half Android, inserted with
              SQL); time = POST -> the fakes hold all N pushes. Per provider: its count /
              (its last arrival - POST).
2. bare-apns  httpx.AsyncClient(http2=True), the gateway's pool size, C in flight (C =
              GATEWAY_PUSH_CONCURRENCY), N/2 pre-built requests with one ES256 token.
3. bare-fcm   N/2 pre-built v1 messages (pyfcm's ``parse_payload``, as the gateway builds
              them) with one access token minted once; httpx (the gateway's client) and
              aiohttp, C in flight; the faster is the ceiling.
4. bare-both  both loops at once in one process (the gateway also sends both at once, to
              one fake process): the ceiling for the overall rate.
5. pyfcm      ``FCMNotification(service_account_file=...).async_notify_multiple_devices``
              for a smaller count (it opens one aiohttp session per message).

Usage: ``python bench/push.py [--quick] [--devices N] [--profile]``; see ``--help``.
Results go to ``bench/results/push-latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
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
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import httpx
import psutil  # type: ignore[import-untyped, unused-ignore]
from aiohttp import web
from common import Postgres, Procs, own_cpu

T = TypeVar("T")

SCRIPT = str(Path(__file__).resolve())
HERE = Path(SCRIPT).parent
ROOT = HERE.parent
DEFAULT_OUTPUT = HERE / "results" / "push-latest.json"
HOST = "127.0.0.1"
BENCH_TAG = "BENCHJSON "
TARGET_BARE_RATIO = 0.7
NOTIFICATION: dict[str, Any] = {"title": "Sale", "body": "Today only"}
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
#: Offsets so the tokens of different phases never collide (the fakes do not care).
TOKEN_BASE = {"gateway": 0, "apns": 10_000_000, "fcm": 20_000_000, "pyfcm": 30_000_000}


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
    return f"{n:064x}"


def android_token(n: int) -> str:
    # The same shape as tests.push_support.android_token and the SQL below.
    return f"fcm-token-{n:08d}:APA91b" + "x" * 100


class BenchError(RuntimeError):
    pass


def load_info(path: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(Path(path).read_text())
    return info


# ======================================================================================
# role-providers: the fakes in their own process, with a control endpoint
# ======================================================================================

async def providers_main(folder: Path) -> None:
    from tests.push_support import start_providers

    providers = await start_providers(folder)
    apns_base_conns = 0

    def provider_stats(received: Sequence[Any], distinct: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "count": len(received),
            "first": received[0].received_at if received else None,
            "last": received[-1].received_at if received else None,
        }
        if distinct:
            out["distinct_tokens"] = len({p.token for p in received})
        return out

    async def stats(request: web.Request) -> web.Response:
        distinct = request.query.get("distinct") == "1"
        return web.json_response({
            "now": time.time(),
            "apns": {**provider_stats(providers.apns.received, distinct),
                     "connections_opened": providers.apns.connections_opened - apns_base_conns,
                     "open_connections": providers.apns.open_connections,
                     "max_concurrent_streams_seen": providers.apns.max_concurrent_streams_seen},
            "fcm": {**provider_stats(providers.fcm.received, distinct),
                    "token_requests": providers.fcm.token_requests},
        })

    async def clear(request: web.Request) -> web.Response:
        nonlocal apns_base_conns
        providers.apns.clear()
        providers.fcm.clear()
        providers.apns.max_concurrent_streams_seen = 0
        apns_base_conns = providers.apns.connections_opened
        return web.json_response({"cleared": True})

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_post("/clear", clear)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, HOST, port).start()
    info = {
        "pid": os.getpid(),
        "control_url": f"http://{HOST}:{port}",
        "fcm_base": providers.fcm.base_url,
        "fcm_token_url": providers.fcm.token_url,
        "apns_base": providers.apns.base_url,
        "ca_file": str(providers.ca_file),
        "service_account": providers.service_account,
        "apns_credentials": providers.apns_credentials,
    }
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


def apns_requests(info: dict[str, Any], n: int) -> tuple[bytes, list[tuple[str, dict[str, str]]]]:
    """One ES256 provider token, the gateway's payload, n (url, headers) pairs."""
    import jwt

    from adapters.payloads import encode_apns_payload

    creds = info["apns_credentials"]
    token = jwt.encode({"iss": creds["team_id"], "iat": int(time.time())}, creds["key_p8"],
                       algorithm="ES256", headers={"kid": creds["key_id"]})
    body = encode_apns_payload(NOTIFICATION)
    base = TOKEN_BASE["apns"]
    requests = [
        (f"{info['apns_base']}/3/device/{ios_token(base + i)}",
         {"authorization": f"bearer {token}", "apns-topic": creds["topic"],
          "apns-push-type": "alert", "apns-priority": "10", "apns-id": str(uuid.uuid4())})
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


async def bare_apns(info: dict[str, Any], n: int, concurrency: int,
                    connections: int) -> dict[str, Any]:
    body, reqs = apns_requests(info, n)
    ctx = ssl.create_default_context(cafile=info["ca_file"])
    async with httpx.AsyncClient(
        http2=True, verify=ctx, trust_env=False, timeout=15.0,
        limits=httpx.Limits(max_connections=connections,
                            max_keepalive_connections=connections, keepalive_expiry=None),
    ) as client:

        async def send(i: int) -> int:
            url, headers = reqs[i]
            resp = await client.post(url, content=body, headers=headers)
            return resp.status_code

        result = await drive(n, concurrency, send)
    return {"client": f"httpx http2, max_connections={connections}", **result}


async def bare_fcm(info: dict[str, Any], n: int, concurrency: int,
                   client_kind: str) -> dict[str, Any]:
    url, headers, bodies = fcm_requests(info, n)
    if client_kind == "aiohttp":
        connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=15)) as session:

            async def send_aiohttp(i: int) -> int:
                async with session.post(url, data=bodies[i], headers=headers) as resp:
                    await resp.read()
                    return resp.status

            result = await drive(n, concurrency, send_aiohttp)
        return {"client": f"aiohttp, limit={concurrency}", **result}
    async with httpx.AsyncClient(
        http2=True, trust_env=False, timeout=15.0,
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    ) as client:

        async def send_httpx(i: int) -> int:
            resp = await client.post(url, content=bodies[i], headers=headers)
            return resp.status_code

        result = await drive(n, concurrency, send_httpx)
    return {"client": f"httpx (http2=True; plain-HTTP fake: HTTP/1.1), "
                      f"max_connections={concurrency}", **result}


async def bare_main(args: argparse.Namespace) -> dict[str, Any]:
    info = load_info(args.info)
    if args.target == "apns":
        return {"apns": await bare_apns(info, args.n, args.concurrency, args.apns_connections)}
    if args.target == "fcm":
        return {"fcm": await bare_fcm(info, args.n, args.concurrency, args.client)}
    # both at once, as the gateway sends them
    apns, fcm = await asyncio.gather(
        bare_apns(info, args.n, args.concurrency, args.apns_connections),
        bare_fcm(info, args.n, args.concurrency, args.client))
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
    if args.role == "role-providers":
        Path(args.folder).mkdir(parents=True, exist_ok=True)
        run_loop(providers_main(Path(args.folder)), args.loop)
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


class CpuMeter:
    """CPU seconds each named process used between ``start()`` and ``stop()``."""

    def __init__(self, sources: dict[str, Callable[[], float | None]]) -> None:
        self.sources = sources
        self.before: dict[str, float | None] = {}
        self.busy0 = 0.0
        self.t0 = 0.0

    def start(self) -> None:
        self.before = {name: fn() for name, fn in self.sources.items()}
        self.busy0 = machine_busy()
        self.t0 = time.monotonic()

    def stop(self, extra: dict[str, float] | None = None) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        cpu: dict[str, float | None] = {}
        for name, fn in self.sources.items():
            after, before = fn(), self.before.get(name)
            cpu[name] = None if after is None or before is None else round(after - before, 2)
        for name, value in (extra or {}).items():
            cpu[name] = round(value, 2)
        busy = machine_busy() - self.busy0
        ours = sum(v for v in cpu.values() if v is not None)
        # Anything else on the machine (other sessions' tests, say) competed for the cores.
        cpu["other processes"] = round(max(0.0, busy - ours), 2)
        return {"wall_s": round(wall, 2), "cpu_s": cpu}


def machine_busy() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0)
                 + getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0))


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

    return {"samples": total, "self_by_library_pct": pct(by_lib, 20), "self_pct": pct(leaf),
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

class Bench:
    #: Set when a phase failed: the process logs are then kept in bench/results/push-logs.
    failed = False

    def __init__(self, args: argparse.Namespace, work: Path, procs: Procs, pg: Postgres) -> None:
        self.args = args
        self.work = work
        self.procs = procs
        self.pg = pg
        self.info: dict[str, Any] = {}
        self.info_file = work / "providers" / "info.json"
        self.providers: subprocess.Popen[bytes] | None = None
        self.http: aiohttp.ClientSession | None = None
        self.child_env = {**os.environ, "PYTHONPATH": str(ROOT)}

    # --- providers -----------------------------------------------------------------------

    async def start_providers(self) -> None:
        folder = self.work / "providers"
        self.providers = self.procs.start(
            "providers", [sys.executable, SCRIPT, "role-providers",
                          "--folder", str(folder), "--loop", self.args.fake_loop],
            env=self.child_env)
        deadline = time.monotonic() + 30
        while not (folder / "info.json").exists():
            if self.providers.poll() is not None:
                raise BenchError(f"providers exited:\n{self.procs.log_tail(self.providers)}")
            if time.monotonic() > deadline:
                raise BenchError("providers not ready in 30 s")
            await asyncio.sleep(0.05)
        self.info = load_info(str(self.info_file))

    async def stats(self, distinct: bool = False) -> dict[str, Any]:
        assert self.http is not None
        url = self.info["control_url"] + "/stats" + ("?distinct=1" if distinct else "")
        async with self.http.get(url) as resp:
            found: dict[str, Any] = await resp.json()
            return found

    async def clear(self) -> None:
        assert self.http is not None
        async with self.http.post(self.info["control_url"] + "/clear") as resp:
            await resp.read()

    def cpu_sources(self) -> dict[str, Callable[[], float | None]]:
        assert self.providers is not None
        pid = self.providers.pid
        me = os.getpid()
        return {"providers": lambda: own_cpu(pid), "postgres": self.pg.cpu,
                "orchestrator": lambda: own_cpu(me)}

    # --- the gateway ---------------------------------------------------------------------

    def gateway_env(self, dsn: str, admin_key: str) -> dict[str, str]:
        env = {
            **os.environ,
            "DATABASE_URL": dsn,
            "GATEWAY_ADMIN_KEY": admin_key,
            "GATEWAY_FCM_URL": self.info["fcm_base"],
            "GATEWAY_FCM_TOKEN_URL": self.info["fcm_token_url"],
            "GATEWAY_APNS_URL": self.info["apns_base"],
            "GATEWAY_PROVIDER_CA_FILE": self.info["ca_file"],
            "GATEWAY_PUSH_CONCURRENCY": str(self.args.concurrency),
            "GATEWAY_LOG_LEVEL": "WARNING",
        }
        for item in self.args.gateway_env:
            key, _, value = item.partition("=")
            env[key] = value
        return env

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
        n_ios = n // 2
        n_android = n - n_ios
        dsn = await self.pg.fresh_database("push_bench")
        admin_key = "bench-admin-" + secrets.token_hex(8)
        port = free_port()
        base = f"http://{HOST}:{port}"
        cmd = [*shlex.split(self.args.gateway_cmd), "serve", "--port", str(port)]
        gw = self.procs.start("gateway", cmd, env=self.gateway_env(dsn, admin_key))
        result: dict[str, Any] = {}
        try:
            await self.wait_ready(gw, base)
            _, app = await self.call("POST", base + "/v1/apps", admin_key, {"name": "bench"})
            key = app["api_key"]
            await self.call("PUT", f"{base}/v1/apps/{app['id']}/push/fcm", key,
                            {"service_account": self.info["service_account"]})
            await self.call("PUT", f"{base}/v1/apps/{app['id']}/push/apns", key,
                            self.info["apns_credentials"])
            t_ins = time.monotonic()
            await insert_devices(dsn, app["id"], n)
            print(f"  inserted {n} devices in {time.monotonic() - t_ins:.1f} s", flush=True)
            result = await self.measure_event(gw, dsn, base, key, "all", n_ios, n_android,
                                              profile=self.args.profile)
            if gw.poll() is not None:
                raise BenchError(f"the gateway exited ({gw.returncode}) during the run; its "
                                 f"log ends with:\n{self.procs.log_tail(gw)}\n"
                                 f"(partial figures: {json.dumps(result)[:1500]})")
            if split:
                print_phase("gateway", result)
                for topic, want in (("ios", (n_ios, 0)), ("android", (0, n_android))):
                    print(f"[gateway-{topic}] one event to the {want[0] or want[1]} "
                          f"{topic} devices alone", flush=True)
                    alone = await self.measure_event(gw, dsn, base, key, topic, want[0], want[1],
                                                     profile=False)
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
                            topic: str, n_ios: int, n_android: int,
                            profile: bool) -> dict[str, Any]:
        """POST one event to ``topic``; time until the fakes hold n_ios + n_android."""
        await self.clear()
        meter = CpuMeter({"gateway": lambda: own_cpu(gw.pid), **self.cpu_sources()})
        profiler = await self.start_profiler(gw.pid) if profile else None
        meter.start()
        t_post = time.time()
        status, accepted = await self.call("POST", base + "/v1/events", key, {
            "type": "promo", "payload": {}, "topics": [topic], "notification": NOTIFICATION})
        t_202 = time.time()
        timed_out = await self.wait_arrivals(n_ios, n_android, gw)
        cpu = meter.stop()
        profiled = self.stop_profiler(profiler)
        final = await self.stats(distinct=True)
        db = await delivery_summary(dsn, accepted["id"], n_ios + n_android,
                                    timeout_s=60 if gw.poll() is None else 0)
        apns, fcm = final["apns"], final["fcm"]
        last = max((p["last"] for p in (apns, fcm) if p["last"]), default=None)
        first = min((p["first"] for p in (apns, fcm) if p["first"]), default=None)
        total = apns["count"] + fcm["count"]
        result: dict[str, Any] = {
            "topic": topic, "devices": n_ios + n_android, "ios": n_ios, "android": n_android,
            "post_status": status, "post_202_ms": r((t_202 - t_post) * 1000),
            "timed_out": timed_out,
            "first_push_after_post_ms": r((first - t_post) * 1000) if first else None,
            "elapsed_s": r(last - t_post, 3) if last else None,
            "rate": r(total / (last - t_post)) if last else None,
            "received": total,
            "apns": provider_rate(apns, t_post),
            "fcm": provider_rate(fcm, t_post),
            "apns_connections_opened": apns["connections_opened"],
            "fcm_token_requests": fcm["token_requests"],
            "db": db, "cpu": cpu,
        }
        if profiled is not None:
            result["profile"] = profiled
        return result

    async def wait_arrivals(self, n_ios: int, n_android: int,
                            gw: subprocess.Popen[bytes]) -> bool:
        """Poll the fakes until both hold their share; stop on a stall or the deadline."""
        # generous: a stall (no new push for --stall-s) ends the wait sooner
        deadline = time.monotonic() + 120 + (n_ios + n_android) / 40
        last_total, last_change = -1, time.monotonic()
        while True:
            stats = await self.stats()
            total = stats["apns"]["count"] + stats["fcm"]["count"]
            if stats["apns"]["count"] >= n_ios and stats["fcm"]["count"] >= n_android:
                return False
            now = time.monotonic()
            if total != last_total:
                last_total, last_change = total, now
            if now > deadline or now - last_change > self.args.stall_s or gw.poll() is not None:
                print(f"  gave up waiting: {stats['apns']['count']} APNs, "
                      f"{stats['fcm']['count']} FCM", flush=True)
                return True
            await asyncio.sleep(0.1)

    async def start_profiler(self, pid: int) -> tuple[subprocess.Popen[bytes], Path]:
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out = self.work / "gateway-profile.txt"
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
            shutil.copy(out, self.args.profile_keep)
        return summarize_profile(out)

    # --- the ceilings --------------------------------------------------------------------

    async def bare_phase(self, name: str, target: str, n: int,
                         client: str = "httpx") -> dict[str, Any]:
        await self.clear()
        cmd = [sys.executable, SCRIPT, "role-bare", "--info",
               str(self.info_file), "--target", target, "--n", str(n), "--concurrency",
               str(self.args.concurrency), "--client", client, "--apns-connections",
               str(self.args.apns_connections), "--loop", self.args.client_loop]
        meter = CpuMeter(self.cpu_sources())
        meter.start()
        child, whole = await asyncio.to_thread(run_to_end, self.procs, name, cmd,
                                               120 + n / 20, self.child_env)
        cpu = meter.stop({"loadgen (whole process)": whole})
        # process-wide CPU over overlapping windows (both loops at once): the longer one
        cpu["loadgen_sending_cpu_s"] = round(max(part["cpu_s"] for part in child.values()), 2)
        stats = await self.stats(distinct=True)
        out: dict[str, Any] = {"cpu": cpu}
        t_start = min(part["t_start"] for part in child.values())
        for provider, part in child.items():
            got = stats[provider]
            out[provider] = {
                "client": part["client"], "n": part["n"], "statuses": part["statuses"],
                "client_elapsed_s": r(part["elapsed_s"], 3),
                **provider_rate(got, part["t_start"]),
            }
        if target == "apns":
            out["apns"]["connections_opened"] = stats["apns"]["connections_opened"]
        if target == "both":
            last = max(stats[p]["last"] or 0 for p in ("apns", "fcm"))
            total = stats["apns"]["count"] + stats["fcm"]["count"]
            out["rate"] = r(total / (last - t_start)) if last else None
        return out

    async def pyfcm_phase(self, n: int) -> dict[str, Any]:
        await self.clear()
        cmd = [sys.executable, SCRIPT, "role-pyfcm", "--info",
               str(self.info_file), "--n", str(n), "--timeout", str(self.args.pyfcm_timeout)]
        meter = CpuMeter(self.cpu_sources())
        meter.start()
        child, whole = await asyncio.to_thread(run_to_end, self.procs, "pyfcm", cmd,
                                               300 + n / 10, self.child_env)
        cpu = meter.stop({"loadgen (whole process)": whole})
        cpu["loadgen_sending_cpu_s"] = round(child["cpu_s"], 2)
        stats = await self.stats(distinct=True)
        got = stats["fcm"]
        return {"n": n, "ok_answers": child["ok"], "error": child["error"],
                "timeout_s": child["timeout_s"], "client_elapsed_s": r(child["elapsed_s"], 3),
                **provider_rate(got, child["t_start"]), "cpu": cpu}

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
        args = self.args
        out: dict[str, Any] = {}
        print(f"[bare-apns] {half} pushes, {args.concurrency} in flight", flush=True)
        out["bare_apns"] = await self.bare_phase("bare-apns", "apns", half)
        print_phase("bare-apns", out["bare_apns"])
        out["bare_fcm"] = {}
        for client in ("httpx", "aiohttp"):
            # httpx to a plain-HTTP/1.1 server is slow (pool bookkeeping): fewer pushes
            count = min(half, args.fcm_httpx_count) if client == "httpx" else half
            print(f"[bare-fcm/{client}] {count} pushes", flush=True)
            got = await self.bare_phase(f"bare-fcm-{client}", "fcm", count, client)
            out["bare_fcm"][client] = got
            print_phase(f"bare-fcm/{client}", got)
        best = max(("httpx", "aiohttp"), key=lambda c: out["bare_fcm"][c]["fcm"]["rate"] or 0)
        out["bare_fcm"]["best"] = best
        print(f"[bare-both] {half} + {half} pushes at once (FCM client {best})", flush=True)
        out["bare_both"] = await self.bare_phase("bare-both", "both", half, best)
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
                bare = await self.guarded(self.bare_phases(half))
                if "error" in bare:
                    results["bare"] = bare
                else:
                    results.update(bare)
            if "pyfcm" in phases:
                print(f"[pyfcm] {args.pyfcm_count} pushes", flush=True)
                results["pyfcm"] = await self.guarded(self.pyfcm_phase(args.pyfcm_count))
                print_phase("pyfcm", results["pyfcm"])
        results["ratios"] = ratios(results)
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
                            "adapters").splitlines()}


def provider_rate(got: dict[str, Any], t_start: float) -> dict[str, Any]:
    last = got.get("last")
    return {
        "received": got["count"], "distinct_tokens": got.get("distinct_tokens"),
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
    best = dig(results, "bare_fcm", "best")
    bare_apns = dig(results, "bare_apns", "apns", "rate")
    bare_fcm = dig(results, "bare_fcm", best, "fcm", "rate") if best else None
    gw_apns = dig(results, "gateway", "apns", "rate")
    gw_fcm = dig(results, "gateway", "fcm", "rate")
    return {
        "gateway_apns_over_bare_apns": ratio(gw_apns, bare_apns),
        "gateway_fcm_over_bare_fcm": ratio(gw_fcm, bare_fcm),
        "gateway_apns_alone_over_bare_apns": ratio(
            dig(results, "gateway", "ios_alone", "apns", "rate"), bare_apns),
        "gateway_fcm_alone_over_bare_fcm": ratio(
            dig(results, "gateway", "android_alone", "fcm", "rate"), bare_fcm),
        "gateway_fcm_over_pyfcm": ratio(gw_fcm, dig(results, "pyfcm", "rate")),
        "gateway_overall_over_bare_both": ratio(dig(results, "gateway", "rate"),
                                                dig(results, "bare_both", "rate")),
        "gateway_apns_over_bare_both_apns": ratio(gw_apns,
                                                  dig(results, "bare_both", "apns", "rate")),
        "gateway_fcm_over_bare_both_fcm": ratio(gw_fcm, dig(results, "bare_both", "fcm", "rate")),
        "target_vs_bare": TARGET_BARE_RATIO,
    }


# ======================================================================================
# output
# ======================================================================================

def fmt_cpu(cpu: dict[str, Any]) -> str:
    parts = [f"{k} {v:.1f}" for k, v in cpu["cpu_s"].items() if v is not None]
    text = f"wall {cpu['wall_s']:.1f} s; CPU s: " + ", ".join(parts)
    if "loadgen_sending_cpu_s" in cpu:
        text += f" (loadgen while sending: {cpu['loadgen_sending_cpu_s']:.1f})"
    return text


def dig(data: Any, *keys: str) -> Any:
    """data[k1][k2]... or None when any level is missing."""
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def print_phase(name: str, res: dict[str, Any]) -> None:
    if "error" in res and "cpu" not in res:
        print(f"  failed: {res['error'][:1500]}")
        return
    if name.startswith("gateway"):
        print(f"  {res['received']}/{res['devices']} pushes in {res['elapsed_s']} s = "
              f"{res['rate']} /s (202 in {res['post_202_ms']} ms, first push after "
              f"{res['first_push_after_post_ms']} ms)")
        for p in ("apns", "fcm"):
            g = res[p]
            print(f"  {p}: {g['received']} ({g['distinct_tokens']} distinct) in "
                  f"{g['elapsed_s']} s = {g['rate']} /s")
        db = res["db"]
        print(f"  db: {db.get('succeeded')} succeeded, {db.get('failed')} failed, "
              f"{db.get('retried')} retried; fan-out done at {db.get('fanout_done_s')} s, "
              f"all recorded at {db.get('recorded_s')} s after the event")
        if db.get("errors"):
            print(f"  errors: {db['errors']}")
        print(f"  {fmt_cpu(res['cpu'])}")
        prof = res.get("profile")
        if prof and prof.get("samples"):
            print(f"  py-spy ({prof['samples']} busy samples), self time by library:")
            print("    " + ", ".join(f"{k} {v}%" for k, v in prof["self_by_library_pct"]))
            print("  gateway/adapters functions, inclusive:")
            for k, v in prof["gateway_inclusive_pct"][:14]:
                print(f"    {v:5.1f}%  {k}")
        return
    for p in ("apns", "fcm"):
        if p in res:
            g = res[p]
            print(f"  {p}: {g['received']} in {g['elapsed_s']} s = {g['rate']} /s "
                  f"[{g.get('client', '')}] statuses {g.get('statuses', {})}")
    if name == "pyfcm":
        print(f"  pyfcm: {res['received']}/{res['n']} in {res['elapsed_s']} s = {res['rate']} /s"
              f" ({res['ok_answers']} ok answers; error: {res['error']})")
    if "rate" in res and name == "bare-both":
        print(f"  both: {res['rate']} /s overall")
    print(f"  {fmt_cpu(res['cpu'])}")


def print_summary(results: dict[str, Any]) -> None:
    rt = results["ratios"]
    gw = results.get("gateway") or {}
    print("\n=== push summary ===")
    if dig(gw, "rate") is not None:
        print(f"gateway: {gw['rate']} /s overall, APNs {dig(gw, 'apns', 'rate')} /s, "
              f"FCM {dig(gw, 'fcm', 'rate')} /s ({gw['devices']} devices, one event)")
    if "ios_alone" in gw:
        print(f"gateway, one platform per event: APNs {dig(gw, 'ios_alone', 'apns', 'rate')} "
              f"/s, FCM {dig(gw, 'android_alone', 'fcm', 'rate')} /s")
    if "error" in gw:
        print(f"gateway phase: {gw['error'][:300]}")
    best = dig(results, "bare_fcm", "best")
    if best:
        print(f"bare APNs loop {dig(results, 'bare_apns', 'apns', 'rate')} /s; bare FCM loop "
              f"{dig(results, 'bare_fcm', best, 'fcm', 'rate')} /s ({best}); both at once "
              f"{dig(results, 'bare_both', 'rate')} /s")
    if dig(results, "pyfcm", "rate") is not None:
        print(f"pyfcm async path {results['pyfcm']['rate']} /s "
              f"({results['pyfcm']['n']} messages)")
    for key, value in rt.items():
        if key == "target_vs_bare" or value is None:
            continue
        mark = ""
        if "over_bare" in key:
            mark = "  OK" if value >= TARGET_BARE_RATIO else f"  below {TARGET_BARE_RATIO}"
        print(f"  {key:36s} {value:8.3f}{mark}")


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
    prov = sub.add_parser("role-providers", help="(internal) the fake providers")
    prov.add_argument("--folder", required=True)
    prov.add_argument("--loop", default="uvloop", choices=("asyncio", "uvloop"))
    bare = sub.add_parser("role-bare", help="(internal) a bare pooled client loop")
    bare.add_argument("--info", required=True)
    bare.add_argument("--target", choices=("apns", "fcm", "both"), required=True)
    bare.add_argument("--n", type=int, required=True)
    bare.add_argument("--concurrency", type=int, default=128)
    bare.add_argument("--client", choices=("httpx", "aiohttp"), default="httpx")
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
                   help="GATEWAY_PUSH_CONCURRENCY and the bare loops' in-flight bound")
    p.add_argument("--apns-connections", type=int, default=4,
                   help="bare APNs loop's HTTP/2 connection pool (the gateway's APNs adapter "
                        "uses 4)")
    p.add_argument("--pyfcm-count", type=int, default=None,
                   help="messages through pyfcm (default 2,000; 1,000 with --quick)")
    p.add_argument("--fcm-httpx-count", type=int, default=10_000,
                   help="most pushes for the bare FCM loop on httpx (it is slow; the ceiling "
                        "is the faster of httpx and aiohttp)")
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
    p.add_argument("--profile", action="store_true",
                   help="sample the gateway with py-spy during its phase (slows it down)")
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
