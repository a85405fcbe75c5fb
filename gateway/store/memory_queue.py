"""A faithful in-memory :class:`~gateway.store.queue.Queue`, for tests of the dispatcher.

It keeps the PostgreSQL queue's rules, which the shared tests check against both: a
claim takes only due, pending deliveries of active endpoints, oldest due first, and
leases them (due again when the lease runs out); a settlement moves a delivery on only
while the caller's lease still holds it, but always logs the attempt; a 410 disables the
endpoint and parks its other pending deliveries; a prune spares a device registered
again after the provider's timestamp. Endpoint health follows :func:`gateway.health.settle`:
an endpoint whose circuit is not closed gets nothing from a claim (the due deliveries met
there are parked), except one probe when it is half-open; closing the circuit resumes
them; failing for the whole window disables the endpoint. A rate-limited endpoint gives a
claim what its send schedule allows (:mod:`gateway.sendrate`) and books the rest later
send times.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from adapters.base import DeliveryJob
from gateway.health import HEALTHY, Health, HealthRules, settle
from gateway.sendrate import DEFAULT_RATE_MARGIN_S, SendRate
from gateway.store.queue import UNLIMITED, AttemptResult, Claim, Job, Rooms, Settlement
from gateway_client.models import AttemptOutcome, DeliveryStatus, DisabledReason, EndpointStatus

#: A parked delivery's due time: never, until its endpoint is enabled again.
NEVER = datetime.max.replace(tzinfo=UTC)
#: A send schedule that has never moved ('-infinity' in endpoint_send_rates).
LONG_AGO = datetime.min.replace(tzinfo=UTC)


@dataclass
class Entry:
    """One delivery as the queue holds it."""

    job: DeliveryJob
    due_at: datetime
    status: DeliveryStatus = DeliveryStatus.PENDING
    lease_id: uuid.UUID | None = None
    schedule_pos: int = 0
    #: Attempts that moved it on (a settlement under a lost lease is logged only).
    attempt_count: int = 0
    attempts: list[AttemptResult] = field(default_factory=list)


class InMemoryQueue:
    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 health: HealthRules | None = None, *,
                 rate_margin_s: float = DEFAULT_RATE_MARGIN_S) -> None:
        self.clock = clock
        self.health = health or HealthRules()
        self.rate_margin_s = rate_margin_s
        self.entries: dict[str, Entry] = {}
        self.endpoints: dict[str, EndpointStatus] = {}
        self.disabled_reasons: dict[str, DisabledReason] = {}
        self.endpoint_health: dict[str, Health] = {}
        #: Device id -> (active?, registered at).
        self.devices: dict[str, tuple[bool, datetime]] = {}
        #: Rate-limited endpoints: their limit, and their schedule (tat, booked until).
        self.rate_limits: dict[str, int] = {}
        self.schedules: dict[str, tuple[datetime, datetime | None]] = {}

    # --- what a test sets up ----------------------------------------------------------

    def add(self, job: DeliveryJob, due_at: datetime | None = None) -> None:
        if job.endpoint is not None:
            self.endpoints.setdefault(job.endpoint.id, EndpointStatus.ACTIVE)
        if job.device is not None:
            self.devices.setdefault(job.device.id, (True, self.clock()))
        self.entries[job.delivery_id] = Entry(job, due_at or self.clock())

    def add_leased(self, job: DeliveryJob, lease_s: float, lease_id: uuid.UUID) -> Job:
        """A delivery made already leased (as a leased fan-out makes them), and its job."""
        self.add(job, self.clock() + timedelta(seconds=lease_s))
        self.entries[job.delivery_id].lease_id = lease_id
        return Job(job, lease_id, 0)

    def set_rate_limit(self, endpoint_id: str, limit: int | None) -> None:
        """Sends per second for an endpoint (None: no limit). As the store does on a
        changed limit, deliveries booked under the old one come due at once."""
        if limit == self.rate_limits.get(endpoint_id):
            return
        now = self.clock()
        tat, booked_until = self.schedules.get(endpoint_id, (LONG_AGO, None))
        for entry in self.entries.values():
            endpoint = entry.job.endpoint
            if (booked_until is not None and endpoint is not None
                    and endpoint.id == endpoint_id and entry.lease_id is None
                    and entry.status is DeliveryStatus.PENDING
                    and now < entry.due_at <= booked_until):
                entry.due_at = now
        self.schedules[endpoint_id] = (tat, None)
        if limit is None:
            self.rate_limits.pop(endpoint_id, None)
        else:
            self.rate_limits[endpoint_id] = limit

    def _rate(self, endpoint_id: str) -> SendRate:
        return SendRate(self.rate_limits[endpoint_id], 1.0 + self.rate_margin_s)

    # --- the Queue interface ----------------------------------------------------------

    async def claim(self, limit: int, lease_s: float, lease_id: uuid.UUID,
                    rooms: Rooms = UNLIMITED) -> Claim:
        now = self.clock()
        due = []
        for entry in sorted((e for e in self.entries.values() if self._claimable(e, now)),
                            key=lambda e: (e.due_at, e.job.delivery_id)):
            if self._tripped(entry):
                entry.due_at = NEVER
            else:
                due.append(entry)
        probes = self._probes(now, limit, lease_s, rooms)
        limit -= len(probes)
        budgets = {e.job.endpoint.id: self._rate(e.job.endpoint.id).budget(
                       self.schedules[e.job.endpoint.id][0], now)
                   for e in due
                   if e.job.endpoint is not None and e.job.endpoint.id in self.rate_limits}
        # Within each target's and each app's room, then apps in turn: the nth due of
        # every app before the (n+1)th of any. Past its budget, a rate-limited endpoint's
        # deliveries are held back.
        of_target: collections.Counter[str] = collections.Counter()
        of_app: collections.Counter[str] = collections.Counter()
        ranked: list[tuple[int, datetime, Entry]] = []
        held: dict[str, list[Entry]] = collections.defaultdict(list)
        for entry in due:
            job = entry.job
            target = job.endpoint.id if job.endpoint is not None else job.kind
            of_target[target] += 1
            of_app[job.app_id] += 1
            target_room, app_room = rooms.room(
                job.app_id, job.kind, job.endpoint.id if job.endpoint else None)
            budget = budgets.get(target) if job.endpoint is not None else None
            if budget is not None:
                if of_target[target] > budget:
                    held[target].append(entry)
                target_room = min(target_room, budget)
            if of_target[target] <= target_room and of_app[job.app_id] <= app_room:
                ranked.append((of_app[job.app_id], entry.due_at, entry))
        chosen = [entry for _, _, entry in sorted(
            ranked, key=lambda r: (r[0], r[1], r[2].job.delivery_id))][:limit]
        # As claim_due counts it: due rows of targets and apps that had room at all, less
        # what was taken or booked.
        seen = sum(1 for entry in due if min(rooms.room(
            entry.job.app_id, entry.job.kind,
            entry.job.endpoint.id if entry.job.endpoint else None)) > 0)
        self._move_schedules(now, budgets, chosen, held)
        jobs = []
        for entry in probes + chosen:
            entry.due_at = now + timedelta(seconds=lease_s)
            entry.lease_id = lease_id
            device = entry.job.device
            active = device is None or self.devices.get(device.id, (False, now))[0]
            jobs.append(Job(replace(entry.job, attempt=entry.attempt_count + 1), lease_id,
                            entry.schedule_pos, device_active=active))
        held_back = sum(len(entries) for entries in held.values())
        return Claim(jobs, held_back=held_back, waiting=max(0, seen - len(chosen) - held_back))

    def _move_schedules(self, now: datetime, budgets: dict[str, int], chosen: list[Entry],
                        held: dict[str, list[Entry]]) -> None:
        """Spend what the claim sends and book what it holds back, as claim_due does."""
        sent = collections.Counter(e.job.endpoint.id for e in chosen if e.job.endpoint)
        for endpoint_id, budget in budgets.items():
            rate = self._rate(endpoint_id)
            tat, booked_until = self.schedules[endpoint_id]
            waiting = held.get(endpoint_id, [])
            if waiting:
                first = rate.booking_start(rate.spend(tat, now, budget), now, booked_until)
                for k, entry in enumerate(waiting):
                    entry.due_at = first + timedelta(seconds=k * rate.interval_s)
                booked_until = waiting[-1].due_at
            self.schedules[endpoint_id] = (rate.spend(tat, now, sent[endpoint_id]),
                                           booked_until)

    def _claimable(self, entry: Entry, now: datetime) -> bool:
        endpoint = entry.job.endpoint
        return (entry.status is DeliveryStatus.PENDING and entry.due_at <= now
                and (endpoint is None
                     or self.endpoints.get(endpoint.id) is EndpointStatus.ACTIVE))

    def _tripped(self, entry: Entry) -> bool:
        """Its endpoint's circuit is not closed."""
        endpoint = entry.job.endpoint
        return (endpoint is not None and self.endpoint_health.get(
            endpoint.id, HEALTHY).circuit_open_until is not None)

    def _parked(self, endpoint_id: str) -> list[Entry]:
        return sorted((e for e in self.entries.values()
                       if e.job.endpoint is not None and e.job.endpoint.id == endpoint_id
                       and e.status is DeliveryStatus.PENDING and e.due_at == NEVER),
                      key=lambda e: e.job.delivery_id)

    def _probes(self, now: datetime, limit: int, lease_s: float, rooms: Rooms) -> list[Entry]:
        """One parked delivery of each half-open endpoint whose probe is not out, marking
        the probe out for the lease."""
        chosen: list[Entry] = []
        half_open = sorted(
            ((h.circuit_open_until, endpoint_id)
             for endpoint_id, h in self.endpoint_health.items()
             if h.circuit_open_until is not None and h.circuit_open_until <= now
             and (h.circuit_probe_until is None or h.circuit_probe_until <= now)
             and self.endpoints.get(endpoint_id) is EndpointStatus.ACTIVE))
        for _, endpoint_id in half_open:
            parked = self._parked(endpoint_id)
            if len(chosen) >= limit or not parked or rooms.room(
                    parked[0].job.app_id, parked[0].job.kind, endpoint_id)[1] <= 0:
                continue
            chosen.append(parked[0])
            self.endpoint_health[endpoint_id] = replace(
                self.endpoint_health[endpoint_id],
                circuit_probe_until=now + timedelta(seconds=lease_s))
        return chosen

    async def complete(self, results: Sequence[AttemptResult]) -> Settlement:
        for r in results:
            self._settle(r)
            if r.prune_device_id is not None:
                active, registered_at = self.devices.get(r.prune_device_id, (False, NEVER))
                if active and (r.prune_since is None or registered_at <= r.prune_since):
                    self.devices[r.prune_device_id] = (False, registered_at)
        return self._settle_health(results)

    async def reschedule(self, results: Sequence[AttemptResult]) -> Settlement:
        for r in results:
            self._settle(r)
        return self._settle_health(results)

    def _settle_health(self, results: Sequence[AttemptResult]) -> Settlement:
        now = self.clock()
        attempts: dict[str, list[tuple[bool, datetime]]] = collections.defaultdict(list)
        for r in results:
            if r.endpoint_id is not None:
                attempts[r.endpoint_id].append(
                    (r.outcome is AttemptOutcome.DELIVERED, r.attempted_at))
        opened, failing = [], []
        for endpoint_id in sorted(attempts):
            change = settle(self.endpoint_health.get(endpoint_id, HEALTHY),
                            attempts[endpoint_id], self.health, now)
            self.endpoint_health[endpoint_id] = change.health
            if change.opened:
                opened.append(endpoint_id)
            if change.closed:
                self._resume(endpoint_id)
            if change.disable:
                failing.append(endpoint_id)
        for r in results:
            if r.disable_endpoint_id is not None:
                self._disable(r.disable_endpoint_id, DisabledReason.GONE)
        disabled = [e for e in failing if self._disable(e, DisabledReason.FAILING)]
        return Settlement(tuple((self._app_of(e), e) for e in opened),
                          tuple((self._app_of(e), e) for e in disabled))

    def _disable(self, endpoint_id: str, reason: DisabledReason) -> bool:
        if self.endpoints.get(endpoint_id) is not EndpointStatus.ACTIVE:
            return False
        self.endpoints[endpoint_id] = EndpointStatus.DISABLED
        self.disabled_reasons[endpoint_id] = reason
        for entry in self.entries.values():
            endpoint = entry.job.endpoint
            if (endpoint is not None and endpoint.id == endpoint_id
                    and entry.status is DeliveryStatus.PENDING and entry.lease_id is None):
                entry.due_at = NEVER
        return True

    def _resume(self, endpoint_id: str) -> None:
        if self.endpoints.get(endpoint_id) is EndpointStatus.ACTIVE:
            for entry in self._parked(endpoint_id):
                entry.due_at = self.clock()

    def _app_of(self, endpoint_id: str) -> str:
        return next(e.job.app_id for e in self.entries.values()
                    if e.job.endpoint is not None and e.job.endpoint.id == endpoint_id)

    def _settle(self, r: AttemptResult) -> None:
        entry = self.entries[r.delivery_id]
        entry.attempts.append(r)
        if entry.lease_id != r.lease_id:
            return  # the lease ran out and someone else holds it now
        entry.status = r.status
        entry.due_at = r.next_attempt_at or NEVER
        entry.schedule_pos = r.schedule_pos
        entry.attempt_count += 1
        entry.lease_id = None

    async def release(self, lease_ids: Sequence[uuid.UUID]) -> None:
        now = self.clock()
        for entry in self.entries.values():
            if entry.lease_id in lease_ids and entry.status is DeliveryStatus.PENDING:
                entry.lease_id = None
                entry.due_at = now

    async def release_jobs(self, jobs: Sequence[Job]) -> None:
        now = self.clock()
        for job in jobs:
            entry = self.entries.get(job.delivery.delivery_id)
            if (entry is not None and entry.lease_id == job.lease_id
                    and entry.status is DeliveryStatus.PENDING):
                entry.lease_id = None
                entry.due_at = now

    async def next_due_at(self) -> datetime | None:
        now = self.clock()
        waiting = [e.due_at for e in self.entries.values()
                   if e.status is DeliveryStatus.PENDING and e.due_at < NEVER]
        waiting += [h.circuit_open_until for endpoint_id, h in self.endpoint_health.items()
                    if h.circuit_open_until is not None and h.circuit_open_until > now
                    and self.endpoints.get(endpoint_id) is EndpointStatus.ACTIVE]
        return min(waiting, default=None)
