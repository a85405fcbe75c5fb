"""The delivery queue, as the dispatcher sees it: a small interface with two
implementations, :class:`~gateway.store.postgres_queue.PostgresQueue` (the real one) and
:class:`~gateway.store.memory_queue.InMemoryQueue` (a faithful fake for tests). The
dispatcher never knows which one it drives; the same tests run against both.

A claim takes due deliveries with a lease: until the lease runs out no other claim takes
them, and if the claimer dies they come back by themselves (at least once). Every
attempt is then settled through :meth:`Queue.complete` (the delivery is over: delivered,
failed for good, or its target gone) or :meth:`Queue.reschedule` (try again later);
either logs the attempt. A delivery moves on only while the caller's lease still holds
it. Claimed work that was never attempted goes back with :meth:`Queue.release`.

Settling also keeps each endpoint's health (:mod:`gateway.health`): an endpoint whose
circuit is open gets nothing from a claim (its due deliveries wait, parked), a half-open
one gets one probe across all claimers, and one that failed for the whole disable window
is disabled.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

from adapters.base import DeliveryJob, record
from gateway_client.models import AttemptOutcome, DeliveryStatus, DisabledReason


@dataclass(frozen=True)
class Rooms:
    """How many more deliveries a claimer can start now, so that a claim takes only what
    it can send at once (nothing waits for a slot holding another's) and shares fairly:
    per webhook endpoint, per push provider and per app. Targets and apps not named have
    the default room."""

    #: Endpoints with deliveries in flight here: how many more each may take.
    endpoints: Mapping[str, int] = field(default_factory=dict)
    #: Push providers (``fcm``, ``apns``): how many more each may take.
    kinds: Mapping[str, int] = field(default_factory=dict)
    #: Apps with deliveries in flight here: how many more each may take.
    apps: Mapping[str, int] = field(default_factory=dict)
    endpoint: int = 1_000_000
    app: int = 1_000_000

    def room(self, app_id: str, kind: str, endpoint_id: str | None) -> tuple[int, int]:
        """(room of the delivery's target, room of its app)."""
        target = (self.endpoints.get(endpoint_id, self.endpoint) if endpoint_id is not None
                  else self.kinds.get(kind, self.endpoint))
        return target, self.apps.get(app_id, self.app)

    def less(self, jobs: Sequence[Job]) -> Rooms:
        """These rooms, less what ``jobs`` take up."""
        endpoints, kinds, apps = dict(self.endpoints), dict(self.kinds), dict(self.apps)
        for job in jobs:
            delivery = job.delivery
            target, app = self.room(delivery.app_id, delivery.kind,
                                    delivery.endpoint.id if delivery.endpoint else None)
            if delivery.endpoint is not None:
                endpoints[delivery.endpoint.id] = endpoints.get(delivery.endpoint.id,
                                                                target) - 1
            else:
                kinds[delivery.kind] = kinds.get(delivery.kind, target) - 1
            apps[delivery.app_id] = apps.get(delivery.app_id, app) - 1
        return replace(self, endpoints=endpoints, kinds=kinds, apps=apps)


#: Rooms with no limit: a claim takes whatever is due.
UNLIMITED = Rooms()


@record
class Job:
    """A claimed delivery: what to send, and the queue's bookkeeping."""

    delivery: DeliveryJob
    lease_id: uuid.UUID
    #: Position in the retry schedule (attempts since creation or the last manual retry).
    schedule_pos: int
    #: For a push: the device is still live (a pruned one is not pushed again).
    device_active: bool = True
    #: Why it cannot be sent as it stands (a secret no configured key opens), if so.
    unsendable: str | None = None


class Claim(list[Job]):
    """What a claim took; how many due deliveries it held back for their endpoints' rate
    limits (not taken, but booked a later send time, so more may be due behind them and
    the claimer should look again at once); and how many it saw due but left waiting for
    room (their target or app had no room left, so the claimer's own deliveries must
    finish before more of them can go)."""

    def __init__(self, jobs: Iterable[Job] = (), held_back: int = 0,
                 waiting: int = 0) -> None:
        super().__init__(jobs)
        self.held_back = held_back
        self.waiting = waiting


@record
class AttemptResult:
    """One attempt's outcome and the delivery's next state."""

    delivery_id: str
    app_id: str
    lease_id: uuid.UUID
    status: DeliveryStatus
    #: When to try again (``status`` pending), else None.
    next_attempt_at: datetime | None
    schedule_pos: int
    attempted_at: datetime
    duration_ms: int
    outcome: AttemptOutcome
    status_code: int | None
    response_snippet: str | None
    error: str | None
    #: An endpoint to disable because of this attempt (it answered 410 Gone).
    disable_endpoint_id: str | None = None
    disable_reason: DisabledReason | None = None
    #: A device to prune because of this attempt (the provider says its token is dead),
    #: unless it was registered again after ``prune_since``.
    prune_device_id: str | None = None
    prune_reason: str | None = None
    prune_since: datetime | None = None
    #: The provider refused the app's credentials, and said this.
    credentials_rejected: str | None = None
    #: The endpoint this attempt was sent to (None for a push, or an attempt that never
    #: left the gateway): its outcome counts towards that endpoint's health.
    endpoint_id: str | None = None


@dataclass(frozen=True)
class Settlement:
    """What settling some attempts did to their endpoints, as (app id, endpoint id)."""

    #: Endpoints whose circuit was closed and opened now.
    circuits_opened: tuple[tuple[str, str], ...] = ()
    #: Endpoints disabled now because every attempt failed for the whole disable window.
    disabled_failing: tuple[tuple[str, str], ...] = ()

    def __add__(self, other: Settlement) -> Settlement:
        return Settlement(self.circuits_opened + other.circuits_opened,
                          self.disabled_failing + other.disabled_failing)


#: Settling that changed no endpoint.
NO_CHANGE = Settlement()


class Queue(Protocol):
    """What the dispatcher needs of the deliveries table."""

    async def claim(self, limit: int, lease_s: float, lease_id: uuid.UUID,
                    rooms: Rooms = UNLIMITED) -> Claim:
        """Up to ``limit`` due deliveries no one holds, leased for ``lease_s`` seconds:
        none whose endpoint is disabled or deleted or whose circuit is open, none past
        its target's or its app's room, and, among those, apps in turn (each app's oldest
        due first). A half-open circuit's endpoint gets one delivery, its probe, unless
        another claim took that already. A rate-limited endpoint gives no more than its
        send schedule allows now; its other due deliveries are booked later send times
        (:mod:`gateway.sendrate`)."""
        ...

    async def complete(self, results: Sequence[AttemptResult]) -> Settlement:
        """Log each attempt and count it towards its endpoint's health; its delivery is
        over (succeeded or failed), its endpoint disabled or its device pruned when the
        result says so."""
        ...

    async def reschedule(self, results: Sequence[AttemptResult]) -> Settlement:
        """Log each attempt and count it towards its endpoint's health; its delivery is
        due again at ``next_attempt_at``."""
        ...

    async def release(self, lease_ids: Sequence[uuid.UUID]) -> None:
        """Hand back unattempted claims at once: they are due now."""
        ...

    async def release_jobs(self, jobs: Sequence[Job]) -> None:
        """Hand back these unattempted jobs at once (due now); what else their leases
        hold stays claimed."""
        ...

    async def next_due_at(self) -> datetime | None:
        """When the next waiting delivery falls due, or the next open circuit half-opens
        (None: nothing waits)."""
        ...


@dataclass(frozen=True)
class Expanded:
    """One batch of a fan-out whose deliveries were made leased to the expander."""

    #: Devices the batch covered.
    devices: int
    #: The deliveries it made, claimed by the caller's lease: the caller sends them (or
    #: releases them) as it would a claim's. A batch replayed after a crash makes none.
    jobs: list[Job]


@dataclass
class Handoff:
    """An ingest commit's deliveries made leased to the ingesting process's own
    dispatcher, which sends them as it sends a fan-out's (``Dispatcher.hand_over``): no
    claim has to find them. Only deliveries a claim would take as they come are leased
    (endpoints with no rate limit and a closed circuit); the rest are due for any claimer.
    """

    lease_id: uuid.UUID
    lease_s: float
    #: When the lease was asked for (loop time): the deliveries start within the
    #: dispatcher's hand-over wait of it, or go back to the queue.
    leased_at: float
    #: Endpoints and apps the dispatcher has no room for now: their deliveries are left
    #: due, for any dispatcher, as a claim would leave them.
    full_endpoints: list[str] = field(default_factory=list)
    full_apps: list[str] = field(default_factory=list)
    #: The deliveries the commit made leased, as jobs (filled in by the store).
    jobs: list[Job] = field(default_factory=list)
    #: The commit's leased deliveries could not be made into jobs (a bug): the caller
    #: gives the lease back instead of sending them.
    lost: bool = False


class Fanout(Protocol):
    """Expands events' push targets into one delivery per device."""

    async def expand(self, batch: int) -> int | None:
        """One batch of one event's devices; how many it covered, None when none waits.
        The deliveries are due at once, for any claimer (their dispatchers are woken)."""
        ...

    async def expand_leased(self, batch: int, lease_s: float,
                            lease_id: uuid.UUID) -> Expanded | None:
        """As :meth:`expand`, but the deliveries are made leased to the caller for
        ``lease_s`` seconds and handed back as jobs, so that no claim has to take them:
        the expander sends what it expanded. None when no fan-out waits."""
        ...
