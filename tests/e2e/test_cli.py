"""The ``gateway`` API commands as an operator scripts them: real subprocesses with
``--json`` against the real gateway process, and ``gateway tail`` printing outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import standardwebhooks
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway import __version__
from gateway.sandbox import pem_private
from tests.push_support import PushCertificates
from tests.support import ADMIN_KEY, ROOT, Api, GatewayProcess, Receiver, eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
async def gateway(dsn: str) -> AsyncIterator[GatewayProcess]:
    proc = GatewayProcess(dsn).start()
    try:
        await proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def cli_env(gw: GatewayProcess, key: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "GATEWAY_URL")}
    env.update(GATEWAY_URL=gw.base, GATEWAY_ADMIN_KEY=ADMIN_KEY)
    if key is not None:
        env["GATEWAY_API_KEY"] = key
    return env


async def cli(env: dict[str, str], *args: str, ok: bool = True) -> tuple[int, Any, str]:
    """Run ``gateway ARGS``; the exit status, stdout parsed as JSON, and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    if ok:
        assert proc.returncode == 0, err.decode()
    return proc.returncode, json.loads(out) if out.strip() else None, err.decode()


@contextlib.contextmanager
def running(proc: asyncio.subprocess.Process) -> Iterator[asyncio.subprocess.Process]:
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()


async def test_cli_scripts_apps_endpoints_events_deliveries_and_devices_as_json(
    gateway: GatewayProcess, receiver: Receiver
) -> None:
    admin = cli_env(gateway)
    _, app, _ = await cli(admin, "apps", "create", "scripted", "--json")
    assert app["name"] == "scripted" and app["api_key"].startswith("gk_")
    _, apps, _ = await cli(admin, "apps", "list", "--json", "--limit", "250")
    assert app["id"] in [a["id"] for a in apps["data"]]

    env = cli_env(gateway, app["api_key"])
    _, endpoint, _ = await cli(env, "endpoints", "create", receiver.url(), "--event-type",
                               "order.*", "--description", "orders", "--json")
    assert endpoint["secret"].startswith("whsec_") and endpoint["event_types"] == ["order.*"]
    (_, listed, _), (_, got, _), (_, updated, _) = await asyncio.gather(
        cli(env, "endpoints", "list", "--json"),
        cli(env, "endpoints", "get", endpoint["id"], "--json"),
        cli(env, "endpoints", "update", endpoint["id"], "--description", "all orders",
            "--json"))
    assert [e["id"] for e in listed["data"]] == [endpoint["id"]]
    assert got["url"] == receiver.url() and updated["description"] == "all orders"
    _, rotated, _ = await cli(env, "endpoints", "rotate-secret", endpoint["id"], "--json")
    assert rotated["secret"] != endpoint["secret"]

    _, event, _ = await cli(env, "events", "emit", "order.created", '{"order_id": 7}',
                            "--idempotency-key", "order-7", "--json")
    await receiver.wait_for(1)

    async def succeeded() -> list[dict[str, Any]]:
        _, page, _ = await cli(env, "deliveries", "list", "--status", "succeeded", "--json")
        found: list[dict[str, Any]] = page["data"]
        return found

    (delivery,) = await eventually(succeeded, timeout_s=20)
    (_, events, _), (_, shown, _), (_, one, _), (_, attempts, _) = await asyncio.gather(
        cli(env, "events", "list", "--type", "order.created", "--json"),
        cli(env, "events", "get", event["id"], "--json"),
        cli(env, "deliveries", "get", delivery["id"], "--json"),
        cli(env, "deliveries", "attempts", delivery["id"], "--json"))
    assert [e["id"] for e in events["data"]] == [event["id"]]
    assert shown["payload"] == {"order_id": 7} and shown["deliveries"][0]["id"] == delivery["id"]
    assert one["event_id"] == event["id"]
    assert [a["status_code"] for a in attempts["data"]] == [200]
    status, _, err = await cli(env, "deliveries", "retry", delivery["id"], "--json", ok=False)
    assert status == 1 and json.loads(err)["error"]["code"] == "delivery_not_retryable"

    _, device, _ = await cli(env, "devices", "register", "android", "tok-1", "--user-id",
                             "alice", "--topic", "news", "--json")
    assert (device["token"], device["user_id"], device["topics"]) == ("tok-1", "alice", ["news"])
    (_, devices, _), (_, one_device, _) = await asyncio.gather(
        cli(env, "devices", "list", "--user-id", "alice", "--json"),
        cli(env, "devices", "get", "tok-1", "--json"))
    assert [d["token"] for d in devices["data"]] == ["tok-1"] and one_device["id"] == device["id"]
    await cli(env, "devices", "delete", "tok-1", "--json")
    status, _, err = await cli(env, "devices", "get", "tok-1", "--json", ok=False)
    assert status == 1 and json.loads(err)["error"]["code"] == "not_found"
    _, deleted, _ = await cli(env, "endpoints", "delete", endpoint["id"], "--json")
    assert deleted == {"id": endpoint["id"], "deleted": True}


async def test_cli_rotates_an_apps_key_and_deletes_the_app(gateway: GatewayProcess) -> None:
    admin = cli_env(gateway)
    _, app, _ = await cli(admin, "apps", "create", "short-lived", "--json")
    _, rotated, _ = await cli(admin, "apps", "rotate-key", app["id"], "--grace-s", "0",
                              "--json")
    assert rotated["api_key"].startswith("gk_") and rotated["previous_key_expires_at"] is None
    # Without the operator key, the app rotates its own key.
    own = {**cli_env(gateway, rotated["api_key"]), "GATEWAY_ADMIN_KEY": ""}
    _, again, _ = await cli(own, "apps", "rotate-key", app["id"], "--json")
    assert again["previous_key_expires_at"] is not None
    status, _, err = await cli(admin, "apps", "rotate-key", app["id"], "--grace-s", "-1",
                               "--json", ok=False)
    assert status == 1 and json.loads(err)["error"]["code"] == "validation_error"
    _, deleted, _ = await cli(admin, "apps", "delete", app["id"], "--json")
    assert deleted == {"id": app["id"], "deleted": True}
    _, apps, _ = await cli(admin, "apps", "list", "--json", "--limit", "250")
    assert app["id"] not in [a["id"] for a in apps["data"]]
    status, _, err = await cli(cli_env(gateway, again["api_key"]), "endpoints", "list",
                               "--json", ok=False)
    assert status == 1 and json.loads(err)["error"]["code"] == "unauthorized"
    status, _, err = await cli(admin, "apps", "delete", app["id"], "--json", ok=False)
    assert status == 1 and json.loads(err)["error"]["code"] == "not_found"


async def test_cli_manages_the_event_type_catalog_and_its_schema_applies(
    gateway: GatewayProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    env = cli_env(gateway, await Api(http, gateway.base).new_app())
    schema_file = tmp_path / "order.json"
    schema = {"type": "object", "properties": {"qty": {"type": "integer", "minimum": 1}}}
    schema_file.write_text(json.dumps(schema))
    _, created, _ = await cli(env, "event-types", "create", "order.created", "--description",
                              "placed", "--schema", str(schema_file), "--json")
    assert (created["name"], created["description"], created["schema"]) == (
        "order.created", "placed", schema)
    (_, listed, _), (_, got, _) = await asyncio.gather(
        cli(env, "event-types", "list", "--json"),
        cli(env, "event-types", "get", "order.created", "--json"))
    assert [t["name"] for t in listed["data"]] == ["order.created"] and got == created
    status, _, err = await cli(env, "events", "emit", "order.created", '{"qty": 0}', "--json",
                               ok=False)
    assert status == 1
    assert json.loads(err)["error"]["details"][0]["path"] == "payload.qty"
    _, updated, _ = await cli(env, "event-types", "update", "order.created", "--no-schema",
                              "--json")
    assert updated["schema"] is None and updated["description"] == "placed"
    await cli(env, "events", "emit", "order.created", '{"qty": 0}', "--json")
    status, _, err = await cli(env, "event-types", "create", "order.created", "--json",
                               ok=False)
    assert status == 1 and json.loads(err)["error"]["code"] == "event_type_exists"
    _, deleted, _ = await cli(env, "event-types", "delete", "order.created", "--json")
    assert deleted == {"name": "order.created", "deleted": True}
    status, _, err = await cli(env, "event-types", "get", "order.created", "--json", ok=False)
    assert status == 1 and json.loads(err)["error"]["code"] == "not_found"


async def test_cli_sets_an_endpoints_rate_limit_headers_and_filter_and_clears_them(
    gateway: GatewayProcess
) -> None:
    _, app, _ = await cli(cli_env(gateway), "apps", "create", "options", "--json")
    env = cli_env(gateway, app["api_key"])
    _, made, _ = await cli(env, "endpoints", "create", "http://127.0.0.1:9/hook",
                           "--rate-limit", "10", "--header", "Authorization=Bearer a=b",
                           "--header", "X-Tenant=acme", "--filter", '{"region": "eu"}',
                           "--json")
    assert (made["rate_limit"], made["headers"], made["filter"]) == (
        10, {"Authorization": "Bearer a=b", "X-Tenant": "acme"}, {"region": "eu"})
    _, changed, _ = await cli(env, "endpoints", "update", made["id"], "--rate-limit", "3",
                              "--header", "X-Only=1", "--json")
    assert (changed["rate_limit"], changed["headers"], changed["filter"]) == (
        3, {"X-Only": "1"}, {"region": "eu"})
    _, cleared, _ = await cli(env, "endpoints", "update", made["id"], "--no-rate-limit",
                              "--no-headers", "--no-filter", "--json")
    assert (cleared["rate_limit"], cleared["headers"], cleared["filter"]) == (None, {}, None)
    status, _, err = await cli(env, "endpoints", "update", made["id"], "--header",
                               "content-type=text/plain", "--json", ok=False)
    assert status == 1 and json.loads(err)["error"]["details"][0]["path"] == \
        "headers.content-type"
    status, _, err = await cli(env, "endpoints", "update", made["id"], "--header", "no-equals",
                               "--json", ok=False)
    assert status != 0 and "NAME=VALUE" in err


async def test_cli_sets_and_shows_push_credentials_and_prints_its_version(
    gateway: GatewayProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    key = await Api(http, gateway.base).new_app()
    _, apps = await Api(http, gateway.base).call("GET", "/v1/apps", ADMIN_KEY)
    app_id = apps["data"][0]["id"]
    account = tmp_path / "service-account.json"
    account.write_text(json.dumps({
        "type": "service_account", "project_id": "shop", "private_key_id": "k-5678",
        "private_key": pem_private(rsa.generate_private_key(65537, 2048)),
        "client_email": "push@shop.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token"}))
    p8 = tmp_path / "AuthKey_ABC123DEFG.p8"
    p8.write_text(pem_private(ec.generate_private_key(ec.SECP256R1())))
    env = cli_env(gateway, key)
    _, fcm, _ = await cli(env, "push", "set-fcm", app_id, "--service-account", str(account),
                          "--json")
    assert (fcm["project_id"], fcm["private_key_id"]) == ("shop", "…5678")
    # Without an app key, push commands send the operator key.
    _, apns, _ = await cli(cli_env(gateway), "push", "set-apns", app_id, "--key-file",
                           str(p8), "--key-id", "ABC123DEFG", "--team-id", "DEF123GHIJ",
                           "--topic", "com.example.shop", "--environment", "sandbox",
                           "--json")
    assert (apns["key_id"], apns["environment"]) == ("ABC123DEFG", "sandbox")
    _, shown, _ = await cli(env, "push", "show", app_id, "--json")
    assert set(shown) == {"fcm", "apns"} and "PRIVATE" not in json.dumps(shown)
    status, _, err = await cli(env, "push", "set-fcm", app_id, "--service-account",
                               str(tmp_path / "missing.json"), "--json", ok=False)
    assert status == 1 and "cannot read" in err
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--version", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and out.decode().strip() == f"gateway {__version__}"


async def test_cli_uploads_an_apns_push_certificate_and_never_prints_its_key(
    gateway: GatewayProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    key = await Api(http, gateway.base).new_app()
    _, apps = await Api(http, gateway.base).call("GET", "/v1/apps", ADMIN_KEY)
    app_id = apps["data"][0]["id"]
    pem = tmp_path / "cert.pem"
    pem.write_text(PushCertificates().issue("com.example.shop"))
    env = cli_env(gateway, key)
    _, shown, _ = await cli(env, "push", "set-apns", app_id, "--certificate", str(pem),
                            "--environment", "sandbox", "--json")
    assert (shown["auth"], shown["topic"]) == ("certificate", "com.example.shop")
    _, listed, _ = await cli(env, "push", "show", app_id, "--json")
    assert listed["apns"]["certificate_sha256"] == shown["certificate_sha256"]
    assert "PRIVATE" not in json.dumps(listed) and "PRIVATE" not in json.dumps(shown)
    status, _, err = await cli(env, "push", "set-apns", app_id, "--certificate", str(pem),
                               "--key-file", str(pem), ok=False)
    assert status == 2 and "not allowed with" in err
    status, _, err = await cli(env, "push", "set-apns", app_id, "--key-file", str(pem),
                               ok=False)
    assert status == 1 and "--key-id" in err


async def test_cli_without_json_prints_for_people_and_needs_a_key(
    gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    key = await Api(http, gateway.base).new_app()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "events", "emit", "order.created",
        env=cli_env(gateway, key), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode().startswith("id ") and "order.created" in out.decode()
    status, _, err_text = await cli(cli_env(gateway), "events", "list", ok=False)
    assert status == 2 and "GATEWAY_API_KEY" in err_text


async def _line(stream: asyncio.StreamReader | None, timeout_s: float) -> str:
    assert stream is not None
    return (await asyncio.wait_for(stream.readline(), timeout_s)).decode()


async def test_gateway_tail_prints_each_outcome_within_seconds(
    gateway: GatewayProcess, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    api = Api(http, gateway.base)
    key = await api.new_app()
    endpoint = await api.new_endpoint(key, receiver.url())
    env = cli_env(gateway, key)
    tails = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "tail", *args, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        for args in (("--json",), ("--event-type", "order.*"))]
    with running(tails[0]) as as_json, running(tails[1]) as for_people:
        for proc in tails:
            while "Ready" not in (line := await _line(proc.stderr, 20)):
                assert line, "gateway tail exited before it was ready"
        await api.emit(key, "user.created")  # filtered out of the second tail
        event = await api.emit(key, "order.created")
        first = json.loads(await _line(as_json.stdout, 5))
        second = json.loads(await _line(as_json.stdout, 5))
        printed = await _line(for_people.stdout, 5)
        for proc in tails:
            proc.terminate()
        assert [await asyncio.wait_for(p.wait(), 10) for p in tails] == [0, 0]
    assert {first["event_type"], second["event_type"]} == {"user.created", "order.created"}
    mine = first if first["event_id"] == event["id"] else second
    assert (mine["endpoint_id"], mine["outcome"], mine["status_code"]) == (
        endpoint["id"], "delivered", 200)
    assert "order.created" in printed and event["id"] in printed
    assert "delivered [200]" in printed and endpoint["id"] in printed


async def test_cli_recovers_and_replays_an_endpoint_and_follows_its_tasks(
    gateway: GatewayProcess, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    receiver.answers["/hook"] = [(500, {})]
    env = cli_env(gateway, await Api(http, gateway.base).new_app())
    _, endpoint, _ = await cli(env, "endpoints", "create", receiver.url(), "--json")
    _, event, _ = await cli(env, "events", "emit", "order.created", "--json")

    async def failed() -> list[dict[str, Any]]:
        _, page, _ = await cli(env, "deliveries", "list", "--status", "failed", "--json")
        found: list[dict[str, Any]] = page["data"]
        return found

    await eventually(failed, timeout_s=30)
    receiver.answers["/hook"] = [(200, {})]
    _, recovered, _ = await cli(env, "endpoints", "recover", endpoint["id"], "--since", "1h",
                                "--wait", "--json")
    assert recovered["status"] == "done"
    assert recovered["counts"] == {"scanned": 1, "requeued": 1}

    _, late, _ = await cli(env, "endpoints", "create", receiver.url("/late"), "--json")
    _, started, _ = await cli(env, "endpoints", "replay", late["id"], "--since", "1h",
                              "--until", "2100-01-01T00:00:00Z", "--json")
    assert (started["kind"], started["status"]) == ("endpoint.replay", "running")
    _, shown, _ = await cli(env, "tasks", "show", started["id"], "--wait", "--json")
    assert shown["status"] == "done" and shown["counts"] == {"scanned": 1, "created": 1}
    _, listed, _ = await cli(env, "tasks", "list", "--json")
    assert [t["id"] for t in listed["data"]] == [started["id"], recovered["id"]]
    await receiver.wait_for(1, "/late")
    assert receiver.on("/late")[0].headers["webhook-id"] == event["id"]
    status, _, err = await cli(env, "endpoints", "replay", late["id"], "--since", "tomorrow",
                               "--json", ok=False)
    assert status == 1 and json.loads(err)["error"]["details"][0]["path"] == "since"


async def test_cli_sets_shows_and_deletes_the_operational_webhook_which_is_told_for_real(
    gateway: GatewayProcess, receiver: Receiver
) -> None:
    _, app, _ = await cli(cli_env(gateway), "apps", "create", "told", "--json")
    env = cli_env(gateway, app["api_key"])
    _, made, _ = await cli(env, "ops-webhook", "set", receiver.url("/ops"),
                           "--event-type", "endpoint.*", "--json")
    assert made["secret"].startswith("whsec_") and made["event_types"] == ["endpoint.*"]
    _, shown, _ = await cli(env, "ops-webhook", "show", "--json")
    assert shown["url"] == receiver.url("/ops") and "secret" not in shown
    _, endpoint, _ = await cli(env, "endpoints", "create", receiver.url("/hook"), "--json")
    await cli(env, "endpoints", "update", endpoint["id"], "--disable", "--json")
    await receiver.wait_for(1, "/ops")
    request = receiver.on("/ops")[0]
    headers = {k.lower(): v for k, v in request.headers.items()}
    told = standardwebhooks.Webhook(made["secret"]).verify(request.body.decode(), headers)
    assert told["type"] == "endpoint.disabled"
    assert told["data"] == {"endpoint_id": endpoint["id"], "reason": "manual"}
    await cli(env, "ops-webhook", "delete", "--json")
    status, _, err = await cli(env, "ops-webhook", "show", ok=False)
    assert status == 1 and "404 not_found" in err
