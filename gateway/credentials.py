"""Push credentials: checked when uploaded, stored (their keys sealed, see
:mod:`gateway.crypto`), shown only masked.

An uploaded credential is a tenant's input, so it may not decide where the gateway
connects: a service account naming a token URL other than Google's (or the operator's
``GATEWAY_FCM_TOKEN_URL``) is refused, as is one for another universe than Google's own,
and no URL in it is ever used (the FCM adapter exchanges tokens at the operator's URL
only). Keys are bounded before anything costly happens: an RSA key of more than 4096
bits, or a PEM too long to be one, is refused before it is parsed, and parsing (which
checks an RSA key's primes) runs off the event loop.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from adapters.fcm import GOOGLE_TOKEN_URL
from gateway.errors import ValidationError
from gateway_client.models import Provider

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


def _mask(value: str, keep: int = 4) -> str:
    return "…" + value[-keep:] if len(value) > keep else "…"


def masked(provider: Provider, config: dict[str, Any]) -> dict[str, Any]:
    """What an API answer may show of stored credentials."""
    if provider is Provider.FCM:
        return {"provider": "fcm", "project_id": config["project_id"],
                "client_email": config["client_email"],
                "private_key_id": _mask(str(config.get("private_key_id") or "")),
                "private_key": "…(RSA key, hidden)"}
    return {"provider": "apns", "key_id": config["key_id"], "team_id": config["team_id"],
            "topic": config["topic"], "environment": config["environment"],
            "key_p8": "…(P-256 key, hidden)"}
