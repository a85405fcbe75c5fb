"""Ingest hands its own dispatcher the webhook deliveries it makes (issue 11, latency):
a commit makes the deliveries a claim would take as they come leased to the ingesting
process, which sends them without a claim and without waking any dispatcher. What a
claim would treat otherwise (a rate-limited endpoint, an open circuit) stays due for the
queue, and a handed-over delivery is the job a claim would have made of it."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any
from unittest import mock

import asyncpg
import pytest
from aiohttp import web

from gateway import appkeys
from gateway.app import create_app
from gateway.config import Settings
from gateway.store.database import DELIVERIES_CHANNEL, Database
from gateway.store.postgres import EventDraft, Store
from gateway.store.postgres_queue import PostgresQueue
from gateway.store.queue import UNLIMITED, Claim, Handoff, Rooms
from tests.support import Api, Receiver, eventually

LEASE_S = 30.0


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[Store]:
    db = await Database.connect(dsn, max_size=4)
    try:
        yield Store(db)
    finally:
        await db.close()


async def _endpoint(store: Store, app_id: str, **options: Any) -> str:
    made = await store.create_endpoint(app_id, "http://127.0.0.1:9/", "", None)
    if options:
        await store.update_endpoint(app_id, made.id, options)
    return made.id


async def _sql(db: Database, sql: str, *args: Any) -> asyncpg.Record:
    async with db.connection() as conn:
        row = await conn.fetchrow(sql, *args)
    assert row is not None
    return row


async def hearing(app: web.Application) -> None:
    """Until its LISTEN gateway_apps connection is up, a process leases its ingest
    nothing (Dispatcher.hearing): wait for it."""
    await eventually(lambda: asyncio.sleep(0, app[appkeys.AUTH].caching))


async def _row(store: Store, delivery_id: str) -> asyncpg.Record:
    return await _sql(store.db, "SELECT lease_id, next_attempt_at > now() AS later "
                                "FROM deliveries WHERE id = $1", delivery_id)


async def test_a_commit_leases_its_caller_the_deliveries_a_claim_would_take_as_they_come(
        store: Store) -> None:
    app = await store.create_app("shop")
    plain = await _endpoint(store, app.id)
    limited = await _endpoint(store, app.id, rate_limit=5)
    tripped = await _endpoint(store, app.id)
    await _sql(store.db, "UPDATE endpoints SET circuit_open_until = now() + interval "
                         "'1 minute', consecutive_failures = 5 WHERE id = $1 RETURNING id",
               tripped)
    handoff = Handoff(uuid.uuid4(), LEASE_S, 0.0)
    (accepted,) = await store.write_events(
        [EventDraft(app.id, "order.created", '{"n": 1}', traceparent=None)], handoff)
    assert not isinstance(accepted, BaseException)
    event = await store.get_event(app.id, accepted.id)
    by_endpoint = {d.endpoint_id: d.id for d in await store.deliveries_of(app.id, event)}
    assert set(by_endpoint) == {plain, limited, tripped}
    (job,) = handoff.jobs
    assert job.delivery.delivery_id == by_endpoint[plain]
    assert job.lease_id == handoff.lease_id and job.schedule_pos == 0
    leased = await _row(store, by_endpoint[plain])
    assert leased["lease_id"] == handoff.lease_id and leased["later"]
    for other in (limited, tripped):  # due for the queue, which books or parks them
        row = await _row(store, by_endpoint[other])
        assert row["lease_id"] is None and not row["later"]
    # The job is what a claim would have made of the delivery once it was due.
    queue = PostgresQueue(store.db)
    await queue.release([handoff.lease_id])
    claimed = [j for j in await queue.claim(10, LEASE_S, uuid.uuid4())
               if j.delivery.delivery_id == job.delivery.delivery_id]
    assert [j.delivery for j in claimed] == [job.delivery]


async def test_a_commit_with_nothing_left_due_wakes_no_dispatcher(
        store: Store, dsn: str) -> None:
    app = await store.create_app("shop")
    await _endpoint(store, app.id)
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(dsn)
    await listener.add_listener(DELIVERIES_CHANNEL,
                                lambda *args: heard.put_nowait(str(args[2])))
    try:
        handoff = Handoff(uuid.uuid4(), LEASE_S, 0.0)
        await store.write_events([EventDraft(app.id, "order.created", "{}")], handoff)
        assert len(handoff.jobs) == 1
        await store.write_events([EventDraft(app.id, "order.created", "{}")])
        # Notifications arrive in commit order: the first one heard is the second
        # commit's, so the first commit sent none.
        assert await asyncio.wait_for(heard.get(), 5) == DELIVERIES_CHANNEL
        await asyncio.sleep(0.2)
        assert heard.empty()
    finally:
        await listener.close()


async def test_a_replayed_idempotency_key_hands_over_nothing_and_a_fresh_one_its_deliveries(
        store: Store) -> None:
    app = await store.create_app("shop")
    await _endpoint(store, app.id)
    draft = EventDraft(app.id, "order.created", "{}", idempotency_key="k1",
                       body_sha256=b"x" * 32)
    first = Handoff(uuid.uuid4(), LEASE_S, 0.0)
    await store.write_events([draft], first)
    again = Handoff(uuid.uuid4(), LEASE_S, 0.0)
    (replayed,) = await store.write_events([draft], again)
    assert not isinstance(replayed, BaseException) and not replayed.created
    assert len(first.jobs) == 1 and again.jobs == []


async def test_events_ingested_by_a_process_are_sent_by_it_exactly_once_without_a_claim(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver) -> None:
    client = await aiohttp_client(create_app(settings, dsn))
    await hearing(client.app)
    dispatcher = client.app[appkeys.DISPATCHER]
    assert isinstance(dispatcher.queue, PostgresQueue)
    claimed: list[str] = []
    real_claim = dispatcher.queue.claim

    async def counting(limit: int, lease_s: float, lease_id: uuid.UUID,
                       rooms: Rooms = UNLIMITED) -> Claim:
        jobs = await real_claim(limit, lease_s, lease_id, rooms)
        claimed.extend(j.delivery.delivery_id for j in jobs)
        return jobs

    api = Api(client)
    with mock.patch.object(dispatcher.queue, "claim", counting):
        key = await api.new_app()
        await api.new_endpoint(key, receiver.url())
        sent = await asyncio.gather(*[api.emit(key, payload={"i": i}) for i in range(50)])
        await receiver.wait_for(50, timeout_s=20)
        assert sorted(r.headers["webhook-id"] for r in receiver.requests) == sorted(
            e["id"] for e in sent)
        assert claimed == []
        await asyncio.sleep(0.3)  # nothing comes twice
        assert len(receiver.requests) == 50


async def test_a_gateway_without_a_dispatcher_leaves_its_deliveries_due_for_one(
        aiohttp_client: Any, dsn: str, settings: Settings) -> None:
    client = await aiohttp_client(create_app(settings, dsn, dispatcher=False))
    api = Api(client)
    key = await api.new_app()
    await api.new_endpoint(key, "http://127.0.0.1:9/hook")
    await api.emit(key)
    db = await Database.connect(dsn, max_size=1)
    try:
        row = await _sql(db, "SELECT count(*) AS due FROM deliveries "
                             "WHERE lease_id IS NULL AND next_attempt_at <= now()")
        assert row["due"] == 1
    finally:
        await db.close()


async def test_a_handed_over_deliverys_attempt_line_carries_no_request_id(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver,
        captured: io.StringIO) -> None:
    client = await aiohttp_client(create_app(settings, dsn))
    api = Api(client)
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    await asyncio.gather(*[api.emit(key) for _ in range(5)])
    await receiver.wait_for(5)

    def attempts() -> list[dict[str, Any]]:
        records = [json.loads(line) for line in captured.getvalue().splitlines()]
        return [r for r in records if r["msg"].startswith("delivery attempt")]

    await eventually(lambda: asyncio.sleep(0, len(attempts()) == 5))
    # The deliveries ran in the dispatcher's context, not in the request's whose ingest
    # commit handed them over.
    assert [r.get("request_id") for r in attempts()] == [None] * 5


async def test_endpoints_and_apps_the_caller_has_no_room_for_are_left_due(
        store: Store) -> None:
    app = await store.create_app("shop")
    busy_app = await store.create_app("busy")
    roomy = await _endpoint(store, app.id)
    full = await _endpoint(store, app.id)
    elsewhere = await _endpoint(store, busy_app.id)
    handoff = Handoff(uuid.uuid4(), LEASE_S, 0.0, full_endpoints=[full],
                      full_apps=[busy_app.id])
    written = await store.write_events([EventDraft(app.id, "order.created", "{}"),
                                        EventDraft(busy_app.id, "order.created", "{}")],
                                       handoff)
    assert [j.delivery.endpoint.id for j in handoff.jobs if j.delivery.endpoint] == [roomy]
    for accepted, app_id, left in zip(written, (app.id, busy_app.id), ([full], [elsewhere]),
                                      strict=True):
        assert not isinstance(accepted, BaseException)
        event = await store.get_event(app_id, accepted.id)
        for delivery in await store.deliveries_of(app_id, event):
            row = await _row(store, delivery.id)
            assert (row["lease_id"] is None) is (delivery.endpoint_id in left)


async def test_deliveries_that_cannot_be_handed_over_go_back_and_the_events_are_written_once(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver) -> None:
    """A failure after ingest's commit (turning the leased rows into jobs) must not fail
    the batch, which would be written again: the events are answered as written, their
    leases handed back, and each is delivered once by a claim."""
    client = await aiohttp_client(create_app(settings, dsn))
    api = Api(client)
    key = await api.new_app()
    await api.new_endpoint(key, receiver.url())
    with mock.patch("gateway.store.postgres.ingested_jobs", side_effect=RuntimeError("bug")):
        sent = await asyncio.gather(*[api.emit(key, payload={"i": i}) for i in range(5)])
    await receiver.wait_for(5, timeout_s=20)
    assert sorted(r.headers["webhook-id"] for r in receiver.requests) == sorted(
        e["id"] for e in sent)
    status, events = await api.call("GET", "/v1/events?limit=50", key)
    assert status == 200 and len(events["data"]) == 5


async def test_a_commit_still_in_flight_at_shutdown_is_sent_by_its_running_dispatcher(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver) -> None:
    """At shutdown ingest's last commits finish before the dispatcher stops: what they
    leased to it reaches a running dispatcher, not one that has already stopped (which
    handed it back unawaited, or left it leased until the lease lapsed)."""
    client = await aiohttp_client(create_app(settings, dsn))
    await hearing(client.app)
    store = client.app[appkeys.STORE]
    app = await store.create_app("shop")
    await store.create_endpoint(app.id, receiver.url(), "", None)
    gate = asyncio.Event()
    writing = asyncio.Event()
    real_write = store.write_events

    async def held(drafts: list[EventDraft], handoff: Handoff | None = None) -> Any:
        writing.set()
        await gate.wait()
        return await real_write(drafts, handoff)

    with mock.patch.object(store, "write_events", held):
        submitted = client.app[appkeys.INGEST].submit(
            EventDraft(app.id, "order.created", '{"n": 1}'))
        await writing.wait()
        closing = asyncio.create_task(client.close())
        await asyncio.sleep(0.2)  # the shutdown is under way, the commit still held
        gate.set()
        accepted = await submitted
        await closing
    assert not isinstance(accepted, BaseException)
    assert [r.headers["webhook-id"] for r in receiver.requests] == [accepted.id]


@pytest.mark.parametrize("change", ["url", "deleted", "secret rotated"])
async def test_handed_over_deliveries_waiting_for_room_go_as_their_endpoint_now_is(
        aiohttp_client: Any, dsn: str, settings: Settings, receiver: Receiver,
        store: Store, change: str) -> None:
    """An endpoint changed by another process (here a store of its own) while deliveries
    to it wait in this dispatcher for room: they go back to the queue and are claimed
    as the endpoint now is, not sent where it no longer points, or signed with the
    previous secret alone (before, they went for up to the hand-over wait, 7.5 s)."""
    client = await aiohttp_client(create_app(
        dataclasses.replace(settings, endpoint_concurrency=1), dsn))
    dispatcher = client.app[appkeys.DISPATCHER]
    await hearing(client.app)
    app = await store.create_app("shop")
    endpoint = await store.create_endpoint(app.id, receiver.url("/old"), "", None)
    receiver.delay_s = 30  # the first holds the endpoint's one slot; four wait behind it
    ingest = client.app[appkeys.INGEST]
    sent = await asyncio.gather(*[ingest.submit(EventDraft(app.id, "order.created", "{}"))
                                  for _ in range(5)])
    await receiver.wait_for(1, "/old")
    assert dispatcher._ready_count == 4
    if change == "url":
        await store.update_endpoint(app.id, endpoint.id, {"url": receiver.url("/new")})
    elif change == "deleted":
        await store.delete_endpoint(app.id, endpoint.id)
    else:
        await store.rotate_secret(app.id, endpoint.id)
    await eventually(lambda: asyncio.sleep(0, dispatcher._ready_count == 0))
    receiver.release_held()
    if change == "url":
        await receiver.wait_for(4, "/new", timeout_s=20)
        assert sorted(r.headers["webhook-id"] for r in receiver.requests) == sorted(
            e.id for e in sent if not isinstance(e, BaseException))
    elif change == "secret rotated":
        await receiver.wait_for(5, "/old", timeout_s=20)
        later = receiver.on("/old")[1:]
        assert all(len(r.headers["webhook-signature"].split(" ")) == 2 for r in later)
    else:
        await asyncio.sleep(0.5)  # past the first's answer, when the next would start
    assert len(receiver.on("/old")) == (5 if change == "secret rotated" else 1)

