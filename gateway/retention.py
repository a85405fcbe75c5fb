"""Retention: deletes finished work older than ``GATEWAY_RETENTION_DAYS``.

Only what is over is deleted: succeeded or failed deliveries (with their attempts), then
events with no delivery left and no fan-out to do, and idempotency keys past their 24 h.
Pending deliveries, and the events they belong to, stay however old they are.

Deletes go in small batches, each its own short transaction that skips rows someone else
holds (``SKIP LOCKED``), with a pause between batches, so ingest and the dispatcher never
wait on retention for long. Every dispatcher process runs a :class:`Retention`, but a
PostgreSQL advisory lock lets only one of them prune at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.errors import DatabaseUnavailable
from gateway.metrics import Metrics
from gateway.store.postgres import Store

log = logging.getLogger("gateway.retention")


@dataclass
class Pruned:
    """Rows one pass deleted, and in how many batches."""

    deliveries: int = 0
    attempts: int = 0
    events: int = 0
    idempotency_keys: int = 0
    batches: int = 0
    #: False when another process held the lock and this pass did nothing.
    ran: bool = True


class Retention:
    """Prunes every ``interval_s``; :meth:`run_once` is one pass.

    ``max_age_s`` should be at least a day: an event must outlive the idempotency key
    that points at it (24 h), or a replay within the key's window finds no event.
    """

    def __init__(
        self,
        store: Store,
        max_age_s: float,
        *,
        metrics: Metrics | None = None,
        batch: int = 1000,
        pause_s: float = 0.1,
        interval_s: float = 300.0,
        first_run_after_s: float = 30.0,
    ) -> None:
        self.store = store
        self.max_age_s = max_age_s
        self.metrics = metrics
        self.batch = batch
        self.pause_s = pause_s
        self.interval_s = interval_s
        self.first_run_after_s = first_run_after_s
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="retention")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        await asyncio.sleep(self.first_run_after_s)
        while not self._stopping:
            try:
                pruned = await self.run_once()
                if pruned.deliveries or pruned.events or pruned.idempotency_keys:
                    log.info("retention deleted %d deliveries, %d attempts, %d events, "
                             "%d idempotency keys", pruned.deliveries, pruned.attempts,
                             pruned.events, pruned.idempotency_keys,
                             extra={"batches": pruned.batches})
            except DatabaseUnavailable:
                log.warning("retention skipped: the database is unavailable")
            except Exception:
                log.exception("retention pass failed")
            await asyncio.sleep(self.interval_s)

    async def run_once(self) -> Pruned:
        """One pass over every table, unless another process is pruning right now."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.max_age_s)
        pruned = Pruned()
        async with self.store.pruning() as pruner:
            if pruner is None:
                pruned.ran = False
                return pruned
            while not self._stopping:
                deliveries, attempts = await pruner.deliveries(cutoff, self.batch)
                pruned.deliveries += deliveries
                pruned.attempts += attempts
                if not await self._next(pruned, deliveries):
                    break
            while not self._stopping:
                count = await pruner.events(cutoff, self.batch)
                pruned.events += count
                if not await self._next(pruned, count):
                    break
            await pruner.sessions()
            after: tuple[str, str] | None = ("", "")
            while not self._stopping and after is not None:
                count, after = await pruner.idempotency_keys(after, self.batch)
                pruned.idempotency_keys += count
                if after is not None:
                    pruned.batches += 1
                    await asyncio.sleep(self.pause_s)
        if self.metrics is not None:
            for table in ("deliveries", "attempts", "events", "idempotency_keys"):
                self.metrics.deleted(table, getattr(pruned, table))
        return pruned

    async def _next(self, pruned: Pruned, deleted: int) -> bool:
        """After a batch: pause, and tell whether a full batch suggests there is more."""
        if deleted:
            pruned.batches += 1
        if deleted < self.batch:
            return False
        await asyncio.sleep(self.pause_s)
        return True
