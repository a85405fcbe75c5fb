"""A PostgreSQL restart under load needs no gateway restart and loses nothing.

This test owns its PostgreSQL server (embedded) so it can stop and start it."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway.store import embedded
from tests.support import (
    Api,
    GatewayProcess,
    Receiver,
    create_database,
    embedded_server,
    eventually,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_server() -> Iterator[Any]:
    with embedded_server() as server:
        yield server


def stop_postgres(server: Any) -> None:
    subprocess.run([str(embedded.bin_dir(server) / "pg_ctl"), "-D", str(server.pgdata), "-w",
                    "-m", "fast", "stop"], user=server.system_user, check=True, timeout=30,
                   capture_output=True)


def start_postgres(server: Any) -> None:
    server.ensure_postgres_running()


async def test_postgres_restart_under_load_recovers_by_itself_and_loses_nothing(
    own_server: Any, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    dsn = await create_database(own_server.get_uri(), "restart_test")
    gw = GatewayProcess(dsn, env={"GATEWAY_POLL_INTERVAL_S": "0.5"}).start()
    try:
        await gw.wait_ready()
        api = Api(http, gw.base)
        key = await api.new_app()
        await api.new_endpoint(key, receiver.url())
        accepted: list[str] = []
        refused: list[tuple[int, str]] = []
        stop = asyncio.Event()

        async def produce() -> None:
            i = 0
            while not stop.is_set() and i < 5000:
                i += 1
                status, body = await api.call("POST", "/v1/events", key,
                                              {"type": "load.tick", "payload": {"i": i}})
                if status == 202:
                    accepted.append(body["id"])
                else:
                    refused.append((status, body["error"]["code"]))
                await asyncio.sleep(0.02)

        producer = asyncio.create_task(produce())
        try:
            await _outage_and_recovery(own_server, api, accepted, refused)
        finally:
            stop.set()
            await producer

        await receiver.wait_for(len(accepted), timeout_s=30)
        delivered = {r.headers["webhook-id"] for r in receiver.requests}
        assert set(accepted) <= delivered
        conn = await asyncpg.connect(dsn)
        try:
            stored = {r["id"] for r in await conn.fetch("SELECT id FROM events")}
        finally:
            await conn.close()
        assert stored == set(accepted), "an event refused with 503 was half-written"
        assert gw.proc is not None and gw.proc.poll() is None, "the gateway had to restart"
    finally:
        gw.stop()


async def _outage_and_recovery(server: Any, api: Api, accepted: list[str],
                           refused: list[tuple[int, str]]) -> None:
    await eventually(lambda: _at_least(accepted, 20), timeout_s=10)

    await asyncio.to_thread(stop_postgres, server)
    await eventually(lambda: _readiness(api, 503), timeout_s=10)
    await eventually(lambda: _at_least(refused, 3), timeout_s=10)
    assert set(refused) == {(503, "database_unavailable")}
    await asyncio.sleep(1.0)

    await asyncio.to_thread(start_postgres, server)
    back = time.monotonic()
    count_before = len(accepted)
    await eventually(lambda: _at_least(accepted, count_before + 10), timeout_s=15)
    recovered_s = time.monotonic() - back
    await eventually(lambda: _readiness(api, 200), timeout_s=10)
    assert recovered_s < 10


async def _at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def _readiness(api: Api, status: int) -> bool:
    got, _ = await api.call("GET", "/readyz")
    return got == status
