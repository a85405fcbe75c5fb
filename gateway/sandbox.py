"""Sandbox mode: faithful fake FCM and APNs servers inside the gateway process, on
loopback, with throwaway credentials, so a newcomer sees pushes arrive without an Apple
or Google account. Pushes still go through the real adapters, over real HTTP and real
TLS + HTTP/2; an app that uploaded real credentials keeps going to the real providers."""

from __future__ import annotations

import ssl
import uuid
from typing import Any

import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from adapters.base import Adapter, DeliveryJob, Outcome
from fakes.apns import FakeAPNs
from fakes.fcm import FakeFCM
from fakes.received import ReceivedPush

SANDBOX_PROJECT = "gateway-sandbox"
SANDBOX_TOPIC = "com.example.sandbox"
SANDBOX_TEAM = "SANDBOX001"
SANDBOX_KEY_ID = "SANDBOXKEY"


def pem_private(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def pem_public(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


class Sandbox:
    def __init__(self) -> None:
        self.ca = trustme.CA()
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
        self.fcm = FakeFCM()
        self.apns = FakeAPNs(server_ctx)
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ec_key = ec.generate_private_key(ec.SECP256R1())
        email = f"sandbox@{SANDBOX_PROJECT}.iam.gserviceaccount.com"
        key_id = uuid.uuid4().hex
        self.fcm_credentials: dict[str, Any] = {
            "type": "service_account", "project_id": SANDBOX_PROJECT,
            "private_key_id": key_id, "private_key": pem_private(rsa_key),
            "client_email": email, "token_uri": "https://oauth2.googleapis.com/token",
        }
        self.apns_credentials: dict[str, Any] = {
            "key_p8": pem_private(ec_key), "key_id": SANDBOX_KEY_ID, "team_id": SANDBOX_TEAM,
            "topic": SANDBOX_TOPIC, "environment": "sandbox",
        }
        self.fcm.add_service_account(project_id=SANDBOX_PROJECT, client_email=email,
                                     public_key_pem=pem_public(rsa_key),
                                     private_key_id=key_id)
        self.apns.add_key(team_id=SANDBOX_TEAM, key_id=SANDBOX_KEY_ID,
                          public_key_pem=pem_public(ec_key), topics=[SANDBOX_TOPIC])

    async def start(self) -> None:
        await self.fcm.start()
        await self.apns.start()

    async def stop(self) -> None:
        await self.apns.stop()
        await self.fcm.stop()

    def client_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def received(self) -> list[ReceivedPush]:
        return sorted([*self.fcm.received, *self.apns.received], key=lambda p: p.received_at)


class SandboxRouter:
    """Apps without credentials go to the sandbox's fakes; apps with their own go to the
    real provider."""

    def __init__(self, real: Adapter, sandbox: Adapter) -> None:
        self.kind = real.kind
        self._real = real
        self._sandbox = sandbox

    async def send(self, job: DeliveryJob) -> Outcome:
        return await (self._real if job.credentials else self._sandbox).send(job)

    async def close(self) -> None:
        await self._real.close()
        await self._sandbox.close()
