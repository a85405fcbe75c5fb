"""Typed keys for what the aiohttp application holds: one place for every shared
service a handler may reach (``request.app[appkeys.STORE]``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from gateway.config import Settings

if TYPE_CHECKING:
    from gateway.auth import Authenticator
    from gateway.batching import GroupCommit
    from gateway.cleanup import AppCleanup
    from gateway.dispatcher import Dispatcher
    from gateway.metrics import Metrics
    from gateway.outcomes import OutcomeStream
    from gateway.retention import Retention
    from gateway.sandbox import Sandbox
    from gateway.schemas import EventTypeSchemas
    from gateway.store.postgres import Accepted, EventDraft, Store
    from gateway.store.postgres_queue import PostgresQueue
    from gateway.store.tasks import TaskStore
    from gateway.tasks import TaskRunner
    from gateway.tracing import Spans

SETTINGS = web.AppKey("settings", Settings)
DSN = web.AppKey("dsn", str)
STORE: web.AppKey[Store] = web.AppKey("store")
QUEUE: web.AppKey[PostgresQueue] = web.AppKey("queue")
AUTH: web.AppKey[Authenticator] = web.AppKey("auth")
INGEST: web.AppKey[GroupCommit[EventDraft, Accepted]] = web.AppKey("ingest")
DISPATCHER: web.AppKey[Dispatcher] = web.AppKey("dispatcher")
SANDBOX: web.AppKey[Sandbox] = web.AppKey("sandbox")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
OUTCOMES: web.AppKey[OutcomeStream] = web.AppKey("outcomes")
RETENTION: web.AppKey[Retention] = web.AppKey("retention")
#: Set only when there are spans (gateway.spans.setup): absent, nothing makes any.
SPANS: web.AppKey[Spans] = web.AppKey("spans")
CLEANUP: web.AppKey[AppCleanup] = web.AppKey("cleanup")
SCHEMAS: web.AppKey[EventTypeSchemas] = web.AppKey("schemas")
TASKS: web.AppKey[TaskStore] = web.AppKey("tasks")
TASK_RUNNER: web.AppKey[TaskRunner] = web.AppKey("task_runner")
