"""Who is calling: the operator (``GATEWAY_ADMIN_KEY``) or one app (its API key)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from gateway import usertokens
from gateway.errors import Unauthorized
from gateway.ids import hash_key, keys_equal
from gateway.store.postgres import Store

#: How long a verified app key is remembered in-process (apps cannot be deleted, and the
#: cache only saves a lookup per request).
KEY_CACHE_TTL_S = 30.0


@dataclass(frozen=True)
class Principal:
    kind: Literal["admin", "app", "user"]
    app_id: str | None = None
    #: For a user token: the only user whose devices it may touch.
    user_id: str | None = None


#: Who made this request, once its route's guard let it through.
PRINCIPAL = web.RequestKey("principal", Principal)


class Authenticator:
    def __init__(self, store: Store, admin_key: str) -> None:
        self._store = store
        self._admin_hash = hash_key(admin_key)
        self._cache: dict[bytes, tuple[str, float]] = {}
        self._secrets: dict[str, bytes] = {}

    async def authenticate(self, header: str | None) -> Principal:
        if not header:
            raise Unauthorized("Missing Authorization header; send 'Authorization: Bearer <key>'.")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized("The Authorization header must be 'Bearer <key>'.")
        if key.startswith(usertokens.PREFIX):
            return await self._user(key)
        presented = hash_key(key)
        if keys_equal(presented, self._admin_hash):
            return Principal("admin")
        cached = self._cache.get(presented)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return Principal("app", cached[0])
        app_id = await self._store.app_id_for_key_hash(presented)
        if app_id is None:
            raise Unauthorized("Unknown API key.")
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[presented] = (app_id, now + KEY_CACHE_TTL_S)
        return Principal("app", app_id)

    async def _user(self, token: str) -> Principal:
        app_id = usertokens.unverified_app_id(token)
        secret = self._secrets.get(app_id)
        if secret is None:
            secret = await self._store.user_token_secret(app_id)
            if secret is None:
                raise Unauthorized("Invalid user token.")
            self._secrets[app_id] = secret
        claims = usertokens.verify(token, secret)
        return Principal("user", claims.app_id, claims.user_id)

    async def user_token_secret(self, app_id: str) -> bytes:
        secret = self._secrets.get(app_id) or await self._store.user_token_secret(app_id)
        assert secret is not None
        self._secrets[app_id] = secret
        return secret
