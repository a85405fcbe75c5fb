"""Secrets at rest from the command line, as an operator runs it: a new key, the warning
when none is set, and resealing every stored secret under the newest key."""

from __future__ import annotations

import asyncio
import os
import sys

import aiohttp
import asyncpg
import pytest

from gateway import crypto
from tests.support import ROOT, Api, GatewayProcess

pytestmark = pytest.mark.e2e


async def gateway_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, env={**os.environ, **env}, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_gateway_without_a_secret_key_warns_and_reseal_seals_what_it_stored(
        dsn: str, procs: list[GatewayProcess], http: aiohttp.ClientSession) -> None:
    status, printed, _ = await gateway_cli("secrets", "new-key", env={})
    key = printed.strip()
    assert status == 0 and crypto.Sealer(key).enabled
    status, _, err = await gateway_cli("secrets", "reseal", env={"DATABASE_URL": dsn})
    assert status == 2 and "GATEWAY_SECRET_KEY" in err

    plain = GatewayProcess(dsn).start()
    procs.append(plain)
    await plain.wait_ready()
    assert "GATEWAY_SECRET_KEY is not set" in plain.log()
    api = Api(http, plain.base)
    app_key = await api.new_app()
    endpoint = await api.new_endpoint(app_key, "http://127.0.0.1:9/hook")
    plain.stop()

    status, printed, err = await gateway_cli(
        "secrets", "reseal", env={"DATABASE_URL": dsn, "GATEWAY_SECRET_KEY": key})
    assert status == 0, err
    assert "1 endpoints" in printed and "1 apps" in printed
    conn = await asyncpg.connect(dsn)
    try:
        stored = await conn.fetchval("SELECT secret FROM endpoints WHERE id = $1",
                                     endpoint["id"])
    finally:
        await conn.close()
    assert stored.startswith(crypto.PREFIX) and endpoint["secret"] not in stored

    sealed = GatewayProcess(dsn, env={"GATEWAY_SECRET_KEY": key}).start()
    procs.append(sealed)
    await sealed.wait_ready()
    assert "GATEWAY_SECRET_KEY is not set" not in sealed.log()
    status, shown = await Api(http, sealed.base).call(
        "GET", f"/v1/endpoints/{endpoint['id']}/secret", app_key)
    assert status == 200 and shown["secret"] == endpoint["secret"]
    status, _, err = await gateway_cli("secrets", "reseal", env={
        "DATABASE_URL": dsn, "GATEWAY_SECRET_KEY": "not-a-key"})
    assert status == 1 and "32 bytes" in err
