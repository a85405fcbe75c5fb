"""Who is calling: the operator (``GATEWAY_ADMIN_KEY``), one app (its API key), or one
user of an app (a user token); and, per client address, how many keys failed lately.

A key that fails counts against the address it came from: after
``GATEWAY_AUTH_FAILURES`` failures within ``GATEWAY_AUTH_FAILURE_WINDOW_S`` the address
is refused with ``429 rate_limited`` for ``GATEWAY_AUTH_BLOCK_S`` seconds, whatever key
it presents, which makes guessing keys hopeless without touching anyone else's requests.
The count is per process.

Verified keys are cached in-process, but only while the process hears the database's
``gateway_apps`` notifications (sent when an app is deleted or its key rotated, and acted on
through :meth:`Authenticator.forget`): without them nothing is cached, so a deleted app or a
key rotated out is refused everywhere as soon as the notification arrives, at the latest
with the next request after the listening connection came back.
"""

from __future__ import annotations

import collections
import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeVar

from aiohttp import web

from gateway import usertokens
from gateway.errors import NotFound, RateLimited, Unauthorized
from gateway.ids import hash_key, keys_equal
from gateway.store.postgres import Store
from gateway.store.records import App

#: How long a verified key is remembered in-process: an app's new limits reach every
#: process within this long. (A deleted app or a rotated key is forgotten at once.)
KEY_CACHE_TTL_S = 30.0
#: Keys, and apps of user tokens, remembered at once; past it the cache starts over.
MAX_CACHED = 10_000
#: Addresses whose failures are remembered at once; past it the oldest are forgotten.
MAX_TRACKED_ADDRESSES = 10_000

K = TypeVar("K")
V = TypeVar("V")


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Principal:
    kind: Literal["admin", "app", "user"]
    #: The app an app key or user token acts in (None for the operator).
    app: App | None = None
    #: For a user token: the only user whose devices it may touch.
    user_id: str | None = None
    #: For an app's previous key, still in its grace: when it stops working (a dashboard
    #: session it opens ends then too).
    key_expires_at: datetime | None = None

    @property
    def app_id(self) -> str | None:
        return self.app.id if self.app is not None else None


#: Who made this request, once its route's guard let it through.
PRINCIPAL = web.RequestKey("principal", Principal)


def client_of(address: str | None) -> str:
    """What failed keys are counted against: the IPv4 address, or the IPv6 /64 (one
    host's usual allocation, which it could otherwise walk through)."""
    if not address:
        return "unknown"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


class FailureLimiter:
    """Failed keys per client address, in a sliding window."""

    def __init__(self, limit: int, window_s: float, block_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self.block_s = block_s
        self._failures: collections.OrderedDict[str, collections.deque[float]] = \
            collections.OrderedDict()
        self._blocked: dict[str, float] = {}

    @property
    def blocking(self) -> bool:
        """Whether any address is (or was until lately) refused."""
        return bool(self._blocked)

    def blocked_for(self, address: str) -> int | None:
        """Whole seconds until ``address`` may try again, or None when it may now."""
        until = self._blocked.get(address)
        if until is None:
            return None
        left = until - time.monotonic()
        if left <= 0:
            del self._blocked[address]
            return None
        return math.ceil(left)

    def failed(self, address: str) -> bool:
        """Count a failed key; True when this one got the address refused."""
        now = time.monotonic()
        times = self._failures.get(address)
        if times is None:
            times = self._failures[address] = collections.deque()
            while len(self._failures) > MAX_TRACKED_ADDRESSES:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(address)
        times.append(now)
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(times) < self.limit:
            return False
        times.clear()
        self._blocked[address] = now + self.block_s
        if len(self._blocked) > MAX_TRACKED_ADDRESSES:
            self._blocked = {a: t for a, t in self._blocked.items() if t > now}
        return True


class Authenticator:
    def __init__(self, store: Store, admin_key: str, limiter: FailureLimiter, *,
                 clock: Callable[[], datetime] = _utc_now) -> None:
        self._store = store
        self._admin_hash = hash_key(admin_key)
        self.limiter = limiter
        #: The time a previous key's grace is judged by.
        self.clock = clock
        #: Key hash -> (who it makes the caller: its app, and until when the key works
        #: (None: the current key); cached until).
        self._apps: dict[bytes, tuple[Principal, float]] = {}
        self._user_apps: dict[str, tuple[App, bytes, float]] = {}
        #: Whether this process hears app changes now (see :meth:`hearing`).
        self._hearing = False
        #: Moves whenever something is forgotten, so that a lookup which started before
        #: is not cached.
        self._generation = 0

    @property
    def caching(self) -> bool:
        """Whether verified keys are cached now (while app changes are heard)."""
        return self._hearing

    def hearing(self, on: bool) -> None:
        """Whether this process hears app changes (LISTEN gateway_apps) from now on. Only
        then is anything cached; when it stops hearing, the cache is dropped."""
        self._generation += 1
        self._hearing = on
        if not on:
            self._apps.clear()
            self._user_apps.clear()

    def forget(self, app_id: str) -> None:
        """Drop what is cached of an app that was deleted or given a new key."""
        self._generation += 1
        self._user_apps.pop(app_id, None)
        for key_hash in [k for k, (who, _) in self._apps.items() if who.app_id == app_id]:
            del self._apps[key_hash]

    def _remember(self, cache: dict[K, V], key: K, value: V, generation: int) -> None:
        """Cache a lookup that started at ``generation``, unless something was forgotten
        meanwhile or this process does not hear app changes."""
        if not self._hearing or generation != self._generation:
            return
        if len(cache) >= MAX_CACHED:
            cache.clear()
        cache[key] = value

    async def authenticate(self, header: str | None, address: str | None = None) -> Principal:
        """The caller; a failed key counts against ``address`` (refused with 429 once it
        failed too often)."""
        if self.limiter.blocking:  # parsing the address costs; most of the time nobody is
            left = self.limiter.blocked_for(client_of(address))
            if left is not None:
                raise RateLimited("Too many failed keys from this address; try again later.",
                                  retry_after_s=left)
        try:
            return await self._identify(header)
        except Unauthorized:
            self.limiter.failed(client_of(address))
            raise

    async def _identify(self, header: str | None) -> Principal:
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
        now = time.monotonic()
        cached = self._apps.get(presented)
        if cached is not None and cached[1] > now:
            who = cached[0]
        else:
            generation = self._generation
            found = await self._store.app_for_key_hash(presented)
            if found is None:
                raise Unauthorized("Unknown API key.")
            who = Principal("app", found.app, key_expires_at=found.key_expires_at)
            self._remember(self._apps, presented, (who, now + KEY_CACHE_TTL_S), generation)
        if who.key_expires_at is not None and who.key_expires_at <= self.clock():
            # A previous key whose grace ended while it was cached.
            self._apps.pop(presented, None)
            raise Unauthorized("Unknown API key.")
        return who

    async def _user(self, token: str) -> Principal:
        app_id = usertokens.unverified_app_id(token)
        app, secret = await self._app_and_secret(app_id)
        claims = usertokens.verify(token, secret)
        return Principal("user", app, claims.user_id)

    async def _app_and_secret(self, app_id: str) -> tuple[App, bytes]:
        now = time.monotonic()
        cached = self._user_apps.get(app_id)
        if cached is not None and cached[2] > now:
            return cached[0], cached[1]
        generation = self._generation
        secret = await self._store.user_token_secret(app_id)
        if secret is None:
            raise Unauthorized("Invalid user token.")
        try:
            app = await self._store.get_app(app_id)
        except NotFound:  # deleted in between
            raise Unauthorized("Invalid user token.") from None
        self._remember(self._user_apps, app_id, (app, secret, now + KEY_CACHE_TTL_S),
                       generation)
        return app, secret

    async def user_token_secret(self, app_id: str) -> bytes:
        return (await self._app_and_secret(app_id))[1]
