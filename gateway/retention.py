"""Retention: drops whole partitions of finished work older than
``GATEWAY_RETENTION_DAYS``, and keeps the partitions coming.

Events, deliveries and attempts live in partitions of :func:`partition_days` days each
(UTC; a week, Monday to Monday, with the default 30 days' retention; migration 0014;
those made before it hold a day each): partitions whose every hour is older than the
window go in one step (detached concurrently, so ingest and the dispatcher never wait,
then dropped), unless something of their days is still to do, a pending delivery or a
push fan-out. Such partitions stay, and only their finished work past the window is
deleted row by row, in small batches, each its own short transaction that skips rows
someone else holds, with a pause between. So finished work stays between N and N +
partition_days days, and pending work, with its event, however long it needs. Wider than
a day because every partition costs each claim and settlement when it starts (migration
0014 says how much). Idempotency keys (their own table) go row by row once past their
24 h.

Every dispatcher process runs a :class:`Retention`, but a PostgreSQL advisory lock lets
only one of them prune at a time. Every process (API or dispatcher) runs
:func:`keep_partitions`, so the coming days' partitions exist before their first event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.errors import DatabaseUnavailable
from gateway.metrics import Metrics
from gateway.store.postgres import Partitions, Pruner, Store

log = logging.getLogger("gateway.retention")

#: The widest partition: a week.
MAX_PARTITION_DAYS = 7


def partition_days(retention_days: int) -> int:
    """How many days a new partition holds: a quarter of the retention window, from one
    day to a week (a week when everything is kept), so that retention keeps finished work
    at most a quarter longer than it is set to (a day longer under four days), while a
    month's retention needs about six partitions, not 38."""
    if retention_days <= 0:
        return MAX_PARTITION_DAYS
    return max(1, min(MAX_PARTITION_DAYS, retention_days // 4))


@dataclass
class Pruned:
    """Rows one pass deleted (in dropped partitions and row by row), in how many batches,
    and how many spans of partitions (events, deliveries and attempts of the same days) it
    dropped whole."""

    deliveries: int = 0
    attempts: int = 0
    events: int = 0
    idempotency_keys: int = 0
    batches: int = 0
    partitions_dropped: int = 0
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
                             extra={"batches": pruned.batches,
                                    "partitions_dropped": pruned.partitions_dropped})
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
            for span in await pruner.partitions():
                if self._stopping or span.end_day > cutoff.date():
                    break  # oldest first; this one is not wholly past the window
                if not await pruner.held(span):
                    gone = await pruner.drop(span)
                    pruned.events += gone["events"]
                    pruned.deliveries += gone["deliveries"]
                    pruned.attempts += gone["attempts"]
                    pruned.partitions_dropped += 1
                    continue
                await self._row_by_row(pruner, span, cutoff, pruned)
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

    async def _row_by_row(self, pruner: Pruner, span: Partitions, cutoff: datetime,
                          pruned: Pruned) -> None:
        """Partitions something still holds: their finished deliveries, then their events
        with nothing left to do, in batches."""
        while not self._stopping:
            deliveries, attempts = await pruner.deliveries(span, cutoff, self.batch)
            pruned.deliveries += deliveries
            pruned.attempts += attempts
            if not await self._next(pruned, deliveries):
                break
        while not self._stopping:
            count = await pruner.events(span, self.batch)
            pruned.events += count
            if not await self._next(pruned, count):
                break

    async def _next(self, pruned: Pruned, deleted: int) -> bool:
        """After a batch: pause, and tell whether a full batch suggests there is more."""
        if deleted:
            pruned.batches += 1
        if deleted < self.batch:
            return False
        await asyncio.sleep(self.pause_s)
        return True


async def keep_partitions(store: Store, width: int = MAX_PARTITION_DAYS,
                          interval_s: float = 3600.0) -> None:
    """Make the coming days' partitions, ``width`` days each, now and every ``interval_s``
    (migrations make them at start too); runs until cancelled."""
    while True:
        try:
            made = await store.make_partitions(width)
            if made:
                log.info("made %d partitions", made)
        except DatabaseUnavailable:
            log.warning("cannot make partitions: the database is unavailable; "
                        "retrying in a minute")
            await asyncio.sleep(60)
            continue
        except Exception:
            log.exception("making partitions failed; retrying in a minute")
            await asyncio.sleep(60)
            continue
        await asyncio.sleep(interval_s)
