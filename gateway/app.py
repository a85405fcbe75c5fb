"""The aiohttp application: what runs in one gateway process, started and stopped in
``cleanup_ctx`` order (database → ingest → dispatcher) and torn down in reverse."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

from aiohttp import web

from adapters.base import Adapter
from adapters.webhook import WebhookAdapter
from gateway import keys
from gateway.api import add_routes, error_middleware
from gateway.auth import Authenticator
from gateway.batching import GroupCommit
from gateway.config import Settings
from gateway.db import Database
from gateway.dispatcher import Dispatcher
from gateway.retry import RetryPolicy
from gateway.store import Store

log = logging.getLogger("gateway")


def build_adapters(settings: Settings) -> dict[str, Adapter]:
    return {
        "webhook": WebhookAdapter(
            timeout_s=settings.delivery_timeout_s,
            allow_private=settings.allow_private_endpoints,
            max_connections=settings.dispatch_concurrency,
        ),
    }


def create_app(
    settings: Settings,
    dsn: str,
    *,
    api: bool = True,
    dispatcher: bool = True,
    adapters: Mapping[str, Adapter] | None = None,
) -> web.Application:
    """One gateway process: the HTTP API and/or the dispatcher over one database."""
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=settings.max_payload_bytes,
    )
    app[keys.SETTINGS] = settings
    app[keys.DSN] = dsn
    add_routes(app, api=api)

    async def database(app: web.Application) -> AsyncIterator[None]:
        db = await Database.connect(dsn, max_size=settings.db_pool_size)
        app[keys.DB] = db
        app[keys.STORE] = Store(db)
        app[keys.AUTH] = Authenticator(app[keys.STORE], settings.admin_key or "")
        yield
        await db.close()

    async def ingest(app: web.Application) -> AsyncIterator[None]:
        batcher = GroupCommit(app[keys.STORE].write_events, max_batch=500, max_flushers=2,
                              name="ingest")
        app[keys.INGEST] = batcher
        yield
        await batcher.close()

    async def dispatch(app: web.Application) -> AsyncIterator[None]:
        chosen = dict(adapters) if adapters is not None else build_adapters(settings)
        worker = Dispatcher(
            app[keys.STORE], dsn, chosen,
            RetryPolicy(settings.retry_schedule, settings.retry_jitter,
                        settings.retry_after_max_s),
            concurrency=settings.dispatch_concurrency,
            endpoint_concurrency=settings.endpoint_concurrency,
            batch=settings.dispatch_batch,
            lease_s=settings.effective_lease_s,
            poll_interval_s=settings.poll_interval_s,
        )
        app[keys.DISPATCHER] = worker
        await worker.start()
        yield
        await worker.stop(settings.shutdown_grace_s)
        for adapter in chosen.values():
            await adapter.close()

    app.cleanup_ctx.append(database)
    if api:
        app.cleanup_ctx.append(ingest)
    if dispatcher:
        app.cleanup_ctx.append(dispatch)
    return app
