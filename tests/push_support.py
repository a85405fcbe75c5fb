"""The fake providers, running on loopback for tests: a fake FCM over HTTP and a fake
APNs over real TLS + HTTP/2, with credentials whose keys the fakes trust."""

from __future__ import annotations

import ssl
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trustme
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fakes.apns import FakeAPNs
from fakes.fcm import FakeFCM
from gateway.config import Settings
from gateway.sandbox import pem_private, pem_public

TOPIC = "com.example.shop"
TEAM_ID = "TEAM123456"
KEY_ID = "KEY1234567"


@dataclass
class Providers:
    fcm: FakeFCM
    apns: FakeAPNs
    ca_file: Path
    service_account: dict[str, Any]
    apns_credentials: dict[str, Any]

    def settings(self, base: Settings) -> Settings:
        return replace(base, fcm_url=self.fcm.base_url, fcm_token_url=self.fcm.token_url,
                       apns_url=self.apns.base_url, provider_ca_file=str(self.ca_file))

    async def stop(self) -> None:
        await self.apns.stop()
        await self.fcm.stop()


async def start_providers(folder: Path, project_id: str = "shop-project") -> Providers:
    ca = trustme.CA()
    ca_file = folder / "provider-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)

    fcm = FakeFCM()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    email = f"push@{project_id}.iam.gserviceaccount.com"
    key_id = uuid.uuid4().hex
    fcm.add_service_account(project_id=project_id, client_email=email,
                            public_key_pem=pem_public(rsa_key), private_key_id=key_id)
    service_account = {
        "type": "service_account", "project_id": project_id, "private_key_id": key_id,
        "private_key": pem_private(rsa_key), "client_email": email,
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    apns = FakeAPNs(server_ctx)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    apns.add_key(team_id=TEAM_ID, key_id=KEY_ID, public_key_pem=pem_public(ec_key),
                 topics=[TOPIC])
    apns_credentials = {"key_p8": pem_private(ec_key), "key_id": KEY_ID, "team_id": TEAM_ID,
                        "topic": TOPIC, "environment": "sandbox"}
    await fcm.start()
    await apns.start()
    return Providers(fcm, apns, ca_file, service_account, apns_credentials)


def ios_token(n: int) -> str:
    return f"{n:064x}"


def android_token(n: int) -> str:
    return f"fcm-token-{n:08d}:APA91b" + "x" * 100
