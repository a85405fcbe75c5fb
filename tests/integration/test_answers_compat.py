"""The API's answers, byte for byte, as version 0.1.0 gave them (plus, on purpose, the
limits an app object now shows: rate_limit and the max_* quotas; and the options an
endpoint object now shows: rate_limit, headers and filter).

A scripted walk over every resource records each answer's status and raw body; ids,
keys, secrets, timestamps and durations are replaced by stable placeholders (the first
id seen becomes ``<evt:1>``, and so on), and the result must equal the recording made with
0.1.0 (``golden/answers.json``). A redesign that changes a key's order, a number's
spelling, a space after a colon or an error message fails here.

``GATEWAY_WRITE_GOLDEN=1`` rewrites the recording: only for a change of an answer that an
issue asks for, reviewed line by line in the diff.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support import ADMIN_KEY, Api, Receiver, eventually

GOLDEN = Path(__file__).with_name("golden") / "answers.json"

_IDS = re.compile(r"\b(app|ep|evt|dlv|dev)_[0-9a-f]{32}\b")
_REPLACEMENTS = (
    (re.compile(r"\bgk_[A-Za-z0-9_-]+"), "<api-key>"),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]+"), "<secret>"),
    (re.compile(r"\but_[A-Za-z0-9_.=-]+"), "<user-token>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"), "<time>"),
    (re.compile(r'"(duration_ms|id)": \d+'), r'"\1": <n>'),
    (re.compile(r"\d+ bytes"), "<n> bytes"),
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:<port>"),
)


class Recorder:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.ids: dict[str, str] = {}
        self.seen: list[dict[str, Any]] = []

    def normalise(self, text: str) -> str:
        def name(match: re.Match[str]) -> str:
            found = match.group(0)
            if found not in self.ids:
                count = sum(1 for v in self.ids.values() if v.startswith(f"<{match[1]}:"))
                self.ids[found] = f"<{match[1]}:{count + 1}>"
            return self.ids[found]

        text = _IDS.sub(name, text)
        for pattern, replacement in _REPLACEMENTS:
            text = pattern.sub(replacement, text)
        return text

    async def call(self, label: str, method: str, path: str, key: str | None = None,
                   body: Any = None, *, raw: bytes | None = None,
                   headers: dict[str, str] | None = None,
                   params: dict[str, str] | None = None) -> tuple[int, Any]:
        sent = dict(headers or {})
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        kwargs: dict[str, Any] = {"headers": sent, "params": params}
        if raw is not None:
            kwargs["data"] = raw
        elif body is not None:
            kwargs["json"] = body
        async with self.api.session.request(method, path, **kwargs) as resp:
            text = await resp.text()
            status = resp.status
            content_type = resp.headers.get("Content-Type", "")
        self.seen.append({"call": label, "status": status, "content_type": content_type,
                          "body": self.normalise(text)})
        return status, json.loads(text) if text else None


def _rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _ec_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


async def walk(rec: Recorder, receiver: Receiver) -> None:
    await rec.call("healthz", "GET", "/healthz")
    await rec.call("readyz", "GET", "/readyz")
    await rec.call("no key", "GET", "/v1/events")
    await rec.call("unknown key", "GET", "/v1/events", "gk_nope")
    await rec.call("bad scheme", "GET", "/v1/events", headers={"Authorization": "Basic x"})
    _, app = await rec.call("create app", "POST", "/v1/apps", ADMIN_KEY, {"name": "shop"})
    key, app_id = app["api_key"], app["id"]
    await rec.call("create app, app key", "POST", "/v1/apps", key, {"name": "x"})
    await rec.call("create app, invalid", "POST", "/v1/apps", ADMIN_KEY, {"name": ""})
    await rec.call("create app, extra field", "POST", "/v1/apps", ADMIN_KEY,
                   {"name": "a", "extra": 1})
    await rec.call("list apps", "GET", "/v1/apps", ADMIN_KEY)
    await rec.call("list apps, bad limit", "GET", "/v1/apps", ADMIN_KEY, params={"limit": "0"})
    await rec.call("events, operator key", "GET", "/v1/events", ADMIN_KEY)

    _, endpoint = await rec.call("create endpoint", "POST", "/v1/endpoints", key, {
        "url": receiver.url(), "event_types": ["order.*"], "description": "orders"})
    ep = endpoint["id"]
    await rec.call("create endpoint, bad url", "POST", "/v1/endpoints", key,
                   {"url": "ftp://example.com"})
    await rec.call("create endpoint, bad pattern", "POST", "/v1/endpoints", key,
                   {"url": receiver.url(), "event_types": ["a b"]})
    await rec.call("list endpoints", "GET", "/v1/endpoints", key)
    await rec.call("get endpoint", "GET", f"/v1/endpoints/{ep}", key)
    await rec.call("get endpoint, unknown", "GET", "/v1/endpoints/ep_nope", key)
    await rec.call("patch endpoint", "PATCH", f"/v1/endpoints/{ep}", key,
                   {"description": "all orders"})
    await rec.call("endpoint secret", "GET", f"/v1/endpoints/{ep}/secret", key)
    await rec.call("rotate secret", "POST", f"/v1/endpoints/{ep}/secret/rotate", key)
    _, spare = await rec.call("create endpoint 2", "POST", "/v1/endpoints", key,
                              {"url": receiver.url("/other"), "event_types": ["user.*"]})
    await rec.call("disable endpoint 2", "PATCH", f"/v1/endpoints/{spare['id']}", key,
                   {"status": "disabled"})
    await rec.call("enable endpoint 2", "PATCH", f"/v1/endpoints/{spare['id']}", key,
                   {"status": "active"})
    await rec.call("delete endpoint 2", "DELETE", f"/v1/endpoints/{spare['id']}", key)
    await rec.call("delete endpoint 2 again", "DELETE", f"/v1/endpoints/{spare['id']}", key)

    raw = b'{"type": "order.created", "payload": {"z": 1.50, "a": [1e3, -0.0], "u": "\\u00e9"}}'
    _, event = await rec.call("emit", "POST", "/v1/events", key, raw=raw, headers={
        "Content-Type": "application/json", "Idempotency-Key": "k-1"})
    await rec.call("emit, replay", "POST", "/v1/events", key, raw=raw, headers={
        "Content-Type": "application/json", "Idempotency-Key": "k-1"})
    await rec.call("emit, key reused", "POST", "/v1/events", key,
                   {"type": "order.created", "payload": {}}, headers={"Idempotency-Key": "k-1"})
    await rec.call("emit, not json", "POST", "/v1/events", key, raw=b"{nope",
                   headers={"Content-Type": "application/json"})
    await rec.call("emit, not an object", "POST", "/v1/events", key, raw=b"[1]",
                   headers={"Content-Type": "application/json"})
    await rec.call("emit, wrong media type", "POST", "/v1/events", key, raw=b"{}",
                   headers={"Content-Type": "text/plain"})
    await rec.call("emit, bad type", "POST", "/v1/events", key,
                   {"type": "a b", "payload": {}})
    await rec.call("emit, missing payload", "POST", "/v1/events", key, {"type": "a"})
    await rec.call("emit, too large", "POST", "/v1/events", key,
                   {"type": "a", "payload": {"x": "y" * 300_000}})
    await rec.call("emit, notification without targets", "POST", "/v1/events", key,
                   {"type": "a", "payload": {}, "notification": {"title": "t"}})
    await receiver.wait_for(1)

    async def settled() -> bool:
        _, page = await rec.api.call("GET", "/v1/deliveries", key)
        return bool(page["data"]) and page["data"][0]["status"] == "succeeded"

    await eventually(settled)
    await rec.call("list events", "GET", "/v1/events", key)
    await rec.call("list events by type", "GET", "/v1/events", key,
                   params={"type": "order.created"})
    await rec.call("get event", "GET", f"/v1/events/{event['id']}", key)
    _, page = await rec.call("list deliveries", "GET", "/v1/deliveries", key)
    dlv = page["data"][0]["id"]
    await rec.call("list deliveries, bad status", "GET", "/v1/deliveries", key,
                   params={"status": "odd"})
    await rec.call("list deliveries, succeeded", "GET", "/v1/deliveries", key,
                   params={"status": "succeeded", "endpoint_id": ep})
    await rec.call("get delivery", "GET", f"/v1/deliveries/{dlv}", key)
    await rec.call("attempts", "GET", f"/v1/deliveries/{dlv}/attempts", key)
    await rec.call("retry a succeeded delivery", "POST", f"/v1/deliveries/{dlv}/retry", key)
    await rec.call("wrong method", "PUT", "/v1/events", key)
    await rec.call("no route", "GET", "/v1/nothing", key)

    _, token = await rec.call("user token", "POST", "/v1/user-tokens", key,
                              {"user_id": "alice", "ttl_seconds": 600})
    ut = token["token"]
    ios = "ab" * 32
    await rec.call("register device", "POST", "/v1/devices", ut,
                   {"platform": "ios", "token": ios, "topics": ["news"], "locale": "en-GB"})
    await rec.call("register device again", "POST", "/v1/devices", ut,
                   {"platform": "ios", "token": ios, "topics": ["news", "sport"]})
    await rec.call("register device, other user", "POST", "/v1/devices", ut,
                   {"platform": "ios", "token": ios, "user_id": "bob"})
    await rec.call("register device, bad token", "POST", "/v1/devices", key,
                   {"platform": "ios", "token": "xyz", "user_id": "bob"})
    await rec.call("register android", "POST", "/v1/devices", key,
                   {"platform": "android", "token": "fcm-abc", "user_id": "bob"})
    await rec.call("list devices", "GET", "/v1/devices", key)
    await rec.call("list devices, user token", "GET", "/v1/devices", ut)
    await rec.call("get device", "GET", f"/v1/devices/{ios}", key)
    await rec.call("device topics", "PUT", f"/v1/devices/{ios}/topics", ut, {"topics": ["a"]})
    await rec.call("user token on events", "GET", "/v1/events", ut)
    await rec.call("delete device", "DELETE", "/v1/devices/fcm-abc", key)

    account = {"type": "service_account", "project_id": "shop-project",
               "private_key_id": "0123456789abcdef", "private_key": _rsa_pem(),
               "client_email": "push@shop-project.iam.gserviceaccount.com",
               "token_uri": "https://oauth2.googleapis.com/token"}
    await rec.call("put fcm", "PUT", f"/v1/apps/{app_id}/push/fcm", key,
                   {"service_account": account})
    await rec.call("put fcm, not rsa", "PUT", f"/v1/apps/{app_id}/push/fcm", key,
                   {"service_account": {**account, "private_key": _ec_pem()}})
    await rec.call("put apns", "PUT", f"/v1/apps/{app_id}/push/apns", key, {
        "key_p8": _ec_pem(), "key_id": "ABC123DEFG", "team_id": "DEF123GHIJ",
        "topic": "com.example.app", "environment": "sandbox"})
    await rec.call("put apns, bad key id", "PUT", f"/v1/apps/{app_id}/push/apns", key, {
        "key_p8": _ec_pem(), "key_id": "x", "team_id": "DEF123GHIJ", "topic": "t"})
    await rec.call("get push", "GET", f"/v1/apps/{app_id}/push", key)
    await rec.call("get push, operator", "GET", f"/v1/apps/{app_id}/push", ADMIN_KEY)
    await rec.call("get push, other app", "GET", "/v1/apps/app_nope/push", key)
    await rec.call("sandbox off", "GET", "/v1/sandbox/pushes", key)
    await rec.call("push event", "POST", "/v1/events", key, {
        "type": "order.shipped", "payload": {}, "user_ids": ["alice"],
        "notification": {"title": "Shipped", "body": "On its way", "badge": 1}})


async def test_every_answer_is_byte_for_byte_what_0_1_0_answered(
    api: Api, receiver: Receiver
) -> None:
    rec = Recorder(api)
    await walk(rec, receiver)
    if os.environ.get("GATEWAY_WRITE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(rec.seen, indent=1, ensure_ascii=False) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert [c["call"] for c in rec.seen] == [c["call"] for c in golden]
    for got, want in zip(rec.seen, golden, strict=True):
        assert got == want, got["call"]
