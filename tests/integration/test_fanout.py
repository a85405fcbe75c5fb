"""Push fan-out against PostgreSQL: batches, and apps taking turns."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from gateway.store.database import Database
from gateway.store.postgres import EventDraft, Store
from gateway.store.postgres_queue import PostgresQueue

PUSH = json.dumps({"user_ids": ["nobody"], "topics": [],
                   "notification": {"title": "t", "priority": "high", "data": {}}})


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[Database]:
    database = await Database.connect(dsn, max_size=4)
    try:
        yield database
    finally:
        await database.close()


async def _events(store: Store, app_id: str, count: int) -> list[str]:
    accepted = await store.write_events([EventDraft(app_id, "t", "{}", push=PUSH)] * count)
    return [a.id for a in accepted if not isinstance(a, BaseException)]


async def test_one_apps_backlog_of_fanouts_never_holds_up_another_apps(db: Database) -> None:
    store, queue = Store(db), PostgresQueue(db)
    busy = (await store.create_app("busy")).id
    quiet = (await store.create_app("quiet")).id
    await _events(store, busy, 50)
    (late,) = await _events(store, quiet, 1)
    for _ in range(4):
        assert await queue.expand(100) == 0  # nobody's devices: each event done in one
    pending = await db.pool.fetch(
        "SELECT app_id, count(*) AS n FROM events WHERE fanout_status = 'pending' "
        "GROUP BY app_id")
    left = {row["app_id"]: row["n"] for row in pending}
    # Four turns: the busy app's oldest, the quiet app's only one, then the busy app's.
    assert quiet not in left and left[busy] == 47
    assert await db.pool.fetchval("SELECT fanout_status FROM events WHERE id = $1",
                                  late) == "done"
