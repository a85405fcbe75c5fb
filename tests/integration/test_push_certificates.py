"""APNs certificate auth end to end in process: a push certificate (and its key) uploaded
over the API, checked on upload, and used as the TLS client certificate of real TLS +
HTTP/2 connections to the fake APNs, which verifies it against the CA it trusts."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from adapters.apns import APNsAdapter
from adapters.base import DeliveryJob, DeviceTarget, EventView, Outcome, Verdict
from gateway.app import create_app
from gateway.config import Settings
from tests.push_support import (
    KEY_ID,
    TOPIC,
    Providers,
    PushCertificates,
    ios_token,
    start_providers,
)
from tests.support import ADMIN_KEY, Api, eventually


@dataclass
class App:
    api: Api
    key: str
    id: str
    providers: Providers

    async def put_apns(self, body: dict[str, Any]) -> tuple[int, Any]:
        return await self.api.call("PUT", f"/v1/apps/{self.id}/push/apns", self.key, body)

    async def use_certificate(self, pem: str, **fields: Any) -> dict[str, Any]:
        status, shown = await self.put_apns({"certificate_pem": pem, "environment": "sandbox",
                                             **fields})
        assert status == 200, shown
        result: dict[str, Any] = shown
        return result

    async def push(self, token: str, title: str = "Shipped") -> dict[str, Any]:
        """Register ``token`` and push to it; its delivery once it was attempted."""
        status, _ = await self.api.call("POST", "/v1/devices", self.key, {
            "platform": "ios", "token": token, "user_id": f"u-{token[-8:]}"})
        assert status in (200, 201)
        status, event = await self.api.call("POST", "/v1/events", self.key, {
            "type": "order.shipped", "payload": {}, "user_ids": [f"u-{token[-8:]}"],
            "notification": {"title": title}})
        assert status == 202, event

        async def attempted() -> dict[str, Any] | None:
            _, found = await self.api.call("GET", f"/v1/events/{event['id']}", self.key)
            done = [d for d in found["deliveries"]
                    if d["attempt_count"] and d["status"] != "pending"]
            return done[0] if done else None

        delivery: dict[str, Any] = await eventually(attempted, timeout_s=15)
        return delivery


@pytest.fixture
async def app(aiohttp_client: Any, dsn: str, settings: Settings, tmp_path: Path
              ) -> AsyncIterator[App]:
    providers = await start_providers(tmp_path)
    client: TestClient[aiohttp.web.Request, aiohttp.web.Application] = await aiohttp_client(
        create_app(providers.settings(settings), dsn))
    api = Api(client)
    status, created = await api.call("POST", "/v1/apps", ADMIN_KEY, {"name": "shop"})
    assert status == 201
    try:
        yield App(api, created["api_key"], created["id"], providers)
    finally:
        await providers.stop()


async def test_a_push_certificate_authenticates_the_apps_pushes_without_a_provider_token(
    app: App
) -> None:
    certificates = app.providers.push_certificates
    app.providers.apns.trust_client_certificates(certificates.ca_pem, required=True)
    pem = certificates.issue(TOPIC)
    shown = await app.use_certificate(pem)  # no topic: the certificate's bundle id
    assert shown["auth"] == "certificate" and shown["topic"] == TOPIC
    assert shown["certificate_subject_uid"] == TOPIC
    assert datetime.fromisoformat(shown["certificate_expires_at"]) > datetime.now(UTC)
    delivery = await app.push(ios_token(1))
    assert (delivery["status"], delivery["attempt_count"]) == ("succeeded", 1)
    (received,) = app.providers.apns.received
    assert received.token == ios_token(1)
    assert received.headers["apns-topic"] == TOPIC
    assert "authorization" not in received.headers
    assert received.sender == shown["certificate_sha256"]
    _, listed = await app.api.call("GET", f"/v1/apps/{app.id}/push", app.key)
    assert listed["apns"] == {**shown, "updated_at": listed["apns"]["updated_at"]}


async def test_credential_answers_never_contain_the_certificates_private_key(app: App) -> None:
    pem = app.providers.push_certificates.issue(TOPIC)
    key_lines = pem.split("-----BEGIN PRIVATE KEY-----")[1].splitlines()[1:-1]
    _, put_answer = await app.put_apns({"certificate_pem": pem, "topic": TOPIC})
    _, get_answer = await app.api.call("GET", f"/v1/apps/{app.id}/push", ADMIN_KEY)
    for answer in (put_answer, get_answer):
        text = json.dumps(answer)
        assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text
        assert not any(line in text for line in key_lines)
    assert put_answer["certificate_pem"] == "…(certificate and private key, hidden)"


async def test_a_certificate_the_providers_ca_did_not_sign_fails_once_without_retries(
    app: App
) -> None:
    stranger = PushCertificates("Somebody Else's CA")
    await app.use_certificate(stranger.issue(TOPIC))
    first = await app.push(ios_token(1))
    second = await app.push(ios_token(2))
    for delivery in (first, second):
        assert (delivery["status"], delivery["attempt_count"]) == ("failed", 1)
        assert delivery["last_error"].startswith("certificate_refused:")
        assert "unknown ca" in delivery["last_error"]
    assert app.providers.apns.received == []
    # The second delivery was failed without another handshake for APNs to refuse.
    assert app.providers.apns.handshakes_refused == 1


async def test_a_certificate_for_the_other_environment_fails_with_apples_reason_once(
    app: App
) -> None:
    app.providers.apns.environment = "production"  # the fake plays Apple's production
    pem = app.providers.push_certificates.issue(TOPIC, environments=["sandbox"])
    await app.use_certificate(pem, environment="sandbox")
    delivery = await app.push(ios_token(1))
    assert (delivery["status"], delivery["attempt_count"]) == ("failed", 1)
    assert delivery["last_error"] == "BadCertificateEnvironment"
    assert app.providers.apns.received == []


async def test_replacing_certificate_and_token_credentials_takes_effect_on_the_next_send(
    app: App
) -> None:
    certificates = app.providers.push_certificates
    first = await app.use_certificate(certificates.issue(TOPIC))
    assert (await app.push(ios_token(1)))["status"] == "succeeded"
    status, _ = await app.put_apns(app.providers.apns_credentials)
    assert status == 200
    assert (await app.push(ios_token(2)))["status"] == "succeeded"
    second = await app.use_certificate(certificates.issue(TOPIC))
    assert (await app.push(ios_token(3)))["status"] == "succeeded"
    senders = [(p.token, p.sender, "authorization" in p.headers)
               for p in app.providers.apns.received]
    assert senders == [(ios_token(1), first["certificate_sha256"], False),
                       (ios_token(2), KEY_ID, True),
                       (ios_token(3), second["certificate_sha256"], False)]
    # The replaced credentials' connections close: only the newest one stays open.
    await eventually(lambda: _true(app.providers.apns.open_connections == 1))


async def test_a_voip_or_complication_topic_of_the_certificates_bundle_is_accepted(
    app: App
) -> None:
    pem = app.providers.push_certificates.issue(TOPIC)
    for topic in (f"{TOPIC}.voip", f"{TOPIC}.complication"):
        shown = await app.use_certificate(pem, topic=topic)
        assert shown["topic"] == topic and shown["certificate_subject_uid"] == TOPIC


def _certificate(uid: str | None = TOPIC, **options: Any) -> Callable[[PushCertificates], str]:
    return lambda ca: ca.issue(uid, **options)


def _mismatched(ca: PushCertificates) -> str:
    certificate = ca.issue(TOPIC).split("Bag Attributes\n    localKeyID")[0]
    other = rsa.generate_private_key(65537, 2048)
    return certificate + other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()


def _encrypted(ca: PushCertificates) -> str:
    key = rsa.generate_private_key(65537, 2048)
    certificate = ca.issue(TOPIC, key=key).split("Bag Attributes\n    localKeyID")[0]
    return certificate + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"export password")).decode()


def _without_key(ca: PushCertificates) -> str:
    return ca.issue(TOPIC).split("Bag Attributes\n    localKeyID")[0]


def _with_its_ca(ca: PushCertificates) -> str:
    return ca.ca_pem + ca.issue(TOPIC)


_NOW = datetime.now(UTC)
BAD_CERTIFICATES: list[tuple[str, Callable[[PushCertificates], str], dict[str, Any], str,
                             str]] = [
    ("expired", _certificate(valid_from=_NOW - timedelta(days=400),
                             valid_until=_NOW - timedelta(days=1)), {},
     "certificate_pem", "expired on"),
    ("not yet valid", _certificate(valid_from=_NOW + timedelta(days=2)), {},
     "certificate_pem", "not valid before"),
    ("key of another certificate", _mismatched, {}, "certificate_pem",
     "not the certificate's"),
    ("encrypted key", _encrypted, {}, "certificate_pem", "encrypted"),
    ("no key", _without_key, {}, "certificate_pem", "no private key"),
    ("chain with its CA", _with_its_ca, {}, "certificate_pem", "2 certificates"),
    ("garbage", lambda ca: "not a certificate at all", {}, "certificate_pem",
     "no certificate"),
    ("broken base64", lambda ca: "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----"
     "\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", {},
     "certificate_pem", "does not parse"),
    ("weak RSA key", _certificate(key=rsa.generate_private_key(65537, 1024)), {},
     "certificate_pem", "2048 to 4096"),
    ("EC key on another curve", _certificate(key=ec.generate_private_key(ec.SECP384R1())),
     {}, "certificate_pem", "P-256"),
    ("another app's topic", _certificate(), {"topic": "com.example.other"}, "topic",
     TOPIC),
    ("no bundle id anywhere", _certificate(uid=None), {}, "topic", "subject UID"),
    ("a bundle id with a line break", _certificate(uid=f"{TOPIC}\r\nx"), {}, "topic",
     "control characters"),
    ("a topic with a control character", _certificate(), {"topic": f"{TOPIC}\x7f"},
     "topic", "control characters"),
    ("development certificate for production", _certificate(environments=["sandbox"]),
     {"environment": "production"}, "environment", "BadCertificateEnvironment"),
    ("too long", lambda ca: ca.issue(TOPIC) + "x" * 8000, {}, "certificate_pem",
     "too long"),
    ("a token key besides", _certificate(), {"key_p8": "x"}, "certificate_pem",
     "key_p8"),
    ("token fields besides", _certificate(), {"key_id": "ABC123DEFG"}, "key_id",
     "Extra inputs"),
]


@pytest.mark.parametrize(("case", "make", "fields", "path", "says"), BAD_CERTIFICATES,
                         ids=[c[0] for c in BAD_CERTIFICATES])
async def test_a_certificate_apns_would_refuse_is_422_at_upload_naming_the_field(
    app: App, case: str, make: Callable[[PushCertificates], str], fields: dict[str, Any],
    path: str, says: str
) -> None:
    body = {"certificate_pem": make(app.providers.push_certificates),
            "environment": "sandbox", **fields}
    status, answer = await app.put_apns(body)
    assert status == 422, answer
    error = answer["error"]
    assert error["code"] == "validation_error"
    assert [d["path"] for d in error["details"]] == [path]
    assert says in error["message"]
    _, listed = await app.api.call("GET", f"/v1/apps/{app.id}/push", app.key)
    assert listed == {}  # nothing was stored


async def test_a_body_with_neither_key_nor_certificate_names_the_token_fields(
    app: App
) -> None:
    status, answer = await app.put_apns({"topic": TOPIC})
    assert status == 422
    assert {d["path"] for d in answer["error"]["details"]} >= {"key_p8", "key_id", "team_id"}


async def test_a_certificates_tls_context_is_made_once_per_app_and_off_the_event_loop(
    tmp_path: Path
) -> None:
    providers = await start_providers(tmp_path)
    certificates = providers.push_certificates
    providers.apns.trust_client_certificates(certificates.ca_pem, required=True)
    made: list[tuple[int, ssl.SSLContext]] = []

    def new_ssl_context() -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(providers.ca_file))
        made.append((threading.get_ident(), context))
        return context

    adapter = APNsAdapter(base_url=providers.apns.base_url, new_ssl_context=new_ssl_context)
    creds = {"certificate_pem": certificates.issue(TOPIC), "topic": TOPIC,
             "environment": "sandbox"}
    try:
        # Two apps with the same certificate, ten sends each, all waiting for a pool at once.
        outcomes: list[Outcome] = await asyncio.gather(*(
            adapter.send(_job(app_id, n, creds)) for app_id in ("app_one", "app_two")
            for n in range(10)))
    finally:
        await adapter.close()
        await providers.stop()
    assert {o.verdict for o in outcomes} == {Verdict.DELIVERED}
    assert len(providers.apns.received) == 20
    # One client-certificate context per app, never shared, each made in a worker thread.
    assert len(made) == 2 and made[0][1] is not made[1][1]
    assert threading.get_ident() not in {thread for thread, _ in made}


def _job(app_id: str, n: int, creds: dict[str, Any]) -> DeliveryJob:
    return DeliveryJob(
        delivery_id=f"dlv_{app_id}_{n}", app_id=app_id, kind="apns",
        event=EventView(f"evt_{n}", "order.shipped", "{}", datetime.now(UTC)),
        device=DeviceTarget(f"dev_{n}", "ios", ios_token(n)),
        notification={"title": "Shipped"}, credentials=creds)


async def _true(value: bool) -> bool:
    return value
