"""Push fan-out against PostgreSQL: batches, and apps taking turns."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest

from adapters.base import DeliveryJob
from gateway.store.database import Database
from gateway.store.postgres import EventDraft, Store
from gateway.store.postgres_queue import PostgresQueue
from gateway_client.models import Provider

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


async def test_a_claims_push_jobs_read_each_apps_credentials_and_notification_once(
        db: Database) -> None:
    """Jobs of one claim share what their rows repeat (one parse per app and event),
    and an app's jobs only ever get that app's credentials, even when two apps stored
    the same text."""
    store, queue = Store(db), PostgresQueue(db)
    same = {"type": "service_account", "project_id": "shared", "client_email": "a@b.c",
            "private_key_id": "k", "private_key": "-----BEGIN PRIVATE KEY-----\nx\n"}
    apps = {}
    for name in ("one", "two", "three"):
        app = await store.create_app(name)
        apps[app.id] = name
        config = same if name != "three" else {**same, "project_id": "three"}
        await store.put_credentials(app.id, Provider.FCM, config)
        for n in range(3):
            await store.upsert_device(app, platform="android", token=f"{name}-token-{n}",
                                      user_id=f"user-{n}", topics=["all"], locale=None,
                                      app_version=None)
        push = json.dumps({"user_ids": [], "topics": ["all"],
                           "notification": {"title": f"to {name}", "data": {}}})
        await store.write_events([EventDraft(app.id, "t", "{}", push=push)])
    while await queue.expand(100) is not None:
        pass
    jobs = list(await queue.claim(50, 30, uuid.uuid4()))
    assert len(jobs) == 9
    by_app: dict[str, list[DeliveryJob]] = {}
    for job in jobs:
        by_app.setdefault(job.delivery.app_id, []).append(job.delivery)
    assert sorted(len(v) for v in by_app.values()) == [3, 3, 3]
    for app_id, delivered in by_app.items():
        first = delivered[0]
        assert first.credentials is not None and first.notification is not None
        assert all(d.credentials is first.credentials for d in delivered)
        assert all(d.notification is first.notification for d in delivered)
        assert first.notification["title"] == f"to {apps[app_id]}"
        assert first.credentials["project_id"] == (
            "three" if apps[app_id] == "three" else "shared")
    credentials = [v[0].credentials for v in by_app.values()]
    # Equal text, still one object per app: nothing read for one app reaches another's.
    assert len({id(c) for c in credentials}) == 3
