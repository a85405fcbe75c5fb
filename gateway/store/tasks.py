"""Background tasks in PostgreSQL: recovering an endpoint's failed deliveries and replaying
the events it missed, over a window of event times.

A task walks the ids of its window in order: ids start with their creation time (a
delivery's with its event's), so a window of time is a range of ids, one the partitions
and indexes find directly. Each :meth:`TaskStore.step` is one transaction: it locks one
running task (``FOR UPDATE SKIP LOCKED``), handles the next batch after the task's cursor,
and commits the batch's work together with the new cursor and counts. A process that
stops mid-batch rolls that batch back, and whichever process locks the task next does it
again: nothing is done twice, nothing skipped, and no lease needs to run out first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from gateway.errors import DatabaseUnavailable, NotFound
from gateway.ids import new_id, time_bound
from gateway.store.database import QUERIES, Database, translated
from gateway.store.records import Page, make, make_all
from gateway_client.models import TaskKind, TaskStatus

if TYPE_CHECKING:
    from gateway.store.database import Connection

log = logging.getLogger("gateway.tasks")


@dataclass(frozen=True, slots=True)
class Task:
    app_id: str
    id: str
    kind: TaskKind
    status: TaskStatus
    endpoint_id: str
    #: The window of event creation times: [since, until).
    since: datetime
    until: datetime
    #: The last id handled (a delivery's or an event's, by kind).
    cursor: str
    counts: dict[str, int]
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class Batch:
    """What one batch did: where the next one starts, what to add to the counts, and
    whether the window is done."""

    cursor: str
    counts: dict[str, int]
    finished: bool


#: The ids each kind walks: deliveries of the endpoint (recover) or events of the app
#: (replay).
WALKS: dict[TaskKind, str] = {TaskKind.RECOVER: "dlv", TaskKind.REPLAY: "evt"}
#: The counts a new task starts with, by kind.
COUNTS: dict[TaskKind, tuple[str, ...]] = {
    TaskKind.RECOVER: ("scanned", "requeued"),
    TaskKind.REPLAY: ("scanned", "created"),
}
#: What a task that stopped on an unexpected error shows (the cause goes to the log).
FAILED = "The task stopped on an unexpected error; the gateway's log has the cause."


async def _recover(conn: Connection, task: Task, batch: int) -> Batch:
    """Requeue the failed ones among the endpoint's next ``batch`` deliveries."""
    ids = [row["id"] for row in await conn.fetch(
        QUERIES["task_recover_batch"], task.app_id, task.endpoint_id, task.cursor,
        time_bound(WALKS[task.kind], task.until), batch)]
    requeued = await conn.fetch(QUERIES["requeue_failed"], task.app_id, None,
                                task.endpoint_id, None, None, None, ids) if ids else []
    return Batch(ids[-1] if ids else task.cursor,
                 {"scanned": len(ids), "requeued": len(requeued)}, len(ids) < batch)


async def _replay(conn: Connection, task: Task, batch: int) -> Batch:
    """Deliveries for the events among the app's next ``batch`` that the endpoint takes
    and has none for."""
    row = await conn.fetchrow(
        QUERIES["task_replay_batch"], task.app_id, task.endpoint_id, task.cursor,
        time_bound(WALKS[task.kind], task.until), batch)
    assert row is not None
    return Batch(row["last_id"] or task.cursor,
                 {"scanned": row["scanned"], "created": row["created"]},
                 row["scanned"] < batch)


STEPS: dict[TaskKind, Callable[[Connection, Task, int], Awaitable[Batch]]] = {
    TaskKind.RECOVER: _recover,
    TaskKind.REPLAY: _replay,
}


class TaskStore:
    """The ``tasks`` table: tasks made by the API, advanced by the task runners."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, app_id: str, kind: TaskKind, endpoint_id: str, since: datetime,
                     until: datetime) -> Task:
        """A running task over the events of [since, until); 404 unless the app has the
        endpoint. The task runners hear of it at once."""
        row = await self.db.fetchrow(
            "create_task", new_id("task"), app_id, kind.value, endpoint_id, since, until,
            time_bound(WALKS[kind], since), json.dumps(dict.fromkeys(COUNTS[kind], 0)))
        if row is None:
            raise NotFound(f"No endpoint with id {endpoint_id!r} in this app.")
        return make(Task, row)

    async def get(self, app_id: str, task_id: str) -> Task:
        row = await self.db.fetchrow("get_task", app_id, task_id)
        if row is None:
            raise NotFound(f"No task with id {task_id!r} in this app.")
        return make(Task, row)

    async def list(self, app_id: str, cursor: str | None, limit: int) -> Page[Task]:
        """The app's tasks, newest first."""
        rows = await self.db.fetch("list_tasks", app_id, cursor, limit + 1)
        return Page(make_all(Task, rows[:limit]),
                    str(rows[limit - 1]["id"]) if len(rows) > limit else None)

    async def step(self, batch: int) -> Task | None:
        """One batch of the running task advanced least recently that no other process
        holds; the task as it stands after it, or None when no task waits.

        A batch that raises anything but :class:`DatabaseUnavailable` fails its task (it
        would fail again the same way); the database going away only interrupts it.
        """
        async with self.db.transaction() as conn:
            await conn.execute(QUERIES["task_custom_plans"])
            row = await conn.fetchrow(QUERIES["claim_task"])
            if row is None:
                return None
            task = make(Task, row)
            try:
                with translated():
                    async with conn.transaction():  # a savepoint: a failure is recorded
                        done = await STEPS[task.kind](conn, task, batch)
            except DatabaseUnavailable:
                raise
            except Exception:
                log.exception("task %s (%s) failed", task.id, task.kind.value,
                              extra={"app": task.app_id, "task": task.id})
                failed = await conn.fetchrow(QUERIES["fail_task"], task.app_id, task.id, FAILED)
                assert failed is not None
                return make(Task, failed)
            counts = {name: task.counts.get(name, 0) + done.counts.get(name, 0)
                      for name in (*task.counts, *done.counts)}
            advanced = await conn.fetchrow(QUERIES["advance_task"], task.app_id, task.id,
                                           done.cursor, json.dumps(counts), done.finished)
        assert advanced is not None
        return make(Task, advanced)
