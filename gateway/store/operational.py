"""The store's side of operational webhooks (:mod:`gateway.operational`): each app's one
webhook, and :func:`emit_operational`, the one way an operational event is written."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from gateway.crypto import Sealer
from gateway.errors import NotFound
from gateway.ids import new_id, new_webhook_secret
from gateway.operational import (
    CREDENTIALS_REJECTED_REPEAT_S,
    OperationalEvent,
    credentials_rejected,
    feed_of,
)
from gateway.store.database import QUERIES, Database
from gateway.store.records import make

if TYPE_CHECKING:
    from gateway.store.database import Connection


@dataclass(frozen=True, slots=True)
class OperationalWebhook:
    #: What its deliveries name as their endpoint_id.
    id: str
    url: str
    #: None: every operational event type.
    event_types: list[str] | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class OperationalWebhookSet(OperationalWebhook):
    secret: str


def _secret_context(webhook_id: str) -> str:
    # The claim opens an operational delivery's secret as any endpoint's, by the id its
    # deliveries name (gateway/store/postgres_queue.py).
    return f"endpoint:{webhook_id}"


async def emit_operational(conn: Connection, events: Sequence[OperationalEvent]) -> int:
    """Queue ``events`` for their apps' operational webhooks, in the transaction ``conn``
    is in (the one making the changes they report); how many were queued. Events of an
    app without an operational webhook, or whose webhook does not take their type, are
    dropped; that costs one primary-key lookup and nothing when ``events`` is empty."""
    if not events:
        return 0
    return int(await conn.fetchval(
        QUERIES["emit_operational"], [e.app_id for e in events],
        [feed_of(e.app_id) for e in events], [new_id("evt") for _ in events],
        [e.type.value for e in events],
        [json.dumps(e.data, separators=(",", ":")) for e in events]))


async def emit_credentials_rejected(conn: Connection,
                                    refused: dict[tuple[str, str], str]) -> int:
    """Mark each app's credentials for a provider as refused (``{(app id, provider):
    the provider's reason}``), and tell the apps not told within
    :data:`~gateway.operational.CREDENTIALS_REJECTED_REPEAT_S`."""
    if not refused:
        return 0
    rows = await conn.fetch(QUERIES["reject_credentials"], [a for a, _ in refused],
                            [p for _, p in refused], list(refused.values()),
                            CREDENTIALS_REJECTED_REPEAT_S)
    return await emit_operational(conn, [
        credentials_rejected(r["app_id"], r["provider"], r["rejected_reason"]) for r in rows])


class OperationalWebhooks:
    """Each app's operational webhook: set, shown, removed."""

    def __init__(self, db: Database, sealer: Sealer) -> None:
        self.db = db
        self.sealer = sealer

    async def put(self, app_id: str, url: str,
                  event_types: list[str] | None) -> OperationalWebhookSet:
        """Set the app's operational webhook; an existing one keeps its secret."""
        webhook_id = new_id("opw")
        row = await self.db.fetchrow(
            "put_operational_webhook", app_id, webhook_id, url, event_types,
            self.sealer.seal(new_webhook_secret(), _secret_context(webhook_id)))
        assert row is not None
        return make(OperationalWebhookSet, row,
                    secret=self.sealer.open(row["secret"], _secret_context(row["id"])))

    async def find(self, app_id: str) -> OperationalWebhook | None:
        row = await self.db.fetchrow("get_operational_webhook", app_id)
        return None if row is None else make(OperationalWebhook, row)

    async def get(self, app_id: str) -> OperationalWebhook:
        found = await self.find(app_id)
        if found is None:
            raise NotFound("This app has no operational webhook; set one with "
                           "PUT /v1/operational-webhook.")
        return found

    async def delete(self, app_id: str) -> None:
        """Remove it; its pending deliveries fail, having nowhere to go."""
        if await self.db.fetchrow("delete_operational_webhook", app_id,
                                  feed_of(app_id)) is None:
            raise NotFound("This app has no operational webhook.")

    async def reseal(self, batch: int = 200) -> int:
        """Seal every operational webhook's secret under the newest key; how many changed."""
        changed = 0
        cursor = ""
        while rows := await self.db.fetch("secrets_of_operational_webhooks", cursor, batch):
            for r in rows:
                if self.sealer.stale(r["secret"]):
                    context = _secret_context(r["id"])
                    await self.db.execute(
                        "reseal_operational_webhook", r["id"],
                        self.sealer.seal(self.sealer.open(r["secret"], context), context))
                    changed += 1
            cursor = rows[-1]["id"]
        return changed
