"""The dispatcher: claims due deliveries from the queue and runs them through adapters.

The queue picks the work (in PostgreSQL ``FOR UPDATE SKIP LOCKED`` with a lease, so any
number of dispatcher processes share one database and a crashed one's claims come back
by themselves); a wake-up source (``LISTEN gateway_deliveries``) wakes it within
milliseconds of ingest, and polling is only the fallback.

Concurrency is bounded overall, per webhook endpoint, per push provider and per app, and
the bounds are kept by what is claimed, not by waiting: each claim says how much room
every busy endpoint, provider and app has left (:class:`~gateway.store.queue.Rooms`),
and the queue hands out only what can start at once, apps in turn. So a delivery never
waits for its endpoint while holding a slot another app could use, an app whose
endpoints hang ties up at most its own share, and every app's work keeps moving.

A supervisor restarts the loop if it dies or stalls, and ``healthy()`` tells
``/readyz``. The dispatcher knows the queue only by its interface
(:class:`~gateway.store.queue.Queue`), the transports only by theirs
(:class:`~adapters.base.Adapter`), and what to do after an attempt only from the retry
policy. Each attempt joins the trace its event was emitted in (:mod:`gateway.tracing`),
as a span of its own when there are spans.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import logging
import math
import time
import uuid
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from adapters.base import Adapter, DeliveryJob, Outcome, Verdict
from gateway import tracing
from gateway.batching import GroupCommit
from gateway.errors import DatabaseUnavailable
from gateway.logs import emit, scrub
from gateway.operational import OPERATIONAL_KIND
from gateway.retry import RetryPolicy
from gateway.store.queue import (
    NO_CHANGE,
    AttemptResult,
    Claim,
    Handoff,
    Job,
    Queue,
    Rooms,
    Settlement,
)
from gateway_client.models import (
    AttemptOutcome,
    DeliveryKind,
    DeliveryStatus,
    DisabledReason,
    iso,
)

if TYPE_CHECKING:
    from gateway.metrics import Metrics
    from gateway.tracing import Spans

log = logging.getLogger("gateway.dispatcher")
#: An attempt line's fields are ids the gateway minted, its own enums, numbers, and the
#: error already scrubbed: written without a second scrub.
_ATTEMPT_LINE = frozenset({"msg", "app", "event", "trace", "delivery", "kind", "endpoint",
                           "device", "outcome", "status", "error", "next_attempt_at"})

PUSH_KINDS = (DeliveryKind.FCM, DeliveryKind.APNS)
#: When due work waits for room that only this dispatcher's own deliveries free, the next
#: claim waits until about 1/GATHER_SHARE of those in flight have finished, or GATHER_S
#: after the first one did, or new work is announced: a claim then takes several at once
#: instead of one per finished delivery, and asks for about what can go. Half: a claim
#: costs PostgreSQL about 1 ms plus some 40 µs a row, so the drain of one endpoint (room
#: 64) claimed 34 rows a claim at an eighth and 46-53 at half, and ran 6-8 % faster with
#: about a tenth less CPU in each process (bench/README.md, "Claims of half the room").
GATHER_SHARE = 2
GATHER_S = 0.005
MIN_CLAIM = 8
#: A claim costs PostgreSQL about 2 ms of CPU however little it takes (bench/README.md,
#: "Claims under a steady trickle"), and under a steady trickle every ingest commit wakes
#: the dispatcher: after a wake-up, the next claim waits until this long after the
#: previous one began, so that the wake-ups of that time share one claim. A claim after a
#: long quiet starts at once, and a backlog (a claim that took all it asked for) is
#: claimed without pause.
CLAIM_INTERVAL_S = 0.01
#: Every dispatcher hears every wake-up and claims, and once one has taken what it
#: announced the others find nothing (bench/README.md, "A plain claim": two workers at
#: 500 events/s made half again as many claims as one, a quarter of them empty). After a
#: woken claim that took nothing, the pause before the next woken claim doubles, up to
#: this many intervals; a claim that takes anything ends it. So one dispatcher answers
#: each wake-up within the interval, the others look less often, and they take their
#: share again as soon as work is left for them. A claim after a long quiet still starts
#: at once.
EMPTY_CLAIM_STRETCH = 4
#: Results are written at most this often (each write costs PostgreSQL about 0.4 ms however
#: few it holds): a delivered attempt frees its slot before its result is written, and
#: its lease covers the wait.
RESULT_INTERVAL_S = 0.01
#: A fan-out or an ingest commit in this process hands its deliveries over already leased
#: (hand_over): about this many at most wait here for room (the fan-out waits while it is
#: full, ingest leases nothing then; an ingest commit may bring a batch more), and each
#: starts within ``handoff_wait_s`` or goes back to the queue.
HANDOFF_CAPACITY = 2000

#: Runs until cancelled, calling its argument whenever new work may be due.
WakeSource = Callable[[Callable[[], None]], Coroutine[Any, Any, None]]


def _clean(text: str | None, limit: int = 1024) -> str | None:
    """PostgreSQL text cannot hold NUL; logs should stay bounded."""
    return None if text is None else text.replace("\x00", "\ufffd")[:limit]


class Dispatcher:
    def __init__(
        self,
        queue: Queue,
        adapters: Mapping[str, Adapter],
        policy: RetryPolicy,
        *,
        wake_source: WakeSource | None = None,
        concurrency: int = 256,
        endpoint_concurrency: int = 64,
        push_concurrency: int = 128,
        app_concurrency: int = 128,
        batch: int = 200,
        lease_s: float = 45.0,
        poll_interval_s: float = 1.0,
        claim_interval_s: float = CLAIM_INTERVAL_S,
        empty_claim_stretch: int = EMPTY_CLAIM_STRETCH,
        stall_after_s: float = 30.0,
        handoff_capacity: int = HANDOFF_CAPACITY,
        handoff_wait_s: float | None = None,
        metrics: Metrics | None = None,
        spans: Spans | None = None,
    ) -> None:
        self.queue = queue
        self.adapters = dict(adapters)
        self.policy = policy
        self.wake_source = wake_source
        self.concurrency = concurrency
        self.endpoint_concurrency = endpoint_concurrency
        self.push_concurrency = push_concurrency
        self.app_concurrency = app_concurrency
        self.batch = batch
        self.lease_s = lease_s
        self.poll_interval_s = poll_interval_s
        self.claim_interval_s = claim_interval_s
        self.empty_claim_stretch = empty_claim_stretch
        self.stall_after_s = stall_after_s
        self.handoff_capacity = handoff_capacity
        #: How long a handed-over delivery may wait to start (its lease must still
        #: cover its attempt): a quarter of the lease unless told.
        self.handoff_wait_s = lease_s / 4 if handoff_wait_s is None else handoff_wait_s
        self.metrics = metrics
        self.spans = spans

        self.heartbeat = time.monotonic()
        self.restarts = 0
        self._wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._stopping = False
        #: Set by stop_claiming (and stop): the claim loop ends.
        self._claims_stopped = False
        #: Every delivery task until its result is written, with its claim's lease.
        self._inflight: dict[asyncio.Task[None], uuid.UUID] = {}
        #: Deliveries being sent: a delivered one holds its slot until its attempt is
        #: over, not until its result is written (its lease covers that).
        self._sending = 0
        #: Deliveries of ours whose attempt is over, ever (see GATHER_SHARE).
        self._finished = 0
        #: In flight per target (an endpoint id, or a push provider) and per app.
        self._per_target: collections.Counter[str] = collections.Counter()
        self._per_app: collections.Counter[str] = collections.Counter()
        #: Claims whose answer was lost with the connection: they may have committed.
        self._uncertain_leases: list[uuid.UUID] = []
        #: Handed-over deliveries whose hand-back failed (the database was away): handed
        #: back again before the next claim, not left held until their leases lapse.
        self._unreturned: list[Job] = []
        #: Deliveries handed over leased by this process's fan-out or ingest, waiting for
        #: room, by app and then target (endpoint or provider), each with the loop time it
        #: must start by (hand_over). Apps take turns, and each app's targets.
        self._ready: dict[str, dict[str, collections.deque[tuple[Job, float]]]] = {}
        self._ready_count = 0
        #: No handed-over delivery at the head of its queue is late before this (loop
        #: time): a lower bound of the heads' start-by times, so that most calls of
        #: _start_ready skip looking for late ones (it runs each time a slot frees).
        self._ready_late_at = math.inf
        self._ready_room = asyncio.Event()
        #: Where the last claim may have left due deliveries waiting for the room
        #: handed-over ones would take (_competing): there they start only after the next
        #: claim, so the claim (oldest due first) has the room first.
        self._claims_waiting = _NOT_WAITING
        self._handing_back: set[asyncio.Task[None]] = set()
        #: Endpoints whose sending changed (forget_endpoints), with the loop time this
        #: process heard it: a commit leased before then may carry them as they were.
        self._changed_at: dict[str, float] = {}
        #: Whether endpoint changes are heard (hearing); since when every endpoint counts
        #: as changed (when hearing began again; infinity while unheard).
        self._hearing = True
        self._all_changed_at = -math.inf
        #: What each delivery runs in (a copy each): the dispatcher's own context, not
        #: that of whoever handed it over (an ingest commit runs in a request's, whose
        #: request id would otherwise be on the attempt's line).
        self._context = contextvars.Context()
        self._loop_task: asyncio.Task[None] | None = None
        self._side_tasks: list[asyncio.Task[None]] = []
        self._results: GroupCommit[AttemptResult, None] = GroupCommit(
            self._settle, max_batch=500, max_flushers=2, name="attempt-writer",
            fails_together=(DatabaseUnavailable,), min_interval_s=RESULT_INTERVAL_S)

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._context = contextvars.copy_context()
        self._loop_task = asyncio.create_task(self._loop(), name="dispatcher-loop")
        self._side_tasks = [asyncio.create_task(self._supervise(),
                                                name="dispatcher-supervisor")]
        if self.wake_source is not None:
            self._side_tasks.append(asyncio.create_task(self.wake_source(self.wake),
                                                        name="dispatcher-wakeups"))

    def wake(self) -> None:
        """Look for due work now (new deliveries, a requeue, a reconnect)."""
        self._wake.set()

    @property
    def inflight(self) -> int:
        """Deliveries being sent right now."""
        return self._sending

    def healthy(self) -> bool:
        """The loop runs and has moved recently."""
        running = self._loop_task is not None and not self._loop_task.done()
        return running and time.monotonic() - self.heartbeat < self.stall_after_s

    async def forget_app(self, app_id: str) -> None:
        """The app was deleted: its adapters' tokens and connections go (a delivery of it
        still in flight may fail for want of them, which no longer matters), and so do
        its handed-over deliveries that have not started."""
        self._drop_ready(lambda app, target: app == app_id)
        for adapter in self.adapters.values():
            try:
                await adapter.forget_app(app_id)
            except Exception:
                log.exception("%s adapter failed to forget app %s", adapter.kind, app_id)

    def stop_claiming(self) -> None:
        """Claim nothing more, and take no more fan-out batches (room_to_hand_over): the
        process is about to stop (:meth:`stop`). Deliveries in flight go on, and so do
        those this process's last ingest commits hand over."""
        self._claims_stopped = True
        self._wake.set()
        self._slot_free.set()
        self._ready_room.set()
        if self._loop_task is None or self._loop_task.done():  # (a dead one is not restarted)
            self._no_claim_waits()

    def _no_claim_waits(self) -> None:
        """The claim loop is over: no claim waits for room any more, so what is handed
        over takes it as it frees."""
        self._claims_waiting = _NOT_WAITING
        self._start_ready()

    async def stop(self, grace_s: float) -> None:
        """Stop claiming, give in-flight deliveries ``grace_s`` to finish, release the rest
        (and what was handed over and never started)."""
        self._stopping = True
        # What waits goes back first: claiming stopped, nothing handed over starts now.
        self._drop_ready(lambda app, target: True)
        self.stop_claiming()
        for task in self._side_tasks:
            task.cancel()
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._loop_task, timeout=2)
        pending = list(self._inflight)
        if pending:
            log.info("waiting up to %.1f s for %d in-flight deliveries", grace_s, len(pending))
            _, still = await asyncio.wait(pending, timeout=grace_s)
            leases = {self._inflight[t] for t in still if t in self._inflight}
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
            with contextlib.suppress(DatabaseUnavailable):
                await self.queue.release(list(leases))
        await asyncio.gather(*self._side_tasks, return_exceptions=True)
        while self._handing_back:  # including any begun while these were awaited
            await asyncio.gather(*self._handing_back, return_exceptions=True)
        if self._uncertain_leases or self._unreturned:
            try:
                await self._release_uncertain()
            except Exception as exc:  # their leases bring them back; a stop goes on
                log.warning("could not hand back %d leases and %d deliveries at stop (%s); "
                            "they come back when the leases lapse",
                            len(self._uncertain_leases), len(self._unreturned), exc)
        await self._results.close()

    async def _supervise(self) -> None:
        """Restart the loop when it dies or stalls: a dispatcher is never silently gone."""
        while not self._stopping:
            await asyncio.sleep(min(1.0, self.stall_after_s / 4))
            task = self._loop_task
            if task is None or self._claims_stopped:
                continue
            if task.done():
                exc = None if task.cancelled() else task.exception()
                log.error("dispatcher loop died (%r); restarting it", exc)
            elif time.monotonic() - self.heartbeat > self.stall_after_s:
                log.error("dispatcher loop stalled for %.0f s; restarting it",
                          time.monotonic() - self.heartbeat)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            else:
                continue
            self.restarts += 1
            self.heartbeat = time.monotonic()
            self._loop_task = asyncio.create_task(self._loop(), name="dispatcher-loop")

    # --- the loop ---------------------------------------------------------------------

    async def _loop(self) -> None:
        try:
            await self._claim_until_stopped()
        finally:
            if self._claims_stopped:  # (also when it ends by an error)
                self._no_claim_waits()

    async def _claim_until_stopped(self) -> None:
        backoff = 0.05
        #: When the last claim left due work waiting for room: how many of ours had
        #: finished when it was made.
        crowded_at: int | None = None
        loop = asyncio.get_running_loop()
        #: When the last claim began (loop time), and whether the next one was woken.
        claimed_at = -self.claim_interval_s
        woken = False
        #: The next woken claim's pause, in claim intervals (EMPTY_CLAIM_STRETCH), and
        #: whether the coming claim is a woken one.
        stretch = 1
        paced = False
        while not self._claims_stopped:
            self.heartbeat = time.monotonic()
            if woken:
                woken = False
                paced = True
                pause = claimed_at + self.claim_interval_s * stretch - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
                continue
            free = self._free()
            if free <= 0:
                if self._ready_count:
                    # This loop is about to claim: the next freed slot is its, not a
                    # handed-over delivery's (due work first, oldest first).
                    self._claims_waiting = _Competing(everywhere=True)
                self._slot_free.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval_s):
                        await self._slot_free.wait()
                continue
            want = min(free, self.batch)
            if crowded_at is not None:
                want = min(want, max(2 * (self._finished - crowded_at), MIN_CLAIM))
            finished = self._finished
            self._wake.clear()
            self._slot_free.clear()
            lease_id = uuid.uuid4()
            claimed_at = loop.time()
            rooms = self._rooms()
            try:
                if self._uncertain_leases or self._unreturned:
                    # Hand back what a claim cut off mid-answer may have taken, and what a
                    # hand-back failed to return, instead of leaving it reserved until its
                    # lease runs out.
                    await self._release_uncertain()
                jobs = await self.queue.claim(want, self.lease_s, lease_id, rooms)
            except DatabaseUnavailable as exc:
                self._uncertain_leases.append(lease_id)
                log.warning("cannot claim deliveries: %s; retrying in %.2f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.poll_interval_s)
                continue
            backoff = 0.05
            #: Nothing taken, due work waiting, nothing of ours in flight: what it chose
            #: is another's (see below), an empty claim as much as a woken one's.
            others_hold = (not jobs and jobs.waiting and not jobs.held_back
                           and not self._sending)
            if (jobs or jobs.held_back or jobs.waiting) and not others_hold:
                stretch = 1
            elif paced or others_hold:
                stretch = min(2 * stretch, self.empty_claim_stretch)
            paced = False
            if jobs.held_back and self.metrics is not None:
                self.metrics.rate_limited.inc(jobs.held_back)
            for job in jobs:
                self._start(job)
            self._claims_waiting = self._competing(rooms, jobs, want)
            self._start_ready()
            crowded_at = None
            if len(jobs) == want:
                await asyncio.sleep(0)
                continue
            if others_hold:
                # What waits is not waiting for room we hold: another transaction (a
                # claim, an endpoint's deletion) locked what this claim chose (claim_due
                # chooses, then locks; the plain claim's scan passes over held rows).
                # Claim again after an interval, stretched while claims keep finding
                # nothing, not after the poll interval that waiting for our own
                # deliveries would take.
                woken = True
                continue
            if jobs.waiting and not jobs.held_back:
                crowded_at = finished
                await self._gather(finished)
                continue
            # Deliveries held back for a rate limit were booked out of the way: what was
            # due behind them can be claimed at once.
            woken = await self._idle(claimed=len(jobs) + jobs.held_back)

    async def _idle(self, claimed: int) -> bool:
        """Wait for due work, a wake-up or, when what is due is held back by full rooms
        (or by another claimer's lock), for one of our deliveries to finish; False when
        due work can be claimed at once (no wait: the next claim is not paced)."""
        timeout = self.poll_interval_s
        with contextlib.suppress(DatabaseUnavailable):
            due = await self.queue.next_due_at()
            if due is not None:
                until = (due - datetime.now(UTC)).total_seconds()
                timeout = max(0.0, min(timeout, until))
        due_now = timeout <= 0
        if due_now:
            if claimed:
                return False
            # Due work this claim could not take: its rooms are full, or another claimer
            # holds it. Asking again at once would spin against the database.
            timeout = self.poll_interval_s if self._sending else min(0.05,
                                                                       self.poll_interval_s)
        waits = [asyncio.ensure_future(self._wake.wait())]
        if due_now or not self._ready_count or self._claims_waiting.anywhere:
            # A freed slot may let due work go. (With nothing due, a freed slot goes to a
            # handed-over delivery at once: no claim needed.)
            waits.append(asyncio.ensure_future(self._slot_free.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        return True

    async def _gather(self, finished: int) -> None:
        """Due work waits for room our own deliveries hold: wait for some of them to
        finish (see GATHER_SHARE), or for new work, which may have room at once."""
        loop = asyncio.get_running_loop()
        enough = finished + max(1, self._sending // GATHER_SHARE)
        until = loop.time() + self.poll_interval_s
        gathering = False
        while not self._wake.is_set() and self._finished < enough:
            if self._finished > finished and not gathering:
                gathering = True
                until = min(until, loop.time() + GATHER_S)
            timeout = until - loop.time()
            if timeout <= 0:
                return
            self._slot_free.clear()
            waits = [asyncio.ensure_future(self._wake.wait()),
                     asyncio.ensure_future(self._slot_free.wait())]
            try:
                await asyncio.wait(waits, timeout=timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()

    def _free(self) -> int:
        """How many more deliveries may start now. Results still being written count too,
        up to as many again: a database that writes slower than endpoints answer slows
        the claims down."""
        return min(self.concurrency - self._sending, 2 * self.concurrency - len(self._inflight))

    def _start(self, job: Job) -> None:
        """Send a claimed (or handed-over) delivery in a slot of its own."""
        release = self._take_slot(_target(job), job.delivery.app_id)
        task = asyncio.create_task(self._deliver(job, release), context=self._context.copy())
        self._inflight[task] = job.lease_id
        task.add_done_callback(functools.partial(self._done, release=release),
                               context=self._context.copy())

    # --- deliveries handed over by a fan-out -------------------------------------------

    def hand_over(self, jobs: Sequence[Job], leased_at: float) -> None:
        """Take deliveries made leased to this dispatcher (a fan-out batch,
        :meth:`~gateway.store.queue.Fanout.expand_leased`, or an ingest commit's webhooks,
        :meth:`handoff`; asked for at ``leased_at``, loop time): they start as room frees
        within the same bounds as claimed ones, targets and apps in turn, and none later
        than ``handoff_wait_s`` after ``leased_at``: those go back to the queue, as do any
        handed over while stopping."""
        start_by = leased_at + self.handoff_wait_s
        if self._stopping or start_by <= asyncio.get_running_loop().time():
            self._hand_back(list(jobs))  # (one that can no longer start in time, too)
            return
        if self._changed_at or self._all_changed_at >= leased_at:
            kept: list[Job] = []
            stale: list[Job] = []
            for job in jobs:
                target = _target(job)
                changed_at = (-math.inf if target in PUSH_KINDS else
                              max(self._changed_at.get(target, -math.inf),
                                  self._all_changed_at))
                (stale if changed_at >= leased_at else kept).append(job)
            if stale:
                self._hand_back(stale)
                jobs = kept
        for job in jobs:
            targets = self._ready.setdefault(job.delivery.app_id, {})
            targets.setdefault(_target(job), collections.deque()).append((job, start_by))
        self._ready_count += len(jobs)
        self._ready_late_at = min(self._ready_late_at, start_by)
        self._start_ready()

    def handoff(self) -> Handoff | None:
        """A lease for an ingest commit's webhook deliveries, which this dispatcher then
        sends (:meth:`hand_over`) instead of claiming them: for the endpoints and apps it
        has room for now (counting what already waits for room), as a claim would take
        them. None when it has none (or is stopping): they are then due for any
        dispatcher, which is woken."""
        waiting = self._ready_count
        if (self._stopping or not self._hearing or self.handoff_wait_s <= 0
                or waiting >= self.handoff_capacity or self._free() - waiting <= 0):
            return None
        targets = collections.Counter(self._per_target)
        apps = collections.Counter(self._per_app)
        for app_id, queues in self._ready.items():
            for target, queue in queues.items():
                targets[target] += len(queue)
                apps[app_id] += len(queue)
        return Handoff(uuid.uuid4(), self.lease_s, asyncio.get_running_loop().time(),
                       full_endpoints=[t for t, n in targets.items()
                                       if t not in PUSH_KINDS and n >= self._room_of(t)],
                       full_apps=[a for a, n in apps.items() if n >= self.app_concurrency])

    async def room_to_hand_over(self, want: int, timeout_s: float) -> int:
        """How many deliveries :meth:`hand_over` takes now, at most ``want``, after waiting
        up to ``timeout_s`` for room for ``want`` (0 once claiming stopped: a fan-out then
        makes its deliveries due for any claimer, as it does when none could wait to
        start)."""
        if self.handoff_wait_s <= 0:
            return 0
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout_s
        while (not self._claims_stopped
               and self.handoff_capacity - self._ready_count < want):
            left = until - loop.time()
            if left <= 0:
                break
            self._ready_room.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._ready_room.wait()
        if self._claims_stopped:
            return 0
        return max(0, min(want, self.handoff_capacity - self._ready_count))

    def _competing(self, rooms: Rooms, jobs: Claim, want: int) -> _Competing:
        """Where due deliveries may be waiting for the room handed-over ones would take:
        everywhere when the claim took all it asked for (more may be due); else at each
        target (endpoint or provider) and each app that had no room left at this claim
        (the claim then saw none of their due deliveries) or whose room it filled."""
        if not self._ready_count:
            return _NOT_WAITING
        if len(jobs) >= want:
            return _Competing(everywhere=True)
        taken = collections.Counter(_target(job) for job in jobs)
        per_app = collections.Counter(job.delivery.app_id for job in jobs)
        targets = {target for queues in self._ready.values() for target in queues}
        return _Competing(
            targets=frozenset(
                target for target in targets
                if taken[target] >= (rooms.kinds if target in PUSH_KINDS else
                                     rooms.endpoints).get(target, self._room_of(target))),
            apps=frozenset(app for app in self._ready
                           if per_app[app] >= rooms.apps.get(app, self.app_concurrency)))

    async def _release_uncertain(self) -> None:
        """Hand back the leases that may have been taken unseen (lease_lost and claims
        cut off mid-answer), and the handed-over deliveries a hand-back failed to return
        (by delivery: their leases' other deliveries may be in flight). One lost or failed
        while this runs waits for the next call."""
        leases, self._uncertain_leases = self._uncertain_leases, []
        jobs, self._unreturned = self._unreturned, []
        try:
            if leases:
                await self.queue.release(leases)
                leases = []
            if jobs:
                await self.queue.release_jobs(jobs)
        except (DatabaseUnavailable, asyncio.CancelledError):
            self._uncertain_leases[:0] = leases
            self._unreturned[:0] = jobs
            raise
        # Anything else is no outage: it fails the loop, which is restarted, and their
        # leases bring these back (tried again, it would fail every claim that follows).

    def lease_lost(self, lease_id: uuid.UUID) -> None:
        """A lease whose deliveries may have been made but never reached us (the answer
        was lost with the connection, or the fan-out was stopped waiting for it): handed
        back before the next claim (which this wakes), or when the dispatcher stops."""
        self._uncertain_leases.append(lease_id)
        self._wake.set()

    def forget_endpoints(self, endpoint_ids: Collection[str]) -> None:
        """These endpoints' sending changed, in this process or another (a PATCH, a
        deletion, a secret rotated, a circuit opened, an endpoint disabled:
        ``endpoints_changed``): the deliveries to them handed over and not started go
        back to the queue, to be claimed as the endpoints now are, and so do those a
        commit leased before this was heard, when they arrive (that commit may have read
        the endpoints as they were). Deliveries already being sent go on."""
        now = asyncio.get_running_loop().time()
        # A commit leased longer ago than a lease has lapsed, and its hand-over with it.
        self._changed_at = {e: t for e, t in self._changed_at.items()
                            if t > now - self.lease_s}
        changed = set(endpoint_ids)
        self._changed_at.update(dict.fromkeys(changed, now))
        self._drop_ready(lambda app, target: target in changed)

    def hearing(self, heard: bool) -> None:
        """Whether endpoint changes reach this process now (its ``LISTEN gateway_apps``
        connection is up). While they do not, a change would go unheard: the webhooks
        waiting for room go back to the queue (claims read endpoints as they are), so do
        any handed over meanwhile, and ingest leases this process nothing (handoff). When
        they do again, what a commit leased before goes back too, as for a change heard
        (forget_endpoints)."""
        if heard and not self._hearing:
            self._all_changed_at = asyncio.get_running_loop().time()
        if not heard and self._hearing:
            # Unheard, any endpoint may be changing: as if each changed at every moment.
            self._all_changed_at = math.inf
            self._drop_ready(lambda app, target: target not in PUSH_KINDS)
        self._hearing = heard

    def _start_ready(self) -> None:
        """Start handed-over deliveries while there is room, apps in turn and each app's
        targets in turn (one each a round, the one served last going last), except where
        the last claim left due ones waiting for the same room; hand back those past their
        start-by time."""
        if not self._ready_count:
            return
        late: list[Job] = []
        now = asyncio.get_running_loop().time()
        if now > self._ready_late_at:
            late = [job for queues in self._ready.values() for queue in queues.values()
                    for job in _past(queue, now)]
            self._ready_late_at = min((queue[0][1] for queues in self._ready.values()
                                       for queue in queues.values() if queue),
                                      default=math.inf)
        competing = self._claims_waiting
        free = 0 if competing.everywhere else self._free()
        started = 0
        moved = True
        while moved and free > 0:
            moved = False
            for app_id in list(self._ready):
                if free <= 0:
                    break
                if (app_id in competing.apps
                        or self._per_app[app_id] >= self.app_concurrency):
                    continue
                queues = self._ready[app_id]
                for target in list(queues):
                    if (not queues[target] or target in competing.targets
                            or self._per_target[target] >= self._room_of(target)):
                        continue
                    queue = queues.pop(target)
                    self._start(queue.popleft()[0])
                    if queue:
                        queues[target] = queue  # its next one waits for the others
                        # Start-by times within a queue are not always in order (two
                        # commits' hand-overs may arrive in either order): the new head
                        # keeps the bound a bound.
                        self._ready_late_at = min(self._ready_late_at, queue[0][1])
                    started += 1
                    free -= 1
                    moved = True
                    # The app's next turn comes after every other app's.
                    self._ready[app_id] = self._ready.pop(app_id)
                    break
        for app_id, queues in list(self._ready.items()):
            for target in [target for target, queue in queues.items() if not queue]:
                del queues[target]
            if not queues:
                del self._ready[app_id]
        if started or late:
            self._ready_count -= started + len(late)
            self._ready_room.set()
        if late:
            log.warning("%d handed-over deliveries found no room within %.1f s; they go "
                        "back to the queue", len(late), self.handoff_wait_s)
            self._hand_back(late)

    def _drop_ready(self, which: Callable[[str, str], bool]) -> None:
        """Hand back the handed-over deliveries waiting for (app, target) ``which`` says."""
        dropped: list[Job] = []
        for app_id, queues in list(self._ready.items()):
            for target in [t for t in queues if which(app_id, t)]:
                dropped += [job for job, _ in queues.pop(target)]
            if not queues:
                del self._ready[app_id]
        if dropped:
            self._ready_count -= len(dropped)
            self._ready_room.set()
            self._hand_back(dropped)

    def _hand_back(self, jobs: list[Job]) -> None:
        """Unstarted handed-over deliveries go back to the queue now (else their leases
        would hold them until they lapse)."""
        task = asyncio.create_task(self._release_jobs(jobs), context=self._context.copy())
        self._handing_back.add(task)
        task.add_done_callback(self._handing_back.discard)

    async def _release_jobs(self, jobs: list[Job]) -> None:
        try:
            await self.queue.release_jobs(jobs)
        except DatabaseUnavailable as exc:
            # The loop tries again before its next claim (a stop, once more): releasing
            # is by delivery and lease, so a hand-back that did land makes that a no-op.
            log.warning("could not hand back %d deliveries (%s); trying again before the "
                        "next claim", len(jobs), exc)
            self._unreturned += jobs
        except Exception as exc:  # no outage (tried again, it would fail again)
            log.error("could not hand back %d deliveries (%r); they come back when their "
                      "leases lapse", len(jobs), exc)
            return
        self._wake.set()  # due now: claim them (or hand them back first)

    def _room_of(self, target: str) -> int:
        """How many deliveries to ``target`` (an endpoint, or a push provider) may be in
        flight here."""
        return self.push_concurrency if target in PUSH_KINDS else self.endpoint_concurrency

    def _rooms(self) -> Rooms:
        """What each busy endpoint, provider and app can still take."""
        return Rooms(
            endpoints={t: self.endpoint_concurrency - n for t, n in self._per_target.items()
                       if n and t not in PUSH_KINDS},
            kinds={k: self.push_concurrency - self._per_target[k] for k in PUSH_KINDS},
            apps={a: self.app_concurrency - n for a, n in self._per_app.items() if n},
            endpoint=self.endpoint_concurrency, app=self.app_concurrency)

    def _take_slot(self, target: str, app_id: str) -> Callable[[], bool]:
        """Count a delivery to ``target`` of ``app_id`` as being sent; the function
        returned frees its slot (once, however often it is called: True the time it
        does; the caller then says so with :meth:`_room_freed`)."""
        self._sending += 1
        self._per_target[target] += 1
        self._per_app[app_id] += 1
        freed = False

        def release() -> bool:
            nonlocal freed
            if freed:
                return False
            freed = True
            self._sending -= 1
            self._finished += 1
            for counts, key in ((self._per_target, target), (self._per_app, app_id)):
                counts[key] -= 1
                if counts[key] <= 0:
                    del counts[key]
            return True

        return release

    def _room_freed(self) -> None:
        """A slot came free, or a delivery ended (results being written count against the
        room too, see :meth:`_free`): the claim loop may go on, and handed-over deliveries
        may start."""
        self._slot_free.set()
        if self._ready_count:
            self._start_ready()

    def _done(self, task: asyncio.Task[None], *, release: Callable[[], bool]) -> None:
        # A delivered attempt's slot was freed, and said so, when it was answered; its
        # written result frees room only where results bound it (_free).
        bound = 2 * self.concurrency - len(self._inflight) < self.concurrency - self._sending
        self._inflight.pop(task, None)
        if release() or bound:
            self._room_freed()
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())

    # --- one delivery -----------------------------------------------------------------

    async def _deliver(self, claimed: Job, release: Callable[[], bool]) -> None:
        job = claimed.delivery
        adapter = self.adapters.get(job.kind)
        attempted_at = datetime.now(UTC)
        sent = False
        #: The endpoint answered, timed out or refused: its health counts this attempt (an
        #: adapter's own bug says nothing about the endpoint).
        reached = False
        if adapter is None:
            outcome = Outcome(Verdict.FAILED, error=f"no adapter for kind {job.kind!r}")
        elif claimed.unsendable is not None:
            # A key missing from this process's GATEWAY_SECRET_KEY: later, or another
            # process, may have it.
            outcome = Outcome(Verdict.RETRY, error=claimed.unsendable)
        elif job.kind in PUSH_KINDS and job.device is None:
            outcome = Outcome(Verdict.FAILED, error="device deleted")
        elif job.kind in PUSH_KINDS and not claimed.device_active:
            outcome = Outcome(Verdict.FAILED, error="device pruned; not sent")
        elif job.kind == OPERATIONAL_KIND and job.endpoint is None:
            outcome = Outcome(Verdict.FAILED, error="operational webhook deleted")
        else:
            sent = True
            outcome, reached = await self._send(adapter, job)
            # An operational delivery's health is never tracked (it never trips or
            # disables anything); an adapter's own bug says nothing about the endpoint.
            reached = reached and job.kind == DeliveryKind.WEBHOOK and job.endpoint is not None
        decision = self.policy.decide(claimed.schedule_pos, outcome, datetime.now(UTC))
        gone = outcome.verdict is Verdict.GONE
        # A 410 from an app's operational webhook fails that delivery; it disables nothing.
        disables = gone and job.kind == DeliveryKind.WEBHOOK and job.endpoint is not None
        result = AttemptResult(
            delivery_id=job.delivery_id, app_id=job.app_id, lease_id=claimed.lease_id,
            status=decision.status,
            next_attempt_at=decision.next_attempt_at, schedule_pos=decision.schedule_pos,
            attempted_at=attempted_at, duration_ms=outcome.duration_ms,
            outcome=AttemptOutcome(outcome.verdict.value), status_code=outcome.status_code,
            response_snippet=_clean(outcome.response_snippet), error=_clean(outcome.error),
            disable_endpoint_id=job.endpoint.id if disables and job.endpoint else None,
            disable_reason=DisabledReason.GONE if disables else None,
            prune_device_id=job.device.id if gone and job.device else None,
            prune_reason=_clean(outcome.gone_reason), prune_since=outcome.gone_since,
            credentials_rejected=_clean(outcome.credentials_rejected, 500),
            endpoint_id=job.endpoint.id if reached and job.endpoint else None,
        )
        if outcome.verdict is Verdict.DELIVERED:
            # Its slot can take the next delivery while this result is written. A failed
            # attempt keeps its slot until it is recorded: the endpoint's circuit counts
            # it before the next attempt goes.
            release()
            self._room_freed()
        self._observe(claimed, result, sent)
        await self._write(result)

    async def _send(self, adapter: Adapter, job: DeliveryJob) -> tuple[Outcome, bool]:
        """One attempt, in the event's trace: its request carries a traceparent of its own
        (the attempt's span, when there are spans). Also: whether the adapter ran to an
        answer (False when it raised: a bug of ours, not the target's doing)."""
        if self.spans is not None:
            with self.spans.attempt(job) as span:
                outcome, answered = await _call(adapter,
                                                replace(job, traceparent=span.traceparent))
                span.finished(outcome)
                return outcome, answered
        if job.event.traceparent is not None:
            job = replace(job, traceparent=tracing.child(job.event.traceparent))
        return await _call(adapter, job)

    def _observe(self, claimed: Job, result: AttemptResult, sent: bool) -> None:
        """The attempt's log line and metrics: ids, never tokens, secrets or payloads."""
        job = claimed.delivery
        if self.metrics is not None:
            self.metrics.attempt(job.kind, result, job.event.created_at, sent=sent)
        level = logging.WARNING if result.status is DeliveryStatus.FAILED else logging.INFO
        if not log.isEnabledFor(level):
            return
        emit(log, level, f"delivery attempt {result.outcome.value}: {result.status.value}",
             {"app": job.app_id, "event": job.event.id,
              "trace": tracing.trace_id_of(job.event.traceparent),
              "delivery": job.delivery_id, "kind": job.kind,
              "endpoint": job.endpoint.id if job.endpoint is not None else None,
              "device": job.device.id if job.device is not None else None,
              "attempt": job.attempt, "outcome": result.outcome.value,
              "status": result.status.value, "status_code": result.status_code,
              "duration_ms": result.duration_ms,
              "error": scrub(result.error) if result.error else None,
              "next_attempt_at": iso(result.next_attempt_at)
              if result.next_attempt_at is not None else None},
             _ATTEMPT_LINE)

    async def _write(self, result: AttemptResult) -> None:
        """Keep trying while the database is away; if we die first, the lease brings the
        delivery back (at least once)."""
        delay = 0.1
        while True:
            try:
                await self._results.submit(result)
                return
            except DatabaseUnavailable:
                if self._stopping and delay > 1:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _settle(self, results: Sequence[AttemptResult]) -> list[BaseException | None]:
        """One batch of attempts: the finished ones completed, the rest rescheduled, each
        part in a transaction of its own. When the completion committed and the
        rescheduling failed, only the rescheduled attempts get the error (each writer
        retries its own): the batch written again would log the completed attempts twice."""
        finished = [r for r in results if r.status is not DeliveryStatus.PENDING]
        again = [r for r in results if r.status is DeliveryStatus.PENDING]
        settled = NO_CHANGE
        if finished:
            settled += await self.queue.complete(finished)
        failed: BaseException | None = None
        if again:
            try:
                settled += await self.queue.reschedule(again)
            except Exception as exc:
                if not finished:
                    raise  # nothing was written: the batch is the writers' to try again
                failed = exc
        self._endpoints_changed(settled)
        self._stop_handed_over(settled, results)
        return [failed if r.status is DeliveryStatus.PENDING else None for r in results]

    def _stop_handed_over(self, settled: Settlement, results: Sequence[AttemptResult]) -> None:
        """Endpoints these attempts opened the circuit of, or disabled (failing, or gone):
        their handed-over deliveries that have not started go back to the queue, which
        parks or holds them as it would have, instead of being sent here."""
        if not self._ready_count:
            return
        stopped = set(settled.circuits_opened) | set(settled.disabled_failing) | {
            (r.app_id, r.disable_endpoint_id) for r in results if r.disable_endpoint_id}
        if stopped:
            self._drop_ready(lambda app, target: (app, target) in stopped)

    def _endpoints_changed(self, settled: Settlement) -> None:
        """Circuits that opened and endpoints disabled for failing: a line and a count
        each."""
        for app_id, endpoint_id in settled.circuits_opened:
            log.warning("circuit opened: the endpoint failed too often in a row; only a "
                        "probe goes to it after each cooldown",
                        extra={"app": app_id, "endpoint": endpoint_id})
        for app_id, endpoint_id in settled.disabled_failing:
            log.warning("endpoint disabled: every attempt failed for the disable window",
                        extra={"app": app_id, "endpoint": endpoint_id})
        if self.metrics is not None:
            self.metrics.endpoints_changed(len(settled.circuits_opened),
                                           len(settled.disabled_failing))


async def _call(adapter: Adapter, job: DeliveryJob) -> tuple[Outcome, bool]:
    """The adapter's answer, and True; an exception out of it is a bug, recorded as worth
    a retry, and False."""
    try:
        return await adapter.send(job), True
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # an adapter bug must not lose the delivery
        log.exception("adapter %s raised", job.kind)
        return Outcome(Verdict.RETRY, error=f"internal error: {type(exc).__name__}"), False


def _target(job: Job) -> str:
    """What a delivery's concurrency is bounded by: its endpoint, or its push provider."""
    endpoint = job.delivery.endpoint
    return endpoint.id if endpoint is not None else job.delivery.kind


@dataclass(frozen=True)
class _Competing:
    """Where handed-over deliveries wait for the next claim (Dispatcher._competing)."""

    everywhere: bool = False
    targets: frozenset[str] = frozenset()
    apps: frozenset[str] = frozenset()

    @property
    def anywhere(self) -> bool:
        return self.everywhere or bool(self.targets) or bool(self.apps)


_NOT_WAITING = _Competing()


def _past(queue: collections.deque[tuple[Job, float]], now: float) -> list[Job]:
    """Take the jobs at the head of ``queue`` whose start-by time has passed."""
    late: list[Job] = []
    while queue and queue[0][1] < now:
        late.append(queue.popleft()[0])
    return late
