"""The aiohttp application: what runs in one gateway process, started and stopped in
``cleanup_ctx`` order (database → ingest → dispatcher) and torn down in reverse."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Mapping

from aiohttp import web

from adapters.apns import APNsAdapter
from adapters.base import Adapter
from adapters.fcm import FCMAdapter
from adapters.webhook import WebhookAdapter
from gateway import api, dashboard, keys, logs, metrics, openapi, stream
from gateway.api import error_middleware
from gateway.auth import Authenticator
from gateway.batching import GroupCommit
from gateway.config import Settings
from gateway.db import Database
from gateway.dispatcher import Dispatcher
from gateway.retention import RETENTION, Retention
from gateway.retry import RetryPolicy
from gateway.routing import wire
from gateway.sandbox import Sandbox, SandboxRouter
from gateway.store import Store

log = logging.getLogger("gateway")


def provider_ssl_context(settings: Settings) -> ssl.SSLContext:
    """The system's CAs, plus GATEWAY_PROVIDER_CA_FILE when set."""
    ctx = ssl.create_default_context()
    if settings.provider_ca_file:
        ctx.load_verify_locations(settings.provider_ca_file)
    return ctx


def build_adapters(settings: Settings, sandbox: Sandbox | None = None) -> dict[str, Adapter]:
    fcm: Adapter = FCMAdapter(
        base_url=settings.fcm_url, token_url=settings.fcm_token_url,
        ca_file=settings.provider_ca_file, timeout_s=settings.delivery_timeout_s,
        max_connections=settings.push_concurrency,
    )
    apns: Adapter = APNsAdapter(
        base_url=settings.apns_url, ssl_context=provider_ssl_context(settings),
        timeout_s=settings.delivery_timeout_s,
    )
    if sandbox is not None:
        fcm = SandboxRouter(fcm, FCMAdapter(
            base_url=sandbox.fcm.base_url, token_url=sandbox.fcm.token_url,
            timeout_s=settings.delivery_timeout_s, max_connections=settings.push_concurrency,
            default_credentials=sandbox.fcm_credentials))
        apns = SandboxRouter(apns, APNsAdapter(
            base_url=sandbox.apns.base_url, ssl_context=sandbox.client_ssl_context(),
            timeout_s=settings.delivery_timeout_s,
            default_credentials=sandbox.apns_credentials))
    return {
        "webhook": WebhookAdapter(
            timeout_s=settings.delivery_timeout_s,
            allow_private=settings.allow_private_endpoints,
            max_connections=settings.dispatch_concurrency,
        ),
        "fcm": fcm,
        "apns": apns,
    }


def create_app(
    settings: Settings,
    dsn: str,
    *,
    serve_api: bool = True,
    dispatcher: bool = True,
    adapters: Mapping[str, Adapter] | None = None,
    sandbox: bool = False,
) -> web.Application:
    """One gateway process: the HTTP API and/or the dispatcher over one database."""
    app = web.Application(
        middlewares=[logs.request_log, error_middleware],
        client_max_size=settings.max_payload_bytes,
    )
    app[keys.SETTINGS] = settings
    app[metrics.METRICS] = metrics.Metrics()
    app[keys.DSN] = dsn
    # The stream's fixed path goes before /v1/deliveries/{delivery_id}, which would take it.
    table = api.HEALTH_ROUTES + metrics.ROUTES + (
        stream.ROUTES + api.ROUTES + dashboard.ROUTES if serve_api else [])
    wire(app, table + (openapi.routes(table) if serve_api else []))
    if serve_api:
        dashboard.setup(app)

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

    async def run_sandbox(app: web.Application) -> AsyncIterator[None]:
        fakes = Sandbox()
        await fakes.start()
        app[keys.SANDBOX] = fakes
        log.info("sandbox: fake FCM at %s, fake APNs at %s", fakes.fcm.base_url,
                 fakes.apns.base_url)
        yield
        await fakes.stop()

    async def dispatch(app: web.Application) -> AsyncIterator[None]:
        chosen = dict(adapters) if adapters is not None else build_adapters(
            settings, app.get(keys.SANDBOX))
        worker = Dispatcher(
            app[keys.STORE], dsn, chosen,
            RetryPolicy(settings.retry_schedule, settings.retry_jitter,
                        settings.retry_after_max_s),
            concurrency=settings.dispatch_concurrency,
            endpoint_concurrency=settings.endpoint_concurrency,
            push_concurrency=settings.push_concurrency,
            batch=settings.dispatch_batch,
            lease_s=settings.effective_lease_s,
            poll_interval_s=settings.poll_interval_s,
            metrics=app[metrics.METRICS],
        )
        app[keys.DISPATCHER] = worker
        await worker.start()
        yield
        await worker.stop(settings.shutdown_grace_s)
        for adapter in chosen.values():
            await adapter.close()

    async def prune(app: web.Application) -> AsyncIterator[None]:
        runner = Retention(app[keys.DB], settings.retention_days * 86400.0,
                           metrics=app[metrics.METRICS])
        app[RETENTION] = runner
        runner.start()
        yield
        await runner.stop()

    app.cleanup_ctx.append(database)
    if sandbox:
        app.cleanup_ctx.append(run_sandbox)
    if serve_api:
        app.cleanup_ctx.append(ingest)
        app.cleanup_ctx.append(stream.listen)
        app.on_shutdown.append(stream.end_streams)
    if dispatcher:
        app.cleanup_ctx.append(dispatch)
        if settings.retention_days > 0:
            app.cleanup_ctx.append(prune)
    return app
