"""The store: everything the gateway keeps, behind named queries (``sql/queries.sql``).

Callers get records (:mod:`gateway.store.records`) and domain errors; asyncpg never leaks
past this package. The dispatcher's side of the deliveries table is the queue
(:mod:`gateway.store.queue`); this class is the API's and the dashboard's side.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from adapters.base import EventView
from gateway.crypto import SECRET_FIELDS, Sealer, open_credentials, seal_credentials
from gateway.endpoint_headers import open_headers, seal_headers
from gateway.errors import (
    DatabaseUnavailable,
    DeliveryNotRetryable,
    EventTypeExists,
    IdempotencyKeyReused,
    LimitExceeded,
    NotFound,
    RateLimited,
)
from gateway.ids import hash_key, new_api_key, new_id, new_ids, new_webhook_secret
from gateway.store.database import QUERIES, Database
from gateway.store.endpoint_health import (
    announce_changed,
    disable_endpoints,
    enable_endpoints,
)
from gateway.store.operational import OperationalWebhooks
from gateway.store.postgres_queue import ingested_jobs
from gateway.store.queue import Handoff
from gateway.store.records import (
    App,
    Attempt,
    Backlog,
    CreatedApp,
    CreatedEndpoint,
    Credentials,
    Delivery,
    DeliveryView,
    Device,
    Endpoint,
    EndpointSecret,
    Event,
    EventSummary,
    EventType,
    EventTypeSchema,
    KeyedApp,
    Limits,
    Page,
    QueueHealth,
    RotatedAppKey,
    Row,
    TestEvent,
    make,
    make_all,
)
from gateway_client.models import DeliveryStatus, DisabledReason, EndpointStatus, Provider

if TYPE_CHECKING:
    from gateway.store.database import Connection

log = logging.getLogger("gateway.store")

R = TypeVar("R")
A = TypeVar("A", bound=App)
E = TypeVar("E", bound=Endpoint)

IDEMPOTENCY_WINDOW_S = 24 * 3600
ROTATION_GRACE_S = 24 * 3600
# Advisory lock keys, each taken for one thing only: 727274 migrations (queries.sql),
# 727276 the seed of the per-user device locks (queries.sql), 727277 making day partitions
# (gateway_make_partitions, migration 0005).
#: pg_advisory_lock key that lets one process prune at a time.
RETENTION_LOCK_KEY = 727275
#: pg_advisory_lock key that lets one process clean up deleted apps at a time. Not 727277,
#: which making day partitions takes: a process makes them as it starts, just when its
#: first cleanup pass runs, and that pass was then skipped (the next one 30 s later), and
#: making partitions waited for any cleanup pass under way.
CLEANUP_LOCK_KEY = 727278
DEFAULT_LIMITS = Limits(max_endpoints=100, max_devices_per_user=20, max_topics_per_device=100)


def check_topics(app: App, topics: list[str]) -> None:
    if len(topics) > app.max_topics_per_device:
        raise LimitExceeded(
            f"A device of this app takes at most {app.max_topics_per_device} topics.",
            details=[{"path": "topics", "limit": "max_topics_per_device",
                      "value": app.max_topics_per_device}])


@dataclass(frozen=True)
class EventDraft:
    app_id: str
    type: str
    payload: str
    idempotency_key: str | None = None
    body_sha256: bytes | None = None
    #: Push targets as JSON text: {"user_ids", "topics", "notification"}.
    push: str | None = None
    #: The app's events per second (None: no limit), from its key.
    rate_limit: int | None = None
    #: The W3C trace context its deliveries descend from (gateway.tracing), if any.
    traceparent: str | None = None
    tracestate: str | None = None


@dataclass(frozen=True)
class Accepted:
    id: str
    type: str
    created_at: datetime
    #: False when an earlier request with the same Idempotency-Key made this event.
    created: bool


@dataclass(frozen=True)
class DeliveryFilter:
    """Which deliveries a listing or a bulk retry takes (each None = any)."""

    status: DeliveryStatus | None = None
    endpoint_id: str | None = None
    #: An endpoint's event type pattern: exact, ``prefix.*`` or ``*``.
    event_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _page(cls: type[R], rows: Sequence[asyncpg.Record], limit: int) -> Page[R]:
    """A page of ``limit`` records from ``limit + 1`` rows: the extra one says there is
    more, and the last record's id is where the next page starts."""
    items = make_all(cls, rows[:limit])
    return Page(items, str(rows[limit - 1]["id"]) if len(rows) > limit else None)


def _ident(name: str) -> str:
    """A table name as SQL (names come from the catalog; quoted all the same)."""
    return '"' + name.replace('"', '""') + '"'


def _found(row: asyncpg.Record | None, what: str, ident: str) -> asyncpg.Record:
    if row is None:
        raise NotFound(f"No {what} with id {ident!r}." if what == "app"
                       else f"No {what} with id {ident!r} in this app.")
    return row


def _named(row: asyncpg.Record | None, name: str) -> asyncpg.Record:
    if row is None:
        raise NotFound(f"No event type {name!r} in this app.")
    return row


def _json_or_none(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value)


def _app(cls: type[A], row: Row, defaults: Limits, **extra: Any) -> A:
    """An app record, its unset limits filled with the operator's defaults."""
    return make(cls, row, max_endpoints=_or(row["max_endpoints"], defaults.max_endpoints),
                max_devices_per_user=_or(row["max_devices_per_user"],
                                         defaults.max_devices_per_user),
                max_topics_per_device=_or(row["max_topics_per_device"],
                                          defaults.max_topics_per_device), **extra)


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _json_or_null(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


class Store:
    def __init__(self, db: Database, *, sealer: Sealer | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.db = db
        self.sealer = sealer or Sealer(None)
        self.limits = limits
        #: Each app's operational webhook (gateway/operational.py).
        self.operational = OperationalWebhooks(db, self.sealer)

    async def ping(self) -> None:
        """Raises DatabaseUnavailable unless PostgreSQL answers within 2 s."""
        await self.db.ping()

    # --- apps -------------------------------------------------------------------------

    async def create_app(self, name: str) -> CreatedApp:
        key = new_api_key()
        app_id = new_id("app")
        secret = self.sealer.seal(base64.b64encode(secrets.token_bytes(32)).decode(),
                                  f"app:{app_id}")
        row = await self.db.fetchrow("create_app", app_id, name, hash_key(key), secret)
        assert row is not None
        return _app(CreatedApp, row, self.limits, api_key=key)

    async def app_for_key_hash(self, key_hash: bytes) -> KeyedApp | None:
        """The live app whose key, or previous key still in its grace, this is."""
        row = await self.db.fetchrow("app_by_key_hash", key_hash)
        if row is None:
            return None
        return KeyedApp(_app(App, row, self.limits), row["key_expires_at"])

    async def get_app(self, app_id: str) -> App:
        return _app(App, _found(await self.db.fetchrow("get_app", app_id), "app", app_id),
                    self.limits)

    async def list_apps(self, cursor: str | None, limit: int) -> Page[App]:
        rows = await self.db.fetch("list_apps", cursor, limit + 1)
        return Page([_app(App, r, self.limits) for r in rows[:limit]],
                    str(rows[limit - 1]["id"]) if len(rows) > limit else None)

    async def set_app_limits(self, app_id: str, changes: dict[str, int | None]) -> App:
        """Set some of an app's own limits (``rate_limit``, ``max_endpoints``,
        ``max_devices_per_user``, ``max_topics_per_device``); None means no rate limit,
        or the operator's default quota."""
        row = await self.db.fetchrow("set_app_limits", app_id, list(changes),
                                     list(changes.values()))
        return _app(App, _found(row, "app", app_id), self.limits)

    async def delete_app(self, app_id: str) -> None:
        """Mark the app deleted (404 for an unknown or already deleted one): it is gone for
        every caller at once; :mod:`gateway.cleanup` removes its rows afterwards."""
        _found(await self.db.fetchrow("delete_app", app_id), "app", app_id)

    async def rotate_app_key(self, app_id: str, grace_s: float) -> RotatedAppKey:
        """A new API key for the app; the one it replaces keeps working for ``grace_s``
        seconds (0: it ends now), and one still in its grace from before ends now."""
        key = new_api_key()
        row = await self.db.fetchrow("rotate_app_key", app_id, hash_key(key), float(grace_s))
        return make(RotatedAppKey, _found(row, "app", app_id), api_key=key)

    async def user_token_secret(self, app_id: str) -> bytes | None:
        row = await self.db.fetchrow("user_token_secret", app_id)
        if row is None:
            return None
        return base64.b64decode(self.sealer.open(row["user_token_secret"], f"app:{app_id}"))

    # --- endpoints --------------------------------------------------------------------

    def _endpoint(self, cls: type[E], row: Row, **extra: Any) -> E:
        """An endpoint record from its row, its headers' values opened."""
        return make(cls, row, headers=dict(open_headers(self.sealer, row["id"],
                                                        row["headers"])), **extra)

    async def create_endpoint(
        self, app_id: str, url: str, description: str, event_types: list[str] | None, *,
        rate_limit: int | None = None, headers: dict[str, str] | None = None,
        filter_: dict[str, Any] | None = None,
    ) -> CreatedEndpoint:
        """A new endpoint, within the app's ``max_endpoints``; ``headers`` and ``filter_``
        as :mod:`gateway.endpoint_headers` and :mod:`gateway.filters` checked them."""
        endpoint_id, secret = new_id("ep"), new_webhook_secret()
        async with self.db.transaction() as conn:
            own = await conn.fetchval(QUERIES["lock_app"], app_id)
            allowed = _or(own, self.limits.max_endpoints)
            if await conn.fetchval(QUERIES["count_endpoints"], app_id) >= allowed:
                raise LimitExceeded(
                    f"This app has its {allowed} endpoints; delete one, or ask the operator "
                    "to raise max_endpoints.",
                    details=[{"limit": "max_endpoints", "value": allowed}])
            row = await conn.fetchrow(
                QUERIES["create_endpoint"], endpoint_id, app_id, url, description,
                event_types, self.sealer.seal(secret, f"endpoint:{endpoint_id}"),
                rate_limit, seal_headers(self.sealer, endpoint_id, headers or {}),
                _json_or_null(filter_))
            if rate_limit is not None:
                await conn.execute(QUERIES["create_send_rate"], endpoint_id, rate_limit)
        assert row is not None
        return self._endpoint(CreatedEndpoint, row, secret=secret)

    async def list_endpoints(self, app_id: str, cursor: str | None,
                             limit: int) -> Page[Endpoint]:
        rows = await self.db.fetch("list_endpoints", app_id, cursor, limit + 1)
        return Page([self._endpoint(Endpoint, r) for r in rows[:limit]],
                    str(rows[limit - 1]["id"]) if len(rows) > limit else None)

    async def get_endpoint(self, app_id: str, endpoint_id: str) -> Endpoint:
        row = await self.db.fetchrow("get_endpoint", app_id, endpoint_id)
        return self._endpoint(Endpoint, _found(row, "endpoint", endpoint_id))

    async def get_endpoint_secret(self, app_id: str, endpoint_id: str) -> EndpointSecret:
        row = _found(await self.db.fetchrow("get_endpoint_secret", app_id, endpoint_id),
                     "endpoint", endpoint_id)
        return make(EndpointSecret, row,
                    secret=self.sealer.open(row["secret"], f"endpoint:{endpoint_id}"))

    async def update_endpoint(
        self, app_id: str, endpoint_id: str, changes: dict[str, Any]
    ) -> Endpoint:
        """Apply a PATCH. Disabling (reason ``manual``) parks pending deliveries; setting
        ``status`` active (enabling, or on an active endpoint) starts it afresh, not
        failing and its circuit closed, and resumes them. A change of status tells the
        app's operational webhook (gateway/store/endpoint_health.py); a new rate limit
        books held-back deliveries again under it. Every process hears of the change at
        commit (``announce_changed``)."""
        async with self.db.transaction() as conn:
            found = _found(
                await conn.fetchrow(QUERIES["get_endpoint_for_update"], app_id, endpoint_id),
                "endpoint", endpoint_id)
            # Its headers stay sealed here: a PATCH may replace ones no key opens any more.
            current = make(Endpoint, found, headers={})
            merged: dict[str, Any] = {
                "url": current.url, "description": current.description,
                "event_types": current.event_types, "rate_limit": current.rate_limit,
                "filter": current.filter, **changes}
            status = changes.get("status")
            if status == EndpointStatus.DISABLED:
                await disable_endpoints(conn, [endpoint_id], DisabledReason.MANUAL)
            elif status == EndpointStatus.ACTIVE:
                await enable_endpoints(conn, [endpoint_id])
            enabled = (status == EndpointStatus.ACTIVE
                       and current.status is EndpointStatus.DISABLED)
            headers = found["headers"] if "headers" not in changes else seal_headers(
                self.sealer, endpoint_id, changes["headers"] or {})
            row = await conn.fetchrow(
                QUERIES["update_endpoint"], app_id, endpoint_id, merged["url"],
                merged["description"], merged["event_types"], merged["rate_limit"], headers,
                _json_or_null(merged["filter"]))
            await announce_changed(conn, [endpoint_id])
            booked_until = None
            if merged["rate_limit"] != current.rate_limit or enabled:
                booked_until = await conn.fetchval(QUERIES["reset_send_rate"], endpoint_id,
                                                   merged["rate_limit"])
        # Once committed: deliveries held back under the old limit (see release_booked);
        # should the database be away now, they keep their booked times.
        if merged["rate_limit"] != current.rate_limit and booked_until is not None:
            with contextlib.suppress(DatabaseUnavailable):
                await self.db.execute("release_booked", endpoint_id, app_id, booked_until)
        assert row is not None
        return self._endpoint(Endpoint, row)

    async def delete_endpoint(self, app_id: str, endpoint_id: str) -> None:
        """Delete it; its pending deliveries fail, having nowhere to go (and every process
        hears of it at commit: ``announce_changed``)."""
        async with self.db.transaction() as conn:
            await conn.execute(QUERIES["lock_pending_of_endpoint"], app_id, endpoint_id)
            _found(await conn.fetchrow(QUERIES["delete_endpoint"], app_id, endpoint_id),
                   "endpoint", endpoint_id)
            await announce_changed(conn, [endpoint_id])

    async def rotate_secret(self, app_id: str, endpoint_id: str) -> EndpointSecret:
        secret = new_webhook_secret()
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                QUERIES["rotate_secret"], app_id, endpoint_id,
                self.sealer.seal(secret, f"endpoint:{endpoint_id}"), float(ROTATION_GRACE_S))
            found = _found(row, "endpoint", endpoint_id)
            # Deliveries handed over before it would carry the old secret's signature
            # alone: every process hands them back, to be signed with both.
            await announce_changed(conn, [endpoint_id])
        return make(EndpointSecret, found, secret=secret)

    # --- event types ------------------------------------------------------------------

    async def create_event_type(self, app_id: str, name: str, description: str,
                                schema: dict[str, Any] | None,
                                max_event_types: int) -> EventType:
        """A new catalog entry: 409 ``event_type_exists`` when the name is taken, else
        422 ``limit_exceeded`` when the app has ``max_event_types`` entries already."""
        async with self.db.transaction() as conn:
            await conn.fetchval(QUERIES["lock_app"], app_id)
            row = await conn.fetchrow(QUERIES["create_event_type"], app_id, name,
                                      description, _json_or_none(schema))
            if row is None:
                raise EventTypeExists(f"The event type {name!r} already exists in this app.",
                                      details=[{"path": "name", "name": name}])
            if await conn.fetchval(QUERIES["count_event_types"], app_id) > max_event_types:
                raise LimitExceeded(
                    f"This app's catalog has its {max_event_types} event types; delete one, "
                    "or ask the operator to raise GATEWAY_MAX_EVENT_TYPES.",
                    details=[{"limit": "max_event_types", "value": max_event_types}])
        return make(EventType, row)

    async def list_event_types(self, app_id: str, cursor: str | None,
                               limit: int) -> Page[EventType]:
        rows = await self.db.fetch("list_event_types", app_id, cursor, limit + 1)
        return Page(make_all(EventType, rows[:limit]),
                    str(rows[limit - 1]["name"]) if len(rows) > limit else None)

    async def get_event_type(self, app_id: str, name: str) -> EventType:
        return make(EventType, _named(await self.db.fetchrow("get_event_type", app_id, name),
                                      name))

    async def update_event_type(self, app_id: str, name: str,
                                changes: dict[str, Any]) -> EventType:
        """Set ``description`` and/or ``schema`` (None removes the schema)."""
        row = await self.db.fetchrow(
            "update_event_type", app_id, name, "description" in changes,
            changes.get("description"), "schema" in changes,
            _json_or_none(changes.get("schema")))
        return make(EventType, _named(row, name))

    async def delete_event_type(self, app_id: str, name: str) -> None:
        _named(await self.db.fetchrow("delete_event_type", app_id, name), name)

    async def event_type_schema(self, app_id: str, name: str) -> EventTypeSchema | None:
        """The schema of one type of the app's catalog (None: no entry, or no schema)."""
        row = await self.db.fetchrow("event_type_schema", app_id, name)
        return None if row is None else make(EventTypeSchema, row)

    # --- events -----------------------------------------------------------------------

    async def write_events(self, drafts: list[EventDraft],
                           handoff: Handoff | None = None) -> list[Accepted | BaseException]:
        """Make each draft durable with its deliveries (see :meth:`_write_events`), after
        counting drafts of rate-limited apps against their current second: those past an
        app's ``rate_limit`` are refused (429) and write nothing. A replay of an
        Idempotency-Key used within the window is answered, never counted.

        With ``handoff``, the deliveries a claim would take as they come are made leased
        to it and put in its ``jobs`` for the caller's dispatcher to send, once this
        returns (committed)."""
        if all(d.rate_limit is None for d in drafts):
            return await self._write_events(drafts, handoff)
        counted = await self._rate_counted(drafts)
        wanted: dict[str, tuple[int, int]] = {}
        for d, counts in zip(drafts, counted, strict=True):
            if counts and d.rate_limit is not None:
                count, _ = wanted.get(d.app_id, (0, d.rate_limit))
                wanted[d.app_id] = (count + 1, d.rate_limit)
        rows = await self.db.fetch("take_ingest_rate", list(wanted),
                                   [n for n, _ in wanted.values()],
                                   [cap for _, cap in wanted.values()])
        granted = {str(r["app_id"]): int(r["granted"]) for r in rows}
        results: list[Accepted | BaseException | None] = [None] * len(drafts)
        kept: list[int] = []
        refused: set[tuple[str, str | None]] = set()
        for i, d in enumerate(drafts):
            scope = (d.app_id, d.idempotency_key)
            if d.rate_limit is not None and (
                    (counted[i] and granted.get(d.app_id, d.rate_limit) <= 0)
                    or (d.idempotency_key is not None and scope in refused)):
                # A later draft of a refused key in this batch would otherwise be the
                # first to write: it is refused alike.
                refused.add(scope)
                results[i] = RateLimited(
                    f"This app may emit {d.rate_limit} events per second; slow down.",
                    retry_after_s=1)
                continue
            if counted[i]:
                granted[d.app_id] = granted.get(d.app_id, d.rate_limit or 0) - 1
            kept.append(i)
        if kept:
            written_all = await self._write_events([drafts[i] for i in kept], handoff)
            for i, written in zip(kept, written_all, strict=True):
                results[i] = written
        return [r if r is not None else RuntimeError("unsettled") for r in results]

    async def _rate_counted(self, drafts: list[EventDraft]) -> list[bool]:
        """Which drafts count against their app's rate: those of rate-limited apps that
        write an event (no key, or the first use of a key not used within the window;
        later drafts of one key in a batch replay the first)."""
        keyed = [d for d in drafts if d.rate_limit is not None and d.idempotency_key]
        used: set[tuple[str, str]] = set()
        if keyed:
            rows = await self.db.fetch("existing_idempotency_keys", [d.app_id for d in keyed],
                                       [d.idempotency_key for d in keyed],
                                       float(IDEMPOTENCY_WINDOW_S))
            used = {(str(r["app_id"]), str(r["key"])) for r in rows}
        counted: list[bool] = []
        for d in drafts:
            scope = (d.app_id, d.idempotency_key or "")
            counted.append(d.rate_limit is not None and (
                d.idempotency_key is None or scope not in used))
            if d.idempotency_key is not None:
                used.add(scope)
        return counted

    async def _write_events(self, drafts: list[EventDraft],
                            handoff: Handoff | None) -> list[Accepted | BaseException]:
        """Make each draft durable with its deliveries, all in one transaction.

        A draft whose Idempotency-Key was already used within 24 h makes nothing: it
        answers with the first event, or :class:`IdempotencyKeyReused` if its body differs.
        The same key twice in one batch is settled by writing the first and then
        answering the rest from it.
        """
        now = datetime.now(UTC)
        ids = new_ids("evt", len(drafts))
        results: list[Accepted | BaseException | None] = [None] * len(drafts)
        seen: set[tuple[str, str]] = set()
        first: list[int] = []
        for i, d in enumerate(drafts):
            if d.idempotency_key is None:
                continue
            scope = (d.app_id, d.idempotency_key)
            if scope not in seen:
                first.append(i)
            seen.add(scope)

        lease = ((handoff.lease_id, handoff.lease_s, handoff.full_endpoints,
                  handoff.full_apps) if handoff is not None else (None, None, None, None))

        def insert_args(rows: list[int]) -> tuple[Any, ...]:
            return ([ids[i] for i in rows], [drafts[i].app_id for i in rows],
                    [drafts[i].type for i in rows], [drafts[i].payload for i in rows],
                    now, [drafts[i].push for i in rows],
                    [drafts[i].traceparent for i in rows], [drafts[i].tracestate for i in rows],
                    *lease)

        def hand_over(rows: list[int], leased: list[asyncpg.Record]) -> None:
            if handoff is None or leased[0]["id"] is None:
                return
            events = {ids[i]: EventView(ids[i], drafts[i].type, drafts[i].payload, now,
                                        drafts[i].traceparent, drafts[i].tracestate)
                      for i in rows}
            try:
                handoff.jobs += ingested_jobs(self.sealer, leased, events, handoff.lease_id)
            except Exception:
                # The events are written (or about to be): failing here would have the
                # batch written again. Their deliveries go back to the queue instead.
                log.exception("could not hand over an ingest commit's deliveries; they go "
                              "back to the queue")
                handoff.jobs = []
                handoff.lost = True

        if not first:
            # The common case: one statement, its own transaction, no BEGIN/COMMIT trips.
            every = list(range(len(drafts)))
            hand_over(every, await self.db.fetch("insert_events", *insert_args(every)))
            return [Accepted(ids[i], d.type, now, created=True) for i, d in enumerate(drafts)]

        async with self.db.transaction() as conn:
            rows = await conn.fetch(
                QUERIES["claim_idempotency_keys"],
                [drafts[i].app_id for i in first], [drafts[i].idempotency_key for i in first],
                [drafts[i].body_sha256 for i in first], [ids[i] for i in first],
                float(IDEMPOTENCY_WINDOW_S),
            )
            owned = {(r["app_id"], r["key"]) for r in rows}
            fresh = [
                i for i, d in enumerate(drafts)
                if d.idempotency_key is None
                or (i in first and (d.app_id, d.idempotency_key) in owned)
            ]
            if fresh:
                hand_over(fresh, await conn.fetch(QUERIES["insert_events"],
                                                  *insert_args(fresh)))
            for i in fresh:
                results[i] = Accepted(ids[i], drafts[i].type, now, created=True)
            replay = [i for i, r in enumerate(results) if r is None]
            if replay:
                existing = {
                    (r["app_id"], r["key"]): r
                    for r in await conn.fetch(
                        QUERIES["existing_idempotency_keys"],
                        [drafts[i].app_id for i in replay],
                        [drafts[i].idempotency_key for i in replay],
                        float(IDEMPOTENCY_WINDOW_S),
                    )
                }
                for i in replay:
                    d = drafts[i]
                    prior = existing.get((d.app_id, str(d.idempotency_key)))
                    if prior is None:  # cannot happen: the key is in this transaction
                        results[i] = RuntimeError("idempotency key vanished")
                    elif prior["body_sha256"] != d.body_sha256:
                        results[i] = IdempotencyKeyReused(
                            "This Idempotency-Key was already used with a different body "
                            "in the last 24 hours.",
                            details=[{"event_id": prior["id"]}],
                        )
                    else:
                        results[i] = Accepted(prior["id"], prior["type"], prior["created_at"],
                                              created=False)
        return [r if r is not None else RuntimeError("unsettled") for r in results]

    async def get_event(self, app_id: str, event_id: str) -> Event:
        return make(Event, _found(await self.db.fetchrow("get_event", app_id, event_id),
                                  "event", event_id))

    async def deliveries_of(self, app_id: str, event: Event) -> list[Delivery]:
        """Every delivery of an event the caller already found in its app."""
        return make_all(Delivery, await self.db.fetch("deliveries_of_event", app_id,
                                                      event.id))

    async def list_events(
        self, app_id: str, event_type: str | None, cursor: str | None, limit: int
    ) -> Page[Event]:
        rows = await self.db.fetch("list_events", app_id, event_type, cursor, limit + 1)
        return _page(Event, rows, limit)

    async def send_test_event(self, app_id: str, endpoint_id: str,
                              payload: str) -> TestEvent | None:
        """A ``gateway.test`` event delivered to this endpoint only, or None when the
        endpoint is disabled."""
        row = await self.db.fetchrow("send_test_event", new_id("evt"), app_id, endpoint_id,
                                     payload)
        if row is None:
            await self.get_endpoint(app_id, endpoint_id)  # 404 for an unknown endpoint
            return None
        return make(TestEvent, row)

    # --- deliveries -------------------------------------------------------------------

    async def list_deliveries(
        self, app_id: str, *, status: DeliveryStatus | None, endpoint_id: str | None,
        event_id: str | None, cursor: str | None, limit: int,
    ) -> Page[Delivery]:
        if event_id is not None:
            rows = await self.db.fetch("list_deliveries_of_event", app_id, event_id, status,
                                       endpoint_id, cursor, limit + 1)
        else:
            rows = await self.db.fetch("list_deliveries", app_id, status, endpoint_id,
                                       cursor, limit + 1)
        return _page(Delivery, rows, limit)

    async def get_delivery(self, app_id: str, delivery_id: str) -> Delivery:
        return make(Delivery, _found(await self.db.fetchrow("get_delivery", app_id,
                                                            delivery_id),
                                     "delivery", delivery_id))

    async def list_attempts(self, app_id: str, delivery_id: str) -> list[Attempt]:
        await self.get_delivery(app_id, delivery_id)  # 404 outside this app
        return make_all(Attempt, await self.db.fetch("list_attempts", [delivery_id]))

    async def attempts_of(self, delivery_ids: list[str]) -> list[Attempt]:
        """Attempts of deliveries the caller already scoped to one app, oldest first."""
        if not delivery_ids:
            return []
        return make_all(Attempt, await self.db.fetch("list_attempts", delivery_ids))

    async def retry_delivery(self, app_id: str, delivery_id: str) -> Delivery:
        """Requeue one failed delivery now (409 for any other)."""
        rows = await self.db.fetch("requeue_failed", app_id, delivery_id, None, None, None,
                                   None, None)
        if not rows:
            current = await self.get_delivery(app_id, delivery_id)
            raise DeliveryNotRetryable(
                f"Only failed deliveries can be retried; this one is {current.status}"
                + (" and its endpoint or device was deleted"
                   if current.status is DeliveryStatus.FAILED else "") + "."
            )
        return make(Delivery, rows[0])

    async def retry_failed(self, app_id: str, chosen: DeliveryFilter) -> int:
        """Requeue every failed delivery of the app that ``chosen`` takes; how many."""
        rows = await self.db.fetch("requeue_failed", app_id, None, chosen.endpoint_id,
                                   chosen.event_type, chosen.since, chosen.until, None)
        return len(rows)

    # --- devices ----------------------------------------------------------------------

    async def upsert_device(
        self, app: App, *, platform: str, token: str, user_id: str, topics: list[str],
        locale: str | None, app_version: str | None,
    ) -> tuple[Device, bool]:
        """The device, and whether it is new; within the app's devices-per-user limit."""
        check_topics(app, topics)
        async with self.db.transaction() as conn:
            await conn.execute(QUERIES["lock_user_devices"], app.id, user_id)
            if await conn.fetchval(QUERIES["count_user_devices"], app.id, user_id,
                                   token) >= app.max_devices_per_user:
                raise LimitExceeded(
                    f"User {user_id!r} has {app.max_devices_per_user} live devices, this "
                    "app's limit; delete one first.",
                    details=[{"limit": "max_devices_per_user",
                              "value": app.max_devices_per_user}])
            row = await conn.fetchrow(QUERIES["upsert_device"], new_id("dev"), app.id,
                                      platform, token, user_id, topics, locale, app_version)
        assert row is not None
        return make(Device, row), bool(row["inserted"])

    async def get_device(self, app_id: str, token: str, user_id: str | None) -> Device:
        return make(Device, _found(await self.db.fetchrow("get_device", app_id, token,
                                                          user_id), "device", token))

    async def list_devices(
        self, app_id: str, *, user_id: str | None = None, topic: str | None = None,
        platform: str | None = None, status: str | None = None, search: str | None = None,
        cursor: str | None, limit: int,
    ) -> Page[Device]:
        rows = await self.db.fetch("list_devices", app_id, user_id, topic, platform, status,
                                   search, cursor, limit + 1)
        return _page(Device, rows, limit)

    async def set_device_topics(self, app: App, token: str, user_id: str | None,
                                topics: list[str]) -> Device:
        check_topics(app, topics)
        row = await self.db.fetchrow("set_device_topics", app.id, token, user_id, topics)
        return make(Device, _found(row, "device", token))

    async def delete_device(self, app_id: str, token: str, user_id: str | None) -> None:
        _found(await self.db.fetchrow("delete_device", app_id, token, user_id), "device", token)

    # --- push credentials -------------------------------------------------------------

    async def put_credentials(self, app_id: str, provider: Provider,
                              config: dict[str, Any]) -> Credentials:
        sealed = seal_credentials(self.sealer, app_id, provider, config)
        row = await self.db.fetchrow("put_credentials", app_id, provider.value,
                                     json.dumps(sealed))
        assert row is not None
        return make(Credentials, row, config=config)

    async def list_credentials(self, app_id: str) -> list[Credentials]:
        return make_all(Credentials, await self.db.fetch("list_credentials", app_id))

    # --- dashboard --------------------------------------------------------------------

    async def dashboard_events(
        self, app_id: str, *, event_type: str | None, status: DeliveryStatus | None,
        since: datetime | None, until: datetime | None, id_prefix: str | None,
        cursor: str | None, limit: int,
    ) -> Page[EventSummary]:
        rows = await self.db.fetch("dashboard_events", app_id, event_type, status, since,
                                   until, id_prefix, cursor, limit + 1)
        return _page(EventSummary, rows, limit)

    async def dashboard_event_deliveries(self, app_id: str, event_id: str,
                                         limit: int) -> list[DeliveryView]:
        return make_all(DeliveryView, await self.db.fetch("dashboard_event_deliveries",
                                                          app_id, event_id, limit))

    async def dashboard_deliveries(self, app_id: str, chosen: DeliveryFilter, *,
                                   cursor: str | None, limit: int) -> Page[DeliveryView]:
        rows = await self.db.fetch("dashboard_deliveries", app_id, chosen.status,
                                   chosen.endpoint_id, chosen.event_type, chosen.since,
                                   chosen.until, cursor, limit + 1)
        return _page(DeliveryView, rows, limit)

    async def dashboard_health(self, app_id: str | None) -> QueueHealth:
        row = await self.db.fetchrow("dashboard_health", app_id)
        assert row is not None
        return make(QueueHealth, row)

    # --- dashboard sessions -----------------------------------------------------------

    async def create_session(self, kind: str, app_id: str | None, ttl_s: float) -> str:
        """A new dashboard session; its id."""
        session_id = secrets.token_urlsafe(24)
        await self.db.execute("create_session", session_id, kind, app_id, float(ttl_s))
        return session_id

    async def session_alive(self, session_id: str) -> bool:
        return await self.db.fetchrow("session_alive", session_id) is not None

    async def end_session(self, session_id: str) -> None:
        await self.db.execute("end_session", session_id)

    # --- the live tail ----------------------------------------------------------------

    async def keep_live_tails(self, process_id: uuid.UUID, app_ids: Sequence[str],
                              ttl_s: float) -> None:
        """Say which apps' outcomes an API process streams live now (the queue tells
        the live tail of those apps only), for ``ttl_s`` unless said again."""
        await self.db.fetchrow("keep_live_tails", process_id, list(app_ids), float(ttl_s))

    # --- metrics ----------------------------------------------------------------------

    async def backlog(self) -> Backlog:
        row = await self.db.fetchrow("delivery_backlog")
        assert row is not None
        return make(Backlog, row)

    # --- secrets at rest -------------------------------------------------------------

    async def reseal(self, batch: int = 200) -> dict[str, int]:
        """Seal every stored secret under the newest key (opening it with whichever key
        sealed it, or as plain text); how many rows changed, per table."""
        changed = {"endpoints": 0, "push_credentials": 0, "apps": 0}
        sealer = self.sealer

        def again(value: str, context: str) -> str:
            return sealer.seal(sealer.open(value, context), context)

        cursor = ""
        while rows := await self.db.fetch("secrets_of_endpoints", cursor, batch):
            for r in rows:
                context = f"endpoint:{r['id']}"
                if sealer.stale(r["secret"]) or (r["previous_secret"]
                                                 and sealer.stale(r["previous_secret"])):
                    await self.db.execute(
                        "reseal_endpoint", r["id"], again(r["secret"], context),
                        again(r["previous_secret"], context) if r["previous_secret"] else None)
                    changed["endpoints"] += 1
            cursor = rows[-1]["id"]
        after = ("", "")
        while rows := await self.db.fetch("secrets_of_credentials", *after, batch):
            for r in rows:
                config = json.loads(r["config"])
                fields = SECRET_FIELDS[r["provider"]]
                if any(isinstance(config.get(f), str) and sealer.stale(config[f])
                       for f in fields):
                    plain = open_credentials(sealer, r["app_id"], r["provider"], config)
                    await self.db.execute(
                        "reseal_credentials", r["app_id"], r["provider"], json.dumps(
                            seal_credentials(sealer, r["app_id"], r["provider"], plain)))
                    changed["push_credentials"] += 1
            after = (rows[-1]["app_id"], rows[-1]["provider"])
        cursor = ""
        while rows := await self.db.fetch("secrets_of_apps", cursor, batch):
            for r in rows:
                if sealer.stale(r["user_token_secret"]):
                    await self.db.execute("reseal_app", r["id"],
                                          again(r["user_token_secret"], f"app:{r['id']}"))
                    changed["apps"] += 1
            cursor = rows[-1]["id"]
        changed["operational_webhooks"] = await self.operational.reseal(batch)
        changed["endpoint_headers"] = await self._reseal_headers(batch)
        return changed

    async def _reseal_headers(self, batch: int) -> int:
        """Endpoints' custom header values sealed under the newest key; how many
        endpoints changed."""
        changed = 0
        cursor = ""
        while rows := await self.db.fetch("endpoint_headers_to_reseal", cursor, batch):
            for r in rows:
                stored = json.loads(r["headers"])
                if any(self.sealer.stale(value) for value in stored.values()):
                    opened = dict(open_headers(self.sealer, r["id"], stored))
                    await self.db.execute("reseal_endpoint_headers", r["id"],
                                          seal_headers(self.sealer, r["id"], opened))
                    changed += 1
            cursor = rows[-1]["id"]
        return changed

    # --- retention and the cleanup of deleted apps ----------------------------------

    async def make_partitions(self, width: int = 7) -> int:
        """Make the partitions that every day from yesterday to ``width`` days ahead (at
        least two) needs, each to the next boundary of ``width`` days; how many tables
        were made."""
        row = await self.db.fetchrow("make_partitions", 1, width)
        return int(row["made"]) if row is not None else 0

    @contextlib.asynccontextmanager
    async def pruning(self) -> AsyncIterator[Pruner | None]:
        """A connection to prune on, while this process holds the retention lock; None
        when another process is pruning right now."""
        async with self._locked(RETENTION_LOCK_KEY) as conn:
            yield None if conn is None else Pruner(conn)

    @contextlib.asynccontextmanager
    async def cleaning(self) -> AsyncIterator[Cleaner | None]:
        """A connection to clean up deleted apps on, while this process holds the cleanup
        lock; None when another process is cleaning up right now."""
        async with self._locked(CLEANUP_LOCK_KEY) as conn:
            yield None if conn is None else Cleaner(conn)

    @contextlib.asynccontextmanager
    async def _locked(self, lock_key: int) -> AsyncIterator[Connection | None]:
        """A connection holding the session advisory lock ``lock_key``, or None when
        another session holds it."""
        async with self.db.connection() as conn:
            if not await conn.fetchval(QUERIES["retention_try_lock"], lock_key):
                yield None
                return
            try:
                yield conn
            finally:
                with contextlib.suppress(Exception):
                    await conn.fetchval(QUERIES["retention_unlock"], lock_key)


class Cleaner:
    """Removes deleted apps' rows in small batches, each its own short transaction that
    skips rows someone else holds (:mod:`gateway.cleanup` decides the order and pace)."""

    #: What an app owns, child first (each table's rows go before those they refer to),
    #: with the query that removes a batch of them.
    STEPS = {
        "deliveries": QUERIES["cleanup_deliveries"],  # with their attempts
        "events": QUERIES["cleanup_events"],
        "idempotency_keys": QUERIES["cleanup_idempotency_keys"],
        "endpoints": QUERIES["cleanup_endpoints"],
        "devices": QUERIES["cleanup_devices"],
        "push_credentials": QUERIES["cleanup_push_credentials"],
        "app_rate_windows": QUERIES["cleanup_app_rate_windows"],
        "dashboard_sessions": QUERIES["cleanup_dashboard_sessions"],
        "event_types": QUERIES["cleanup_event_types"],
        "operational_webhooks": QUERIES["cleanup_operational_webhooks"],
        "tasks": QUERIES["cleanup_tasks"],
        "live_tails": QUERIES["cleanup_live_tails"],
    }
    #: What the app's operational notices are made of (filed under ``ops:<app id>``).
    FEED_STEPS = ("deliveries", "events")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def deleted_apps(self, settle_s: float) -> list[tuple[str, bool]]:
        """Deleted apps still to clean up, oldest deletion first, each with whether its
        deletion has settled (its own row may go once nothing refers to it)."""
        rows = await self._conn.fetch(QUERIES["deleted_apps"], float(settle_s))
        return [(str(r["id"]), bool(r["settled"])) for r in rows]

    async def remove(self, table: str, app_id: str, batch: int) -> dict[str, int]:
        """Up to ``batch`` of the app's rows of ``table`` (deliveries with their
        attempts): how many went, by table."""
        row = await self._conn.fetchrow(self.STEPS[table], app_id, batch)
        assert row is not None
        return {name: int(count) for name, count in row.items()}

    async def remove_app(self, app_id: str) -> bool:
        """The app's own row, if nothing refers to it any more."""
        try:
            return await self._conn.fetchrow(QUERIES["cleanup_app"], app_id) is not None
        except asyncpg.ForeignKeyViolationError:
            return False  # a row written meanwhile: the next pass takes it first


@dataclass(frozen=True)
class Partitions:
    """The partitions of events, deliveries and attempts that hold the same days (UTC):
    a week (Monday to Monday), or one day for those made before migration 0014."""

    first_day: date
    #: The day after the last one they hold.
    end_day: date
    #: Partition table names by parent table.
    tables: dict[str, str]
    #: Parents whose DETACH ... CONCURRENTLY was cut short.
    detaching: frozenset[str]


class Pruner:
    """Drops whole partitions of events, deliveries and attempts; within partitions
    something still holds (a pending delivery, a fan-out), deletes finished work in small
    batches, each its own short transaction that skips rows someone else holds."""

    #: Children before parents: attempts, then deliveries, then events.
    DROP_ORDER = ("attempts", "deliveries", "events")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def partitions(self) -> list[Partitions]:
        """Every span of days that has partitions, oldest first."""
        found: dict[tuple[date, date], dict[str, str]] = {}
        detaching: dict[tuple[date, date], set[str]] = {}
        for row in await self._conn.fetch(QUERIES["time_partitions"]):
            span = (row["first_day"], row["end_day"])
            found.setdefault(span, {})[str(row["parent"])] = str(row["name"])
            if row["detaching"]:
                detaching.setdefault(span, set()).add(str(row["parent"]))
        return [Partitions(first, end, tables, frozenset(detaching.get((first, end), ())))
                for (first, end), tables in sorted(found.items())]

    async def held(self, span: Partitions) -> bool:
        """Whether a pending delivery or fan-out of these days keeps their partitions."""
        return bool(await self._conn.fetchval(QUERIES["span_held"], span.first_day,
                                              span.end_day))

    async def drop(self, span: Partitions) -> dict[str, int]:
        """Detach (concurrently: ingest and the dispatcher keep going) and drop the
        partitions; returns the rows each table lost."""
        row = await self._conn.fetchrow(QUERIES["span_rows"], span.first_day, span.end_day)
        assert row is not None
        for parent in self.DROP_ORDER:
            name = span.tables.get(parent)
            if name is None:
                continue
            table, part = _ident(parent), _ident(name)
            if parent in span.detaching:
                await self._conn.execute(f"ALTER TABLE {table} DETACH PARTITION {part} FINALIZE")
            else:
                await self._conn.execute(
                    f"ALTER TABLE {table} DETACH PARTITION {part} CONCURRENTLY")
            await self._conn.execute(f"DROP TABLE {part}")
        return {"events": int(row["events"]), "deliveries": int(row["deliveries"]),
                "attempts": int(row["attempts"])}

    async def deliveries(self, span: Partitions, cutoff: datetime,
                         batch: int) -> tuple[int, int]:
        """Finished deliveries of these days last changed before ``cutoff``, with their
        attempts: how many of each went."""
        row = await self._conn.fetchrow(QUERIES["retention_deliveries"], span.first_day,
                                        span.end_day, batch, cutoff)
        assert row is not None
        return int(row["deliveries"]), int(row["attempts"])

    async def events(self, span: Partitions, batch: int) -> int:
        """Events of these days with no delivery left and no fan-out to do."""
        row = await self._conn.fetchrow(QUERIES["retention_events"], span.first_day,
                                        span.end_day, batch)
        assert row is not None
        return int(row["deleted"])

    async def sessions(self) -> int:
        """Dashboard sessions past their expiry."""
        done = await self._conn.execute(QUERIES["prune_sessions"])
        return int(done.split()[-1])

    async def idempotency_keys(self, after: tuple[str, str],
                               batch: int) -> tuple[int, tuple[str, str] | None]:
        """Expired keys among the next ``batch`` after ``after``: how many went, and
        where to continue (None: done)."""
        row = await self._conn.fetchrow(QUERIES["retention_idempotency_keys"],
                                        float(IDEMPOTENCY_WINDOW_S), batch, *after)
        assert row is not None
        following = None if row["app_id"] is None else (str(row["app_id"]), str(row["key"]))
        return int(row["deleted"]), following
