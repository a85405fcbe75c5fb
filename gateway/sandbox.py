"""Sandbox mode: faithful fake FCM and APNs servers inside the gateway process, on
loopback, with throwaway credentials, so a newcomer sees pushes arrive without an Apple
or Google account. Pushes still go through the real adapters, over real HTTP and real
TLS + HTTP/2; an app that uploaded real credentials keeps going to the real providers.

Each app pushes to the fakes with credentials of its own (a service account and an APNs
key id made for it on first use, trusted by the fakes), so the fakes know which app sent
each push, as Google and Apple do, and an app's inbox shows only its own pushes, however
device tokens overlap between apps.
"""

from __future__ import annotations

import hashlib
import ssl
import uuid
from dataclasses import replace
from typing import Any

import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from adapters.base import Adapter, DeliveryJob, Outcome
from fakes.apns import FakeAPNs
from fakes.fcm import FakeFCM
from fakes.received import ReceivedPush
from gateway_client.models import DeliveryKind

SANDBOX_PROJECT = "gateway-sandbox"
SANDBOX_TOPIC = "com.example.sandbox"
SANDBOX_TEAM = "SANDBOX001"


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
        # One key pair per provider, shared by every app's sandbox identity: the fakes tell
        # apps apart by the service account and the key id, as the providers do.
        self._rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._ec = ec.generate_private_key(ec.SECP256R1())
        self._rsa_id = uuid.uuid4().hex
        self._identities: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}

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

    def credentials_for(self, app_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The app's sandbox FCM service account and APNs key, made and trusted by the
        fakes on first use."""
        found = self._identities.get(app_id)
        if found is None:
            email = f"{app_id.replace('_', '-')}@{SANDBOX_PROJECT}.iam.gserviceaccount.com"
            fcm = {"type": "service_account", "project_id": SANDBOX_PROJECT,
                   "private_key_id": self._rsa_id, "private_key": pem_private(self._rsa),
                   "client_email": email}
            key_id = hashlib.sha256(app_id.encode()).hexdigest()[:10].upper()
            apns = {"key_p8": pem_private(self._ec), "key_id": key_id,
                    "team_id": SANDBOX_TEAM, "topic": SANDBOX_TOPIC,
                    "environment": "sandbox"}
            self.fcm.add_service_account(project_id=SANDBOX_PROJECT, client_email=email,
                                         public_key_pem=pem_public(self._rsa),
                                         private_key_id=self._rsa_id)
            self.apns.add_key(team_id=SANDBOX_TEAM, key_id=key_id,
                              public_key_pem=pem_public(self._ec), topics=[SANDBOX_TOPIC])
            found = self._identities[app_id] = (fcm, apns)
        return found

    def forget(self, app_id: str) -> None:
        """The app was deleted: its sandbox identity is no longer trusted by the fakes, and
        what they received from it is dropped."""
        found = self._identities.pop(app_id, None)
        if found is not None:
            fcm, apns = found
            self.fcm.forget_sender(fcm["client_email"])
            self.apns.forget_sender(apns["key_id"])

    def received(self, app_id: str) -> list[ReceivedPush]:
        """What the fakes received from this app's sandbox credentials, oldest first."""
        fcm, apns = self.credentials_for(app_id)
        senders = {fcm["client_email"], apns["key_id"]}
        return sorted([p for p in (*self.fcm.received, *self.apns.received)
                       if p.sender in senders], key=lambda p: p.received_at)


class SandboxRouter:
    """Apps without credentials go to the sandbox's fakes, each with its own sandbox
    identity; apps with their own go to the real provider."""

    def __init__(self, real: Adapter, fake: Adapter, sandbox: Sandbox) -> None:
        self.kind = real.kind
        self._real = real
        self._fake = fake
        self._sandbox = sandbox

    async def send(self, job: DeliveryJob) -> Outcome:
        if job.credentials:
            return await self._real.send(job)
        fcm, apns = self._sandbox.credentials_for(job.app_id)
        own = fcm if self.kind == DeliveryKind.FCM else apns
        return await self._fake.send(replace(job, credentials=own))

    async def forget_app(self, app_id: str) -> None:
        await self._real.forget_app(app_id)
        await self._fake.forget_app(app_id)

    async def close(self) -> None:
        await self._real.close()
        await self._fake.close()
