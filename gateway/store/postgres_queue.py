"""The delivery queue in PostgreSQL: ``FOR UPDATE SKIP LOCKED`` claims with a lease, so
any number of dispatcher processes share one database, and ``NOTIFY`` wakes them.

Settling attempts also tells the live tail: each transaction that logs attempts sends
the outcomes of the apps someone watches (``live_tails``, kept by the API processes that
stream them: :mod:`gateway.outcomes`) on ``gateway_outcomes`` (compact JSON, never a
payload, secret or token), heard on commit by every API process. In the same
transaction it keeps the endpoints' health (:mod:`gateway.store.endpoint_health`) and
tells the apps' operational webhooks (:mod:`gateway.operational`) what the attempts
changed: an endpoint disabled, a delivery failed for good, a device pruned, credentials
refused.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from adapters.base import DeliveryJob, DeviceTarget, EndpointTarget, EventView
from gateway.crypto import Sealer, SecretUnreadable, open_credentials
from gateway.endpoint_headers import open_headers
from gateway.health import HealthRules
from gateway.operational import (
    OPERATIONAL_KIND,
    OperationalEvent,
    delivery_exhausted,
    device_invalidated,
)
from gateway.sendrate import DEFAULT_RATE_MARGIN_S, LAG_TOLERANCE_S
from gateway.store.database import QUERIES, Database
from gateway.store.endpoint_health import settle_health
from gateway.store.operational import emit_credentials_rejected, emit_operational
from gateway.store.queue import (
    NO_CHANGE,
    UNLIMITED,
    AttemptResult,
    Claim,
    Expanded,
    Job,
    Rooms,
    Settlement,
)
from gateway.store.records import Row
from gateway_client.models import (
    AttemptOutcome,
    DeliveryKind,
    DeliveryStatus,
    DeviceStatus,
    Platform,
    iso,
)

if TYPE_CHECKING:
    from gateway.store.database import Connection

K = TypeVar("K")
V = TypeVar("V")

#: A claim looks at this many times as many due rows as it may take (at least
#: CLAIM_SCAN_MIN), so that rows over a target's or an app's room do not leave it short,
#: and apps take turns among all it read.
CLAIM_SCAN_FACTOR = 4
CLAIM_SCAN_MIN = 100
#: A narrow scan: a quarter more than the claim may take (at least NARROW_SCAN_MIN), so
#: rows over a room at its head leave it less short. Reading and ranking the wide window
#: is about a third of a claim's cost in PostgreSQL (bench/README.md, "The claim's
#: window").
NARROW_SCAN_MIN = 16
#: After a wide scan whose claim took the head of what it read (nothing passed over, so
#: a narrow scan would have taken the same), up to this many claims scan narrow; then one
#: wide again, so an app or a target with room that lies further on is seen within a few
#: claims. A narrow claim that took less than it asked for ends the run: rooms change
#: between claims, and what lies past its scan may have room now.
NARROW_RUN = 3
#: claim_due_plain takes claim_due's first parameters (claim_params), not the rate
#: limit's two.
PLAIN_PARAMS = 12
#: After a plain claim that found work for claim_due (an open circuit, a rate limit or a
#: probe among what it read), this many claim statements go to claim_due straight away
#: (a claim that parks makes several); then a plain one tries again. A gateway with a
#: busy rate-limited endpoint so pays for one plain statement in FULL_RUN + 1, not one a
#: claim.
FULL_RUN = 8
#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
MAX_NOTIFY_BYTES = 7900
#: A claim that parked deliveries behind open circuits (and so took less than it could)
#: looks again, at most this many times in all.
CLAIM_ROUNDS = 8


class PostgresQueue:
    """:class:`~gateway.store.queue.Queue` and :class:`~gateway.store.queue.Fanout` on
    the gateway's database."""

    def __init__(self, db: Database, sealer: Sealer | None = None,
                 health: HealthRules | None = None, *,
                 rate_margin_s: float = DEFAULT_RATE_MARGIN_S) -> None:
        self.db = db
        self.sealer = sealer or Sealer(None)
        self.health = health or HealthRules()
        #: Endpoint rate limits hold over 1 s plus this (gateway/sendrate.py).
        self.rate_margin_s = rate_margin_s
        #: Fan-outs take apps in turn; the app served last.
        self._last_fanout_app = ""
        #: How many of the next claims scan narrow (NARROW_RUN).
        self._narrow_left = 0
        #: How many of the next claim statements skip claim_due_plain (FULL_RUN).
        self._full_left = 0

    async def claim(self, limit: int, lease_s: float, lease_id: uuid.UUID,
                    rooms: Rooms = UNLIMITED) -> Claim:
        jobs: list[Job] = []
        held_back = waiting = 0
        shared = _ClaimReads()
        for _ in range(CLAIM_ROUNDS):
            want = limit - len(jobs)
            narrow = self._narrow_left > 0
            rows = await self._claim_rows(claim_params(
                want, lease_s, lease_id, rooms, self.rate_margin_s, narrow=narrow))
            taken = [self._job(row, lease_id, shared) for row in rows if row["id"] is not None]
            jobs += taken
            first = rows[0]
            held_back += first["held_back"]
            waiting = first["waiting"]
            self._narrow_left = _narrow_after(self._narrow_left, narrow, len(taken), want,
                                              first)
            # Rows parked behind open circuits filled part of the scan: what lies beyond
            # them may be due too.
            if not rows[0]["parked"] or len(jobs) >= limit:
                break
            rooms = rooms.less(taken)
        return Claim(jobs, held_back=held_back, waiting=waiting)

    async def _claim_rows(self, params: list[Any]) -> list[asyncpg.Record]:
        """One claim's rows: claim_due_plain's when what it read needs nothing more (the
        common case, 0.2-0.4 ms of PostgreSQL's CPU less), else claim_due's."""
        if self._full_left:
            self._full_left -= 1
        else:
            rows = await self.db.fetch("claim_due_plain", *params[:PLAIN_PARAMS])
            if not rows[0]["unusual"]:
                return rows
            self._full_left = FULL_RUN
        return await self.db.fetch("claim_due", *params)

    def _job(self, row: asyncpg.Record, lease_id: uuid.UUID, shared: _ClaimReads) -> Job:
        """A claimed row as the adapters take it: its secrets opened only now, when used.
        A secret that does not open makes that one job unsendable, never the claim.
        ``shared``: what this claim has read already (its jobs share it; nothing changes
        it)."""
        endpoint = device = None
        credentials = None
        unsendable = None
        try:
            # An operational delivery's webhook may have been removed since: no url.
            if row["endpoint_id"] is not None and row["url"] is not None:
                endpoint = _endpoint_once(self.sealer, row, shared)
            if row["credentials"]:
                credentials = _once(
                    shared.credentials, (row["app_id"], row["kind"], row["credentials"]),
                    lambda: open_credentials(self.sealer, row["app_id"], row["kind"],
                                             json.loads(row["credentials"])))
        except SecretUnreadable as exc:
            unsendable = exc.message
        if row["device_id"] is not None and row["device_token"] is not None:
            device = DeviceTarget(row["device_id"], row["platform"], row["device_token"])
        delivery = DeliveryJob(
            delivery_id=row["id"], app_id=row["app_id"], kind=row["kind"],
            event=EventView(row["event_id"], row["event_type"], row["payload"],
                            row["event_created_at"], row["traceparent"], row["tracestate"]),
            endpoint=endpoint, device=device,
            notification=_once(shared.notifications, (row["app_id"], row["notification"]),
                               lambda: json.loads(row["notification"]))
            if row["notification"] else None,
            credentials=credentials, attempt=row["attempt_count"] + 1,
        )
        return Job(delivery, lease_id, row["schedule_pos"],
                   device_active=row["device_status"] in (None, DeviceStatus.ACTIVE),
                   unsendable=unsendable)

    async def complete(self, results: Sequence[AttemptResult]) -> Settlement:
        if all(_only_delivered(r) for r in results):
            # The hot path: one statement does all there is to do (settle_delivered).
            await self.db.fetchrow(
                "settle_delivered", [r.delivery_id for r in results],
                [r.lease_id for r in results], [r.schedule_pos for r in results],
                [iso(r.attempted_at) for r in results], [r.duration_ms for r in results],
                [r.status_code for r in results], [r.response_snippet for r in results],
                [r.app_id for r in results], [r.endpoint_id for r in results])
            return NO_CHANGE
        async with self.db.transaction() as conn:
            changed = await _log(conn, results)
            told: list[OperationalEvent] = []
            for r in results:
                if r.prune_device_id:
                    pruned = await conn.fetchrow(QUERIES["prune_device"], r.prune_device_id,
                                                 r.prune_reason, r.prune_since)
                    if pruned is not None:
                        told.append(device_invalidated(
                            pruned["app_id"], device_id=pruned["id"], token=pruned["token"],
                            platform=pruned["platform"], user_id=pruned["user_id"],
                            reason=pruned["pruned_reason"]))
            told += exhausted(results, changed)
            await emit_operational(conn, told)
            await emit_credentials_rejected(conn, refused_credentials(results, changed))
            # Disabling (410 Gone, failing) tells the operational webhook there.
            return await settle_health(conn, results, self.health)

    async def reschedule(self, results: Sequence[AttemptResult]) -> Settlement:
        async with self.db.transaction() as conn:
            changed = await _log(conn, results)
            await emit_credentials_rejected(conn, refused_credentials(results, changed))
            return await settle_health(conn, results, self.health)

    async def release(self, lease_ids: Sequence[uuid.UUID]) -> None:
        if lease_ids:
            await self.db.execute("release_leases", list(lease_ids))

    async def release_jobs(self, jobs: Sequence[Job]) -> None:
        if jobs:
            await self.db.execute(
                "release_deliveries", [j.delivery.app_id for j in jobs],
                [j.delivery.delivery_id for j in jobs], [j.lease_id for j in jobs])

    async def next_due_at(self) -> datetime | None:
        row = await self.db.fetchrow("next_due_at")
        return None if row is None else row["due"]

    async def expand(self, batch: int) -> int | None:
        """Expand one batch of devices of one event with push targets into deliveries.

        Each batch commits with its cursor, so a crash resumes where it stopped and a
        replayed batch creates nothing twice.
        """
        expanded = await self._expand(batch, None)
        return None if expanded is None else expanded.devices

    async def expand_leased(self, batch: int, lease_s: float,
                            lease_id: uuid.UUID) -> Expanded | None:
        return await self._expand(batch, (lease_s, lease_id))

    async def _expand(self, batch: int,
                      lease: tuple[float, uuid.UUID] | None) -> Expanded | None:
        async with self.db.transaction() as conn:
            event = await conn.fetchrow(QUERIES["claim_fanout"], self._last_fanout_app)
            if event is None:
                event = await conn.fetchrow(QUERIES["claim_any_fanout"])
            if event is None:
                return None
            self._last_fanout_app = event["app_id"]
            devices = await conn.fetch(
                QUERIES["fanout_devices"], event["app_id"], event["fanout_cursor"],
                event["push_user_ids"], event["push_topics"], batch,
            )
            jobs: list[Job] = []
            if devices:
                kinds = [DeliveryKind.APNS if d["platform"] == Platform.IOS
                         else DeliveryKind.FCM for d in devices]
                ids = [d["id"] for d in devices]
                if lease is None:
                    await conn.execute(QUERIES["insert_device_deliveries"], event["id"],
                                       event["app_id"], ids, kinds)
                else:
                    made = await conn.fetch(
                        QUERIES["insert_leased_device_deliveries"], event["id"],
                        event["app_id"], ids, kinds, lease[1], lease[0])
                    if made:
                        view = await conn.fetchrow(QUERIES["fanout_event"],
                                                   event["app_id"], event["id"])
                        assert view is not None  # locked by claim_fanout
                        jobs = self._fanout_jobs(event["id"], event["app_id"], view, made,
                                                 {d["id"]: d for d in devices}, lease[1])
            await conn.execute(QUERIES["advance_fanout"], event["id"],
                               devices[-1]["id"] if devices else None, len(devices) < batch,
                               event["app_id"])
        return Expanded(len(devices), jobs)

    def _fanout_jobs(self, event_id: str, app_id: str, view: asyncpg.Record,
                     made: Sequence[asyncpg.Record], devices: Mapping[str, asyncpg.Record],
                     lease_id: uuid.UUID) -> list[Job]:
        """The deliveries a leased fan-out batch made, as a claim would answer them: first
        attempts of live devices, the event, its notification and the app's credentials
        read and opened once for the batch."""
        event = EventView(event_id, view["type"], view["payload"], view["created_at"],
                          view["traceparent"], view["tracestate"])
        notification = json.loads(view["notification"]) if view["notification"] else None
        opened: dict[str, tuple[dict[str, Any] | None, str | None]] = {}
        for kind in {row["kind"] for row in made}:
            stored = view[f"{kind}_credentials"]
            try:
                opened[kind] = (open_credentials(self.sealer, app_id, kind, json.loads(stored))
                                if stored else None, None)
            except SecretUnreadable as exc:
                opened[kind] = (None, exc.message)
        jobs = []
        for row in made:
            device = devices[row["device_id"]]
            credentials, unsendable = opened[row["kind"]]
            delivery = DeliveryJob(
                delivery_id=row["id"], app_id=app_id, kind=row["kind"], event=event,
                endpoint=None,
                device=DeviceTarget(device["id"], device["platform"], device["token"]),
                notification=notification, credentials=credentials, attempt=1)
            jobs.append(Job(delivery, lease_id, 0, unsendable=unsendable))
        return jobs


@dataclass
class _ClaimReads:
    """What the rows of one claim repeat, read once per claim: a fan-out's rows carry one
    event's notification and one app's credentials each, and a backlog's rows one
    endpoint's secrets and headers (each opened, a decryption when sealed). Keyed by app
    (and provider) or endpoint as well as the stored text, so equal text of two apps or
    endpoints is still read apart, and a change stored between claims is read anew."""

    credentials: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    notifications: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    endpoints: dict[tuple[str, str, str, str | None, str | None], EndpointTarget] = field(
        default_factory=dict)


def _endpoint_once(sealer: Sealer, row: asyncpg.Record, shared: _ClaimReads) -> EndpointTarget:
    """A claimed (or ingested and leased) row's endpoint, its secrets and headers opened
    (decrypted, when sealed): once per statement's rows (``shared``)."""
    return _once(shared.endpoints, (row["endpoint_id"], row["url"], row["secret"],
                                    row["previous_secret"], row["headers"]),
                 functools.partial(_endpoint_target, sealer, row))


def _endpoint_target(sealer: Sealer, row: asyncpg.Record) -> EndpointTarget:
    context = f"endpoint:{row['endpoint_id']}"
    secrets = tuple(sealer.open(s, context) for s in (row["secret"], row["previous_secret"])
                    if s)
    return EndpointTarget(row["endpoint_id"], row["url"], secrets,
                          open_headers(sealer, row["endpoint_id"], row["headers"]))


def ingested_jobs(sealer: Sealer, rows: Sequence[asyncpg.Record],
                  events: Mapping[str, EventView], lease_id: uuid.UUID) -> list[Job]:
    """insert_events' leased deliveries (rows of a NULL id are none) as jobs: each one's
    first attempt, its event as ingest holds it, its endpoint opened once per statement
    (:class:`_ClaimReads`). A secret that does not open makes that one job unsendable."""
    shared = _ClaimReads()
    jobs: list[Job] = []
    for row in rows:
        if row["id"] is None:
            continue
        endpoint = None
        unsendable = None
        try:
            endpoint = _endpoint_once(sealer, row, shared)
        except SecretUnreadable as exc:
            unsendable = exc.message
        delivery = DeliveryJob(delivery_id=row["id"], app_id=row["app_id"],
                               kind=DeliveryKind.WEBHOOK, event=events[row["event_id"]],
                               endpoint=endpoint)
        jobs.append(Job(delivery, lease_id, 0, unsendable=unsendable))
    return jobs


def _once(table: dict[K, V], key: K, read: Callable[[], V]) -> V:
    """``table[key]``, read first if it is not there."""
    found = table.get(key)
    if found is None:
        found = table[key] = read()
    return found


def claim_params(limit: int, lease_s: float, lease_id: uuid.UUID, rooms: Rooms,
                 rate_margin_s: float = DEFAULT_RATE_MARGIN_S, *,
                 narrow: bool = False) -> list[Any]:
    """claim_due's parameters, in order (bench/soak.py explains the query with them).
    ``narrow``: scan a little more than ``limit`` due rows instead of the wide window."""
    scan = (max(limit + limit // 4, NARROW_SCAN_MIN) if narrow
            else max(limit * CLAIM_SCAN_FACTOR, CLAIM_SCAN_MIN))
    return [limit, lease_s, lease_id,
            list(rooms.endpoints), list(rooms.endpoints.values()),
            list(rooms.kinds), list(rooms.kinds.values()),
            list(rooms.apps), list(rooms.apps.values()),
            rooms.endpoint, rooms.app, scan,
            1.0 + rate_margin_s, LAG_TOLERANCE_S]


def _narrow_after(left: int, narrow: bool, took: int, wanted: int,
                  first: asyncpg.Record) -> int:
    """How many of the next claims may scan narrow, after one that scanned narrow or
    wide, took ``took`` of the ``wanted`` it asked for, and answered ``first`` (claim_due's
    first row).

    A claim whose scan read nothing before its last taken row that it did not take
    (``passed_over``), parked nothing and held nothing back took the head of what it
    read: a scan of a little more than it may take would have taken the same (or others
    as due). A wide one like that opens a run of narrow ones; a narrow one that also took
    all it asked for uses up one of the run; any other ends the run, so the next scans
    wide."""
    quiet = took and not (first["passed_over"] or first["parked"] or first["held_back"])
    if not quiet or (narrow and took < wanted):
        return 0
    return left - 1 if narrow else NARROW_RUN


async def _log(conn: Connection, results: Sequence[AttemptResult]) -> dict[str, Row]:
    """Log the attempts, move their deliveries on, and tell the live tail on commit (of
    the apps someone watches); the deliveries that moved on (still leased by the
    caller), by id."""
    changed = await conn.fetch(QUERIES["record_results"], *_result_columns(results))
    moved: dict[str, Row] = {row["id"]: row for row in changed}
    notes = outcome_notifications(results, {row["id"]: row for row in changed if row["tailed"]})
    if notes:
        await conn.execute(QUERIES["notify_outcomes"], notes)
    return moved


def _result_columns(results: Sequence[AttemptResult]) -> list[list[Any]]:
    """record_results' parameters."""
    return [
        [r.delivery_id for r in results], [r.lease_id for r in results],
        [r.status.value for r in results], [r.next_attempt_at for r in results],
        [r.schedule_pos for r in results], [r.attempted_at for r in results],
        [r.duration_ms for r in results], [r.outcome.value for r in results],
        [r.status_code for r in results], [r.response_snippet for r in results],
        [r.error for r in results], [r.app_id for r in results],
    ]


def _only_delivered(result: AttemptResult) -> bool:
    """Delivered, and nothing besides the attempt and its endpoint's health to settle
    (settle_delivered writes the rest as constants)."""
    return (result.outcome is AttemptOutcome.DELIVERED
            and result.status is DeliveryStatus.SUCCEEDED
            and result.next_attempt_at is None and result.error is None
            and result.prune_device_id is None and result.credentials_rejected is None
            and result.disable_endpoint_id is None)


def exhausted(results: Sequence[AttemptResult],
              moved: Mapping[str, Row]) -> list[OperationalEvent]:
    """``delivery.exhausted`` for each delivery these attempts failed for good, but never
    for an operational one: those tell nobody about themselves."""
    told = []
    for r in results:
        d = moved.get(r.delivery_id)
        if d is None or r.status is not DeliveryStatus.FAILED or d["kind"] == OPERATIONAL_KIND:
            continue
        told.append(delivery_exhausted(
            r.app_id, delivery_id=r.delivery_id, event_id=d["event_id"],
            event_type=d["event_type"], kind=d["kind"], endpoint_id=d["endpoint_id"],
            device_id=d["device_id"], attempts=d["attempt_count"],
            last_status_code=r.status_code, last_error=r.error))
    return told


def refused_credentials(results: Sequence[AttemptResult],
                        moved: Mapping[str, Row]) -> dict[tuple[str, str], str]:
    """``{(app id, provider): the provider's reason}`` for the attempts whose provider
    refused the app's credentials."""
    refused: dict[tuple[str, str], str] = {}
    for r in results:
        d = moved.get(r.delivery_id)
        if r.credentials_rejected is not None and d is not None:
            refused[(r.app_id, d["kind"])] = r.credentials_rejected
    return refused


def outcome_notifications(
    results: Sequence[AttemptResult], details: Mapping[str, Row]
) -> list[str]:
    """Attempt outcomes as compact JSON arrays, each under :data:`MAX_NOTIFY_BYTES`.

    Only ids, types and results: never a payload, secret or device token.
    """
    chunks: list[str] = []
    items: list[str] = []
    size = 2
    for r in results:
        d = details.get(r.delivery_id)
        if d is None:
            continue
        item = json.dumps({
            "delivery_id": r.delivery_id, "event_id": d["event_id"],
            "event_type": d["event_type"], "endpoint_id": d["endpoint_id"], "kind": d["kind"],
            "app_id": d["app_id"], "status": r.status.value, "outcome": r.outcome.value,
            "status_code": r.status_code, "attempt": d["attempt_count"],
            "at": iso(r.attempted_at),
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
