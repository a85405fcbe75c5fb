"""Fuzz the live server from its own OpenAPI document with schemathesis: at least 1,000
generated requests over every route, once with an app key and once with a user token.
No answer may be a 5xx, and every answer must conform to the document."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.push_support import android_token
from tests.support import Api, GatewayProcess, Receiver

pytestmark = pytest.mark.e2e

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance")


@pytest.fixture
async def gateway(dsn: str) -> AsyncIterator[GatewayProcess]:
    gw = GatewayProcess(dsn, "serve", "--sandbox").start()
    try:
        await gw.wait_ready()
        yield gw
    finally:
        gw.stop()


def schemathesis(base: str, key: str, cwd: Path) -> tuple[int, str]:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "st"), "run", f"{base}/openapi.json",
         "-H", f"Authorization: Bearer {key}", "--max-examples", "50", "--seed", "7",
         "--phases", "examples,fuzzing,stateful",
         "--checks", CHECKS, "--workers", "2", "--request-timeout", "10"],
        capture_output=True, text=True, timeout=600, cwd=cwd,
    )
    return result.returncode, result.stdout + result.stderr


async def test_schemathesis_finds_no_server_error_and_no_nonconforming_answer(
    gateway: GatewayProcess, receiver: Receiver, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as http:
        api = Api(http, gateway.base)
        key = await api.new_app()
        await api.new_endpoint(key, receiver.url())
        await api.emit(key)
        status, minted = await api.call("POST", "/v1/user-tokens", key, {"user_id": "u1"})
        assert status == 201
        user = minted["token"]
        await api.call("POST", "/v1/devices", user,
                       {"platform": "android", "token": android_token(1)})
    for credential in (key, user):
        code, out = await asyncio.to_thread(schemathesis, gateway.base, credential, tmp_path)
        generated = re.search(r"(\d+) generated", out)
        assert generated is not None, out[-3000:]
        assert int(generated[1]) >= 1000, out[-3000:]
        assert code == 0, out[-6000:]
    assert "unhandled error" not in gateway.log()
