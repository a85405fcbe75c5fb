"""Background tasks: recover an endpoint's failed deliveries, replay the events it missed.

``POST /v1/endpoints/{id}/recover`` and ``.../replay`` only write a task row (and answer
202 with it); every process that runs a dispatcher also runs a :class:`TaskRunner`, which
takes running tasks a batch at a time (:meth:`~gateway.store.tasks.TaskStore.step`: one
transaction per batch, its work and the task's cursor committed together). So a task
goes on after a restart from where it stopped, any number of processes share the work,
and running tasks of every app move in turn. ``LISTEN gateway_tasks`` wakes a runner when
a task is made; polling is only the fallback.

Both kinds work on a disabled endpoint as well: what they requeue or create waits parked
until the endpoint is enabled again, like any pending delivery of a disabled endpoint
(so an operator may fix the receiver, replay, then enable, or in any other order).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from gateway.dispatcher import WakeSource
from gateway.errors import DatabaseUnavailable, ValidationError
from gateway.store.tasks import Task, TaskStore
from gateway_client.models import TaskKind, TaskStatus

log = logging.getLogger("gateway.tasks")


def window(kind: TaskKind, since: datetime, until: datetime | None, now: datetime, *,
           retention_days: int = 0) -> tuple[datetime, datetime]:
    """The window of event creation times a task covers, [since, until), as asked for:
    ``until`` defaults to now and is at most now (events still to come get their
    deliveries from ingest). A replay looks back no further than retention keeps
    deliveries (``retention_days``, 0 = forever): an older event may have lost its
    delivery to retention, and would be sent again. Refuses (422) a ``since`` in the
    future, or not before ``until``."""
    if since > now:
        raise ValidationError("'since' is in the future.",
                              details=[{"path": "since", "message": "in the future"}])
    end = now if until is None else min(until, now)
    if until is not None and since >= until:
        raise ValidationError("'since' must be before 'until'.",
                              details=[{"path": "until", "message": "not after since"}])
    start = since
    if kind is TaskKind.REPLAY and retention_days > 0:
        start = max(since, now - timedelta(days=retention_days))
        if start >= end:
            raise ValidationError(
                f"A replay looks back at most GATEWAY_RETENTION_DAYS ({retention_days}) "
                "days: older events may have lost their deliveries to retention.",
                details=[{"path": "until", "message": "before the retention window"}])
    if start >= end:  # since is now, to the microsecond
        raise ValidationError("'since' must be before 'until'.",
                              details=[{"path": "since", "message": "not before until"}])
    return start, end


class TaskRunner:
    """Runs tasks a batch at a time until none waits, then waits for a wake-up (or the
    poll interval); pauses ``pause_s`` between batches to leave the database room."""

    def __init__(self, tasks: TaskStore, *, wake_source: WakeSource | None = None,
                 poll_interval_s: float = 1.0, batch: int = 500,
                 pause_s: float = 0.05) -> None:
        self.tasks = tasks
        self.wake_source = wake_source
        self.poll_interval_s = poll_interval_s
        self.batch = batch
        self.pause_s = pause_s
        self._wake = asyncio.Event()
        self._runs: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._runs = [asyncio.create_task(self._run(), name="tasks")]
        if self.wake_source is not None:
            self._runs.append(asyncio.create_task(self.wake_source(self._wake.set),
                                                  name="tasks-wakeups"))

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Stop at once: a batch cut short rolls back, and is done again by whichever
        process takes the task next."""
        for run in self._runs:
            run.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)

    async def run_once(self) -> Task | None:
        """One batch of one task; the task after it, or None when none waits."""
        task = await self.tasks.step(self.batch)
        if task is not None and task.status is not TaskStatus.RUNNING:
            log.info("task %s (%s of endpoint %s) %s: %s", task.id, task.kind.value,
                     task.endpoint_id, task.status.value,
                     ", ".join(f"{n} {c}" for n, c in task.counts.items()),
                     extra={"app": task.app_id, "task": task.id})
        return task

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            self._wake.clear()
            try:
                task = await self.run_once()
            except DatabaseUnavailable as exc:
                log.warning("tasks paused: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.poll_interval_s)
                continue
            except Exception:
                log.exception("task step failed")
                await asyncio.sleep(self.poll_interval_s)
                continue
            backoff = 0.05
            if task is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval_s):
                        await self._wake.wait()
            elif self.pause_s:
                await asyncio.sleep(self.pause_s)
