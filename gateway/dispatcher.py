"""The dispatcher: claims due deliveries from PostgreSQL and runs them through adapters.

PostgreSQL picks the work (``FOR UPDATE SKIP LOCKED`` with a lease, so any number of
dispatcher processes share one database and a crashed one's claims come back by
themselves); ``LISTEN gateway_deliveries`` wakes it within milliseconds of ingest and
polling is only the fallback. Concurrency is bounded overall and per endpoint. A
supervisor restarts the loop if it dies or stalls, and ``healthy()`` tells ``/readyz``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import asyncpg

from adapters.base import (
    Adapter,
    DeliveryJob,
    DeviceTarget,
    EndpointTarget,
    EventView,
    Outcome,
    Verdict,
)
from gateway.batching import GroupCommit
from gateway.db import listen_forever
from gateway.errors import DatabaseUnavailable
from gateway.logs import scrub
from gateway.retry import RetryPolicy
from gateway.store import AttemptRecord, Store

if TYPE_CHECKING:
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.dispatcher")

CHANNEL = "gateway_deliveries"
FANOUT_CHANNEL = "gateway_fanout"
PUSH_KINDS = ("fcm", "apns")
#: Devices expanded into deliveries per fan-out transaction.
FANOUT_BATCH = 1000


def _clean(text: str | None, limit: int = 1024) -> str | None:
    """PostgreSQL text cannot hold NUL; logs should stay bounded."""
    return None if text is None else text.replace("\x00", "\ufffd")[:limit]


class Dispatcher:
    def __init__(
        self,
        store: Store,
        dsn: str,
        adapters: Mapping[str, Adapter],
        policy: RetryPolicy,
        *,
        concurrency: int = 256,
        endpoint_concurrency: int = 64,
        push_concurrency: int = 128,
        batch: int = 200,
        lease_s: float = 45.0,
        poll_interval_s: float = 1.0,
        stall_after_s: float = 30.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.dsn = dsn
        self.adapters = dict(adapters)
        self.policy = policy
        self.concurrency = concurrency
        self.endpoint_concurrency = endpoint_concurrency
        self.push_concurrency = push_concurrency
        self.batch = batch
        self.lease_s = lease_s
        self.poll_interval_s = poll_interval_s
        self.stall_after_s = stall_after_s
        self.metrics = metrics

        self.heartbeat = time.monotonic()
        self.restarts = 0
        self._wake = asyncio.Event()
        self._fanout_wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._stopping = False
        self._inflight: dict[asyncio.Task[None], uuid.UUID] = {}
        self._per_kind: collections.Counter[str] = collections.Counter()
        self._endpoint_slots: dict[str, asyncio.Semaphore] = {}
        #: Claims whose answer was lost with the connection: they may have committed.
        self._uncertain_leases: list[uuid.UUID] = []
        self._loop_task: asyncio.Task[None] | None = None
        self._side_tasks: list[asyncio.Task[None]] = []
        self._results: GroupCommit[AttemptRecord, None] = GroupCommit(
            store.record_attempts, max_batch=500, max_flushers=2, name="attempt-writer"
        )

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="dispatcher-loop")
        self._side_tasks = [
            asyncio.create_task(self._listen(), name="dispatcher-listen"),
            asyncio.create_task(self._supervise(), name="dispatcher-supervisor"),
            asyncio.create_task(self._fanout(), name="dispatcher-fanout"),
        ]

    @property
    def inflight(self) -> int:
        """Deliveries being sent right now."""
        return len(self._inflight)

    def healthy(self) -> bool:
        """The loop runs and has moved recently."""
        running = self._loop_task is not None and not self._loop_task.done()
        return running and time.monotonic() - self.heartbeat < self.stall_after_s

    async def stop(self, grace_s: float) -> None:
        """Stop claiming, give in-flight deliveries ``grace_s`` to finish, release the rest."""
        self._stopping = True
        self._wake.set()
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
                await self.store.release_leases(list(leases))
        await asyncio.gather(*self._side_tasks, return_exceptions=True)
        await self._results.close()

    async def _supervise(self) -> None:
        """Restart the loop when it dies or stalls: a dispatcher is never silently gone."""
        while not self._stopping:
            await asyncio.sleep(min(1.0, self.stall_after_s / 4))
            task = self._loop_task
            if task is None or self._stopping:
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

    # --- wake-ups ---------------------------------------------------------------------

    async def _listen(self) -> None:
        """Wake-ups from ingest and retries; after a reconnect, look again at once."""
        def caught_up() -> None:
            self._wake.set()
            self._fanout_wake.set()

        await listen_forever(self.dsn, {
            CHANNEL: lambda *_: self._wake.set(),
            FANOUT_CHANNEL: lambda *_: self._fanout_wake.set(),
        }, on_connected=caught_up)

    # --- fan-out ----------------------------------------------------------------------

    async def _fanout(self) -> None:
        """Expand push targets into per-device deliveries in batches, apart from ingest, so
        a topic of any size never holds up a 202."""
        backoff = 0.05
        while not self._stopping:
            self._fanout_wake.clear()
            try:
                expanded = await self.store.fanout_step(FANOUT_BATCH)
            except DatabaseUnavailable as exc:
                log.warning("fan-out paused: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.poll_interval_s)
                continue
            except Exception:
                log.exception("fan-out step failed")
                await asyncio.sleep(self.poll_interval_s)
                continue
            backoff = 0.05
            if expanded is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval_s):
                        await self._fanout_wake.wait()

    # --- the loop ---------------------------------------------------------------------

    async def _loop(self) -> None:
        backoff = 0.05
        while not self._stopping:
            self.heartbeat = time.monotonic()
            free = self.concurrency - len(self._inflight)
            if free <= 0:
                self._slot_free.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval_s):
                        await self._slot_free.wait()
                continue
            want = min(free, self.batch)
            self._wake.clear()
            lease_id = uuid.uuid4()
            try:
                if self._uncertain_leases:
                    # Hand back what a claim cut off mid-answer may have taken, instead of
                    # leaving it reserved until its lease runs out.
                    await self.store.release_leases(self._uncertain_leases)
                    self._uncertain_leases.clear()
                rows = await self.store.claim_due(want, self.lease_s, lease_id,
                                                  self._saturated_kinds())
            except DatabaseUnavailable as exc:
                self._uncertain_leases.append(lease_id)
                log.warning("cannot claim deliveries: %s; retrying in %.2f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.poll_interval_s)
                continue
            backoff = 0.05
            for row in rows:
                task = asyncio.create_task(self._deliver(row, lease_id))
                self._inflight[task] = lease_id
                self._per_kind[row["kind"]] += 1
                task.add_done_callback(functools.partial(self._done, kind=row["kind"]))
            if len(rows) == want:
                await asyncio.sleep(0)
                continue
            await self._idle()

    async def _idle(self) -> None:
        timeout = self.poll_interval_s
        with contextlib.suppress(DatabaseUnavailable):
            due = await self.store.next_due_at()
            if due is not None:
                until = (due - datetime.now(UTC)).total_seconds()
                timeout = max(0.0, min(timeout, until))
        if timeout <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    def _saturated_kinds(self) -> list[str]:
        """Push providers with every send slot taken: claiming more of them would only
        park tasks (and dispatch slots) behind their semaphore."""
        return [kind for kind in PUSH_KINDS if self._per_kind[kind] >= self.push_concurrency]

    def _done(self, task: asyncio.Task[None], *, kind: str) -> None:
        self._inflight.pop(task, None)
        self._per_kind[kind] -= 1
        self._slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())

    # --- one delivery -----------------------------------------------------------------

    async def _deliver(self, row: asyncpg.Record, lease_id: uuid.UUID) -> None:
        job = job_from_row(row)
        adapter = self.adapters.get(job.kind)
        attempted_at = datetime.now(UTC)
        sent = False
        if adapter is None:
            outcome = Outcome(Verdict.FAILED, error=f"no adapter for kind {job.kind!r}")
        elif job.kind != "webhook" and job.device is None:
            outcome = Outcome(Verdict.FAILED, error="device deleted")
        elif job.kind != "webhook" and row["device_status"] != "active":
            outcome = Outcome(Verdict.FAILED, error="device pruned; not sent")
        else:
            sent = True
            slot = self._endpoint_slot(job)
            try:
                async with slot:
                    outcome = await adapter.send(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an adapter bug must not lose the delivery
                log.exception("adapter %s raised", job.kind)
                outcome = Outcome(Verdict.RETRY, error=f"internal error: {type(exc).__name__}")
        decision = self.policy.decide(row["schedule_pos"], outcome, datetime.now(UTC))
        gone = outcome.verdict is Verdict.GONE
        gone_endpoint = job.endpoint.id if gone and job.endpoint is not None else None
        gone_device = job.device.id if gone and job.device is not None else None
        record = AttemptRecord(
            delivery_id=job.delivery_id, lease_id=lease_id, status=decision.status,
            next_attempt_at=decision.next_attempt_at, schedule_pos=decision.schedule_pos,
            attempted_at=attempted_at, duration_ms=outcome.duration_ms,
            outcome=outcome.verdict.value, status_code=outcome.status_code,
            response_snippet=_clean(outcome.response_snippet), error=_clean(outcome.error),
            disable_endpoint_id=gone_endpoint, disable_reason=_clean(outcome.gone_reason),
            prune_device_id=gone_device, prune_reason=_clean(outcome.gone_reason),
            prune_since=outcome.gone_since,
        )
        self._observe(job, record, sent)
        await self._write(record)

    def _observe(self, job: DeliveryJob, record: AttemptRecord, sent: bool) -> None:
        """The attempt's log line and metrics: ids, never tokens, secrets or payloads."""
        if self.metrics is not None:
            self.metrics.attempt(job.kind, record, job.event.created_at, sent=sent)
        log.log(logging.WARNING if record.status == "failed" else logging.INFO,
                "delivery attempt %s: %s", record.outcome, record.status,
                extra={"app": job.app_id, "event": job.event.id,
                       "delivery": job.delivery_id, "kind": job.kind,
                       "endpoint": job.endpoint.id if job.endpoint is not None else None,
                       "device": job.device.id if job.device is not None else None,
                       "attempt": job.attempt, "outcome": record.outcome,
                       "status": record.status, "status_code": record.status_code,
                       "duration_ms": record.duration_ms,
                       "error": scrub(record.error) if record.error else None,
                       "next_attempt_at": record.next_attempt_at.isoformat()
                       if record.next_attempt_at is not None else None})

    async def _write(self, record: AttemptRecord) -> None:
        """Keep trying while the database is away; if we die first, the lease brings the
        delivery back (at least once)."""
        delay = 0.1
        while True:
            try:
                await self._results.submit(record)
                return
            except DatabaseUnavailable:
                if self._stopping and delay > 1:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _endpoint_slot(self, job: DeliveryJob) -> asyncio.Semaphore:
        """Bounds in-flight sends per webhook endpoint, and per push provider."""
        if job.endpoint is not None:
            key, size = job.endpoint.id, self.endpoint_concurrency
        else:
            key, size = job.kind, self.push_concurrency
        slot = self._endpoint_slots.get(key)
        if slot is None:
            slot = self._endpoint_slots[key] = asyncio.Semaphore(size)
        return slot


def job_from_row(row: asyncpg.Record) -> DeliveryJob:
    endpoint = device = None
    if row["endpoint_id"] is not None:
        secrets = (row["secret"],) + ((row["previous_secret"],) if row["previous_secret"] else ())
        endpoint = EndpointTarget(row["endpoint_id"], row["url"], secrets)
    if row["device_id"] is not None and row["device_token"] is not None:
        device = DeviceTarget(row["device_id"], row["platform"], row["device_token"])
    return DeliveryJob(
        delivery_id=row["id"], app_id=row["app_id"], kind=row["kind"],
        event=EventView(row["event_id"], row["event_type"], row["payload"],
                        row["event_created_at"]),
        endpoint=endpoint, device=device,
        notification=json.loads(row["notification"]) if row["notification"] else None,
        credentials=json.loads(row["credentials"]) if row["credentials"] else None,
        attempt=row["attempt_count"] + 1,
    )
