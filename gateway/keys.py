"""Typed keys for what the aiohttp application holds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from gateway.config import Settings

if TYPE_CHECKING:
    from gateway.auth import Authenticator
    from gateway.batching import GroupCommit
    from gateway.db import Database
    from gateway.dispatcher import Dispatcher
    from gateway.sandbox import Sandbox
    from gateway.store import Accepted, EventDraft, Store

SETTINGS = web.AppKey("settings", Settings)
DSN = web.AppKey("dsn", str)
DB: web.AppKey[Database] = web.AppKey("db")
STORE: web.AppKey[Store] = web.AppKey("store")
AUTH: web.AppKey[Authenticator] = web.AppKey("auth")
INGEST: web.AppKey[GroupCommit[EventDraft, Accepted]] = web.AppKey("ingest")
DISPATCHER: web.AppKey[Dispatcher] = web.AppKey("dispatcher")
SANDBOX: web.AppKey[Sandbox] = web.AppKey("sandbox")
