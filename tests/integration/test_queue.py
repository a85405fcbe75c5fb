"""The delivery queue's rules, and the dispatcher driving it, proven against both queues:
PostgreSQL and the in-memory twin the dispatcher can be tested with. Every test here
runs once per queue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import operator
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from unittest import mock

import asyncpg
import pytest

from adapters.base import DeliveryJob, EndpointTarget, EventView, Outcome, Verdict
from gateway import crypto
from gateway.dispatcher import Dispatcher
from gateway.health import HealthRules
from gateway.retry import RetryPolicy
from gateway.store.database import OUTCOMES_CHANNEL, QUERIES, Database, migrate
from gateway.store.memory_queue import InMemoryQueue
from gateway.store.postgres import EventDraft, Store
from gateway.store.postgres_queue import (
    FULL_RUN,
    PLAIN_PARAMS,
    PostgresQueue,
    claim_params,
    outcome_notifications,
)
from gateway.store.queue import UNLIMITED, AttemptResult, Job, Queue, Rooms, Settlement
from gateway_client.models import (
    AttemptOutcome,
    DeliveryStatus,
    DisabledReason,
    EndpointStatus,
    iso,
)
from tests.support import eventually


class Harness(Protocol):
    """Puts deliveries in a queue and reads their state back, whichever queue it is."""

    @property
    def queue(self) -> Queue: ...

    async def add(self, endpoint: str = "a", payload: str = "{}", app: str = "one") -> str:
        ...

    async def status(self, delivery_id: str) -> DeliveryStatus: ...

    async def attempts(self, delivery_id: str) -> int: ...

    async def endpoint_status(self, endpoint: str) -> EndpointStatus: ...

    async def endpoint_reason(self, endpoint: str) -> DisabledReason | None: ...

    def use(self, rules: HealthRules) -> None:
        """Keep endpoint health by these rules from now on."""

    async def all_due_at_once(self) -> None:
        """Give every pending delivery the same due time (a fan-out's batch has one)."""

    async def set_rate_limit(self, endpoint: str, limit: int | None) -> None:
        """Sends per second for an endpoint that has deliveries (None: no limit)."""


@dataclass
class MemoryHarness:
    queue: InMemoryQueue = field(default_factory=InMemoryQueue)
    count: int = 0

    async def add(self, endpoint: str = "a", payload: str = "{}", app: str = "one") -> str:
        self.count += 1
        delivery_id = f"dlv_{self.count:032x}"
        event = EventView(f"evt_{self.count:032x}", "order.created", payload,
                          datetime.now(UTC))
        self.queue.add(DeliveryJob(delivery_id, app, "webhook", event,
                                   endpoint=EndpointTarget(endpoint, "http://x/", ("s",))))
        await asyncio.sleep(0.002)  # distinct due times, as ingest gives them
        return delivery_id

    async def status(self, delivery_id: str) -> DeliveryStatus:
        return self.queue.entries[delivery_id].status

    async def attempts(self, delivery_id: str) -> int:
        return len(self.queue.entries[delivery_id].attempts)

    async def endpoint_status(self, endpoint: str) -> EndpointStatus:
        return self.queue.endpoints[endpoint]

    async def endpoint_reason(self, endpoint: str) -> DisabledReason | None:
        return self.queue.disabled_reasons.get(endpoint)

    def use(self, rules: HealthRules) -> None:
        self.queue.health = rules

    async def all_due_at_once(self) -> None:
        now = datetime.now(UTC)
        for entry in self.queue.entries.values():
            entry.due_at = now

    async def set_rate_limit(self, endpoint: str, limit: int | None) -> None:
        self.queue.set_rate_limit(endpoint, limit)


@dataclass
class PostgresHarness:
    store: Store
    queue: PostgresQueue
    apps: dict[str, str] = field(default_factory=dict)
    endpoints: dict[str, tuple[str, str]] = field(default_factory=dict)
    app_of: dict[str, str] = field(default_factory=dict)

    async def add(self, endpoint: str = "a", payload: str = "{}", app: str = "one") -> str:
        if app not in self.apps:
            self.apps[app] = (await self.store.create_app(app)).id
        app_id = self.apps[app]
        if endpoint not in self.endpoints:
            made = await self.store.create_endpoint(app_id, "http://127.0.0.1:9/", "",
                                                    [f"for.{endpoint}"])
            self.endpoints[endpoint] = (app_id, made.id)
        (accepted,) = await self.store.write_events(
            [EventDraft(app_id, f"for.{endpoint}", payload)])
        assert not isinstance(accepted, BaseException)
        event = await self.store.get_event(app_id, accepted.id)
        (delivery,) = await self.store.deliveries_of(app_id, event)
        self.app_of[delivery.id] = app_id
        return delivery.id

    async def status(self, delivery_id: str) -> DeliveryStatus:
        return (await self.store.get_delivery(self.app_of[delivery_id], delivery_id)).status

    async def attempts(self, delivery_id: str) -> int:
        return len(await self.store.list_attempts(self.app_of[delivery_id], delivery_id))

    async def endpoint_status(self, endpoint: str) -> EndpointStatus:
        app_id, endpoint_id = self.endpoints[endpoint]
        return (await self.store.get_endpoint(app_id, endpoint_id)).status

    async def endpoint_reason(self, endpoint: str) -> DisabledReason | None:
        app_id, endpoint_id = self.endpoints[endpoint]
        return (await self.store.get_endpoint(app_id, endpoint_id)).disabled_reason

    def use(self, rules: HealthRules) -> None:
        self.queue.health = rules

    async def all_due_at_once(self) -> None:
        async with self.queue.db.transaction() as conn:
            await conn.execute("UPDATE deliveries SET next_attempt_at = now() "
                               "WHERE status = 'pending'")

    async def set_rate_limit(self, endpoint: str, limit: int | None) -> None:
        app_id, endpoint_id = self.endpoints[endpoint]
        await self.store.update_endpoint(app_id, endpoint_id, {"rate_limit": limit})


@pytest.fixture(params=["memory", "postgres"])
async def harness(request: pytest.FixtureRequest, dsn: str) -> AsyncIterator[Harness]:
    if request.param == "memory":
        yield MemoryHarness()
        return
    db = await Database.connect(dsn, max_size=4)
    try:
        yield PostgresHarness(Store(db), PostgresQueue(db))
    finally:
        await db.close()


def result(job: Job, status: DeliveryStatus, outcome: AttemptOutcome, *,
           next_attempt_at: datetime | None = None, **extra: Any) -> AttemptResult:
    return AttemptResult(
        delivery_id=job.delivery.delivery_id, app_id=job.delivery.app_id,
        lease_id=job.lease_id, status=status,
        next_attempt_at=next_attempt_at, schedule_pos=job.schedule_pos + 1,
        attempted_at=datetime.now(UTC), duration_ms=3, outcome=outcome, status_code=200,
        response_snippet=None, error=None, **extra)


async def test_a_claim_takes_due_deliveries_oldest_first_and_leases_them(
        harness: Harness) -> None:
    ids = [await harness.add() for _ in range(5)]
    first = await harness.queue.claim(3, 30, uuid.uuid4())
    assert {j.delivery.delivery_id for j in first} == set(ids[:3])
    assert all(j.delivery.attempt == 1 and j.schedule_pos == 0 for j in first)
    second = await harness.queue.claim(10, 30, uuid.uuid4())
    assert {j.delivery.delivery_id for j in second} == set(ids[3:])
    assert await harness.queue.claim(10, 30, uuid.uuid4()) == []


async def test_a_lapsed_lease_gives_the_delivery_back_by_itself(harness: Harness) -> None:
    delivery_id = await harness.add()
    (job,) = await harness.queue.claim(1, 0.3, uuid.uuid4())
    assert await harness.queue.claim(1, 30, uuid.uuid4()) == []
    await asyncio.sleep(0.4)
    (again,) = await harness.queue.claim(1, 30, uuid.uuid4())
    assert again.delivery.delivery_id == delivery_id and again.lease_id != job.lease_id


async def test_a_completed_delivery_is_never_claimed_again(harness: Harness) -> None:
    delivery_id = await harness.add()
    (job,) = await harness.queue.claim(1, 30, uuid.uuid4())
    await harness.queue.complete([result(job, DeliveryStatus.SUCCEEDED,
                                         AttemptOutcome.DELIVERED)])
    assert await harness.status(delivery_id) is DeliveryStatus.SUCCEEDED
    assert await harness.attempts(delivery_id) == 1
    assert await harness.queue.claim(10, 30, uuid.uuid4()) == []
    assert await harness.queue.next_due_at() is None


async def test_a_rescheduled_delivery_waits_for_its_time_then_comes_back(
        harness: Harness) -> None:
    delivery_id = await harness.add()
    (job,) = await harness.queue.claim(1, 30, uuid.uuid4())
    at = datetime.now(UTC) + timedelta(seconds=0.4)
    await harness.queue.reschedule([result(job, DeliveryStatus.PENDING, AttemptOutcome.RETRY,
                                           next_attempt_at=at)])
    assert await harness.queue.claim(1, 30, uuid.uuid4()) == []
    due = await harness.queue.next_due_at()
    assert due is not None and abs((due - at).total_seconds()) < 0.01
    await asyncio.sleep(0.5)
    (again,) = await harness.queue.claim(1, 30, uuid.uuid4())
    assert again.delivery.delivery_id == delivery_id
    assert again.delivery.attempt == 2 and again.schedule_pos == 1


async def test_a_result_under_a_lost_lease_is_logged_but_moves_nothing(
        harness: Harness) -> None:
    delivery_id = await harness.add()
    (stale,) = await harness.queue.claim(1, 0.2, uuid.uuid4())
    await asyncio.sleep(0.3)
    (current,) = await harness.queue.claim(1, 30, uuid.uuid4())
    await harness.queue.complete([result(stale, DeliveryStatus.FAILED, AttemptOutcome.FAILED)])
    assert await harness.status(delivery_id) is DeliveryStatus.PENDING
    assert await harness.attempts(delivery_id) == 1
    await harness.queue.complete([result(current, DeliveryStatus.SUCCEEDED,
                                         AttemptOutcome.DELIVERED)])
    assert await harness.status(delivery_id) is DeliveryStatus.SUCCEEDED


async def test_released_claims_are_due_again_at_once(harness: Harness) -> None:
    await harness.add()
    lease = uuid.uuid4()
    (job,) = await harness.queue.claim(1, 30, lease)
    await harness.queue.release([lease])
    (again,) = await harness.queue.claim(1, 30, uuid.uuid4())
    assert again.delivery.delivery_id == job.delivery.delivery_id


async def test_a_claim_takes_no_more_than_each_endpoint_and_app_has_room_for(
        harness: Harness) -> None:
    for _ in range(5):
        await harness.add("busy")
    for _ in range(2):
        await harness.add("free")
    full = {harness_endpoint(harness, "busy"): 0}
    taken = await harness.queue.claim(10, 30, uuid.uuid4(), Rooms(endpoints=full))
    assert sorted(j.delivery.endpoint.id for j in taken if j.delivery.endpoint) == \
        [harness_endpoint(harness, "free")] * 2
    some = await harness.queue.claim(10, 30, uuid.uuid4(), Rooms(endpoint=2))
    assert len(some) == 2  # the busy endpoint's room, though 5 are due
    app = taken[0].delivery.app_id
    assert await harness.queue.claim(10, 30, uuid.uuid4(), Rooms(apps={app: 0})) == []


async def test_a_claim_gives_a_named_endpoint_its_room_even_above_the_default(
        harness: Harness) -> None:
    for _ in range(5):
        await harness.add("roomy")
    roomy = {harness_endpoint(harness, "roomy"): 4}
    taken = await harness.queue.claim(10, 30, uuid.uuid4(), Rooms(endpoints=roomy, endpoint=2))
    assert len(taken) == 4  # its own room (no rate limit caps it), not the default of 2


async def test_apps_take_turns_in_a_claim_whatever_their_backlog(harness: Harness) -> None:
    for _ in range(10):
        await harness.add("a-hook", app="big")  # older, and many
    small = [await harness.add("b-hook", app="small") for _ in range(3)]
    taken = await harness.queue.claim(6, 30, uuid.uuid4())
    ids = [j.delivery.delivery_id for j in taken]
    assert set(small) <= set(ids) and len(ids) == 6


async def test_a_claim_with_room_takes_something_when_many_are_due_at_the_same_time(
        harness: Harness) -> None:
    for i in range(120):
        await harness.add(f"hook-{i % 4}")
    await harness.all_due_at_once()
    # One order for every count: the first due of the app is the first of its endpoint.
    assert len(await harness.queue.claim(50, 30, uuid.uuid4(), Rooms(app=1))) == 1
    assert len(await harness.queue.claim(50, 30, uuid.uuid4(), Rooms(endpoint=1))) == 4
    assert len(await harness.queue.claim(7, 30, uuid.uuid4(), Rooms(endpoint=30,
                                                                      app=7))) == 7


def harness_endpoint(harness: Harness, name: str) -> str:
    """The endpoint id a harness gave the endpoint it calls ``name``."""
    if isinstance(harness, PostgresHarness):
        return harness.endpoints[name][1]
    return name


async def test_a_gone_endpoint_is_disabled_and_its_other_deliveries_wait(
        harness: Harness) -> None:
    first = await harness.add("gone")
    await harness.add("gone")
    other = await harness.add("fine")
    (job,) = await harness.queue.claim(1, 30, uuid.uuid4())
    assert job.delivery.delivery_id == first and job.delivery.endpoint is not None
    await harness.queue.complete([result(
        job, DeliveryStatus.FAILED, AttemptOutcome.GONE,
        disable_endpoint_id=job.delivery.endpoint.id, disable_reason=DisabledReason.GONE,
        endpoint_id=job.delivery.endpoint.id)])
    assert await harness.endpoint_status("gone") is EndpointStatus.DISABLED
    assert await harness.endpoint_reason("gone") is DisabledReason.GONE
    rest = await harness.queue.claim(10, 30, uuid.uuid4())
    assert [j.delivery.delivery_id for j in rest] == [other]


# --- endpoint rate limits (gateway/sendrate.py) ----------------------------------------

async def test_a_rate_limited_endpoint_gives_a_claim_its_budget_and_books_the_rest(
        harness: Harness) -> None:
    limited = [await harness.add("limited") for _ in range(5)]
    other = await harness.add("other")
    await harness.set_rate_limit("limited", 2)  # one send now, then one every 0.575 s
    claim = await harness.queue.claim(10, 30, uuid.uuid4())
    assert sorted(j.delivery.delivery_id for j in claim) == sorted([limited[0], other])
    assert claim.held_back == 4
    for held in limited[1:]:  # not taken, not attempted, still pending
        assert await harness.status(held) is DeliveryStatus.PENDING
        assert await harness.attempts(held) == 0
    # Booked later send times: out of the way of the next claim...
    again = await harness.queue.claim(10, 30, uuid.uuid4())
    assert list(again) == [] and again.held_back == 0
    due = await harness.queue.next_due_at()
    assert due is not None and due > datetime.now(UTC) - timedelta(seconds=0.05)
    # ...and each taken in turn, oldest first, when its time comes.
    taken: list[str] = []
    while len(taken) < 2:
        await asyncio.sleep(0.02)
        taken += [j.delivery.delivery_id for j in
                  await harness.queue.claim(10, 30, uuid.uuid4())]
    assert taken == limited[1:3]


async def test_claiming_as_fast_as_possible_never_beats_the_limit(harness: Harness) -> None:
    ids = [await harness.add("limited") for _ in range(30)]
    await harness.set_rate_limit("limited", 20)
    granted: list[float] = []
    while len(granted) < len(ids):
        claim = await harness.queue.claim(50, 30, uuid.uuid4())
        granted += [time.monotonic()] * len(claim)
        await asyncio.sleep(0)
    # 20 in any 1.1 s of grants (the default margin): 21 sends span at least a second
    # even as this process saw them.
    assert min(granted[i + 20] - granted[i] for i in range(len(granted) - 20)) >= 1.0


async def test_a_new_limit_releases_the_deliveries_booked_under_the_old_one(
        harness: Harness) -> None:
    ids = [await harness.add("limited") for _ in range(6)]
    await harness.set_rate_limit("limited", 1)  # the last would wait some 6 s
    first = await harness.queue.claim(10, 30, uuid.uuid4())
    assert len(first) == 1 and first.held_back == 5
    await harness.set_rate_limit("limited", None)
    rest = await harness.queue.claim(10, 30, uuid.uuid4())
    assert sorted(j.delivery.delivery_id for j in rest) == sorted(ids[1:])


# --- the dispatcher over either queue --------------------------------------------------

@dataclass
class Scripted:
    """An adapter that answers each delivery as told (delivered by default)."""

    kind: str = "webhook"
    answers: dict[str, list[Verdict]] = field(default_factory=dict)
    sent: list[str] = field(default_factory=list)

    async def send(self, job: DeliveryJob) -> Outcome:
        self.sent.append(job.delivery_id)
        script = self.answers.get(job.delivery_id)
        verdict = script.pop(0) if script else Verdict.DELIVERED
        return Outcome(verdict, duration_ms=1, status_code=200 if verdict is
                       Verdict.DELIVERED else 503)

    async def forget_app(self, app_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


def dispatcher(queue: Queue, adapter: Scripted) -> Dispatcher:
    return Dispatcher(queue, {"webhook": adapter}, RetryPolicy((0.05, 0.05), jitter=0),
                      poll_interval_s=0.05, lease_s=30)


async def test_the_dispatcher_sends_each_due_delivery_exactly_once(harness: Harness) -> None:
    ids = [await harness.add(endpoint=f"e{i % 3}") for i in range(30)]
    adapter = Scripted()
    worker = dispatcher(harness.queue, adapter)
    await worker.start()
    try:
        async def all_done() -> bool:
            return all([await harness.status(i) is DeliveryStatus.SUCCEEDED for i in ids])
        await eventually(all_done, timeout_s=10)
    finally:
        await worker.stop(1)
    assert sorted(adapter.sent) == sorted(ids)


async def test_the_dispatcher_retries_on_schedule_then_fails_for_good(
        harness: Harness) -> None:
    flaky = await harness.add()
    hopeless = await harness.add()
    adapter = Scripted(answers={flaky: [Verdict.RETRY, Verdict.RETRY],
                                hopeless: [Verdict.RETRY] * 5})
    worker = dispatcher(harness.queue, adapter)
    await worker.start()
    try:
        async def settled() -> bool:
            return (await harness.status(flaky) is DeliveryStatus.SUCCEEDED
                    and await harness.status(hopeless) is DeliveryStatus.FAILED)
        await eventually(settled, timeout_s=10)
    finally:
        await worker.stop(1)
    assert await harness.attempts(flaky) == 3
    assert await harness.attempts(hopeless) == 3  # the first try and both retries


async def test_a_dispatcher_stopped_mid_send_gives_its_claims_back(harness: Harness) -> None:
    delivery_id = await harness.add()
    release = asyncio.Event()

    class Hanging(Scripted):
        async def send(self, job: DeliveryJob) -> Outcome:
            self.sent.append(job.delivery_id)
            await release.wait()
            return Outcome(Verdict.DELIVERED)

    adapter = Hanging()
    worker = dispatcher(harness.queue, adapter)
    await worker.start()
    await eventually(lambda: asyncio.sleep(0, bool(adapter.sent)), timeout_s=5)
    await worker.stop(0.1)
    assert await harness.status(delivery_id) is DeliveryStatus.PENDING
    (job,) = await harness.queue.claim(1, 30, uuid.uuid4())  # due again at once
    assert job.delivery.delivery_id == delivery_id


async def test_a_claim_says_how_many_due_deliveries_it_left_waiting_for_room(
        harness: Harness) -> None:
    for _ in range(5):
        await harness.add("busy")
    taken = await harness.queue.claim(10, 30, uuid.uuid4(), Rooms(endpoint=2))
    assert len(taken) == 2 and taken.waiting == 3 and taken.held_back == 0
    rest = await harness.queue.claim(10, 30, uuid.uuid4())
    assert len(rest) == 3 and rest.waiting == 0


async def test_a_delivered_attempt_frees_its_slot_before_its_result_is_written(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [await harness.add() for _ in range(2)]
    writes = asyncio.Event()
    queue = harness.queue
    complete = queue.complete

    async def held_complete(results: Sequence[AttemptResult]) -> Settlement:
        await writes.wait()  # the database is slow to write results
        return await complete(results)

    monkeypatch.setattr(queue, "complete", held_complete)
    adapter = Scripted()
    worker = Dispatcher(queue, {"webhook": adapter}, RetryPolicy((0.05,), jitter=0),
                        concurrency=1, poll_interval_s=0.05, lease_s=30)
    await worker.start()
    try:
        # One slot: both deliveries are sent, one after the other, while no result is
        # written yet.
        await eventually(lambda: asyncio.sleep(0, len(adapter.sent) == 2), timeout_s=10)
        assert sorted(adapter.sent) == sorted(ids)
        writes.set()

        async def all_done() -> bool:
            return all([await harness.status(i) is DeliveryStatus.SUCCEEDED for i in ids])
        await eventually(all_done, timeout_s=10)
    finally:
        writes.set()
        await worker.stop(1)


async def test_the_claim_and_statements_past_asyncpgs_default_limits_stay_prepared(
        dsn: str) -> None:
    """asyncpg keeps a statement prepared only up to a length (15 KiB unless told) and
    only so many of them (100 unless told): past either, a statement is parsed and
    planned again. The pool keeps longer ones and more: claim_due, the longest named
    query, a statement longer than asyncpg's default, and as many distinct statements as
    there are named queries are each prepared once a connection and named there (an
    unnamed statement is not listed in pg_prepared_statements)."""
    db = await Database.connect(dsn, max_size=1)
    try:
        await migrate(dsn)
        longer = "SELECT 1 -- " + "x" * 20_000
        # More distinct statements than asyncpg keeps by default (100), fewer than there
        # is room for (STATEMENT_CACHE_SIZE, every named query): none is dropped.
        many = [f"SELECT {n}::int" for n in range(len(QUERIES))]
        for _ in range(2):
            await PostgresQueue(db).claim(10, 30, uuid.uuid4())
            async with db.connection() as conn:
                # claim_due itself (the queue's common case is claim_due_plain).
                await conn.fetch(QUERIES["claim_due"], *claim_params(10, 30, uuid.uuid4(),
                                                                      Rooms(endpoint=1)))
                await conn.fetchval(longer)
                for statement in many:
                    await conn.fetchval(statement)
        async with db.connection() as conn:
            prepared = [row["statement"] for row in
                        await conn.fetch("SELECT statement FROM pg_prepared_statements")]
        assert prepared.count(QUERIES["claim_due"]) == 1
        assert prepared.count(QUERIES["claim_due_plain"]) == 1
        assert prepared.count(longer) == 1
        assert set(many) <= set(prepared)
    finally:
        await db.close()


async def test_claim_due_locks_only_the_deliveries_it_takes_not_every_row_it_looked_at(
        dsn: str) -> None:
    """The full claim (open circuits, rate limits) chooses, then locks what it takes: the
    rows it read over the room stay free for another claimer. (The plain claim locks what
    its scan reads: test_two_claimers_at_once_take_different_rows_as_many_as_they_ask.)"""
    db = await Database.connect(dsn, max_size=4)
    try:
        harness = PostgresHarness(Store(db), PostgresQueue(db))
        ids = [await harness.add("busy") for _ in range(6)]
        async with db.transaction() as conn:
            # claim_due, in a transaction that stays open.
            first = await conn.fetch(QUERIES["claim_due"],
                                     *claim_params(10, 30, uuid.uuid4(), Rooms(endpoint=1)))
            assert [row["id"] for row in first] == ids[:1]
            # The first claim has not committed: it holds only the one it took.
            rest = await harness.queue.claim(10, 30, uuid.uuid4())
            assert sorted(j.delivery.delivery_id for j in rest) == sorted(ids[1:])
    finally:
        await db.close()


def _literal(value: Any) -> str:
    """A parameter of claim_due as SQL text (numbers, a uuid, arrays of ids or counts)."""
    if isinstance(value, list):
        return "'{" + ",".join(json.dumps(v) for v in value) + "}'"
    if isinstance(value, uuid.UUID):
        return f"'{value}'"
    return repr(value)


def _nodes_under(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node]
    for child in node.get("Plans", []):
        found += _nodes_under(child)
    return found


def _cte(node: dict[str, Any], name: str) -> dict[str, Any] | None:
    if node.get("Subplan Name") == f"CTE {name}":
        return node
    for child in node.get("Plans", []):
        if (hit := _cte(child, name)) is not None:
            return hit
    return None


async def _due_deliveries_of_one_endpoint(db: Database, count: int, *, apart: bool = False
                                          ) -> tuple[str, str]:
    """One app, one endpoint, ``count`` events each making a delivery due now (written
    250 at a time, as ingest's batches write them, or with ``apart`` one at a time, each
    due at a time of its own); the app's and the endpoint's ids."""
    store = Store(db)
    app = await store.create_app("one")
    endpoint = await store.create_endpoint(app.id, "http://127.0.0.1:9/", "",
                                           ["order.created"])
    batch = 1 if apart else 250
    for start in range(0, count, batch):
        await store.write_events([EventDraft(app.id, "order.created", "{}")
                                  for _ in range(min(batch, count - start))])
    return app.id, endpoint.id


@contextlib.asynccontextmanager
async def _held_by_another(dsn: str, query: str) -> AsyncIterator[list[asyncpg.Record]]:
    """What ``query`` (a ``SELECT ... FOR UPDATE``) answers in another connection's open
    transaction: its rows locked there until the block ends (rolled back)."""
    other = await asyncpg.connect(dsn)
    try:
        held = other.transaction()
        await held.start()
        try:
            yield await other.fetch(query)
        finally:
            await held.rollback()
    finally:
        await other.close()


@pytest.mark.parametrize("query", ["claim_due", "claim_due_plain"])
async def test_a_claim_locks_each_row_it_takes_by_its_key_not_by_walking_the_due_index(
        dsn: str, query: str) -> None:
    """A day's partition full of due rows it has no statistics for yet (the first minute
    after midnight, a fresh database) led the planner to the due index for the row lock:
    each row taken walked every due row, so a claim cost grew with the backlog. The
    lock's re-check is written so that no partial index can serve it: whatever the
    statistics, the lock is a primary-key lookup. (Sequential scans are off here so the planner
    has to choose among the indexes, as it does once a partition is big.)"""
    db = await Database.connect(dsn, max_size=4)
    try:
        await _due_deliveries_of_one_endpoint(db, 1000)
        params = claim_params(8, 30, uuid.uuid4(), Rooms(endpoint=64))
        if query == "claim_due_plain":
            params = params[:PLAIN_PARAMS]
        async with db.transaction() as conn:
            await conn.execute("SET LOCAL enable_seqscan = off")
            # The plan a long-lived prepared statement settles on (EXPLAIN (GENERIC_PLAN)
            # needs PostgreSQL 16; this works on every version the gateway supports).
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await conn.execute(f"PREPARE claim AS {QUERIES[query]}")
            (plan,) = json.loads(await conn.fetchval(
                f"EXPLAIN (FORMAT JSON) EXECUTE claim({', '.join(map(_literal, params))})"))
            await conn.execute("DEALLOCATE claim")
            locked = _cte(plan["Plan"], "locked")
            assert locked is not None
            nodes = _nodes_under(locked)
            assert not [n for n in nodes if n["Node Type"] == "Seq Scan"
                        and n["Relation Name"].startswith("deliveries")]
            lookups = [n for n in nodes if n.get("Index Name", "").startswith("deliveries")]
            assert lookups
            for scan in lookups:
                # Each row by its primary key (an index scan, or a bitmap of it), in every
                # partition: no partial index (the due index above all) can serve the
                # lookup, whatever the statistics.
                assert scan["Index Name"].endswith("_pkey"), scan
                assert "(id = " in scan.get("Index Cond", ""), scan
        taken = await PostgresQueue(db).claim(8, 30, uuid.uuid4(), Rooms(endpoint=64))
        assert len(taken) == 8
    finally:
        await db.close()


@pytest.mark.parametrize("query", ["claim_due", "claim_due_plain"])
async def test_a_claim_reads_only_its_window_of_due_rows_when_all_share_one_due_time(
        dsn: str, query: str) -> None:
    """A fan-out batch's deliveries (1,000) are due at one time: the claim's walk of the
    due index stops after its window, and does not read every row of that time to order
    them by id as well."""
    db = await Database.connect(dsn, max_size=4)
    try:
        await _due_deliveries_of_one_endpoint(db, 1000)
        await db.pool.execute("UPDATE deliveries SET next_attempt_at = now() - interval '1 s'")
        await db.pool.execute("ANALYZE deliveries")
        params = claim_params(8, 30, uuid.uuid4(), Rooms(endpoint=64))
        window = params[11]
        if query == "claim_due_plain":
            params = params[:PLAIN_PARAMS]
        async with db.pool.acquire() as conn:
            # EXPLAIN ANALYZE runs the claim: rolled back, it takes nothing.
            rollback = conn.transaction()
            await rollback.start()
            try:
                (plan,) = json.loads(await conn.fetchval(
                    f"EXPLAIN (ANALYZE, FORMAT JSON) {QUERIES[query]}", *params))
            finally:
                await rollback.rollback()
        candidates = _cte(plan["Plan"], "candidates")
        assert candidates is not None
        # Every row the walk fetched, whether or not the scan's filter kept it.
        read = sum((n["Actual Rows"] + n.get("Rows Removed by Filter", 0)) * n["Actual Loops"]
                   for n in _nodes_under(candidates)
                   if n.get("Relation Name", "").startswith("deliveries"))
        assert 0 < read <= window + 1, read
        taken = await PostgresQueue(db).claim(8, 30, uuid.uuid4(), Rooms(endpoint=64))
        assert len(taken) == 8
    finally:
        await db.close()


@contextlib.asynccontextmanager
async def _heard_outcomes(dsn: str) -> AsyncIterator[list[str]]:
    """Every live-tail notification (its payload) from now until the block ends."""
    listener = await asyncpg.connect(dsn)
    heard: list[str] = []
    await listener.add_listener(OUTCOMES_CHANNEL, lambda *args: heard.append(args[3]))
    try:
        yield heard
    finally:
        await listener.close()


async def test_delivered_attempts_reach_the_live_tail_as_before_in_notifications_under_its_limit(
        dsn: str) -> None:
    """Delivered attempts are settled by one statement (settle_delivered) that writes the
    live tail's notifications itself: the same outcomes outcome_notifications writes,
    each notification under NOTIFY's 8000 bytes however many there are, for the apps
    someone watches and no other."""
    db = await Database.connect(dsn, max_size=4)
    try:
        async with _heard_outcomes(dsn) as heard:
            store = Store(db)
            app = await store.create_app("one")
            quiet = await store.create_app("unwatched")
            await store.keep_live_tails(uuid.uuid4(), [app.id], 60)
            event_type = "order." + "x" * 122
            endpoint = await store.create_endpoint(app.id, "http://127.0.0.1:9/", "", [event_type])
            await store.create_endpoint(quiet.id, "http://127.0.0.1:9/", "", None)
            await store.write_events([EventDraft(app.id, event_type, "{}") for _ in range(60)]
                                     + [EventDraft(quiet.id, event_type, "{}") for _ in range(5)])
            queue = PostgresQueue(db)
            jobs = await queue.claim(100, 30, uuid.uuid4())
            assert len(jobs) == 65
            results = [replace(delivered(job), status_code=200 + i % 2)
                       for i, job in enumerate(jobs)]
            assert await queue.complete(results) == Settlement()

            async def all_heard() -> bool:
                return sum(len(json.loads(h)) for h in heard) >= 60

            await eventually(all_heard)
            assert len(heard) > 1
            assert all(len(h.encode()) < 8000 for h in heard)
            rows = {job.delivery.delivery_id: {
                "event_id": job.delivery.event.id, "event_type": event_type,
                "endpoint_id": endpoint.id, "kind": "webhook", "app_id": app.id,
                "attempt_count": 1} for job in jobs if job.delivery.app_id == app.id}
            expected = [item for chunk in outcome_notifications(results, rows)
                        for item in json.loads(chunk)]
            # One transaction's notifications arrive together: the unwatched app's would be
            # among these.
            got = [item for chunk in heard for item in json.loads(chunk)]
            key = operator.itemgetter("delivery_id")
            assert sorted(got, key=key) == sorted(expected, key=key)
    finally:
        await db.close()


async def test_the_live_tail_hears_of_retried_attempts_only_of_apps_someone_watches_now(
        dsn: str) -> None:
    """Attempts settled apart from the hot path (a retry, here) tell the live tail too,
    of the watched apps only; a process's word lasts its time, and a new word replaces
    the old one (the apps it no longer streams are no longer told)."""
    db = await Database.connect(dsn, max_size=4)
    try:
        async with _heard_outcomes(dsn) as heard:
            store = Store(db)
            watched = await store.create_app("watched")
            other = await store.create_app("other")
            for app in (watched, other):
                await store.create_endpoint(app.id, "http://127.0.0.1:9/", "", None)
            process = uuid.uuid4()
            await store.keep_live_tails(process, [watched.id, other.id], 60)
            await store.keep_live_tails(process, [watched.id], 60)  # no longer streams other
            await store.keep_live_tails(uuid.uuid4(), [other.id], -1)  # a word that ran out
            queue = PostgresQueue(db)

            async def settle_one_retry_each() -> list[str]:
                await store.write_events([EventDraft(app.id, "order.created", "{}")
                                          for app in (watched, other)])
                jobs = await queue.claim(10, 30, uuid.uuid4())
                assert len(jobs) == 2
                await queue.reschedule([failed(job, at=datetime.now(UTC)) for job in jobs])
                told = await eventually(lambda: asyncio.sleep(0, [
                    item["app_id"] for chunk in heard for item in json.loads(chunk)]))
                return [str(app_id) for app_id in told]

            assert await settle_one_retry_each() == [watched.id]
            heard.clear()

            await store.keep_live_tails(process, [], 60)  # its last stream closed
            assert await db.pool.fetchval("SELECT count(*) FROM live_tails") == 0
            retried = await queue.claim(10, 30, uuid.uuid4())
            assert len(retried) == 2
            await queue.complete([delivered(job) for job in retried])  # told to no one
            await store.keep_live_tails(process, [watched.id], 60)
            await store.write_events([EventDraft(watched.id, "order.created", "{}")])
            (third,) = await queue.claim(10, 30, uuid.uuid4())
            await queue.complete([delivered(third)])
            # Notifications arrive in commit order: once the third is heard, nothing before
            # it was told.
            heard_ids = await eventually(lambda: asyncio.sleep(0, [
                item["delivery_id"] for chunk in heard for item in json.loads(chunk)]))
            assert heard_ids == [third.delivery.delivery_id]
    finally:
        await db.close()


# --- endpoint health (gateway/health.py) over either queue ------------------------------

def failed(job: Job, *, at: datetime | None = None) -> AttemptResult:
    """The attempt failed (a 503, say) and the delivery is due again at once."""
    endpoint = job.delivery.endpoint
    return replace(result(job, DeliveryStatus.PENDING, AttemptOutcome.RETRY,
                          next_attempt_at=datetime.now(UTC),
                          endpoint_id=endpoint.id if endpoint else None),
                   status_code=503, attempted_at=at or datetime.now(UTC))


def delivered(job: Job) -> AttemptResult:
    endpoint = job.delivery.endpoint
    return result(job, DeliveryStatus.SUCCEEDED, AttemptOutcome.DELIVERED,
                  endpoint_id=endpoint.id if endpoint else None)


async def test_failures_in_a_row_open_the_circuit_and_its_deliveries_are_not_claimed(
        harness: Harness) -> None:
    harness.use(HealthRules(circuit_failures=3, circuit_cooldown_s=60))
    down = [await harness.add("down") for _ in range(5)]
    up = await harness.add("up")
    jobs = await harness.queue.claim(3, 30, uuid.uuid4(), Rooms(app=3))
    # The oldest three; a claim names which, not in what order it hands them out.
    assert sorted(j.delivery.delivery_id for j in jobs) == sorted(down[:3])
    settled = await harness.queue.reschedule([failed(j) for j in jobs])
    assert [e for _, e in settled.circuits_opened] == [harness_endpoint(harness, "down")]
    (job,) = await harness.queue.claim(10, 30, uuid.uuid4())
    assert job.delivery.delivery_id == up  # every "down" delivery is due, none is claimed
    await harness.queue.complete([delivered(job)])
    assert await harness.queue.claim(10, 30, uuid.uuid4()) == []
    assert [await harness.attempts(d) for d in down] == [1, 1, 1, 0, 0]
    assert all([await harness.status(d) is DeliveryStatus.PENDING for d in down])
    # Nothing is due before the cooldown ends: a dispatcher sleeps until then.
    due = await harness.queue.next_due_at()
    assert due is not None and due > datetime.now(UTC) + timedelta(seconds=30)


async def test_a_half_open_circuit_lets_one_probe_through_and_its_success_closes_it(
        harness: Harness) -> None:
    harness.use(HealthRules(circuit_failures=2, circuit_cooldown_s=0.3))
    down = [await harness.add("down") for _ in range(4)]
    jobs = await harness.queue.claim(2, 30, uuid.uuid4(), Rooms(app=2))
    await harness.queue.reschedule([failed(j) for j in jobs])
    assert await harness.queue.claim(10, 30, uuid.uuid4()) == []
    await asyncio.sleep(0.4)
    (probe,) = await harness.queue.claim(10, 30, uuid.uuid4())
    assert await harness.queue.claim(10, 30, uuid.uuid4()) == []  # one probe at a time
    await harness.queue.complete([delivered(probe)])
    rest = await harness.queue.claim(10, 30, uuid.uuid4())
    assert sorted(j.delivery.delivery_id for j in rest) == sorted(
        set(down) - {probe.delivery.delivery_id})


async def test_a_failed_probe_opens_the_circuit_for_another_cooldown(
        harness: Harness) -> None:
    harness.use(HealthRules(circuit_failures=2, circuit_cooldown_s=0.3))
    for _ in range(3):
        await harness.add("down")
    jobs = await harness.queue.claim(2, 30, uuid.uuid4(), Rooms(app=2))
    await harness.queue.reschedule([failed(j) for j in jobs])
    await asyncio.sleep(0.4)
    (probe,) = await harness.queue.claim(10, 30, uuid.uuid4())
    settled = await harness.queue.reschedule([failed(probe)])
    assert settled.circuits_opened == ()  # it was open already: not counted again
    assert await harness.queue.claim(10, 30, uuid.uuid4()) == []
    await asyncio.sleep(0.4)
    assert len(await harness.queue.claim(10, 30, uuid.uuid4())) == 1


async def test_an_endpoint_failing_for_the_whole_window_is_disabled_as_failing(
        harness: Harness) -> None:
    harness.use(HealthRules(circuit_failures=100, disable_after_s=0.3))
    for _ in range(3):
        await harness.add("down")
    (first,) = await harness.queue.claim(1, 30, uuid.uuid4())
    settled = await harness.queue.reschedule([failed(first)])
    assert settled.disabled_failing == ()
    await asyncio.sleep(0.4)
    (second,) = await harness.queue.claim(1, 30, uuid.uuid4())
    settled = await harness.queue.reschedule([failed(second)])
    assert [e for _, e in settled.disabled_failing] == [harness_endpoint(harness, "down")]
    assert await harness.endpoint_status("down") is EndpointStatus.DISABLED
    assert await harness.endpoint_reason("down") is DisabledReason.FAILING
    assert await harness.queue.claim(10, 30, uuid.uuid4()) == []  # its deliveries wait


async def test_a_success_in_between_restarts_the_disable_window(harness: Harness) -> None:
    harness.use(HealthRules(circuit_failures=100, disable_after_s=0.3))
    for _ in range(3):
        await harness.add("flaky")
    (first,) = await harness.queue.claim(1, 30, uuid.uuid4())
    await harness.queue.reschedule([failed(first)])
    await asyncio.sleep(0.4)
    (second,) = await harness.queue.claim(1, 30, uuid.uuid4())
    await harness.queue.complete([delivered(second)])
    (third,) = await harness.queue.claim(1, 30, uuid.uuid4())
    settled = await harness.queue.reschedule([failed(third)])
    assert settled.disabled_failing == ()
    assert await harness.endpoint_status("flaky") is EndpointStatus.ACTIVE


async def test_settling_keeps_its_generic_plan_with_a_month_of_day_partitions(
        empty_database: str) -> None:
    """With a month of day partitions (the default retention) a custom plan of a small
    settlement looked cheaper than the generic plan, so PostgreSQL planned each call
    again: about 5 ms of its CPU a call where running it takes under 1 ms
    (bench/statement_cost.py). After the five custom plans it always makes first, both
    settling statements are run on their generic plan."""
    dsn = empty_database
    await migrate(dsn)
    db = await Database.connect(dsn, max_size=1)  # one connection: one plan cache
    try:
        async with db.connection() as conn:
            await conn.fetchval(QUERIES["make_partitions"], 30, 1)  # day partitions
        harness = PostgresHarness(Store(db), PostgresQueue(db))
        await harness.add()
        for _ in range(4):  # a backlog, as the bench has
            await harness.store.write_events([EventDraft(harness.apps["one"], "for.a", "{}")
                                              for _ in range(250)])
        later = datetime.now(UTC) + timedelta(hours=1)
        for n in range(16):
            (job,) = await harness.queue.claim(1, 30, uuid.uuid4())
            if n % 2:
                await harness.queue.complete([result(job, DeliveryStatus.SUCCEEDED,
                                                     AttemptOutcome.DELIVERED)])
            else:
                await harness.queue.reschedule([result(
                    job, DeliveryStatus.PENDING, AttemptOutcome.RETRY,
                    next_attempt_at=later)])
        async with db.connection() as conn:
            plans = {row["statement"]: (row["custom_plans"], row["generic_plans"])
                     for row in await conn.fetch("SELECT statement, custom_plans, "
                                                 "generic_plans FROM pg_prepared_statements")}
        for query in ("settle_delivered", "record_results"):
            # Eight calls each: the five custom plans, then the generic one every time.
            assert plans[QUERIES[query]] == (5, 3), f"{query}: {plans[QUERIES[query]]}"
    finally:
        await db.close()


class _ScanSpy(PostgresQueue):
    """A PostgresQueue that notes how many due rows each of its claims scanned."""

    def __init__(self, db: Database, stack: contextlib.ExitStack) -> None:
        super().__init__(db)
        self.scans: list[int] = []
        fetch = db.fetch

        async def spied(name: str, *args: Any) -> list[asyncpg.Record]:
            if name in ("claim_due", "claim_due_plain"):
                self.scans.append(args[11])
            return await fetch(name, *args)

        stack.enter_context(mock.patch.object(db, "fetch", spied))


async def test_claims_after_one_that_took_the_head_of_its_scan_scan_narrow_then_wide_again(
        dsn: str) -> None:
    """A claim that took the first rows it read (one endpoint's backlog, in due order)
    would have taken the same from a scan of a little more than it may take: the next
    NARROW_RUN claims scan that, then one scans the wide window again. Every claim still
    takes what it asks for, oldest first."""
    db = await Database.connect(dsn, max_size=4)
    spies = contextlib.ExitStack()
    try:
        await _due_deliveries_of_one_endpoint(db, 300)
        queue = _ScanSpy(db, spies)
        taken: list[str] = []
        for _ in range(6):
            claim = await queue.claim(8, 30, uuid.uuid4(), Rooms(endpoint=64))
            assert len(claim) == 8
            taken += [job.delivery.delivery_id for job in claim]
        assert queue.scans == [100, 16, 16, 16, 100, 16]
        assert len(set(taken)) == 48
        # Oldest first: nothing that fell due before what was taken is still waiting.
        times = await db.pool.fetchrow(
            "SELECT max(created_at) FILTER (WHERE id = ANY($1::text[])) AS last_taken,"
            "       min(created_at) FILTER (WHERE NOT id = ANY($1::text[])) AS first_left "
            "FROM deliveries", taken)
        assert times is not None and times["last_taken"] <= times["first_left"]
    finally:
        spies.close()
        await db.close()


async def test_a_claim_that_passed_due_rows_over_keeps_the_wide_scan(dsn: str) -> None:
    """When a claim passed over rows it read before its last taken one (here an endpoint
    with room for two among older rows, so a younger endpoint's rows were taken past the
    rest of them), a narrower scan would have taken less: the next claim scans wide."""
    db = await Database.connect(dsn, max_size=4)
    spies = contextlib.ExitStack()
    try:
        store = Store(db)
        app = await store.create_app("one")
        crowded = await store.create_endpoint(app.id, "http://127.0.0.1:9/", "", ["old.one"])
        await store.create_endpoint(app.id, "http://127.0.0.1:9/", "", ["new.one"])
        await store.write_events([EventDraft(app.id, "old.one", "{}") for _ in range(20)])
        await store.write_events([EventDraft(app.id, "new.one", "{}") for _ in range(5)])
        queue = _ScanSpy(db, spies)
        first = await queue.claim(10, 30, uuid.uuid4(), Rooms(endpoints={crowded.id: 2}))
        assert len(first) == 7  # two of the crowded endpoint's, all five of the other's
        await queue.claim(10, 30, uuid.uuid4(), Rooms(endpoints={crowded.id: 2}))
        assert queue.scans == [100, 100]
    finally:
        spies.close()
        await db.close()


async def test_a_row_another_claimer_holds_at_the_head_is_skipped_by_the_scan_which_stays_narrow(
        dsn: str) -> None:
    """The plain claim's scan locks what it reads, skipping what another claimer holds: a
    held row at the head of the due rows is passed over by the scan itself, the claim
    takes as many as it asked for from the rows after it, and what it read was all there
    was to take (the next scans stay narrow)."""
    db = await Database.connect(dsn, max_size=4)
    spies = contextlib.ExitStack()
    try:
        await _due_deliveries_of_one_endpoint(db, 40, apart=True)
        queue = _ScanSpy(db, spies)
        assert len(await queue.claim(8, 30, uuid.uuid4(), Rooms(endpoint=64))) == 8
        async with _held_by_another(dsn, "SELECT id FROM deliveries WHERE lease_id IS NULL "
                                         "ORDER BY next_attempt_at LIMIT 1 FOR UPDATE"
                                    ) as (head,):
            taken = [job.delivery.delivery_id for _ in range(2)
                     for job in await queue.claim(8, 30, uuid.uuid4(), Rooms(endpoint=64))]
        assert len(taken) == 16 and head["id"] not in taken
        assert queue.scans == [100, 16, 16]
    finally:
        spies.close()
        await db.close()


async def test_claim_due_skips_a_held_row_at_the_head_and_counts_it_passed_over(
        dsn: str) -> None:
    """claim_due chooses, then locks: a row another claimer holds at the head of what it
    read is skipped, not replaced, and counted as passed over (PostgresQueue then scans
    wide next, _narrow_after)."""
    db = await Database.connect(dsn, max_size=4)
    try:
        await _due_deliveries_of_one_endpoint(db, 40, apart=True)
        async with _held_by_another(
                dsn, "SELECT id FROM deliveries ORDER BY next_attempt_at LIMIT 1 FOR UPDATE"
        ) as (head,):
            rows = await db.fetch("claim_due", *claim_params(
                8, 30, uuid.uuid4(), Rooms(endpoint=64), narrow=True))
        assert len(rows) == 7 and head["id"] not in {row["id"] for row in rows}
        assert rows[0]["passed_over"] == 1
    finally:
        await db.close()


async def test_two_claimers_at_once_take_different_rows_as_many_as_they_ask(dsn: str) -> None:
    """Two claims in flight together over one backlog (two dispatchers draining it): the
    second's scan passes over the rows the first holds and takes the next ones, instead
    of choosing the same head and taking only what the first had not locked."""
    db = await Database.connect(dsn, max_size=4)
    try:
        await _due_deliveries_of_one_endpoint(db, 40)
        queue = PostgresQueue(db)
        # The first claimer's statement, held open mid-transaction: its rows locked.
        async with _held_by_another(dsn, "SELECT id FROM deliveries WHERE status = 'pending' "
                                         "ORDER BY next_attempt_at LIMIT 16 FOR UPDATE"
                                    ) as held:
            second = await queue.claim(16, 30, uuid.uuid4(), Rooms(endpoint=64))
        assert len(second) == 16
        assert not {row["id"] for row in held} & {job.delivery.delivery_id for job in second}
    finally:
        await db.close()


async def test_another_apps_due_rows_past_a_narrow_scan_are_taken_by_the_next_wide_one(
        dsn: str) -> None:
    """Apps take turns among what a scan read: an app whose due rows lie past the narrow
    scans but within the wide window (behind another app's backlog of 60) gets its turn at
    the next wide scan, within NARROW_RUN + 1 claims."""
    db = await Database.connect(dsn, max_size=4)
    spies = contextlib.ExitStack()
    try:
        store = Store(db)
        big = await store.create_app("big")
        await store.create_endpoint(big.id, "http://127.0.0.1:9/", "", None)
        await store.write_events([EventDraft(big.id, "order.created", "{}")
                                  for _ in range(60)])
        queue = _ScanSpy(db, spies)
        await queue.claim(8, 30, uuid.uuid4(), Rooms(endpoint=64))
        small = await store.create_app("small")
        await store.create_endpoint(small.id, "http://127.0.0.1:9/", "", None)
        await store.write_events([EventDraft(small.id, "order.created", "{}")])
        apps = [{job.delivery.app_id for job in
                 await queue.claim(8, 30, uuid.uuid4(), Rooms(endpoint=64))}
                for _ in range(4)]
        assert queue.scans == [100, 16, 16, 16, 100]
        assert apps[:3] == [{big.id}] * 3 and small.id in apps[3]
    finally:
        spies.close()
        await db.close()


async def test_a_narrow_claim_that_took_less_than_it_asked_for_makes_the_next_wide(
        dsn: str) -> None:
    """Rooms change between claims: a narrow claim cut short by a target's room now (its
    scan all of that target's rows) may leave another app's rows past its scan that a
    wide one would have taken. The next claim scans wide, and takes them."""
    db = await Database.connect(dsn, max_size=4)
    spies = contextlib.ExitStack()
    try:
        store = Store(db)
        big = await store.create_app("big")
        crowded = await store.create_endpoint(big.id, "http://127.0.0.1:9/", "", None)
        await store.write_events([EventDraft(big.id, "order.created", "{}")
                                  for _ in range(30)])
        small = await store.create_app("small")
        await store.create_endpoint(small.id, "http://127.0.0.1:9/", "", None)
        await store.write_events([EventDraft(small.id, "order.created", "{}")
                                  for _ in range(5)])
        queue = _ScanSpy(db, spies)
        first = await queue.claim(8, 30, uuid.uuid4(), Rooms(apps={small.id: 0}))
        assert {job.delivery.app_id for job in first} == {big.id} and len(first) == 8
        short = await queue.claim(8, 30, uuid.uuid4(), Rooms(endpoints={crowded.id: 3}))
        assert {job.delivery.app_id for job in short} == {big.id} and len(short) == 3
        # The same rooms again: a narrow scan would read only the big app's rows.
        rest = await queue.claim(8, 30, uuid.uuid4(), Rooms(endpoints={crowded.id: 3}))
        assert sorted(job.delivery.app_id == small.id for job in rest) == [False] * 3 + [True] * 5
        assert queue.scans == [100, 16, 100]
    finally:
        spies.close()
        await db.close()


async def test_a_claim_opens_each_endpoints_secrets_once_and_the_next_sees_a_rotation(
        dsn: str) -> None:
    """A backlog's rows repeat their endpoint's sealed secret and headers: one claim opens
    them once per endpoint, each endpoint's jobs get only its own, and a secret rotated
    between two claims is what the second one signs with."""
    sealer = crypto.Sealer(crypto.new_key())
    db = await Database.connect(dsn, max_size=2)
    try:
        store, queue = Store(db, sealer=sealer), PostgresQueue(db, sealer)
        app = await store.create_app("one")
        a = await store.create_endpoint(app.id, "http://127.0.0.1:9/a", "", None,
                                        headers={"X-Token": "tok-a"})
        b = await store.create_endpoint(app.id, "http://127.0.0.1:9/b", "", None,
                                        headers={"X-Token": "tok-b"})
        await store.write_events([EventDraft(app.id, "t", "{}") for _ in range(3)])
        jobs = list(await queue.claim(10, 30, uuid.uuid4()))
        assert len(jobs) == 6
        for endpoint, token in ((a, "tok-a"), (b, "tok-b")):
            targets = [j.delivery.endpoint for j in jobs
                       if j.delivery.endpoint is not None
                       and j.delivery.endpoint.id == endpoint.id]
            assert len(targets) == 3
            assert all(t is targets[0] for t in targets)
            assert targets[0].secrets == (endpoint.secret,)
            assert targets[0].headers == (("X-Token", token),)
        rotated = await store.rotate_secret(app.id, a.id)
        await store.write_events([EventDraft(app.id, "t", "{}")])
        after = {j.delivery.endpoint.id: j.delivery.endpoint.secrets
                 for j in await queue.claim(10, 30, uuid.uuid4())
                 if j.delivery.endpoint is not None}
        assert after == {a.id: (rotated.secret, a.secret), b.id: (b.secret,)}
    finally:
        await db.close()


async def test_a_new_databases_claim_and_settlement_plans_find_each_delivery_by_its_key(
        empty_database: str) -> None:
    """A new database's partitions are empty and not yet analyzed, and the generic plans
    a connection makes then are kept: they must still find each claimed or settled
    delivery by its key, not hash a scan of every partition (each claim would then read
    the whole partition again as it grew: bench/README.md, "Plans made on small
    partitions")."""
    await migrate(empty_database)
    db = await Database.connect(empty_database, max_size=1)
    try:
        app_id, endpoint_id = await _due_deliveries_of_one_endpoint(db, 0)
        now, lease, k = datetime.now(UTC), uuid.uuid4(), 3
        ids = [f"dlv_{n:032x}" for n in range(k)]
        results = [ids, [lease] * k, ["succeeded"] * k, [None] * k, [1] * k, [now] * k,
                   [3] * k, ["delivered"] * k, [200] * k, ["ok"] * k, [None] * k,
                   [app_id] * k]
        statements: dict[str, list[Any]] = {
            "claim_due": claim_params(200, 30, lease, Rooms(endpoints={endpoint_id: 64})),
            "claim_due_plain": claim_params(200, 30, lease,
                                            Rooms(endpoints={endpoint_id: 64}))[:PLAIN_PARAMS],
            "settle_delivered": [ids, [lease] * k, [1] * k, [iso(now)] * k, [3] * k,
                                 [200] * k, ["ok"] * k, [app_id] * k, [endpoint_id] * k],
            "record_results": results,
        }
        async with db.connection() as conn, conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            for name, params in statements.items():
                (plan,) = json.loads(await conn.fetchval(
                    f"EXPLAIN (FORMAT JSON) {QUERIES[name]}", *params))
                scanned = [n["Relation Name"] for n in _nodes_under(plan["Plan"])
                           if n["Node Type"] == "Seq Scan"
                           and n["Relation Name"].startswith("deliveries")]
                assert scanned == [], name
    finally:
        await db.close()


_CLAIM_ANSWER = ("held_back", "waiting", "id", "app_id", "event_id", "endpoint_id", "kind",
                 "schedule_pos", "attempt_count", "event_type", "payload", "url", "secret",
                 "headers", "parked", "passed_over")


async def _claim_rolled_back(db: Database, query: str,
                             params: list[Any]) -> list[asyncpg.Record]:
    """The rows a claim statement (``claim_due`` or ``claim_due_plain``, given
    claim_params) answers, rolled back: the database stays as it was."""
    if query == "claim_due_plain":
        params = params[:PLAIN_PARAMS]
    async with db.connection() as conn:
        rollback = conn.transaction()
        await rollback.start()
        try:
            return list(await conn.fetch(QUERIES[query], *params))
        finally:
            await rollback.rollback()


async def _claim_answer(db: Database, query: str, params: list[Any]) -> list[tuple[Any, ...]]:
    """What ``query`` answers to ``params``, rolled back, in id order (neither statement
    orders its answer)."""
    rows = await _claim_rolled_back(db, query, params)
    if query == "claim_due_plain":
        assert not rows[0]["unusual"]
    return sorted((tuple(row[name] for name in _CLAIM_ANSWER) for row in rows),
                  key=lambda answer: answer[2] or "")


def _cte_text(query: str, part: str) -> str:
    """The text of one CTE of a named query (``part AS (...)``), or of the parenthesized
    text that follows ``part`` in it, with its comments left out and its spacing made one
    space."""
    text = " ".join(re.sub(r"--[^\n]*", "", QUERIES[query]).split())
    start = text.index(f"{part} AS (") if f"{part} AS (" in text else text.index(part)
    depth, end = 0, start
    for end in range(text.index("(", start), len(text)):
        depth += {"(": 1, ")": -1}.get(text[end], 0)
        if depth == 0:
            break
    return text[start:end + 1]


#: The lock's re-check of each row a claim changes.
_RECHECK = "CROSS JOIN LATERAL ( SELECT 1 FROM deliveries d WHERE d.app_id = t.app_id"


def test_the_plain_claim_reads_its_candidates_as_claim_due_does_and_locks_them() -> None:
    """The two claims must pass over the same due rows (inactive endpoints, rooms,
    deleted apps, the scan's order and limit) and lock what they take the same way (each
    row by its key, re-checked, skipping what another claimer holds): one text, kept in
    two places. The plain claim's scan also locks what it reads."""
    for part in ("full_targets", _RECHECK):
        assert _cte_text("claim_due_plain", part) == _cte_text("claim_due", part)
    assert _cte_text("claim_due_plain", "candidates") == \
        _cte_text("claim_due", "candidates")[:-1] + "FOR UPDATE OF d SKIP LOCKED )"
    assert _cte_text("claim_due", _RECHECK).endswith("FOR UPDATE SKIP LOCKED )")


async def test_a_plain_claim_answers_as_claim_due_does_when_no_circuit_limit_or_probe_is_involved(
        dsn: str) -> None:
    """claim_due_plain leaves out only what open circuits and rate limits need: with
    neither among the due deliveries it takes the same rows with the same counts, under
    every kind of room, wide and narrow, passing over the same ones (an endpoint disabled
    after its deliveries fell due, a deleted app's) and taking an endpoint's whose rate
    limit was lifted."""
    db = await Database.connect(dsn, max_size=2)
    try:
        harness = PostgresHarness(Store(db), PostgresQueue(db))
        for n in range(30):
            await harness.add(endpoint="abc"[n % 3], app="one" if n % 3 else "two")
        for _ in range(4):
            await harness.add(endpoint="d", app="three")
        a, b = harness.endpoints["a"][1], harness.endpoints["b"][1]
        await harness.set_rate_limit("b", 5)
        await harness.set_rate_limit("b", None)  # its send schedule stays, unlimited
        await db.pool.execute("UPDATE endpoints SET status = 'disabled' WHERE id = $1",
                              harness.endpoints["c"][1])
        await harness.store.delete_app(harness.apps["three"])
        lease = uuid.uuid4()
        for limit, rooms in [(10, UNLIMITED), (5, Rooms(endpoint=2)), (20, Rooms(app=3)),
                             (20, Rooms(endpoints={a: 0, b: 1}, endpoint=4)),
                             (20, Rooms(apps={harness.apps["one"]: 0})), (1, UNLIMITED)]:
            for narrow in (False, True):
                params = claim_params(limit, 30, lease, rooms, narrow=narrow)
                plain = await _claim_answer(db, "claim_due_plain", params)
                assert plain == await _claim_answer(db, "claim_due", params), (limit, rooms)
                assert plain[-1][2] is not None  # each took something
    finally:
        await db.close()


async def test_a_plain_claim_takes_nothing_where_claim_due_would_park_book_or_probe(
        dsn: str) -> None:
    """When a due delivery's endpoint has a circuit not closed or a rate limit, or an
    endpoint waits for its probe, claim_due_plain takes nothing and says so, and the
    queue claims with claim_due: it parks, books or probes as before."""
    db = await Database.connect(dsn, max_size=2)
    try:
        harness = PostgresHarness(Store(db), PostgresQueue(db))
        for endpoint in "ab":
            for _ in range(3):
                await harness.add(endpoint=endpoint)
        a = harness.endpoints["a"][1]
        params = claim_params(10, 30, uuid.uuid4(), UNLIMITED)

        assert not await _plain_is_unusual(db, params)
        # An open circuit on a due delivery's endpoint: claim_due parks its deliveries.
        await db.pool.execute("UPDATE endpoints SET circuit_open_until = now() + "
                              "interval '1 hour' WHERE id = $1", a)
        assert await _plain_is_unusual(db, params)
        claim = await PostgresQueue(db).claim(10, 30, uuid.uuid4())
        assert {job.delivery.endpoint.id for job in claim
                if job.delivery.endpoint} == {harness.endpoints["b"][1]}
        parked = await db.pool.fetchval("SELECT count(*) FROM deliveries WHERE "
                                        "endpoint_id = $1 AND next_attempt_at = 'infinity'", a)
        assert parked == 3
        assert not await _plain_is_unusual(db, params)  # nothing is due; a's circuit is still open
        # Its cool-down over: a's probe is due, and only claim_due takes it.
        await db.pool.execute("UPDATE endpoints SET circuit_open_until = now() - "
                              "interval '1 s' WHERE id = $1", a)
        assert await _plain_is_unusual(db, params)
        (probe,) = await PostgresQueue(db).claim(10, 30, uuid.uuid4())
        assert probe.delivery.endpoint is not None and probe.delivery.endpoint.id == a
        assert not await _plain_is_unusual(db, params)  # the probe is out
        # A rate limit on a due delivery's endpoint: claim_due books what it cannot send.
        await harness.add(endpoint="b")
        await harness.set_rate_limit("b", 1)
        assert await _plain_is_unusual(db, params)
    finally:
        await db.close()


async def test_the_queue_claims_plain_and_after_an_unusual_claim_goes_to_claim_due_for_a_run(
        dsn: str) -> None:
    db = await Database.connect(dsn, max_size=2)
    spies = contextlib.ExitStack()
    try:
        harness = PostgresHarness(Store(db), PostgresQueue(db))
        for _ in range(3):
            await harness.add(endpoint="a")
        used: list[str] = []
        fetch = db.fetch

        async def spied(name: str, *args: Any) -> list[asyncpg.Record]:
            used.append(name)
            return await fetch(name, *args)

        spies.enter_context(mock.patch.object(db, "fetch", spied))
        queue = PostgresQueue(db)
        assert len(await queue.claim(1, 30, uuid.uuid4())) == 1
        assert used == ["claim_due_plain"]
        await harness.set_rate_limit("a", 1000)
        used.clear()
        assert len(await queue.claim(1, 30, uuid.uuid4())) == 1
        assert used == ["claim_due_plain", "claim_due"]
        used.clear()
        for _ in range(FULL_RUN):
            await queue.claim(1, 30, uuid.uuid4())
        assert used == ["claim_due"] * FULL_RUN
        used.clear()
        await queue.claim(1, 30, uuid.uuid4())
        assert used[0] == "claim_due_plain"
    finally:
        spies.close()
        await db.close()


async def _plain_is_unusual(db: Database, params: list[Any]) -> bool:
    """Whether claim_due_plain stands aside for claim_due (rolled back)."""
    rows = await _claim_rolled_back(db, "claim_due_plain", params)
    return bool(rows[0]["unusual"])


async def test_a_half_open_endpoint_claim_due_would_not_probe_leaves_the_plain_claim_be(
        dsn: str) -> None:
    """claim_due probes no endpoint of an app with no room left or of a deleted app, so
    the plain claim does not stand aside for one: else every claim would cost two
    statements until the app has room, or for good."""
    db = await Database.connect(dsn, max_size=2)
    try:
        harness = PostgresHarness(Store(db), PostgresQueue(db))
        for _ in range(2):
            await harness.add(endpoint="a", app="one")
        app_id, a = harness.endpoints["a"]
        # a's deliveries parked behind its circuit, whose cool-down is over: half-open.
        await db.pool.execute("UPDATE deliveries SET next_attempt_at = 'infinity' "
                              "WHERE endpoint_id = $1", a)
        await db.pool.execute("UPDATE endpoints SET circuit_open_until = now() - "
                              "interval '1 s' WHERE id = $1", a)
        lease = uuid.uuid4()
        assert await _plain_is_unusual(db, claim_params(10, 30, lease, UNLIMITED))
        assert not await _plain_is_unusual(db, claim_params(10, 30, lease,
                                                            Rooms(apps={app_id: 0})))
        await harness.store.delete_app(app_id)
        assert not await _plain_is_unusual(db, claim_params(10, 30, lease, UNLIMITED))
    finally:
        await db.close()


async def test_a_delivered_attempt_is_written_alike_by_the_hot_path_and_the_general_one(
        dsn: str) -> None:
    """settle_delivered takes the attempt's time as text and writes the columns every
    delivered attempt shares as constants: what it writes, to the microsecond, is what
    the general path (an attempt with an error goes there) writes for the same attempt."""
    db = await Database.connect(dsn, max_size=2)
    try:
        app_id, _ = await _due_deliveries_of_one_endpoint(db, 4)
        queue = PostgresQueue(db)
        jobs = await queue.claim(4, 30, uuid.uuid4())
        at = [datetime(2026, 12, 7, 1, 2, 3, 456789, UTC), datetime(2026, 12, 7, 1, 2, 4, 0, UTC)]
        hot = [replace(delivered(job), attempted_at=at[i % 2], response_snippet="ok ü")
               for i, job in enumerate(jobs[:2])]
        general = [replace(delivered(job), attempted_at=at[i % 2], response_snippet="ok ü",
                           error="noted") for i, job in enumerate(jobs[2:])]
        assert await queue.complete(hot) == Settlement()
        await queue.complete(general)
        rows = {row["delivery_id"]: row for row in await db.pool.fetch(
            "SELECT a.delivery_id, a.attempted_at, a.duration_ms, a.outcome, a.status_code, "
            "a.response_snippet, a.error, d.status, d.next_attempt_at, d.last_attempt_at, "
            "d.schedule_pos, d.attempt_count, d.lease_id, d.last_error "
            "FROM attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.app_id = $1",
            app_id)}
        assert len(rows) == 4
        for one, other in zip(hot, general, strict=True):
            a, b = dict(rows[one.delivery_id]), dict(rows[other.delivery_id])
            assert a.pop("attempted_at") == b.pop("attempted_at") == one.attempted_at
            assert a.pop("last_attempt_at") == b.pop("last_attempt_at") == one.attempted_at
            assert (a.pop("error"), a.pop("last_error")) == (None, None)
            assert (b.pop("error"), b.pop("last_error")) == ("noted", "noted")
            a.pop("delivery_id"), b.pop("delivery_id")
            assert a == b
            assert a["status"] == "succeeded" and a["outcome"] == "delivered"
            assert a["next_attempt_at"] is None and a["lease_id"] is None
    finally:
        await db.close()
