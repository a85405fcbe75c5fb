"""Push credentials: checked when uploaded, stored (their keys sealed, see
:mod:`gateway.crypto`), shown only masked.

An uploaded credential is a tenant's input, so it may not decide where the gateway
connects: a service account naming a token URL other than Google's (or the operator's
``GATEWAY_FCM_TOKEN_URL``) is refused, as is one for another universe than Google's own,
and no URL in it is ever used (the FCM adapter exchanges tokens at the operator's URL
only). Keys are bounded before anything costly happens: an RSA key of more than 4096
bits, or a PEM too long to be one, is refused before it is parsed, and parsing (which
checks an RSA key's primes) runs off the event loop.

APNs takes either a token-auth key (.p8) or a push certificate with its private key (what
``openssl pkcs12 -nodes`` makes of the .p12), which becomes the TLS client certificate. A
certificate is checked as Apple would check it on the first connection, so a mistake is a
422 now rather than failed deliveries later: one certificate and its own, unencrypted key
(RSA 2048-4096 bits or EC P-256), valid today, for the bundle id the pushes name, made for
the environment they go to. What is kept is the certificate and key re-encoded (sealed at
rest), and what may be shown of them: the bundle id in the certificate's subject UID,
when it expires, its SHA-256.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from adapters.apns import (
    CERTIFICATE_TOPIC_SUFFIXES,
    DEVELOPMENT_CERTIFICATE_OID,
    PRODUCTION_CERTIFICATE_OID,
    uses_certificate,
)
from adapters.fcm import GOOGLE_TOKEN_URL
from adapters.payloads import apns_topic_problem
from gateway.errors import ValidationError
from gateway_client.models import Provider, iso

FCM_REQUIRED = ("project_id", "private_key", "client_email")
#: What a service account may carry besides the fields the gateway uses; kept only so an
#: uploaded file round-trips, never read.
FCM_KEPT = ("type", "project_id", "private_key_id", "private_key", "client_email",
            "client_id", "token_uri")
#: A Google Cloud project id (and the legacy "domain.com:project" form): it goes into the
#: path of every FCM send, so nothing that could change the URL.
_PROJECT_ID = re.compile(r"[a-z0-9][a-z0-9.:-]{0,99}")
MIN_RSA_BITS, MAX_RSA_BITS = 2048, 4096
#: The longest PEM a 4096-bit RSA key takes (PKCS#8 ~3.3k characters), with room to spare.
MAX_RSA_PEM = 3600
#: The longest PEM an EC P-256 key takes (PKCS#8 ~240 characters, SEC1 ~230).
MAX_EC_PEM = 600
#: The longest certificate-and-key PEM taken: a certificate with a 4096-bit RSA key (~2k
#: characters) and that key (~3.3k), with room for the "Bag Attributes" openssl writes.
MAX_CERTIFICATE_PEM = 8000
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
_ENVIRONMENT_OIDS = {DEVELOPMENT_CERTIFICATE_OID: "sandbox",
                     PRODUCTION_CERTIFICATE_OID: "production"}


def _invalid(path: str, message: str) -> ValidationError:
    return ValidationError(f"Invalid '{path}': {message}.",
                           details=[{"path": path, "message": message}])


async def _load_key(pem: str) -> Any:
    """The parsed private key, or None; off the event loop (RSA checks are costly)."""
    try:
        return await asyncio.to_thread(serialization.load_pem_private_key, pem.encode(), None)
    except (ValueError, TypeError):
        return None


async def check_fcm(account: dict[str, Any], token_url: str | None) -> dict[str, Any]:
    """A Google service-account JSON with a usable RSA key, whose token URL is the one
    the gateway exchanges tokens at; what is kept of it."""
    if account.get("type") != "service_account":
        raise _invalid("service_account.type", "must be 'service_account'")
    for name in FCM_REQUIRED:
        if not isinstance(account.get(name), str) or not account[name]:
            raise _invalid(f"service_account.{name}", "is required")
    if not _PROJECT_ID.fullmatch(account["project_id"]):
        raise _invalid("service_account.project_id",
                       "must be a Google Cloud project id (lowercase letters, digits, '-')")
    allowed = {GOOGLE_TOKEN_URL} | ({token_url} if token_url else set())
    if account.get("token_uri", GOOGLE_TOKEN_URL) not in allowed:
        raise _invalid("service_account.token_uri",
                       f"must be {' or '.join(sorted(allowed))}: the gateway exchanges "
                       "tokens only where its operator says")
    if account.get("universe_domain", "googleapis.com") != "googleapis.com":
        raise _invalid("service_account.universe_domain", "must be googleapis.com")
    pem = account["private_key"]
    if len(pem) > MAX_RSA_PEM:
        raise _invalid("service_account.private_key",
                       f"is too long for an RSA key of at most {MAX_RSA_BITS} bits")
    key = await _load_key(pem)
    if key is None:
        raise _invalid("service_account.private_key", "is not a PEM private key")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise _invalid("service_account.private_key", "must be an RSA key")
    if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
        raise _invalid("service_account.private_key",
                       f"must be an RSA key of {MIN_RSA_BITS} to {MAX_RSA_BITS} bits")
    kept = {k: account[k] for k in FCM_KEPT if isinstance(account.get(k), str)}
    kept["token_uri"] = kept.get("token_uri", GOOGLE_TOKEN_URL)
    return kept


async def check_apns(fields: dict[str, Any]) -> dict[str, Any]:
    """An APNs auth key (.p8, EC P-256) with its key id, team id and topic."""
    pem = fields["key_p8"]
    if len(pem) > MAX_EC_PEM:
        raise _invalid("key_p8", "is too long for an EC P-256 key, as Apple issues")
    key = await _load_key(pem)
    if key is None:
        raise _invalid("key_p8", "is not a PEM (.p8) private key")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise _invalid("key_p8", "must be an EC P-256 key, as Apple issues")
    return fields


@dataclass(frozen=True)
class _Certificate:
    """A push certificate and its key, checked; or why not."""

    pem: str = ""
    subject_uid: str | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None
    sha256: str = ""
    environments: frozenset[str] = frozenset()
    problem: str | None = None


def _supported(public_key: Any) -> bool:
    if isinstance(public_key, rsa.RSAPublicKey):
        return MIN_RSA_BITS <= public_key.key_size <= MAX_RSA_BITS
    return isinstance(public_key, ec.EllipticCurvePublicKey) and \
        public_key.curve.name == "secp256r1"


def _refused(problem: str) -> _Certificate:
    return _Certificate(problem=problem)


_ENCRYPTED = "holds an encrypted private key: export it without a password (openssl " \
    "pkcs12 ... -nodes)"


def _read_certificate(pem: str) -> _Certificate:
    """Parses and matches a certificate and its key (in a worker thread: an RSA key's
    checks are costly). The certificate is read first, so a key of a size it does not
    allow is never parsed."""
    certificates, keys = [], []
    for kind, body in _PEM_BLOCK.findall(pem):
        block = f"-----BEGIN {kind}-----{body}-----END {kind}-----"
        if kind == "CERTIFICATE":
            certificates.append(block)
        elif kind.endswith("PRIVATE KEY"):
            if kind == "ENCRYPTED PRIVATE KEY" or "Proc-Type: 4,ENCRYPTED" in body:
                return _refused(_ENCRYPTED)
            keys.append(block)
    if len(certificates) != 1:
        return _refused("holds no certificate" if not certificates else
                        f"holds {len(certificates)} certificates: keep only the push "
                        "certificate (openssl pkcs12 ... -clcerts)")
    if len(keys) != 1:
        return _refused("holds no private key: export the .p12 with its key (openssl "
                        "pkcs12 ... -nodes)" if not keys else "holds more than one private key")
    try:
        cert = x509.load_pem_x509_certificate(certificates[0].encode())
        public_key = cert.public_key()
    except ValueError:
        return _refused("holds a certificate that does not parse")
    if not _supported(public_key):
        return _refused(f"must hold a certificate for an RSA key of {MIN_RSA_BITS} to "
                        f"{MAX_RSA_BITS} bits or an EC P-256 key")
    try:
        key = serialization.load_pem_private_key(keys[0].encode(), None)
    except TypeError:
        return _refused(_ENCRYPTED)
    except ValueError:
        return _refused("holds a private key that does not parse")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) or \
            key.public_key().public_bytes(*spki) != public_key.public_bytes(*spki):
        return _refused("holds a private key that is not the certificate's")
    uids = cert.subject.get_attributes_for_oid(NameOID.USER_ID)
    return _Certificate(
        pem=cert.public_bytes(serialization.Encoding.PEM).decode()
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode(),
        subject_uid=str(uids[0].value) if uids else None,
        not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
        environments=frozenset(_ENVIRONMENT_OIDS[e.oid.dotted_string] for e in cert.extensions
                               if e.oid.dotted_string in _ENVIRONMENT_OIDS))


async def check_apns_certificate(fields: dict[str, Any]) -> dict[str, Any]:
    """An APNs push certificate with its private key, for the topic and environment named
    (the topic defaults to the certificate's bundle id); what is kept of it."""
    pem = fields["certificate_pem"]
    if len(pem) > MAX_CERTIFICATE_PEM:
        raise _invalid("certificate_pem", "is too long for one certificate and its key")
    found = await asyncio.to_thread(_read_certificate, pem)
    if found.problem is not None:
        raise _invalid("certificate_pem", found.problem)
    assert found.not_before is not None and found.not_after is not None
    now = datetime.now(UTC)
    if found.not_after <= now:
        raise _invalid("certificate_pem", f"expired on {iso(found.not_after, 'seconds')}: "
                       "renew it in the Apple developer account")
    if found.not_before > now:
        raise _invalid("certificate_pem",
                       f"is not valid before {iso(found.not_before, 'seconds')}")
    uid = found.subject_uid
    topic = fields.get("topic") or uid
    if topic is None:
        raise _invalid("topic", "is required: the certificate names no bundle id (subject "
                       "UID)")
    if problem := apns_topic_problem(topic):
        raise _invalid("topic", problem)
    if uid is not None and topic not in {uid, *(uid + s for s in CERTIFICATE_TOPIC_SUFFIXES)}:
        raise _invalid("topic", f"must be the certificate's bundle id {uid!r} (or its "
                       f"{' or '.join(CERTIFICATE_TOPIC_SUFFIXES)} topic)")
    environment = fields["environment"]
    if found.environments and environment not in found.environments:
        (made_for,) = found.environments
        raise _invalid("environment", f"is {environment}, but this is a {made_for} "
                       "certificate: APNs would answer BadCertificateEnvironment")
    return {"certificate_pem": found.pem, "topic": topic, "environment": environment,
            "certificate_subject_uid": uid,
            "certificate_expires_at": iso(found.not_after, "seconds"),
            "certificate_sha256": found.sha256}


def _mask(value: str, keep: int = 4) -> str:
    return "…" + value[-keep:] if len(value) > keep else "…"


def masked(provider: Provider, config: dict[str, Any]) -> dict[str, Any]:
    """What an API answer may show of stored credentials."""
    if provider is Provider.FCM:
        return {"provider": "fcm", "project_id": config["project_id"],
                "client_email": config["client_email"],
                "private_key_id": _mask(str(config.get("private_key_id") or "")),
                "private_key": "…(RSA key, hidden)"}
    if uses_certificate(config):
        return {"provider": "apns", "auth": "certificate", "topic": config["topic"],
                "environment": config["environment"],
                "certificate_subject_uid": config["certificate_subject_uid"],
                "certificate_expires_at": config["certificate_expires_at"],
                "certificate_sha256": config["certificate_sha256"],
                "certificate_pem": "…(certificate and private key, hidden)"}
    return {"provider": "apns", "key_id": config["key_id"], "team_id": config["team_id"],
            "topic": config["topic"], "environment": config["environment"],
            "key_p8": "…(P-256 key, hidden)"}
