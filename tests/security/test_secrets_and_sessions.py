"""Secrets at rest are sealed (a database dump holds none), keys rotate without losing a
delivery, dashboard sessions end on the server, and costly key checks never stall the
event loop."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest
import standardwebhooks
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway import credentials, crypto
from gateway.app import make_store
from gateway.config import Settings
from gateway.dashboard import SESSION_COOKIE
from gateway.sandbox import pem_private
from gateway.store.database import Database
from tests.push_support import TOPIC, Providers, ios_token, start_providers
from tests.security.conftest import Launch, new_app
from tests.support import Receiver, eventually

KEY_1 = crypto.new_key()
KEY_2 = crypto.new_key()


async def dump(dsn: str) -> str:
    """Every row of every table, as text: what a stolen backup would show."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = [r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
        rows = [row for t in tables for row in await conn.fetch(f'SELECT * FROM "{t}"')]
        return "\n".join(str(dict(row)) for row in rows)
    finally:
        await conn.close()


async def test_a_database_dump_holds_no_usable_secret(launch: Launch, dsn: str,
                                                      tmp_path: Path,
                                                      receiver: Receiver) -> None:
    providers = await start_providers(tmp_path)
    try:
        api = await launch(secret_key=KEY_1)
        key, app_id = await new_app(api)
        endpoint = await api.new_endpoint(key, receiver.url())
        status, rotated = await api.call(
            "POST", f"/v1/endpoints/{endpoint['id']}/secret/rotate", key)
        assert status == 200
        assert (await api.call("PUT", f"/v1/apps/{app_id}/push/fcm", key,
                               {"service_account": providers.service_account}))[0] == 200
        assert (await api.call("PUT", f"/v1/apps/{app_id}/push/apns", key,
                               providers.apns_credentials))[0] == 200
        status, user_token = await api.call("POST", "/v1/user-tokens", key, {"user_id": "u"})
        assert status == 201
        text = await dump(dsn)
        for secret in (endpoint["secret"], rotated["secret"],
                       providers.service_account["private_key"],
                       providers.apns_credentials["key_p8"]):
            assert secret not in text
            for line in secret.splitlines()[1:-1]:  # not even a line of a PEM
                assert line not in text
        assert "BEGIN PRIVATE KEY" not in text and "whsec_" not in text
        # Everything still works: deliveries are signed with both secrets, user tokens check.
        event = await api.emit(key)
        await receiver.wait_for(1)
        got = receiver.requests[0]
        headers = {k.lower(): v for k, v in got.headers.items()}
        for secret in (endpoint["secret"], rotated["secret"]):
            verified = standardwebhooks.Webhook(secret).verify(got.body.decode(), headers)
            assert verified["id"] == event["id"]
        status, _ = await api.call("GET", "/v1/devices", user_token["token"])
        assert status == 200
        status, shown = await api.call("GET", f"/v1/endpoints/{endpoint['id']}/secret", key)
        assert shown["secret"] == rotated["secret"]
    finally:
        await providers.stop()


async def test_rotating_the_key_reseals_everything_and_old_rows_keep_working(
        launch: Launch, dsn: str, settings: Settings, receiver: Receiver) -> None:
    # Written without a key at first (plain text), then sealed, then rotated.
    api = await launch(secret_key=None)
    key, _ = await new_app(api)
    endpoint = await api.new_endpoint(key, receiver.url())
    assert endpoint["secret"] in await dump(dsn)
    for keys in (KEY_1, f"{KEY_2},{KEY_1}"):
        db = await Database.connect(dsn, max_size=2)
        try:
            changed = await make_store(db, replace(settings, secret_key=keys)).reseal()
        finally:
            await db.close()
        assert changed["endpoints"] == 1 and changed["apps"] == 1
        text = await dump(dsn)
        assert endpoint["secret"] not in text
        newest = crypto.Sealer(keys.split(",")[0])
        assert _match(rf"{re.escape(crypto.PREFIX)}(\w+):", text) == \
            newest.seal("x", "y").split(":")[2]
    await api.session.close()  # that gateway knew no key; this one knows only the newest
    api = await launch(secret_key=KEY_2)  # the old key is gone: nothing needs it now
    await api.emit(key)
    await receiver.wait_for(1)
    status, shown = await api.call("GET", f"/v1/endpoints/{endpoint['id']}/secret", key)
    assert status == 200 and shown["secret"] == endpoint["secret"]


async def test_a_sealed_secret_moved_to_another_row_does_not_open(launch: Launch,
                                                                  dsn: str) -> None:
    api = await launch(secret_key=KEY_1, dispatcher=False)
    key, _ = await new_app(api)
    mine = await api.new_endpoint(key, "http://127.0.0.1:9/a")
    other = await api.new_endpoint(key, "http://127.0.0.1:9/b")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE endpoints SET secret = (SELECT secret FROM endpoints "
                           "WHERE id = $1) WHERE id = $2", mine["id"], other["id"])
    finally:
        await conn.close()
    status, body = await api.call("GET", f"/v1/endpoints/{other['id']}/secret", key)
    assert status == 500 and body["error"]["code"] == "secret_unreadable"


async def test_signing_out_ends_the_session_on_the_server(launch: Launch) -> None:
    api = await launch(dispatcher=False)
    await new_app(api)
    async with api.session.post("/dashboard/login", data={"key": "test-admin-key"},
                                allow_redirects=False) as resp:
        assert resp.status == 303
        cookie_header = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie_header and "SameSite=Strict" in cookie_header
    assert "Secure" not in cookie_header  # plain HTTP here
    copied = _match(rf"{SESSION_COOKIE}=([^;]+)", cookie_header)
    api.session.session.cookie_jar.clear()
    headers = {"Cookie": f"{SESSION_COOKIE}={copied}"}
    async with api.session.get("/dashboard/apps", headers=headers,
                               allow_redirects=False) as resp:
        assert resp.status == 200
        csrf = _match(r'name="csrf" value="([^"]+)"', await resp.text())
    async with api.session.post("/dashboard/logout", data={"csrf": csrf}, headers=headers,
                                allow_redirects=False) as resp:
        assert resp.status == 303
    api.session.session.cookie_jar.clear()
    async with api.session.get("/dashboard/apps", headers=headers,
                               allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/dashboard/login"


async def test_the_session_cookie_is_secure_behind_an_https_proxy(launch: Launch) -> None:
    api = await launch(dispatcher=False)
    async with api.session.post("/dashboard/login", data={"key": "test-admin-key"},
                                headers={"X-Forwarded-Proto": "https"},
                                allow_redirects=False) as resp:
        assert resp.status == 303
        assert "Secure" in resp.headers["Set-Cookie"]


def _rsa_pem(bits: int) -> str:
    key = rsa.generate_private_key(65537, bits)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


async def test_an_oversized_rsa_key_is_refused_before_it_is_parsed(
        launch: Launch, monkeypatch: pytest.MonkeyPatch) -> None:
    api = await launch(dispatcher=False)
    key, app_id = await new_app(api)
    parsed: list[str] = []
    real = credentials._load_key

    async def spy(pem: str) -> object:
        parsed.append(pem)
        return await real(pem)

    monkeypatch.setattr(credentials, "_load_key", spy)
    big = _LONG_PEM
    account = {"type": "service_account", "project_id": "p", "private_key": big,
               "client_email": "a@p.iam.gserviceaccount.com"}
    status, body = await api.call("PUT", f"/v1/apps/{app_id}/push/fcm", key,
                                  {"service_account": account})
    assert status == 422 and "4096" in body["error"]["message"]
    assert parsed == []
    status, body = await api.call("PUT", f"/v1/apps/{app_id}/push/fcm", key, {
        "service_account": {**account, "private_key": _rsa_pem(1024)}})
    assert status == 422 and "2048 to 4096" in body["error"]["message"]


async def test_key_checks_run_off_the_event_loop_so_health_answers_meanwhile(
        launch: Launch, monkeypatch: pytest.MonkeyPatch) -> None:
    """While an upload's key is being checked (slowed down here to a second), the
    process goes on answering: /healthz comes back before the upload does."""
    api = await launch(dispatcher=False)
    key, app_id = await new_app(api)
    real_load = serialization.load_pem_private_key

    def slow_load(data: bytes, password: bytes | None) -> object:
        time.sleep(1.0)  # in the worker thread: it must not hold the loop
        return real_load(data, password)

    monkeypatch.setattr(serialization, "load_pem_private_key", slow_load)
    account = {"type": "service_account", "project_id": "p",
               "private_key": pem_private(rsa.generate_private_key(65537, 2048)),
               "client_email": "a@p.iam.gserviceaccount.com"}
    order: list[str] = []

    async def upload() -> None:
        status, _ = await api.call("PUT", f"/v1/apps/{app_id}/push/fcm", key,
                                   {"service_account": account})
        assert status == 200
        order.append("upload")

    async def health() -> None:
        await asyncio.sleep(0.2)
        status, _ = await api.call("GET", "/healthz")
        assert status == 200
        order.append("healthz")

    await asyncio.gather(upload(), health())
    assert order == ["healthz", "upload"]


#: As long as an 8192-bit RSA key's PEM (~6.4k characters). It is never parsed, which is
#: the point; a real one would take seconds to generate.
_LONG_PEM = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(
    ["MIIJQwIBADANBgkqhkiG9w0BAQEFAASCCS0wggkpAgEAAoICAQDK"] * 124) + \
    "\n-----END PRIVATE KEY-----\n"


def _match(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    assert found is not None, pattern
    return found[1]


async def test_a_secret_that_does_not_open_holds_up_only_its_own_delivery(
        launch: Launch, dsn: str, receiver: Receiver) -> None:
    api = await launch(secret_key=KEY_1)
    key, _ = await new_app(api)
    broken = await api.new_endpoint(key, receiver.url("/broken"))
    await api.new_endpoint(key, receiver.url("/fine"))
    conn = await asyncpg.connect(dsn)
    try:  # sealed under a key this gateway does not know
        await conn.execute("UPDATE endpoints SET secret = $1 WHERE id = $2",
                           crypto.Sealer(KEY_2).seal("whsec_x", f"endpoint:{broken['id']}"),
                           broken["id"])
    finally:
        await conn.close()
    for _ in range(3):
        await api.emit(key)
    await receiver.wait_for(3, path="/fine")
    assert receiver.on("/broken") == []

    async def told() -> bool:
        _, page = await api.call("GET", "/v1/deliveries", key,
                                 params={"endpoint_id": broken["id"]})
        return any("GATEWAY_SECRET_KEY" in (d["last_error"] or "") for d in page["data"])

    await eventually(told, timeout_s=10)


async def test_a_push_certificates_private_key_is_sealed_in_the_database(
        launch: Launch, dsn: str, tmp_path: Path) -> None:
    providers = await start_providers(tmp_path)
    try:
        api = await launch(secret_key=KEY_1, apns_url=providers.apns.base_url,
                           provider_ca_file=str(providers.ca_file))
        key, app_id = await new_app(api)
        pem = providers.push_certificates.issue(TOPIC)
        status, shown = await api.call("PUT", f"/v1/apps/{app_id}/push/apns", key, {
            "certificate_pem": pem, "environment": "sandbox"})
        assert status == 200, shown
        text = await dump(dsn)
        private_key = pem.split("-----BEGIN PRIVATE KEY-----")[1].split("-----END")[0]
        assert all(line not in text for line in private_key.split())
        assert "PRIVATE KEY" not in text
        assert shown["certificate_sha256"] in text  # what may be shown stays readable
        # The dispatcher opens it where it is used: the push goes out with it.
        status, _ = await api.call("POST", "/v1/devices", key, {
            "platform": "ios", "token": ios_token(1), "user_id": "u"})
        assert status == 201
        status, _ = await api.call("POST", "/v1/events", key, {
            "type": "t", "payload": {}, "user_ids": ["u"], "notification": {"title": "hi"}})
        assert status == 202
        await eventually(lambda: _received(providers))
        assert providers.apns.received[0].sender == shown["certificate_sha256"]
    finally:
        await providers.stop()


async def _received(providers: Providers) -> bool:
    return bool(providers.apns.received)
