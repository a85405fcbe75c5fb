"""Push credentials: checked when uploaded, stored whole, shown only masked."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.errors import ValidationError
from gateway_client.models import Provider

FCM_REQUIRED = ("project_id", "private_key", "client_email")


def _invalid(path: str, message: str) -> ValidationError:
    return ValidationError(f"Invalid '{path}': {message}.",
                           details=[{"path": path, "message": message}])


def check_fcm(account: dict[str, Any]) -> dict[str, Any]:
    """A Google service-account JSON with a usable RSA key."""
    if account.get("type") != "service_account":
        raise _invalid("service_account.type", "must be 'service_account'")
    for name in FCM_REQUIRED:
        if not isinstance(account.get(name), str) or not account[name]:
            raise _invalid(f"service_account.{name}", "is required")
    try:
        key = serialization.load_pem_private_key(account["private_key"].encode(), None)
    except (ValueError, TypeError):
        raise _invalid("service_account.private_key", "is not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise _invalid("service_account.private_key", "must be an RSA key")
    return account


def check_apns(fields: dict[str, Any]) -> dict[str, Any]:
    """An APNs auth key (.p8, EC P-256) with its key id, team id and topic."""
    try:
        key = serialization.load_pem_private_key(fields["key_p8"].encode(), None)
    except (ValueError, TypeError):
        raise _invalid("key_p8", "is not a PEM (.p8) private key") from None
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
