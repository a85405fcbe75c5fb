"""The fake providers, running on loopback for tests: a fake FCM over HTTP and a fake
APNs over real TLS + HTTP/2, with credentials whose keys the fakes trust."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fakes.apns import DEVELOPMENT_CERTIFICATE_OID, PRODUCTION_CERTIFICATE_OID, FakeAPNs
from fakes.fcm import FakeFCM
from gateway.config import Settings
from gateway.sandbox import pem_private, pem_public

TOPIC = "com.example.shop"
TEAM_ID = "TEAM123456"
KEY_ID = "KEY1234567"
_ENVIRONMENT_OIDS = {"sandbox": DEVELOPMENT_CERTIFICATE_OID,
                     "production": PRODUCTION_CERTIFICATE_OID}


@dataclass
class PushCertificates:
    """A stand-in for Apple's certification authority: issues push certificates (subject
    UID = bundle id, as Apple's do) that the fake APNs trusts, or not."""

    name: str = "Fake Apple Worldwide Developer Relations"
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(65537, 2048))

    def __post_init__(self) -> None:
        now = datetime.now(UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256()))

    @property
    def ca_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, uid: str | None = TOPIC, *,
              key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None,
              valid_from: datetime | None = None, valid_until: datetime | None = None,
              environments: Iterable[str] = ("sandbox", "production")) -> str:
        """A push certificate and its private key in one PEM, as ``openssl pkcs12 -nodes``
        exports them (a universal "Apple Push Services" certificate by default)."""
        key = key or rsa.generate_private_key(65537, 2048)
        now = datetime.now(UTC)
        names = [x509.NameAttribute(NameOID.COMMON_NAME, f"Apple Push Services: {uid}")]
        if uid is not None:
            names.insert(0, x509.NameAttribute(NameOID.USER_ID, uid))
        builder = (
            x509.CertificateBuilder().subject_name(x509.Name(names))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid_from or now - timedelta(days=1))
            .not_valid_after(valid_until or now + timedelta(days=365))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False))
        for environment in environments:
            builder = builder.add_extension(x509.UnrecognizedExtension(
                x509.ObjectIdentifier(_ENVIRONMENT_OIDS[environment]), b"\x05\x00"),
                critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return (f"Bag Attributes\n    friendlyName: Apple Push Services: {uid}\n"
                + cert.public_bytes(serialization.Encoding.PEM).decode()
                + "Bag Attributes\n    localKeyID: 01 02 03\n" + pem_private(key))


@dataclass
class Providers:
    fcm: FakeFCM
    apns: FakeAPNs
    ca_file: Path
    service_account: dict[str, Any]
    apns_credentials: dict[str, Any]
    #: Issues client certificates the fake APNs trusts (it takes provider tokens too).
    push_certificates: PushCertificates

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
    push_certificates = PushCertificates()
    apns.trust_client_certificates(push_certificates.ca_pem)
    await fcm.start()
    await apns.start()
    return Providers(fcm, apns, ca_file, service_account, apns_credentials, push_certificates)


def ios_token(n: int) -> str:
    return f"{n:064x}"


def android_token(n: int) -> str:
    return f"fcm-token-{n:08d}:APA91b" + "x" * 100
