"""Push fan-out against PostgreSQL: batches, apps taking turns, and batches handed over
leased to the expanding process's dispatcher."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from adapters.base import DeliveryJob, Outcome, Verdict
from gateway.dispatcher import Dispatcher
from gateway.fanout import FanoutRunner
from gateway.retry import RetryPolicy
from gateway.store.database import Database
from gateway.store.postgres import EventDraft, Store
from gateway.store.postgres_queue import PostgresQueue
from gateway.store.queue import UNLIMITED, Claim, Expanded, Rooms
from gateway_client.models import Provider
from tests.support import eventually

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


# --- a fan-out batch made leased to its expander (expand_leased) ----------------------

FCM_CONFIG = {"type": "service_account", "project_id": "p", "client_email": "a@b.c",
              "private_key_id": "k", "private_key": "-----BEGIN PRIVATE KEY-----\nx\n"}
APNS_CONFIG = {"key_id": "ABC123DEFG", "team_id": "TEAM123456", "bundle_id": "com.example",
               "key_p8": "-----BEGIN PRIVATE KEY-----\ny\n", "environment": "sandbox"}


async def _push_app(store: Store, devices: int) -> tuple[str, str]:
    """An app with both providers' credentials and ``devices`` devices (alternately
    Android and iOS) on topic "all", and one event pushed to them: (app id, event id)."""
    app = await store.create_app("push")
    await store.put_credentials(app.id, Provider.FCM, FCM_CONFIG)
    await store.put_credentials(app.id, Provider.APNS, APNS_CONFIG)
    for n in range(devices):
        await store.upsert_device(app, platform=("android", "ios")[n % 2],
                                  token=f"{n:064x}", user_id=f"user-{n}", topics=["all"],
                                  locale=None, app_version=None)
    push = json.dumps({"user_ids": [], "topics": ["all"],
                       "notification": {"title": "hello", "data": {"k": "v"}}})
    (event,) = await store.write_events([EventDraft(
        app.id, "order.created", '{"order": 1}', push=push,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")])
    assert not isinstance(event, BaseException)
    return app.id, event.id


async def test_a_leased_batch_hands_over_what_a_claim_of_its_deliveries_would_answer(
        db: Database) -> None:
    """Its deliveries are claimed by the caller's lease (no claim takes them), and each
    job is the one a claim of the same delivery answers: event, device, notification,
    credentials opened, first attempt."""
    store, queue = Store(db), PostgresQueue(db)
    _, event_id = await _push_app(store, 6)
    lease_id = uuid.uuid4()
    expanded = await queue.expand_leased(100, 30, lease_id)
    assert expanded is not None and expanded.devices == 6 and len(expanded.jobs) == 6
    assert {j.delivery.kind for j in expanded.jobs} == {"fcm", "apns"}
    assert all(j.lease_id == lease_id for j in expanded.jobs)
    assert not await queue.claim(50, 30, uuid.uuid4())
    leases = await db.pool.fetch("SELECT lease_id, next_attempt_at > now() AS later "
                                 "FROM deliveries WHERE event_id = $1", event_id)
    assert len(leases) == 6 and all(r["lease_id"] == lease_id and r["later"] for r in leases)

    await queue.release_jobs(expanded.jobs)
    claimed = {j.delivery.delivery_id: j for j in await queue.claim(50, 30, uuid.uuid4())}
    assert len(claimed) == 6
    for handed in expanded.jobs:
        job = claimed[handed.delivery.delivery_id]
        assert handed.delivery == job.delivery
        assert (handed.schedule_pos, handed.device_active, handed.unsendable) == (
            job.schedule_pos, job.device_active, job.unsendable)
    first = expanded.jobs[0].delivery
    assert first.credentials is not None and first.notification == {"title": "hello",
                                                                    "data": {"k": "v"}}
    assert first.event.payload == '{"order": 1}' and first.attempt == 1


async def test_a_replayed_leased_batch_makes_and_hands_over_nothing_twice(
        db: Database) -> None:
    store, queue = Store(db), PostgresQueue(db)
    _, event_id = await _push_app(store, 4)
    first = await queue.expand_leased(100, 30, uuid.uuid4())
    assert first is not None and len(first.jobs) == 4
    # As if the process died after the commit and before the cursor was seen.
    await db.pool.execute("UPDATE events SET fanout_status = 'pending', fanout_cursor = NULL "
                          "WHERE id = $1", event_id)
    again = await queue.expand_leased(100, 30, uuid.uuid4())
    assert again is not None and again.devices == 4 and again.jobs == []
    assert await db.pool.fetchval("SELECT count(*) FROM deliveries WHERE event_id = $1",
                                  event_id) == 4


async def test_handing_back_part_of_a_leased_batch_leaves_the_rest_claimed(
        db: Database) -> None:
    store, queue = Store(db), PostgresQueue(db)
    await _push_app(store, 5)
    expanded = await queue.expand_leased(100, 30, uuid.uuid4())
    assert expanded is not None
    await queue.release_jobs(expanded.jobs[:2])
    claimed = await queue.claim(50, 30, uuid.uuid4())
    assert sorted(j.delivery.delivery_id for j in claimed) == sorted(
        j.delivery.delivery_id for j in expanded.jobs[:2])


async def test_a_leased_batch_wakes_no_dispatcher(db: Database, dsn: str) -> None:
    """Its deliveries have their sender: only a batch made due for any claimer
    notifies."""
    store, queue = Store(db), PostgresQueue(db)
    await _push_app(store, 3)
    await _push_app(store, 3)
    heard: list[str] = []
    listener = await asyncpg.connect(dsn)
    try:
        await listener.add_listener("gateway_deliveries",
                                    lambda *args: heard.append(args[2]))
        leased = await queue.expand_leased(100, 30, uuid.uuid4())
        assert leased is not None and len(leased.jobs) == 3
        assert await queue.expand(100) == 3  # the other app's, made due
        await eventually(lambda: asyncio.sleep(0, bool(heard)))
        await listener.execute("SELECT 1")  # notifications arrive in commit order
    finally:
        await listener.close()
    assert heard == ["gateway_deliveries"]


async def test_a_batch_that_leaves_more_to_expand_wakes_the_fan_outs_and_the_last_does_not(
        db: Database, dsn: str) -> None:
    """Another process's fan-out, idle because the event was locked, races for the next
    batch at once instead of at its next poll."""
    store, queue = Store(db), PostgresQueue(db)
    await _push_app(store, 5)
    heard: list[str] = []
    listener = await asyncpg.connect(dsn)
    try:
        await listener.add_listener("gateway_fanout", lambda *args: heard.append(args[2]))
        assert await queue.expand(2) == 2
        leased = await queue.expand_leased(2, 30, uuid.uuid4())
        assert leased is not None and leased.devices == 2
        assert await queue.expand(2) == 1  # the last batch: the event is done
        await eventually(lambda: asyncio.sleep(0, len(heard) >= 2))
        await listener.execute("SELECT 1")  # notifications arrive in commit order
    finally:
        await listener.close()
    assert heard == ["gateway_fanout"] * 2


class Recording:
    """A push provider that records every device it is asked to push to."""

    def __init__(self, kind: str, pushed: list[str]) -> None:
        self.kind = kind
        self.pushed = pushed

    async def send(self, job: DeliveryJob) -> Outcome:
        assert job.device is not None and job.credentials is not None
        self.pushed.append(job.device.token)
        await asyncio.sleep(0.001)
        return Outcome(Verdict.DELIVERED, status_code=200)

    async def forget_app(self, app_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


class CountingQueue(PostgresQueue):
    """The gateway's queue, counting what each claim took."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.claimed: list[int] = []

    async def claim(self, limit: int, lease_s: float, lease_id: uuid.UUID,
                    rooms: Rooms = UNLIMITED) -> Claim:
        got = await super().claim(limit, lease_s, lease_id, rooms)
        self.claimed.append(len(got))
        return got


class CommitsThenHangs(PostgresQueue):
    """Its leased expansions commit and then never answer (as if cut off mid-answer)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.committed = asyncio.Event()

    async def expand_leased(self, batch: int, lease_s: float,
                            lease_id: uuid.UUID) -> Expanded | None:
        await super().expand_leased(batch, lease_s, lease_id)
        self.committed.set()
        await asyncio.Event().wait()
        return None


async def test_a_fan_out_is_sent_by_its_own_process_once_per_device_without_claims(
        db: Database) -> None:
    """Fan-out and dispatcher of one process on PostgreSQL: batches are handed over
    within the dispatcher's room for them, every device gets the push once, every
    delivery succeeds, and no claim takes any of them."""
    store, queue = Store(db), CountingQueue(db)
    _, event_id = await _push_app(store, 300)
    pushed: list[str] = []
    worker = Dispatcher(queue, {k: Recording(k, pushed) for k in ("fcm", "apns")},
                        RetryPolicy((1.0,), jitter=0), push_concurrency=8,
                        handoff_capacity=60, poll_interval_s=0.2)
    fanout = FanoutRunner(queue, batch=40, poll_interval_s=0.2, dispatcher=worker)
    await worker.start()
    fanout.start()
    try:
        async def all_succeeded() -> bool:
            done: int = await db.pool.fetchval(
                "SELECT count(*) FROM deliveries WHERE event_id = $1 AND status = "
                "'succeeded'", event_id)
            return done == 300
        await eventually(all_succeeded, timeout_s=30)
    finally:
        await fanout.stop()
        await worker.stop(1)
    assert len(pushed) == 300 and len(set(pushed)) == 300
    assert sum(queue.claimed) == 0
    assert await db.pool.fetchval("SELECT count(*) FROM attempts a JOIN deliveries d "
                                  "ON d.id = a.delivery_id WHERE d.event_id = $1",
                                  event_id) == 300


async def test_a_fan_out_stopped_after_its_batch_committed_leaves_none_of_it_leased(
        db: Database) -> None:
    """A stop that cancels the fan-out between its batch's commit and the hand-over: the
    dispatcher's stop puts those deliveries back in the queue, due at once for any
    dispatcher, instead of leaving them to their lease."""
    store, queue = Store(db), CommitsThenHangs(db)
    _, event_id = await _push_app(store, 5)
    pushed: list[str] = []
    worker = Dispatcher(queue, {k: Recording(k, pushed) for k in ("fcm", "apns")},
                        RetryPolicy((1.0,), jitter=0), poll_interval_s=0.2)
    fanout = FanoutRunner(queue, poll_interval_s=0.2, dispatcher=worker)
    await worker.start()
    fanout.start()
    try:
        await asyncio.wait_for(queue.committed.wait(), 10)
    finally:
        await fanout.stop()
        await worker.stop(1)
    rows = await db.pool.fetch("SELECT lease_id, next_attempt_at <= now() AS due "
                               "FROM deliveries WHERE event_id = $1", event_id)
    assert len(rows) == 5 and all(r["lease_id"] is None and r["due"] for r in rows)
    assert pushed == []
