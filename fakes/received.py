"""What the push-provider fakes (``fakes.apns``, ``fakes.fcm``) record for every accepted push.

Kept in its own module so each fake can import it without depending on the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ReceivedPush:
    """One push a fake provider accepted, as the provider saw it."""

    provider: str  # "apns"
    app: str  # the apns-topic
    token: str  # device token (hex) from the path
    payload: dict[str, Any]  # the JSON payload as received
    headers: dict[str, str]  # the request's apns-* and authorization headers (lower-case names)
    received_at: float  # time.time()
    #: Whose credentials sent it: the service account (FCM); the key id of the provider
    #: token, or the SHA-256 (hex) of the TLS client certificate (APNs).
    sender: str = ""
