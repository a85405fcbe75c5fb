"""End to end through the real ``gateway`` process: crash, restart, two processes,
graceful shutdown. Receivers are real HTTP servers on loopback."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.support import ADMIN_KEY, ROOT, Api, GatewayProcess, Receiver, eventually

pytestmark = pytest.mark.e2e


async def start(procs: list[GatewayProcess], dsn: str, *args: str,
                env: dict[str, str] | None = None) -> GatewayProcess:
    proc = GatewayProcess(dsn, *args, env=env).start()
    procs.append(proc)
    await proc.wait_ready()
    return proc


async def db_fetchval(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def test_walkthrough_emit_and_receive_through_the_real_server(
    dsn: str, procs: list[GatewayProcess], http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    gw = await start(procs, dsn)
    api = Api(http, gw.base)
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url(), event_types=["order.*"])
    event = await api.emit(key, "order.created", {"order": 42})
    await receiver.wait_for(1)
    assert receiver.requests[0].headers["webhook-id"] == event["id"]
    _, shown = await api.call("GET", f"/v1/events/{event['id']}", key)
    await eventually(lambda: _succeeded(api, key, event["id"]))
    assert shown["payload"] == {"order": 42}


async def _succeeded(api: Api, key: str, event_id: str) -> bool:
    _, body = await api.call("GET", f"/v1/events/{event_id}", key)
    return all(d["status"] == "succeeded" for d in body["deliveries"])


async def test_sigkill_mid_delivery_then_restart_delivers_every_event_at_least_once(
    dsn: str, procs: list[GatewayProcess], http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    receiver.delay_s = 0.2
    env = {"GATEWAY_LEASE_S": "3", "GATEWAY_DELIVERY_TIMEOUT_S": "2",
           "GATEWAY_DISPATCH_CONCURRENCY": "8"}
    gw = await start(procs, dsn, env=env)
    api = Api(http, gw.base)
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    sent = [await api.emit(key, payload={"i": i}) for i in range(150)]
    await receiver.wait_for(10)
    gw.kill()
    delivered_before = len(receiver.requests)
    assert delivered_before < 150, "the kill must land mid-delivery"
    gw2 = await start(procs, dsn, env=env)
    wanted = {e["id"] for e in sent}

    async def every_event_arrived() -> bool:
        # At least once: redeliveries of what was in flight at the kill count
        # towards len(requests), so wait on the distinct ids, not on a count.
        return {r.headers["webhook-id"] for r in receiver.requests} >= wanted

    await eventually(every_event_arrived, timeout_s=60)

    async def all_recorded() -> bool:
        left = await db_fetchval(
            dsn, "SELECT count(*) FROM deliveries WHERE status <> 'succeeded'")
        return left == 0

    await eventually(all_recorded, timeout_s=20)
    assert gw2.terminate() == 0


async def test_two_gateways_on_one_database_send_no_delivery_twice(
    dsn: str, procs: list[GatewayProcess], http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    receiver.delay_s = 0.01
    a = await start(procs, dsn)
    b = await start(procs, dsn)
    api_a, api_b = Api(http, a.base), Api(http, b.base)
    key = await api_a.new_app()
    await api_a.new_endpoint(key, receiver.url())
    emits = [(api_a if i % 2 else api_b).emit(key, payload={"i": i}) for i in range(400)]
    sent = await asyncio.gather(*emits)
    await receiver.wait_for(400, timeout_s=60)
    await asyncio.sleep(1.0)  # time for any duplicate to show up
    counts = collections.Counter(r.headers["webhook-id"] for r in receiver.requests)
    assert set(counts) == {e["id"] for e in sent}
    assert max(counts.values()) == 1, [k for k, v in counts.items() if v > 1][:5]


async def test_sigterm_stops_intake_finishes_in_flight_work_and_exits_zero(
    dsn: str, procs: list[GatewayProcess], http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    receiver.delay_s = 1.0
    gw = await start(procs, dsn, env={"GATEWAY_SHUTDOWN_GRACE_S": "5"})
    api = Api(http, gw.base)
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    for i in range(5):
        await api.emit(key, payload={"i": i})
    await receiver.wait_for(5)
    code = await asyncio.to_thread(gw.terminate, 20)
    assert code == 0, gw.log()
    with pytest.raises(aiohttp.ClientConnectionError):
        await api.call("GET", "/healthz")
    done = await db_fetchval(dsn, "SELECT count(*) FROM deliveries WHERE status = 'succeeded'")
    assert done == 5, gw.log()


async def test_sigterm_past_the_grace_releases_unfinished_deliveries(
    dsn: str, procs: list[GatewayProcess], http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    receiver.delay_s = 10.0
    env = {"GATEWAY_SHUTDOWN_GRACE_S": "1", "GATEWAY_DELIVERY_TIMEOUT_S": "30"}
    gw = await start(procs, dsn, env=env)
    api = Api(http, gw.base)
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    await api.emit(key)
    await receiver.wait_for(1)
    code = await asyncio.to_thread(gw.terminate, 20)
    assert code == 0, gw.log()
    row = await db_fetchval(
        dsn, "SELECT row(status, lease_id IS NULL, next_attempt_at <= now())::text "
             "FROM deliveries")
    assert row == "(pending,t,t)"  # back in the queue, due now, for the next dispatcher


async def test_the_grace_counts_from_the_signal_and_nothing_new_is_claimed_once_it_came(
    dsn: str, procs: list[GatewayProcess], http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A request that never finishes (its body sent in part) holds the server's wait for
    requests in flight for the whole grace. Meanwhile the dispatcher claims nothing new (a
    retry falling due then waits in the queue for the next process), and the delivery in
    flight gets what is left of the grace (nothing here), not a grace of its own: it goes
    back to the queue."""
    receiver.delay_s = 30.0
    retrying = await Receiver(answers={"/hook": [(503, {"Retry-After": "3"}), (200, {})]}
                              ).start()
    try:
        env = {"GATEWAY_SHUTDOWN_GRACE_S": "4.5", "GATEWAY_DELIVERY_TIMEOUT_S": "60"}
        gw = await start(procs, dsn, env=env)
        api = Api(http, gw.base)
        key = await api.new_app()
        await api.new_endpoint(key, receiver.url())
        await api.new_endpoint(key, retrying.url())
        await api.emit(key)
        await receiver.wait_for(1)
        await retrying.wait_for(1)
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"POST /v1/events HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n"
                     b"Authorization: Bearer " + key.encode() + b"\r\n\r\n")
        # Sent from within the request's handler: the request is in flight.
        assert await reader.readline() == b"HTTP/1.1 100 Continue\r\n"
        writer.write(b'{"type": ')
        signalled = time.time()
        try:
            code = await asyncio.to_thread(gw.terminate, 30)
        finally:
            writer.close()
        assert code == 0, gw.log()
        waited = [line for line in gw.log().splitlines() if "in-flight deliveries" in line]
        assert len(waited) == 1 and "waiting up to 0.0 s for 1 " in waited[0], gw.log()
        # (On a machine slow enough, the retry fell due before the signal and went.)
        assert all(r.at < signalled for r in retrying.requests), gw.log()
        rows = await db_fetchval(
            dsn, "SELECT array_agg(status::text || (lease_id IS NULL)::text ORDER BY "
                 "status::text) FROM deliveries")
        assert rows in (["pendingtrue", "pendingtrue"], ["pendingtrue", "succeededtrue"])
    finally:
        await retrying.stop()


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


async def test_cli_creates_an_app_whose_key_works(
    dsn: str, procs: list[GatewayProcess], http: aiohttp.ClientSession
) -> None:
    result = await asyncio.to_thread(_cli, "apps", "create", "cli-app", "--json",
                                     env={"DATABASE_URL": dsn})
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert created["name"] == "cli-app" and created["api_key"].startswith("gk_")
    gw = await start(procs, dsn)
    status, _ = await Api(http, gw.base).call("GET", "/v1/endpoints", created["api_key"])
    assert status == 200


async def test_migrate_command_is_idempotent(dsn: str) -> None:
    result = await asyncio.to_thread(_cli, "migrate", env={"DATABASE_URL": dsn})
    assert result.returncode == 0 and "up to date" in result.stdout


def test_help_describes_every_setting() -> None:
    from gateway.config import SETTINGS

    for args in (["--help"], ["serve", "--help"]):
        out = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                             text=True, timeout=30, check=True).stdout
        assert all(s.env in out for s in SETTINGS)
    bad = subprocess.run([sys.executable, "-m", "gateway", "serve"], capture_output=True,
                         text=True, timeout=30, env={**os.environ, "GATEWAY_PORT": "x"})
    assert bad.returncode == 2 and "GATEWAY_PORT" in bad.stderr


def _spawn_embedded(port: int, data: Path, cwd: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        env={**env, "GATEWAY_DATA_DIR": str(data), "GATEWAY_ADMIN_KEY": ADMIN_KEY,
             "GATEWAY_ALLOW_PRIVATE_ENDPOINTS": "true"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd,
    )


def _terminate(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return out.decode(errors="replace")


async def test_serve_without_database_url_runs_on_an_embedded_postgres(
    tmp_path: Path, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    port = GatewayProcess("unused").port
    data = tmp_path / "data"
    proc = _spawn_embedded(port, data, tmp_path)
    try:
        api = Api(http, f"http://127.0.0.1:{port}")

        async def ready() -> bool:
            try:
                return (await api.call("GET", "/readyz"))[0] == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, timeout_s=30, interval_s=0.2)
        key = await api.new_app()
        await api.new_endpoint(key, receiver.url())
        await api.emit(key)
        await receiver.wait_for(1)
        assert (data / "pgdata" / "PG_VERSION").exists()
    finally:
        out = await asyncio.to_thread(_terminate, proc)
    assert proc.returncode == 0, out
    assert not (data / "pgdata" / "postmaster.pid").exists(), "embedded PostgreSQL left running"
