"""The aiohttp application: what runs in one gateway process, started and stopped in
``cleanup_ctx`` order (spans → database → ingest → live tail → dispatcher → background
tasks → retention → cleanup of deleted apps → app changes) and torn down in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from adapters.apns import APNsAdapter
from adapters.base import Adapter
from adapters.fcm import FCMAdapter
from adapters.webhook import WebhookAdapter
from gateway import api, appkeys, dashboard, logs
from gateway.api import openapi
from gateway.api.http import error_middleware
from gateway.api.routing import wire
from gateway.auth import Authenticator, FailureLimiter
from gateway.batching import GroupCommit
from gateway.cleanup import AppCleanup
from gateway.config import Settings
from gateway.crypto import Sealer
from gateway.dispatcher import Dispatcher
from gateway.errors import DatabaseUnavailable
from gateway.fanout import FanoutRunner
from gateway.metrics import Metrics
from gateway.operational import OPERATIONAL_KIND
from gateway.outcomes import OutcomeStream
from gateway.retention import Retention, keep_partitions, partition_days
from gateway.retry import RetryPolicy
from gateway.sandbox import Sandbox, SandboxRouter
from gateway.schemas import EventTypeSchemas
from gateway.spans import setup as setup_spans
from gateway.store.database import (
    APPS_CHANNEL,
    DELIVERIES_CHANNEL,
    FANOUT_CHANNEL,
    TASKS_CHANNEL,
    Database,
)
from gateway.store.listening import listen_forever
from gateway.store.postgres import Accepted, EventDraft, Store
from gateway.store.postgres_queue import PostgresQueue
from gateway.store.records import Limits
from gateway.store.tasks import TaskStore
from gateway.tasks import TaskRunner
from gateway.tracing import Spans
from gateway_client.models import DeliveryKind

log = logging.getLogger("gateway")


def provider_ssl_context(settings: Settings) -> ssl.SSLContext:
    """The system's CAs, plus GATEWAY_PROVIDER_CA_FILE when set."""
    ctx = ssl.create_default_context()
    if settings.provider_ca_file:
        ctx.load_verify_locations(settings.provider_ca_file)
    return ctx


def make_store(db: Database, settings: Settings) -> Store:
    """The store as every process of this gateway makes it: its secrets sealed with
    GATEWAY_SECRET_KEY, its quotas defaulting to GATEWAY_MAX_*."""
    return Store(db, sealer=Sealer(settings.secret_key), limits=Limits(
        max_endpoints=settings.max_endpoints,
        max_devices_per_user=settings.max_devices_per_user,
        max_topics_per_device=settings.max_topics_per_device))


def build_adapters(settings: Settings, sandbox: Sandbox | None = None) -> dict[str, Adapter]:
    fcm: Adapter = FCMAdapter(
        base_url=settings.fcm_url, token_url=settings.fcm_token_url,
        ssl_context=provider_ssl_context(settings), timeout_s=settings.delivery_timeout_s,
        max_connections=settings.push_concurrency,
    )
    apns: Adapter = APNsAdapter(
        base_url=settings.apns_url,
        new_ssl_context=functools.partial(provider_ssl_context, settings),
        timeout_s=settings.delivery_timeout_s,
    )
    if sandbox is not None:
        fcm = SandboxRouter(fcm, FCMAdapter(
            base_url=sandbox.fcm.base_url, token_url=sandbox.fcm.token_url,
            timeout_s=settings.delivery_timeout_s, max_connections=settings.push_concurrency,
        ), sandbox)
        apns = SandboxRouter(apns, APNsAdapter(
            base_url=sandbox.apns.base_url, new_ssl_context=sandbox.client_ssl_context,
            timeout_s=settings.delivery_timeout_s,
        ), sandbox)
    webhook = WebhookAdapter(
        timeout_s=settings.delivery_timeout_s,
        allow_private=settings.allow_private_endpoints,
        max_connections=settings.dispatch_concurrency,
    )
    # Operational events are webhooks too, to the app's operational webhook.
    return {DeliveryKind.WEBHOOK: webhook, OPERATIONAL_KIND: webhook,
            DeliveryKind.FCM: fcm, DeliveryKind.APNS: apns}


def create_app(
    settings: Settings,
    dsn: str,
    *,
    serve_api: bool = True,
    dispatcher: bool = True,
    sandbox: bool = False,
    spans: Spans | None = None,
) -> web.Application:
    """One gateway process: the HTTP API and/or the dispatcher over one database.

    ``spans`` replaces what the OTEL_* variables ask for (:func:`gateway.spans.setup`).
    """
    app = web.Application(
        middlewares=[logs.request_log, error_middleware],
        client_max_size=settings.max_payload_bytes,
    )
    app[appkeys.SETTINGS] = settings
    app[appkeys.METRICS] = Metrics()
    app[appkeys.DSN] = dsn
    table = api.HEALTH_ROUTES + (api.ROUTES + dashboard.ROUTES if serve_api else [])
    wire(app, table + (openapi.routes(table) if serve_api else []))
    if serve_api:
        dashboard.setup(app)

    #: GATEWAY_SHUTDOWN_GRACE_S counts from when the stop began (on_shutdown runs before
    #: the server waits for the requests in flight): the loop time by which ingest's last
    #: commits and the deliveries in flight must be done too. The dispatcher claims
    #: nothing from then on, so its deliveries (and what the last commits hand it) finish
    #: while the requests do.
    stop_by: list[float] = []

    async def stop_began(app: web.Application) -> None:
        stop_by.append(asyncio.get_running_loop().time() + settings.shutdown_grace_s)
        worker = app.get(appkeys.DISPATCHER)
        if worker is not None:
            worker.stop_claiming()

    def grace_left() -> float:
        if not stop_by:  # a cleanup without a shutdown (a failed start)
            return settings.shutdown_grace_s
        return max(0.0, stop_by[0] - asyncio.get_running_loop().time())

    app.on_shutdown.append(stop_began)

    async def trace(app: web.Application) -> AsyncIterator[None]:
        made = spans if spans is not None else setup_spans()
        if made is not None:
            app[appkeys.SPANS] = made
        yield
        if made is not None:
            await asyncio.to_thread(made.shutdown)  # exports what is left

    async def database(app: web.Application) -> AsyncIterator[None]:
        db = await Database.connect(dsn, max_size=settings.db_pool_size)
        app[appkeys.STORE] = store = make_store(db, settings)
        app[appkeys.QUEUE] = PostgresQueue(db, store.sealer, settings.health_rules,
                                           rate_margin_s=settings.endpoint_rate_margin_s)
        app[appkeys.TASKS] = TaskStore(db)
        app[appkeys.AUTH] = Authenticator(
            app[appkeys.STORE], settings.admin_key or "",
            FailureLimiter(settings.auth_failures, settings.auth_failure_window_s,
                           settings.auth_block_s))
        partitions = asyncio.create_task(
            keep_partitions(store, partition_days(settings.retention_days)), name="partitions")
        yield
        partitions.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await partitions
        await db.close()

    async def ingest(app: web.Application) -> AsyncIterator[None]:
        store = app[appkeys.STORE]

        async def write(drafts: list[EventDraft]) -> list[Accepted | BaseException]:
            # With a dispatcher in this process, it sends what this commit makes for the
            # endpoints a claim would take as they come, handed over leased: no claim,
            # no wake-up (Dispatcher.handoff).
            worker = app.get(appkeys.DISPATCHER)
            handoff = worker.handoff() if worker is not None else None
            if worker is None or handoff is None:
                return await store.write_events(drafts)
            try:
                written = await store.write_events(drafts, handoff)
            except BaseException:
                # It may have committed (an answer lost, or a stop cancelling it): what it
                # leased goes back before the next claim, or at the stop.
                worker.lease_lost(handoff.lease_id)
                raise
            # Committed: nothing from here on may fail the batch, which would have it
            # written again.
            if handoff.lost:
                worker.lease_lost(handoff.lease_id)
            elif handoff.jobs:
                try:
                    worker.hand_over(handoff.jobs, handoff.leased_at)
                except Exception:  # a bug: their leases bring them back
                    log.exception("could not hand %d deliveries to the dispatcher",
                                  len(handoff.jobs))
            return written

        # A burst of 64 requests or more is written as two commits in flight at once, so
        # the process handles the requests one answers while the other commits
        # (gateway.batching); smaller shares would cost PostgreSQL more a row (a
        # statement costs it about as much as six events) than the overlap gains.
        batcher = GroupCommit(write, max_batch=500, max_flushers=2, min_share=32,
                              name="ingest", fails_together=(DatabaseUnavailable,))
        app[appkeys.INGEST] = batcher
        app[appkeys.SCHEMAS] = schemas = EventTypeSchemas(app[appkeys.STORE],
                                                          settings.event_type_cache_s)
        yield
        await batcher.close()
        schemas.close()

    async def run_sandbox(app: web.Application) -> AsyncIterator[None]:
        fakes = Sandbox()
        await fakes.start()
        app[appkeys.SANDBOX] = fakes
        log.info("sandbox: fake FCM at %s, fake APNs at %s", fakes.fcm.base_url,
                 fakes.apns.base_url)
        yield
        await fakes.stop()

    async def live_tail(app: web.Application) -> AsyncIterator[None]:
        stream = OutcomeStream(dsn, max_per_app=settings.max_streams_per_app,
                               keeper=functools.partial(app[appkeys.STORE].keep_live_tails,
                                                        uuid.uuid4()))
        app[appkeys.OUTCOMES] = stream
        await stream.start()
        yield
        await stream.stop()

    async def end_streams(app: web.Application) -> None:
        # on_shutdown: end open streams at once, so shutdown does not wait on them.
        app[appkeys.OUTCOMES].close_subscribers()

    async def dispatch(app: web.Application) -> AsyncIterator[None]:
        adapters = build_adapters(settings, app.get(appkeys.SANDBOX))
        queue = app[appkeys.QUEUE]
        worker = Dispatcher(
            queue, adapters,
            RetryPolicy(settings.retry_schedule, settings.retry_jitter,
                        settings.retry_after_max_s),
            wake_source=functools.partial(_listen, dsn, DELIVERIES_CHANNEL),
            concurrency=settings.dispatch_concurrency,
            endpoint_concurrency=settings.endpoint_concurrency,
            push_concurrency=settings.push_concurrency,
            app_concurrency=settings.app_concurrency,
            batch=settings.dispatch_batch,
            lease_s=settings.effective_lease_s,
            poll_interval_s=settings.poll_interval_s,
            claim_interval_s=settings.claim_interval_s,
            handoff_wait_s=settings.handoff_wait_s,
            metrics=app[appkeys.METRICS],
            spans=app.get(appkeys.SPANS),
        )
        fanout = FanoutRunner(queue, wake_source=functools.partial(_listen, dsn, FANOUT_CHANNEL),
                              poll_interval_s=settings.poll_interval_s, dispatcher=worker)
        app[appkeys.DISPATCHER] = worker
        await worker.start()
        fanout.start()
        yield
        await fanout.stop()
        # Ingest's commits still in flight (their requests gone at the server's shutdown
        # timeout) finish first: what they lease to this dispatcher reaches it while it
        # runs, to be sent within the grace or handed back by its stop.
        ingest = app.get(appkeys.INGEST)
        if ingest is not None:
            with contextlib.suppress(TimeoutError):  # a commit that hangs: the stop goes on
                async with asyncio.timeout(grace_left()):
                    await ingest.close()
        await worker.stop(grace_left())
        for adapter in adapters.values():
            await adapter.close()

    async def run_tasks(app: web.Application) -> AsyncIterator[None]:
        runner = TaskRunner(app[appkeys.TASKS],
                            wake_source=functools.partial(_listen, dsn, TASKS_CHANNEL),
                            poll_interval_s=settings.poll_interval_s,
                            batch=settings.task_batch, pause_s=settings.task_pause_s)
        app[appkeys.TASK_RUNNER] = runner
        runner.start()
        yield
        await runner.stop()

    async def prune(app: web.Application) -> AsyncIterator[None]:
        runner = Retention(app[appkeys.STORE], settings.retention_days * 86400.0,
                           metrics=app[appkeys.METRICS])
        app[appkeys.RETENTION] = runner
        runner.start()
        yield
        await runner.stop()

    app.cleanup_ctx.append(trace)
    async def clean_up(app: web.Application) -> AsyncIterator[None]:
        runner = AppCleanup(app[appkeys.STORE], metrics=app[appkeys.METRICS])
        app[appkeys.CLEANUP] = runner
        runner.start()
        yield
        await runner.stop()

    async def app_changes(app: web.Application) -> AsyncIterator[None]:
        # One LISTEN on gateway_apps: a deleted app or a rotated key leaves this process's
        # key cache at once (which caches only while it hears them), and a deletion ends
        # the app's live tails here, drops what is kept in memory for it (provider tokens
        # and connections, its sandbox identity and inbox) and wakes the cleanup. Changed
        # endpoints get back the deliveries to them the dispatcher holds unstarted.
        auth, cleanup = app[appkeys.AUTH], app.get(appkeys.CLEANUP)
        outcomes, worker = app.get(appkeys.OUTCOMES), app.get(appkeys.DISPATCHER)
        fakes = app.get(appkeys.SANDBOX)
        forgetting: set[asyncio.Task[None]] = set()

        def changed(_conn: object, _pid: int, _channel: str, payload: object) -> None:
            change, _, app_id = str(payload).partition(" ")
            if change == "endpoints":
                if worker is not None:
                    worker.forget_endpoints(app_id.split())
                return
            auth.forget(app_id)
            if change == "deleted":
                if outcomes is not None:
                    outcomes.end_app(app_id)
                if fakes is not None:
                    fakes.forget(app_id)
                if worker is not None:
                    task = asyncio.create_task(worker.forget_app(app_id),
                                               name=f"forget-{app_id}")
                    forgetting.add(task)
                    task.add_done_callback(forgetting.discard)
                if cleanup is not None:
                    cleanup.wake()

        def connected() -> None:
            auth.hearing(True)
            if worker is not None:  # an endpoint may have changed unheard meanwhile
                worker.hearing(True)
            if cleanup is not None:  # a deletion may have gone unheard meanwhile
                cleanup.wake()

        stopping = False

        def lost() -> None:
            auth.hearing(False)
            # (Not for the listener's own stop: what the last commits hand over at
            # shutdown is sent within the grace, as deliveries in flight are.)
            if worker is not None and not stopping:
                worker.hearing(False)

        lost()  # until the LISTEN connection is up
        listener = asyncio.create_task(listen_forever(
            dsn, {APPS_CHANNEL: changed}, on_connected=connected, on_lost=lost),
            name="app-changes")
        yield
        stopping = True
        listener.cancel()
        await asyncio.gather(listener, *forgetting, return_exceptions=True)

    app.cleanup_ctx.append(database)
    if sandbox:
        app.cleanup_ctx.append(run_sandbox)
    if serve_api:
        app.cleanup_ctx.append(ingest)
        app.cleanup_ctx.append(live_tail)
        app.on_shutdown.append(end_streams)
    if dispatcher:
        app.cleanup_ctx.append(dispatch)
        app.cleanup_ctx.append(run_tasks)
        if settings.retention_days > 0:
            app.cleanup_ctx.append(prune)
        app.cleanup_ctx.append(clean_up)
    app.cleanup_ctx.append(app_changes)
    return app


async def _listen(dsn: str, channel: str, wake: Callable[[], None]) -> None:
    """A wake-up source: LISTEN on ``channel``; after each (re)connect, look again at
    once, since notifications sent meanwhile are lost."""
    await listen_forever(dsn, {channel: lambda *_: wake()}, on_connected=wake)
