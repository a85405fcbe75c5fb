"""Secrets at rest: endpoint signing secrets, push credentials' private keys and the apps'
user-token secrets are stored sealed with AES-256-GCM (an authenticated cipher from
``cryptography``) under ``GATEWAY_SECRET_KEY``, and opened only where they are used.

``GATEWAY_SECRET_KEY`` holds one or more keys, comma-separated, newest first: values are
sealed with the first and opened with whichever sealed them, so a key is rotated by
putting a new one in front and running ``gateway secrets reseal`` (which seals everything
under the newest), after which the old one can go. Each key is 32 random bytes in
urlsafe base64 (``gateway secrets new-key`` prints one).

A sealed value is ``sealed:v1:<key id>:<base64url nonce + ciphertext>``; the key id is the
first 8 hex digits of the key's SHA-256, to find the key again. The row it belongs to (the
endpoint's or app's id and the column) is the associated data, so a sealed value copied
into another row does not open. Values written before a key was set stay plain text,
readable, until resealed. Without any key everything is stored as plain text (the start-up
warns once).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import ConfigError, GatewayError

PREFIX = "sealed:v1:"
_NONCE_BYTES = 12


class SecretUnreadable(GatewayError):
    """A sealed value no configured key opens (the key was removed, or the value moved)."""

    code = "secret_unreadable"


def new_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


@dataclass(frozen=True)
class _Key:
    id: str
    cipher: AESGCM


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _parse_key(text: str) -> _Key:
    try:
        raw = _unb64(text.strip())
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError("GATEWAY_SECRET_KEY: each key must be 32 bytes in urlsafe base64 "
                          "('gateway secrets new-key' prints one)")
    return _Key(hashlib.sha256(raw).hexdigest()[:8], AESGCM(raw))


class Sealer:
    """Seals and opens the secrets the store keeps; with no keys, a pass-through."""

    def __init__(self, keys: str | None) -> None:
        self._keys = [_parse_key(k) for k in (keys or "").split(",") if k.strip()]
        self._by_id = {k.id: k for k in self._keys}

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def seal(self, value: str, context: str) -> str:
        """``value`` sealed under the newest key (plain when no key is configured)."""
        if not self._keys:
            return value
        key = self._keys[0]
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = key.cipher.encrypt(nonce, value.encode("utf-8"), context.encode("utf-8"))
        return f"{PREFIX}{key.id}:{_b64(nonce + sealed)}"

    def open(self, stored: str, context: str) -> str:
        """The plain value of ``stored`` (a sealed or a plain value)."""
        if not stored.startswith(PREFIX):
            return stored
        key_id, _, body = stored[len(PREFIX):].partition(":")
        key = self._by_id.get(key_id)
        if key is None:
            raise SecretUnreadable(f"A secret was sealed with key {key_id}, which is not in "
                                   "GATEWAY_SECRET_KEY.")
        try:
            data = _unb64(body)
            plain = key.cipher.decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:],
                                       context.encode("utf-8"))
        except (InvalidTag, ValueError, binascii.Error):
            raise SecretUnreadable("A sealed secret does not open: it was altered or moved "
                                   "to another row.") from None
        return plain.decode("utf-8")

    def stale(self, stored: str) -> bool:
        """Not sealed under the newest key: ``gateway secrets reseal`` would rewrite it."""
        if not self._keys:
            return False
        return not stored.startswith(f"{PREFIX}{self._keys[0].id}:")


#: The fields of push credentials that are secret, by provider.
SECRET_FIELDS = {"fcm": ("private_key",), "apns": ("key_p8", "certificate_pem")}


def seal_credentials(sealer: Sealer, app_id: str, provider: str,
                     config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with its secret fields sealed (for storing)."""
    context = f"credentials:{app_id}:{provider}"
    return {k: sealer.seal(v, context) if k in SECRET_FIELDS[provider] and isinstance(v, str)
            else v for k, v in config.items()}


def open_credentials(sealer: Sealer, app_id: str, provider: str,
                     config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with its secret fields opened (for sending)."""
    context = f"credentials:{app_id}:{provider}"
    return {k: sealer.open(v, context) if k in SECRET_FIELDS[provider] and isinstance(v, str)
            else v for k, v in config.items()}
