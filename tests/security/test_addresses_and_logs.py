"""A tenant's endpoint URL cannot reach the gateway's own network in any IPv6 spelling,
at creation or at delivery; and nothing a client sends can forge a line of the log."""

from __future__ import annotations

import io
import logging

import asyncpg
import pytest

from gateway import logs
from tests.security.conftest import Launch, new_app
from tests.support import ADMIN_KEY, Receiver, eventually


@pytest.mark.parametrize("host", [
    "[::ffff:127.0.0.1]", "[::127.0.0.1]", "[::ffff:0:127.0.0.1]", "[2002:7f00:1::]",
    "[64:ff9b::127.0.0.1]", "[::ffff:169.254.169.254]", "[64:ff9b::a9fe:a9fe]",
    "[2002:a00:1::1]", "[::ffff:a00:1]",
])
async def test_ipv6_spellings_of_refused_addresses_are_refused_at_creation(
        launch: Launch, host: str) -> None:
    api = await launch(dispatcher=False, allow_private_endpoints=False)
    key, _ = await new_app(api)
    status, body = await api.call("POST", "/v1/endpoints", key,
                                  {"url": f"http://{host}:8080/hook"})
    assert status == 422 and body["error"]["code"] == "endpoint_url_forbidden"


async def test_an_ipv6_spelling_is_refused_at_delivery_too(
        launch: Launch, dsn: str, receiver: Receiver) -> None:
    """An endpoint whose URL became an IPv6 spelling of loopback later (here by hand in
    the database) is refused when the delivery is attempted; the receiver never hears."""
    api = await launch(allow_private_endpoints=False)
    key, _ = await new_app(api)
    endpoint = await api.new_endpoint(key, "https://not-yet.invalid/hook")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE endpoints SET url = $1 WHERE id = $2",
                           f"http://[::ffff:127.0.0.1]:{receiver.port}/hook", endpoint["id"])
    finally:
        await conn.close()
    await api.emit(key)

    async def refused() -> str | None:
        _, page = await api.call("GET", "/v1/deliveries", key)
        error = page["data"][0]["last_error"] if page["data"] else None
        return str(error) if error else None

    error = await eventually(refused, timeout_s=10)
    assert error.startswith("endpoint_url_forbidden")
    assert receiver.requests == []


async def test_nothing_a_client_sends_can_forge_a_log_line(launch: Launch) -> None:
    buffer = io.StringIO()
    handler = logs.configure("text", "INFO", stream=buffer)
    try:
        api = await launch(dispatcher=False)
        key, _ = await new_app(api)
        forged = "x\n2026-01-01 00:00:00,000 ERROR gateway: forged\r\u2028line"
        for path in (f"/v1/endpoints/{forged}", f"/v1/deliveries/{forged}/attempts"):
            status, _ = await api.call("GET", path.replace("\n", "%0A").replace(
                "\r", "%0D").replace("\u2028", "%E2%80%A8"), key)
            assert status == 404
        status, _ = await api.call("POST", "/v1/endpoints", key,
                                   {"url": "http://127.0.0.1:9/", "description": forged})
        assert status == 201
    finally:
        logging.getLogger().removeHandler(handler)
        logs._handler = None
    text = buffer.getvalue()
    assert "forged" in text  # it was logged...
    for line in text.splitlines():
        assert not line.startswith("2026-01-01"), line  # ...but never as a line of its own
    assert "\\n2026-01-01" in text


async def test_keys_in_a_refused_header_never_reach_the_text_log(launch: Launch) -> None:
    buffer = io.StringIO()
    handler = logs.configure("text", "INFO", stream=buffer, secrets=[ADMIN_KEY])
    try:
        api = await launch(dispatcher=False)
        key, _ = await new_app(api)
        for secret in (ADMIN_KEY, key):
            # Too long a header line: aiohttp refuses it and logs the start of it.
            async with api.session.get("/v1/events", headers={
                    "Authorization": f"Bearer {secret} " + "a" * 9000}) as resp:
                assert resp.status == 400
    finally:
        logging.getLogger().removeHandler(handler)
        logs._handler = None
    text = buffer.getvalue()
    assert "LineTooLong" in text or "Got more than" in text, text[-2000:]
    assert ADMIN_KEY not in text and key not in text


async def test_a_path_parameter_cannot_pose_as_another_field_of_the_line(
        launch: Launch) -> None:
    buffer = io.StringIO()
    handler = logs.configure("text", "INFO", stream=buffer)
    try:
        api = await launch(dispatcher=False)
        status, _ = await api.call(
            "GET", "/v1/events/evt_x%20status=200%20app=app_VICTIM", "gk_wrong")
        assert status == 401
    finally:
        logging.getLogger().removeHandler(handler)
        logs._handler = None
    (line,) = [ln for ln in buffer.getvalue().splitlines() if "app_VICTIM" in ln]
    assert 'event="evt_x status=200 app=app_VICTIM"' in line
    assert " app=app_VICTIM" not in line.replace('"evt_x status=200 app=app_VICTIM"', "")
