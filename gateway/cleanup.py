"""The cleanup of deleted apps: everything an app owned is removed after
``DELETE /v1/apps/{id}``, in the background.

Deleting an app only marks it (``apps.deleted_at``), which is enough for it to be gone at
once: its keys and user tokens are refused, it is not listed, no claim takes its
deliveries and no fan-out expands its events. This removes the rest, child first
(deliveries with their attempts, events, idempotency keys, endpoints, devices, push
credentials, its rate window, dashboard sessions), in batches, each its own short
transaction that skips rows someone else holds, with a pause between batches, so it never
holds long locks nor crowds out other apps' work. The app's own row goes last, once
nothing refers to it and its deletion has settled (:data:`SETTLE_S`: a request that was in
flight at the moment of deletion may still write a row, which the next pass takes).

Every dispatcher process runs an :class:`AppCleanup`; a PostgreSQL advisory lock lets one
of them work at a time. It runs at start (so a cleanup cut short by a restart resumes),
when a deletion is announced on ``gateway_apps``, and every :attr:`AppCleanup.interval_s`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from dataclasses import dataclass, field

from gateway.errors import DatabaseUnavailable
from gateway.metrics import Metrics
from gateway.operational import FEED_PREFIX
from gateway.store.postgres import Cleaner, Store

log = logging.getLogger("gateway.cleanup")

#: Rows removed per transaction.
CLEANUP_BATCH = 1000
#: How long after its deletion an app's own row may go.
SETTLE_S = 60.0


@dataclass
class Cleaned:
    """What one pass removed."""

    #: Rows by table (attempts counted apart from deliveries).
    rows: collections.Counter[str] = field(default_factory=collections.Counter)
    batches: int = 0
    #: Apps whose last row went.
    apps: list[str] = field(default_factory=list)
    #: Deleted apps with rows left for a later pass.
    left: int = 0
    #: False when another process held the lock and this pass did nothing.
    ran: bool = True


class AppCleanup:
    """Cleans up after deleted apps; :meth:`run_once` is one pass over all of them."""

    def __init__(self, store: Store, *, metrics: Metrics | None = None,
                 batch: int = CLEANUP_BATCH, pause_s: float = 0.1,
                 settle_s: float = SETTLE_S, interval_s: float = 30.0) -> None:
        self.store = store
        self.metrics = metrics
        self.batch = batch
        self.pause_s = pause_s
        self.settle_s = settle_s
        self.interval_s = interval_s
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="app-cleanup")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake(self) -> None:
        """Run a pass now (an app was just deleted)."""
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                cleaned = await self.run_once()
                if cleaned.rows:
                    log.info("cleanup of deleted apps removed %s",
                             ", ".join(f"{n} {table}" for table, n in cleaned.rows.items()),
                             extra={"batches": cleaned.batches, "apps_removed": cleaned.apps,
                                    "apps_left": cleaned.left})
            except DatabaseUnavailable:
                log.warning("cleanup of deleted apps skipped: the database is unavailable")
            except Exception:
                log.exception("cleanup of deleted apps failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()

    async def run_once(self) -> Cleaned:
        """One pass over every deleted app, unless another process is cleaning up now."""
        cleaned = Cleaned()
        async with self.store.cleaning() as cleaner:
            if cleaner is None:
                cleaned.ran = False
                return cleaned
            for app_id, settled in await cleaner.deleted_apps(self.settle_s):
                if self._stopping:
                    break
                await self._clean(cleaner, app_id, cleaned)
                # Settled is read before the rows went: whatever an in-flight request wrote
                # after the deletion was written before this pass began, so it went too.
                if settled and not self._stopping and await cleaner.remove_app(app_id):
                    cleaned.apps.append(app_id)
                    log.info("deleted app %s is gone", app_id)
                else:
                    cleaned.left += 1
        if self.metrics is not None:
            for table, rows in cleaned.rows.items():
                self.metrics.cleaned(table, rows)
        return cleaned

    async def _clean(self, cleaner: Cleaner, app_id: str, cleaned: Cleaned) -> None:
        """The app's rows, table by table, child first, a batch at a time: first its
        operational notices (filed under their own owner id), then everything else."""
        steps = [(FEED_PREFIX + app_id, table) for table in Cleaner.FEED_STEPS]
        steps += [(app_id, table) for table in Cleaner.STEPS]
        for owner, table in steps:
            while not self._stopping:
                removed = await cleaner.remove(table, owner, self.batch)
                prefix = "" if owner == app_id else "notices:"
                cleaned.rows.update({prefix + t: n for t, n in removed.items() if n})
                if removed[table]:
                    cleaned.batches += 1
                if removed[table] < self.batch:
                    break
                await asyncio.sleep(self.pause_s)
