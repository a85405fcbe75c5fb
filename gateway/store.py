"""Everything the gateway keeps, behind named queries (``sql/queries.sql``).

Callers get plain records and domain errors; asyncpg never leaks past this module
and ``gateway.db``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from gateway.db import QUERIES, Database
from gateway.errors import DeliveryNotRetryable, IdempotencyKeyReused, NotFound
from gateway.ids import hash_key, new_api_key, new_id, new_webhook_secret

IDEMPOTENCY_WINDOW_S = 24 * 3600
ROTATION_GRACE_S = 24 * 3600


@dataclass(frozen=True)
class EventDraft:
    app_id: str
    type: str
    payload: str
    idempotency_key: str | None = None
    body_sha256: bytes | None = None
    #: Push targets as JSON text: {"user_ids", "topics", "notification"}.
    push: str | None = None


@dataclass(frozen=True)
class Accepted:
    id: str
    type: str
    created_at: datetime
    #: False when an earlier request with the same Idempotency-Key made this event.
    created: bool


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt's outcome and the delivery's next state, as the dispatcher writes it."""

    delivery_id: str
    lease_id: uuid.UUID
    status: str
    next_attempt_at: datetime | None
    schedule_pos: int
    attempted_at: datetime
    duration_ms: int
    outcome: str
    status_code: int | None
    response_snippet: str | None
    error: str | None
    #: An endpoint to disable because of this attempt (it answered 410 Gone).
    disable_endpoint_id: str | None = None
    disable_reason: str | None = None
    #: A device to prune because of this attempt (the provider says its token is dead),
    #: unless it was registered again after ``prune_since``.
    prune_device_id: str | None = None
    prune_reason: str | None = None
    prune_since: datetime | None = None


@dataclass(frozen=True)
class Page:
    rows: list[asyncpg.Record]
    next_cursor: str | None


def _page(rows: Sequence[asyncpg.Record], limit: int) -> Page:
    rows = list(rows)
    if len(rows) > limit:
        return Page(rows[:limit], rows[limit - 1]["id"])
    return Page(rows, None)


#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
MAX_NOTIFY_BYTES = 7900


def outcome_notifications(
    records: Sequence[AttemptRecord], details: Mapping[str, asyncpg.Record]
) -> list[str]:
    """Attempt outcomes as compact JSON arrays, each under :data:`MAX_NOTIFY_BYTES`.

    Only ids, types and results: never a payload, secret or device token.
    """
    chunks: list[str] = []
    items: list[str] = []
    size = 2
    for r in records:
        d = details.get(r.delivery_id)
        if d is None:
            continue
        item = json.dumps({
            "delivery_id": r.delivery_id, "event_id": d["event_id"],
            "event_type": d["event_type"], "endpoint_id": d["endpoint_id"], "kind": d["kind"],
            "app_id": d["app_id"], "status": r.status, "outcome": r.outcome,
            "status_code": r.status_code, "attempt": d["attempt_count"],
            "at": r.attempted_at.isoformat().replace("+00:00", "Z"),
        }, separators=(",", ":"))
        length = len(item.encode())
        if items and size + 1 + length > MAX_NOTIFY_BYTES:
            chunks.append("[" + ",".join(items) + "]")
            items, size = [], 2
        size += length + (1 if items else 0)
        items.append(item)
    if items:
        chunks.append("[" + ",".join(items) + "]")
    return chunks


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- apps -------------------------------------------------------------------------

    async def create_app(self, name: str) -> tuple[asyncpg.Record, str]:
        key = new_api_key()
        row = await self.db.fetchrow("create_app", new_id("app"), name, hash_key(key))
        assert row is not None
        return row, key

    async def app_id_for_key_hash(self, key_hash: bytes) -> str | None:
        row = await self.db.fetchrow("app_by_key_hash", key_hash)
        return None if row is None else str(row["id"])

    async def get_app(self, app_id: str) -> asyncpg.Record:
        return _found(await self.db.fetchrow("get_app", app_id), "app", app_id)

    async def list_apps(self, cursor: str | None, limit: int) -> Page:
        return _page(await self.db.fetch("list_apps", cursor, limit + 1), limit)

    # --- endpoints --------------------------------------------------------------------

    async def create_endpoint(
        self, app_id: str, url: str, description: str, event_types: list[str] | None
    ) -> asyncpg.Record:
        row = await self.db.fetchrow(
            "create_endpoint", new_id("ep"), app_id, url, description, event_types,
            new_webhook_secret(),
        )
        assert row is not None
        return row

    async def list_endpoints(self, app_id: str, cursor: str | None, limit: int) -> Page:
        return _page(await self.db.fetch("list_endpoints", app_id, cursor, limit + 1), limit)

    async def get_endpoint(self, app_id: str, endpoint_id: str) -> asyncpg.Record:
        row = await self.db.fetchrow("get_endpoint", app_id, endpoint_id)
        return _found(row, "endpoint", endpoint_id)

    async def update_endpoint(
        self, app_id: str, endpoint_id: str, changes: dict[str, Any]
    ) -> asyncpg.Record:
        """Apply a PATCH; disabling parks pending deliveries, enabling resumes them."""
        async with self.db.transaction() as conn:
            current = _found(
                await conn.fetchrow(QUERIES["get_endpoint_for_update"], app_id, endpoint_id),
                "endpoint", endpoint_id,
            )
            merged = {k: current[k] for k in
                      ("url", "description", "event_types", "status", "disabled_reason")}
            merged.update(changes)
            if merged["status"] == "active":
                merged["disabled_reason"] = None
            elif "disabled_reason" not in changes and current["status"] == "active":
                merged["disabled_reason"] = "disabled by API"
            row = await conn.fetchrow(
                QUERIES["update_endpoint"], app_id, endpoint_id, merged["url"],
                merged["description"], merged["event_types"], merged["status"],
                merged["disabled_reason"],
            )
            if current["status"] == "active" and merged["status"] == "disabled":
                await conn.execute(QUERIES["park_deliveries"], [endpoint_id])
            elif current["status"] == "disabled" and merged["status"] == "active":
                await conn.execute(QUERIES["unpark_deliveries"], endpoint_id)
                await conn.execute(QUERIES["notify_deliveries"])
        assert row is not None
        return row

    async def delete_endpoint(self, app_id: str, endpoint_id: str) -> None:
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(QUERIES["delete_endpoint"], app_id, endpoint_id)
            _found(row, "endpoint", endpoint_id)
            await conn.execute(QUERIES["fail_pending_of_endpoint"], endpoint_id,
                               "endpoint deleted")

    async def rotate_secret(self, app_id: str, endpoint_id: str) -> asyncpg.Record:
        row = await self.db.fetchrow(
            "rotate_secret", app_id, endpoint_id, new_webhook_secret(), float(ROTATION_GRACE_S)
        )
        return _found(row, "endpoint", endpoint_id)

    # --- events -----------------------------------------------------------------------

    async def write_events(self, drafts: list[EventDraft]) -> list[Accepted | BaseException]:
        """Make each draft durable with its deliveries, all in one transaction.

        A draft whose Idempotency-Key was already used within 24 h makes nothing: it
        answers with the first event, or :class:`IdempotencyKeyReused` if its body differs.
        The same key twice in one batch is settled by writing the first and then
        answering the rest from it.
        """
        now = datetime.now(UTC)
        ids = [new_id("evt") for _ in drafts]
        results: list[Accepted | BaseException | None] = [None] * len(drafts)
        seen: set[tuple[str, str]] = set()
        first: list[int] = []
        later: list[int] = []
        for i, d in enumerate(drafts):
            if d.idempotency_key is None:
                continue
            scope = (d.app_id, d.idempotency_key)
            (later if scope in seen else first).append(i)
            seen.add(scope)

        def insert_args(rows: list[int]) -> tuple[Any, ...]:
            return ([ids[i] for i in rows], [drafts[i].app_id for i in rows],
                    [drafts[i].type for i in rows], [drafts[i].payload for i in rows],
                    [now] * len(rows), [drafts[i].push for i in rows])

        if not first:
            # The common case: one statement, its own transaction, no BEGIN/COMMIT trips.
            await self.db.fetchrow("insert_events", *insert_args(list(range(len(drafts)))))
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
                await conn.fetchrow(QUERIES["insert_events"], *insert_args(fresh))
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

    async def get_event(self, app_id: str, event_id: str) -> tuple[asyncpg.Record,
                                                                   list[asyncpg.Record]]:
        async with self.db.connection() as conn:
            event = _found(await conn.fetchrow(QUERIES["get_event"], app_id, event_id),
                           "event", event_id)
            deliveries = list(await conn.fetch(QUERIES["deliveries_of_event"], event_id))
        return event, deliveries

    async def list_events(
        self, app_id: str, event_type: str | None, cursor: str | None, limit: int
    ) -> Page:
        rows = await self.db.fetch("list_events", app_id, event_type, cursor, limit + 1)
        return _page(rows, limit)

    # --- deliveries -------------------------------------------------------------------

    async def list_deliveries(
        self, app_id: str, *, status: str | None, endpoint_id: str | None,
        event_id: str | None, cursor: str | None, limit: int,
    ) -> Page:
        rows = await self.db.fetch(
            "list_deliveries", app_id, status, endpoint_id, event_id, cursor, limit + 1
        )
        return _page(rows, limit)

    async def get_delivery(self, app_id: str, delivery_id: str) -> asyncpg.Record:
        return _found(await self.db.fetchrow("get_delivery", app_id, delivery_id),
                      "delivery", delivery_id)

    async def list_attempts(self, app_id: str, delivery_id: str) -> list[asyncpg.Record]:
        async with self.db.connection() as conn:
            _found(await conn.fetchrow(QUERIES["get_delivery"], app_id, delivery_id),
                   "delivery", delivery_id)
            return list(await conn.fetch(QUERIES["list_attempts"], delivery_id))

    async def retry_delivery(self, app_id: str, delivery_id: str) -> asyncpg.Record:
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(QUERIES["retry_delivery"], app_id, delivery_id)
            if row is None:
                current = _found(await conn.fetchrow(QUERIES["get_delivery"], app_id,
                                                     delivery_id), "delivery", delivery_id)
                raise DeliveryNotRetryable(
                    f"Only failed deliveries can be retried; this one is {current['status']}"
                    + (" and its endpoint or device was deleted"
                       if current["status"] == "failed" else "") + "."
                )
            await conn.execute(QUERIES["notify_deliveries"])
        return row

    # --- dispatcher -------------------------------------------------------------------

    async def claim_due(
        self, limit: int, lease_s: float, lease_id: uuid.UUID, skip_kinds: Sequence[str] = ()
    ) -> list[asyncpg.Record]:
        return await self.db.fetch("claim_due", limit, lease_s, lease_id, list(skip_kinds))

    async def record_attempts(self, records: list[AttemptRecord]) -> list[None]:
        """Log every attempt and move each delivery on, in one transaction."""
        gone = {r.disable_endpoint_id: r.disable_reason for r in records if r.disable_endpoint_id}
        async with self.db.transaction() as conn:
            await conn.execute(
                QUERIES["record_results"],
                [r.delivery_id for r in records], [r.lease_id for r in records],
                [r.status for r in records], [r.next_attempt_at for r in records],
                [r.schedule_pos for r in records], [r.attempted_at for r in records],
                [r.duration_ms for r in records], [r.outcome for r in records],
                [r.status_code for r in records], [r.response_snippet for r in records],
                [r.error for r in records],
            )
            for endpoint_id, reason in gone.items():
                await conn.execute(QUERIES["disable_endpoints"], [endpoint_id], reason)
            if gone:
                await conn.execute(QUERIES["park_deliveries"], list(gone))
            for r in records:
                if r.prune_device_id:
                    await conn.execute(QUERIES["prune_device"], r.prune_device_id,
                                       r.prune_reason, r.prune_since)
            # The live tail (gateway.stream) hears of each outcome on commit, whichever
            # process dispatched it.
            details = {row["id"]: row for row in await conn.fetch(
                QUERIES["outcome_details"], [r.delivery_id for r in records])}
            await conn.execute(QUERIES["notify_outcomes"],
                               outcome_notifications(records, details))
        return [None] * len(records)

    async def fanout_step(self, batch: int) -> int | None:
        """Expand one batch of devices of one event with push targets into deliveries.

        Returns how many devices the batch covered, or None when no event waits. Each
        batch commits with its cursor, so a crash resumes where it stopped and a replayed
        batch creates nothing twice.
        """
        async with self.db.transaction() as conn:
            event = await conn.fetchrow(QUERIES["claim_fanout"])
            if event is None:
                return None
            devices = await conn.fetch(
                QUERIES["fanout_devices"], event["app_id"], event["fanout_cursor"],
                event["push_user_ids"], event["push_topics"], batch,
            )
            if devices:
                await conn.execute(
                    QUERIES["insert_device_deliveries"], event["id"], event["app_id"],
                    [d["id"] for d in devices],
                    ["apns" if d["platform"] == "ios" else "fcm" for d in devices],
                )
                await conn.execute(QUERIES["notify_deliveries"])
            await conn.execute(QUERIES["advance_fanout"], event["id"],
                               devices[-1]["id"] if devices else None, len(devices) < batch)
        return len(devices)

    # --- devices ----------------------------------------------------------------------

    async def upsert_device(
        self, app_id: str, *, platform: str, token: str, user_id: str, topics: list[str],
        locale: str | None, app_version: str | None,
    ) -> asyncpg.Record:
        row = await self.db.fetchrow("upsert_device", new_id("dev"), app_id, platform, token,
                                     user_id, topics, locale, app_version)
        assert row is not None
        return row

    async def get_device(self, app_id: str, token: str, user_id: str | None) -> asyncpg.Record:
        return _found(await self.db.fetchrow("get_device", app_id, token, user_id),
                      "device", token)

    async def list_devices(
        self, app_id: str, *, user_id: str | None, topic: str | None, platform: str | None,
        status: str | None, cursor: str | None, limit: int,
    ) -> Page:
        rows = await self.db.fetch("list_devices", app_id, user_id, topic, platform, status,
                                   cursor, limit + 1)
        return _page(rows, limit)

    async def set_device_topics(self, app_id: str, token: str, user_id: str | None,
                                topics: list[str]) -> asyncpg.Record:
        row = await self.db.fetchrow("set_device_topics", app_id, token, user_id, topics)
        return _found(row, "device", token)

    async def delete_device(self, app_id: str, token: str, user_id: str | None) -> None:
        _found(await self.db.fetchrow("delete_device", app_id, token, user_id), "device", token)

    async def device_tokens(self, app_id: str, tokens: list[str]) -> set[str]:
        rows = await self.db.fetch("device_tokens", app_id, tokens)
        return {r["token"] for r in rows}

    async def user_token_secret(self, app_id: str) -> bytes | None:
        row = await self.db.fetchrow("user_token_secret", app_id)
        return None if row is None else bytes(row[0])

    # --- push credentials -------------------------------------------------------------

    async def put_credentials(self, app_id: str, provider: str, config: str) -> asyncpg.Record:
        row = await self.db.fetchrow("put_credentials", app_id, provider, config)
        assert row is not None
        return row

    async def list_credentials(self, app_id: str) -> list[asyncpg.Record]:
        return await self.db.fetch("list_credentials", app_id)

    async def next_due_at(self) -> datetime | None:
        row = await self.db.fetchrow("next_due_at")
        return None if row is None else row[0]

    async def release_leases(self, lease_ids: list[uuid.UUID]) -> None:
        if lease_ids:
            await self.db.execute("release_leases", lease_ids)

    # --- dashboard --------------------------------------------------------------------

    async def dashboard_events(
        self, app_id: str, *, event_type: str | None, status: str | None,
        since: datetime | None, until: datetime | None, id_prefix: str | None,
        cursor: str | None, limit: int,
    ) -> Page:
        rows = await self.db.fetch("dashboard_events", app_id, event_type, status, since,
                                   until, id_prefix, cursor, limit + 1)
        return _page(rows, limit)

    async def dashboard_event(self, app_id: str, event_id: str) -> asyncpg.Record:
        """The event alone (its deliveries are paged: a push may have thousands)."""
        return _found(await self.db.fetchrow("get_event", app_id, event_id), "event", event_id)

    async def dashboard_event_deliveries(
        self, app_id: str, event_id: str, limit: int
    ) -> list[asyncpg.Record]:
        return await self.db.fetch("dashboard_event_deliveries", app_id, event_id, limit)

    async def dashboard_attempts(self, delivery_ids: list[str]) -> list[asyncpg.Record]:
        """Attempts of deliveries the caller already scoped to one app."""
        if not delivery_ids:
            return []
        return await self.db.fetch("dashboard_attempts", delivery_ids)

    async def dashboard_deliveries(
        self, app_id: str, *, status: str | None, endpoint_id: str | None,
        event_type: str | None, since: datetime | None, until: datetime | None,
        cursor: str | None, limit: int,
    ) -> Page:
        rows = await self.db.fetch("dashboard_deliveries", app_id, status, endpoint_id,
                                   event_type, since, until, cursor, limit + 1)
        return _page(rows, limit)

    async def retry_failed(
        self, app_id: str, *, endpoint_id: str | None, event_type: str | None,
        since: datetime | None, until: datetime | None,
    ) -> int:
        """Requeue every failed delivery of the app matching the filter; how many."""
        async with self.db.transaction() as conn:
            count: int = await conn.fetchval(QUERIES["dashboard_retry_failed"], app_id,
                                             endpoint_id, event_type, since, until)
            if count:
                await conn.execute(QUERIES["notify_deliveries"])
        return count

    async def send_test_event(
        self, app_id: str, endpoint_id: str, payload: str
    ) -> asyncpg.Record | None:
        """A ``gateway.test`` event delivered to this endpoint only: its id and delivery_id,
        or None when the endpoint is disabled."""
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(QUERIES["dashboard_test_event"], new_id("evt"), app_id,
                                      endpoint_id, payload)
            if row is None:
                _found(await conn.fetchrow(QUERIES["get_endpoint"], app_id, endpoint_id),
                       "endpoint", endpoint_id)
                return None
            await conn.execute(QUERIES["notify_deliveries"])
        return row

    async def dashboard_devices(
        self, app_id: str, *, search: str | None, status: str | None, platform: str | None,
        cursor: str | None, limit: int,
    ) -> Page:
        rows = await self.db.fetch("dashboard_devices", app_id, search, status, platform,
                                   cursor, limit + 1)
        return _page(rows, limit)

    async def dashboard_health(self, app_id: str | None) -> asyncpg.Record:
        row = await self.db.fetchrow("dashboard_health", app_id)
        assert row is not None
        return row


def _found(row: asyncpg.Record | None, what: str, ident: str) -> asyncpg.Record:
    if row is None:
        raise NotFound(f"No {what} with id {ident!r} in this app.")
    return row
